"""Which student to ship: distill several candidates from one teacher and compare them in one run.

Each candidate is a `tfkit.distill.distill` call (same teacher, split and seed); the table reports
validation accuracy (what the default is chosen on), test accuracy, accuracy retained, label
agreement with the teacher, parameters, the size of the verified int8 TFLite export (teacher's
too), training time, and Keras CPU throughput relative to the teacher. Throughput is measured
after all training, in one pass, best of 5, so every ratio comes from the same quiet minutes of
a shared machine. Writes JSON, a Markdown table and a plot.

    python benchmarks/distill_sweep.py --teacher models/teacher --out benchmarks/results/distill_sweep
    python benchmarks/distill_sweep.py --candidates from-teacher-2,tiny --epochs 2   # a quicker look
    python benchmarks/distill_sweep.py --reuse    # keep students already trained in --work, re-measure
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

CANDIDATES = {
    "from-teacher-2": dict(student="from-teacher", layers=2),
    "from-teacher-2+hidden": dict(student="from-teacher", layers=2, hidden_loss=1.0),
    "from-teacher-2+augment": dict(student="from-teacher", layers=2, augment=2),
    "from-teacher-3": dict(student="from-teacher", layers=3),
    "from-teacher-3+full-vocab": dict(student="from-teacher", layers=3, trim_vocab=False),
    "mini": dict(student="mini"),
    "tiny": dict(student="tiny"),
    "tiny-lr3e-4": dict(student="tiny", learning_rate=3e-4),
    "tiny-lr3e-4+hidden": dict(student="tiny", learning_rate=3e-4, hidden_loss=1.0),
    "tiny-lr3e-4+augment": dict(student="tiny", learning_rate=3e-4, augment=4),
    "tiny-lr3e-4+min-count-2": dict(student="tiny", learning_rate=3e-4, vocab_min_count=2),
}


def throughput(classifier, texts: list[str], repeats: int = 5) -> float:
    """Texts per second through the Keras model (length-sorted batches of 32), best of `repeats` after a warm-up."""
    from tfkit.timing import measure

    timing = measure(lambda _: classifier.predict_logits(texts, batch_size=32), warmup=1, iterations=repeats)
    return len(texts) / (timing.best / 1000)


def int8_bytes(model_dir, out) -> int | None:
    """Size of the model's dynamic-range int8 .tflite, exported and verified by tfkit (None if the gate failed)."""
    from tfkit.export import ExportError, export

    try:
        manifest = export(model_dir, out, "tflite-int8", progress=False)
    except ExportError as e:
        print(f"{model_dir}: int8 export failed the gate: {e}")
        return None
    return manifest["files"]["model_int8.tflite"]["size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma-separated: {', '.join(CANDIDATES)}")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: distill's default)")
    parser.add_argument("--out", default="benchmarks/results/distill_sweep")
    parser.add_argument("--work", default="/tmp/tfkit-distill-sweep", help="where candidate students are written")
    parser.add_argument("--reuse", action="store_true", help="do not retrain candidates whose student is in --work")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="tfkit: %(message)s")

    from tfkit.classifier import Classifier
    from tfkit.devices import cpu_flags
    from tfkit.distill import DistillConfig, distill

    names = args.candidates.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s): {', '.join(unknown)}")
    teacher = Classifier.load(args.teacher)
    rows = []
    for name in names:
        work = Path(args.work) / name
        if args.reuse and (work / "metrics.json").exists():
            m = json.loads((work / "metrics.json").read_text())
        else:
            extra = {"epochs": args.epochs} if args.epochs else {}
            m = distill(DistillConfig(teacher=args.teacher, baseline=name == names[0], **CANDIDATES[name], **extra), work)
        rows.append({"candidate": name, **CANDIDATES[name], "val_accuracy": m["val"]["accuracy"],
                     "test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_f1"],
                     "accuracy_retained": m["accuracy_retained"], "teacher_agreement": m["teacher_agreement"],
                     "parameters": m["parameters"], "compression": m["compression"], "vocab_size": m["vocab_size"],
                     "train_seconds": sum(m["epoch_seconds"]), "teacher_test_accuracy": m["teacher"]["test"]["accuracy"],
                     **({"hard_label_baseline_test_accuracy": m["hard_label_baseline"]["test"]["accuracy"]}
                        if "hard_label_baseline" in m else {})})
        print(f"{name:24s} val {rows[-1]['val_accuracy']:.4f} test {rows[-1]['test_accuracy']:.4f} "
              f"({100 * rows[-1]['accuracy_retained']:.1f}% retained) {rows[-1]['compression']:.1f}x fewer params", flush=True)

    teacher_int8 = int8_bytes(args.teacher, Path(args.work) / "teacher-int8")
    teacher_keras = (Path(args.teacher) / "model.keras").stat().st_size
    ratio = lambda teacher_bytes, student_bytes: teacher_bytes / student_bytes if teacher_bytes and student_bytes else None
    for row in rows:
        size = row["int8_tflite_bytes"] = int8_bytes(Path(args.work) / row["candidate"], Path(args.work) / f"{row['candidate']}-int8")
        row["int8_smaller_than_teacher_int8"] = ratio(teacher_int8, size)  # None when either export failed its gate
        row["int8_smaller_than_teacher_keras"] = ratio(teacher_keras, size)

    texts = teacher.heldout()[1].texts
    base = throughput(teacher, texts)
    for row in rows:
        row["keras_speedup"] = throughput(Classifier.load(Path(args.work) / row["candidate"]), texts) / base
    print(f"teacher: {base:.0f} texts/s (Keras, batch 32)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"teacher": args.teacher, "teacher_texts_per_second": base, "teacher_int8_tflite_bytes": teacher_int8, "cpu_flags": sorted({"avx2", "avx512f", "avx512_bf16", "amx_bf16"} & cpu_flags()),
              "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(markdown(rows))
    print(f"wrote {out}.json, .md, .png")


def markdown(rows: list[dict]) -> str:
    lines = ["| student | val acc | test acc | retained | agreement | params | fewer params | int8 .tflite | Keras speed-up | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['int8_tflite_bytes'] / 1e6:.1f} MB" if r["int8_tflite_bytes"] else "failed gate"
        lines.append(f"| {r['candidate']} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {100 * r['accuracy_retained']:.1f}% "
                     f"| {100 * r['teacher_agreement']:.1f}% | {r['parameters'] / 1e6:.1f}M | {r['compression']:.1f}x "
                     f"| {size} | {r['keras_speedup']:.1f}x | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Test accuracy against speed-up over the teacher, one labelled point per student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.axhline(rows[0]["teacher_test_accuracy"], color="grey", linestyle="--", label="teacher")
    ax.axhline(0.98 * rows[0]["teacher_test_accuracy"], color="grey", linestyle=":", label="98% of the teacher")
    for r in rows:
        ax.scatter(r["keras_speedup"], r["test_accuracy"])
        ax.annotate(r["candidate"], (r["keras_speedup"], r["test_accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("CPU throughput vs the teacher (x, Keras, batch 32)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Distilled students on the default data")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
