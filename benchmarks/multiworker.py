"""Throughput of 1 vs 2 loopback workers, and what training checkpoints cost.

Trains the default teacher for one epoch on the first `--texts` training texts of the built-in data
with `tfkit train` in fresh processes: once as a single process, once as two workers on 127.0.0.1
(MultiWorkerMirroredStrategy, the same global batch), and once more single with a checkpoint every
`--every` steps. On one 2-core machine the two workers share the cores, so this shows the engine's
overhead, not a speed-up; across machines each worker brings its own cores.

    python benchmarks/multiworker.py [--texts 1600] [--every 10] [--out benchmarks/results/multiworker.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tfkit(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environ.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "tfkit.cli", *args], cwd=cwd, env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def done(process: subprocess.Popen) -> str:
    _, err = process.communicate()
    if process.returncode:
        sys.exit(f"tfkit failed:\n{err[-3000:]}")
    return err


def result(work: Path, out: str, log: str, label: str) -> dict:
    metrics = json.loads((work / out / "metrics.json").read_text())
    saved = re.search(r"checkpoints: (\d+) written, ([\d.]+) s each", log)
    count, each = (int(saved[1]), float(saved[2])) if saved else (0, 0.0)
    seconds = metrics["train_seconds"]
    return {"run": label, "examples_per_second": metrics["examples_per_second"], "train_seconds": seconds,
            "checkpoints": count, "checkpoint_seconds_each": each,
            "checkpoint_overhead": count * each / seconds, "test_accuracy": metrics["test"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1600)
    parser.add_argument("--every", type=int, default=10, help="steps between checkpoints in the third run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/multiworker.json"))
    args = parser.parse_args()
    import pandas as pd

    from tfkit.data import load_splits

    work = Path(tempfile.mkdtemp(prefix="tfkit-multiworker-"))
    splits = load_splits("rotten_tomatoes")
    name = lambda part, n: [splits.label_names[i] for i in part.labels[:n]]
    n_eval = max(100, args.texts // 8)
    for part, n, file in ((splits.train, args.texts, "train.csv"), (splits.val, n_eval, "val.csv"), (splits.test, n_eval, "test.csv")):
        pd.DataFrame({"text": part.texts[:n], "label": name(part, n)}).to_csv(work / file, index=False)
    flags = ["train", "--data", "train.csv", "--val", "val.csv", "--test", "test.csv", "--epochs", "1",
             "--max-length", "64", "--no-tfidf-baseline"]
    rows = [result(work, "one", done(tfkit([*flags, "--out", "one"], work)), "1 process")]
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    workers = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    config = lambda i: json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
    procs = [tfkit([*flags, "--out", "two"], work, {"TF_CONFIG": config(i)}) for i in range(2)]
    logs = [done(p) for p in procs]
    rows.append(result(work, "two", logs[0], "2 workers on 127.0.0.1"))
    rows.append(result(work, "ckpt", done(tfkit([*flags, "--out", "ckpt", "--checkpoint-every", str(args.every)], work)),
                       f"1 process, checkpoint every {args.every} steps"))
    from tfkit.devices import cpu_flags

    report = {"machine": {"cpus": os.cpu_count(), "amx": "amx_bf16" in cpu_flags(), "when": time.strftime("%Y-%m-%d %H:%M")},
              "texts": args.texts, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("| run | examples/s | vs 1 process | checkpoints | s each | overhead |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['examples_per_second']:.1f} | {r['examples_per_second'] / rows[0]['examples_per_second']:.2f}x "
              f"| {r['checkpoints']} | {r['checkpoint_seconds_each']:.2f} | {100 * r['checkpoint_overhead']:.1f}% |")


if __name__ == "__main__":
    main()
