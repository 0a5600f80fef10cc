"""Does mixed_bfloat16 training cost test accuracy, and is it the training or the inference precision?

The default data's split is written to files once, so `--seed` varies only training randomness
(shuffle, dropout, head initialisation). Each seed trains the default teacher with `tfkit train`
in a fresh process as float32 (with XLA, for time; float32 numerics), as Keras' plain
mixed_bfloat16, and as mixed_bfloat16 with `tfkit.backbone.float32_islands` (everything but the
matmuls in float32, PyTorch autocast's split). Every saved model is then also evaluated with
float32 compute and with bf16 compute on the same weights, which separates the two.

    python benchmarks/bf16_accuracy.py [--seeds 0,1] [--variants float32,bf16,bf16-islands] [--work /tmp/tfkit-bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VARIANTS = {
    "float32": (["--precision", "float32", "--jit", "on"], False),
    "bf16": (["--precision", "mixed_bfloat16", "--jit", "off"], False),
    "bf16-islands": (["--precision", "mixed_bfloat16", "--jit", "off"], True),
}


def write_split(work: Path) -> list[str]:
    """The built-in data's default split (seed 0) as train/val/test CSV files; the `tfkit train` data flags."""
    import pandas as pd

    from tfkit.data import load_splits

    splits = load_splits("rotten_tomatoes")
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        path = work / f"rt-{name}.csv"
        if not path.exists():
            pd.DataFrame({"text": part.texts, "label": [splits.label_names[i] for i in part.labels]}).to_csv(path, index=False)
    return ["--data", str(work / "rt-train.csv"), "--val", str(work / "rt-val.csv"), "--test", str(work / "rt-test.csv")]


def train(variant: str, seed: int, data: list[str], work: Path) -> Path:
    out = work / "models" / f"{variant}-s{seed}"
    if not (out / "metrics.json").exists():
        flags, islands = VARIANTS[variant]
        code = (f"import sys, tfkit.backbone; tfkit.backbone.FLOAT32_ISLANDS = {islands}; from tfkit.cli import main; "
                "sys.exit(main(sys.argv[1:]))")
        done = subprocess.run([sys.executable, "-c", code, "train", *data, *flags, "--seed", str(seed), "--out", str(out)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode != 0:
            raise SystemExit(f"{variant} seed {seed}: tfkit train failed:\n{done.stderr[-3000:]}")
    return out


def compute_precisions(model_dir: Path) -> dict:
    """Test accuracy of the saved weights with float32 and with (plain) bf16 compute."""
    import tfkit.backbone
    from tfkit.backbone import Backbone
    from tfkit.classifier import Classifier, backbone_of, build_classifier, classification_metrics, predict_logits

    classifier = Classifier.load(model_dir)
    val, test = classifier.heldout()
    config = {k: v for k, v in backbone_of(classifier.model).get_config().items() if k not in ("name", "trainable", "dtype")}
    result, logits = {}, {}
    tfkit.backbone.FLOAT32_ISLANDS = False
    for policy in ("float32", "mixed_bfloat16"):
        model = build_classifier(Backbone(dtype=policy, **config), len(classifier.labels))
        model.set_weights(classifier.model.get_weights())
        logits[policy] = predict_logits(model, classifier.tokenizer, test.texts)
        result[policy] = classification_metrics(test.labels, logits[policy].argmax(-1), classifier.labels)["accuracy"]
    result["label_agreement"] = float((logits["float32"].argmax(-1) == logits["mixed_bfloat16"].argmax(-1)).mean())
    return result


def markdown(rows: list[dict]) -> str:
    lines = ["| training | seed | val acc | test acc | test macro-F1 | test acc, float32 compute | test acc, bf16 compute "
             "| labels agreeing | train s |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} "
                     f"| {r['eval']['float32']:.4f} | {r['eval']['mixed_bfloat16']:.4f} | {100 * r['eval']['label_agreement']:.2f}% "
                     f"| {r['train_seconds']:.0f} |")
    for variant in dict.fromkeys(r["variant"] for r in rows):
        tests = [r["test_accuracy"] for r in rows if r["variant"] == variant]
        vals = [r["val_accuracy"] for r in rows if r["variant"] == variant]
        lines.append(f"| **{variant} mean** | {len(tests)} seeds | {statistics.mean(vals):.4f} | {statistics.mean(tests):.4f} "
                     f"(spread {max(tests) - min(tests):.4f}) | | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", default="/tmp/tfkit-bf16")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16_accuracy"))
    args = parser.parse_args()
    work = Path(args.work)
    (work / "models").mkdir(parents=True, exist_ok=True)
    data = write_split(work)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in args.variants.split(","):
            out = train(variant, seed, data, work)
            m = json.loads((out / "metrics.json").read_text())
            rows.append({"variant": variant, "seed": seed, "val_accuracy": m["val"]["accuracy"], "test_accuracy": m["test"]["accuracy"],
                         "test_macro_f1": m["test"]["macro_f1"], "train_seconds": m["train_seconds"],
                         "eval": compute_precisions(out)})
            print(markdown(rows[-1:]).splitlines()[2], flush=True)
    rows.sort(key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2))
    Path(args.out + ".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
