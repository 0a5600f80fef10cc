"""Validation-pass time of the default teacher with tf.data's autotuner off (tfkit's datasets) vs on.

One process, one compiled model, the two variants of the same validation dataset evaluated
alternately, so the comparison shares the machine's state; then one pass of the input alone.

    python benchmarks/eval_autotune.py --passes 6 --out benchmarks/results/eval_autotune.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import train_speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_autotune.json"))
    args = parser.parse_args()
    import tensorflow as tf

    from tfkit.bench import machine
    from tfkit.devices import configure_devices

    configure_devices(1, None)
    model, _, val_ds, *_ = train_speed.teacher_run(dict(bucket=True, precision="mixed_bfloat16"))
    autotuned = tf.data.Options()
    autotuned.autotune.enabled = True
    variants = {"autotune off": val_ds, "autotune on": val_ds.with_options(autotuned)}
    model.evaluate(val_ds, verbose=0)  # traces every bucket shape and fills the cache
    seconds = {name: [] for name in variants}
    for _ in range(args.passes):
        for name, ds in variants.items():
            start = time.perf_counter()
            model.evaluate(ds, verbose=0)
            seconds[name].append(time.perf_counter() - start)
            print(f"{name:13s} {seconds[name][-1]:6.2f} s", flush=True)
    input_only = {}
    for name, ds in variants.items():
        start = time.perf_counter()
        batches = sum(1 for _ in ds)
        input_only[name] = time.perf_counter() - start
    result = {"command": f"python benchmarks/eval_autotune.py --passes {args.passes} --out {args.out}",
              "machine": machine(), "batches": batches,
              "eval_seconds": seconds, "input_only_seconds": input_only}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: [round(s, 2) for s in v] for k, v in seconds.items()}))


if __name__ == "__main__":
    main()
