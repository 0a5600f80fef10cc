"""Training throughput of the default teacher on this machine, one configuration per process.

Compares fixed-length padding vs length bucketing, float32 vs mixed_bfloat16, and one device
vs MirroredStrategy over 2 logical CPU devices (tfkit's share of the cores per replica, and
TensorFlow's default thread pools), all in one run so the ratios are comparable on a shared
machine. Each configuration first trains a warm-up pass that meets every bucket shape (its time,
which includes tracing and any XLA compiles, is reported too), then `--steps` timed batches; the
configurations run `--repeats` times, interleaved, and the median is reported.

    python benchmarks/train_speed.py --steps 30 --repeats 2 --out benchmarks/results/train_speed.json
    python benchmarks/train_speed.py --configs bucketed,bucketed+xla   # XLA: one compile per shape
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "fixed-64": dict(bucket=False),
    "bucketed": dict(bucket=True),
    "bucketed+bf16": dict(bucket=True, precision="mixed_bfloat16"),
    "bucketed+bf16-islands": dict(bucket=True, precision="mixed_bfloat16", float32_islands=True),  # tfkit.backbone.float32_islands
    "bucketed+2-devices": dict(bucket=True, devices=2),  # tfkit's default: the cores shared out per replica
    "bucketed+2-devices+tf-default-threads": dict(bucket=True, devices=2, threads=0),
    "bucketed+xla": dict(bucket=True, jit_compile=True),
}
DEFAULT = [name for name in CONFIGS if "xla" not in name]


def probe(name: str, steps: int) -> dict:
    """Runs in a fresh process: devices must be set before TensorFlow starts."""
    options = dict(CONFIGS[name])
    threads, islands = options.pop("threads", None), options.pop("float32_islands", False)
    from tfkit.devices import configure_devices

    configure_devices(options.get("devices", 1), threads)
    import tfkit.backbone

    tfkit.backbone.FLOAT32_ISLANDS = islands
    from tfkit.train import TrainConfig, build, prepare

    config = TrainConfig(max_length=64, **{"precision": "float32", **options})
    splits, precision = prepare(config)
    run = build(config, splits, precision)
    warm_steps = len(run.train_ds) // 8  # shuffled: meets every bucket shape
    start = time.perf_counter()
    run.model.fit(run.train_ds.take(warm_steps), epochs=1, verbose=0)
    warm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    run.model.fit(run.train_ds.repeat().skip(warm_steps).take(steps), epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"config": name, "precision": precision, "replicas": run.strategy.num_replicas_in_sync,
            "steps": steps, "seconds": seconds, "examples_per_second": steps * config.batch_size / seconds,
            "warmup_steps": warm_steps, "warmup_seconds": warm_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--configs", default=",".join(DEFAULT))
    parser.add_argument("--repeats", type=int, default=2, help="runs of every configuration, interleaved (median reported)")
    parser.add_argument("--out", default="benchmarks/results/train_speed.json")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.steps)))
        return
    from tfkit.devices import cpu_flags

    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    samples = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--probe", name, "--steps", str(args.steps)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            samples[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = samples[name][-1]
            print(f"{name:40s} {r['examples_per_second']:7.1f} examples/s  (warm-up {r['warmup_steps']} steps: "
                  f"{r['warmup_seconds']:.0f} s)", flush=True)
    results = [{**runs[0], "examples_per_second": statistics.median(r["examples_per_second"] for r in runs),
                "samples": [r["examples_per_second"] for r in runs]} for runs in samples.values() if runs]
    base = next((r for r in results if r["config"] == "bucketed"), None)
    for r in results:
        r["ratio_vs_bucketed"] = r["examples_per_second"] / base["examples_per_second"] if base else None
        print(f"median {r['config']:33s} {r['examples_per_second']:7.1f} examples/s"
              + (f"  {r['ratio_vs_bucketed']:.2f}x bucketed" if base else ""))
    bf16 = sorted({"avx512_bf16", "amx_bf16", "avx2", "avx512f"} & cpu_flags())
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"cpu_flags": bf16, "cores": os.cpu_count(), "results": results}, f, indent=2)
    print(f"wrote {args.out} (cpu flags: {', '.join(bf16)})")


if __name__ == "__main__":
    main()
