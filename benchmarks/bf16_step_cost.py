"""Train-step cost of bf16 with tfkit.backbone.float32_islands against Keras' plain mixed policy.

One process, the two models interleaved (4 x 24 steps of the default data after tracing every bucket
shape); wall and process CPU seconds per step (CPU time is steadier on a shared machine).

    python benchmarks/bf16_step_cost.py
"""
import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))
import json, time, statistics
import tfkit.backbone
from tfkit.train import TrainConfig, build, prepare

config = TrainConfig(max_length=64, precision="mixed_bfloat16")
splits, precision = prepare(config)
runs = {}
for name, islands in (("islands", True), ("plain", False)):
    tfkit.backbone.FLOAT32_ISLANDS = islands
    runs[name] = build(config, splits, precision)
batches = list(runs["islands"].train_ds.take(48))
for run in runs.values():  # trace every bucket shape once
    for x, y in batches[:24]:
        run.model.train_on_batch(x, y)
samples = {name: {"wall": [], "cpu": []} for name in runs}
for rep in range(4):
    for name, run in runs.items():
        w, c = time.perf_counter(), time.process_time()
        for x, y in batches[24:]:
            run.model.train_on_batch(x, y)
        samples[name]["wall"].append((time.perf_counter() - w) / 24)
        samples[name]["cpu"].append((time.process_time() - c) / 24)
        print(rep, name, f"wall {samples[name]['wall'][-1]:.3f} s/step cpu {samples[name]['cpu'][-1]:.3f} s/step", flush=True)
med = {n: {k: statistics.median(v) for k, v in s.items()} for n, s in samples.items()}
print(json.dumps({"median_seconds_per_step": med, "islands_over_plain": {k: med["islands"][k] / med["plain"][k] for k in ("wall", "cpu")},
                  "samples": samples}, indent=1))
