"""Where a default-teacher training step's time goes: forward, backward, optimizer, and the op types.

One batch of 32 texts at 64 tokens from the default data, the model and optimizer `tfkit train` builds,
one device. Times the forward pass, forward + backward, the whole step and the optimizer's update alone
(the median of 10 calls each after 3), then runs 5 steps under TensorFlow's profiler and sums each op type's self time,
and each part of the network (GELU, dropout, LayerNorm, softmax, matmuls, the optimizer) by op name.

    python benchmarks/profile_step.py --precision mixed_bfloat16 --out benchmarks/results/profile_step_bf16.json
    python benchmarks/profile_step.py --precision mixed_bfloat16 --before --out benchmarks/results/profile_step_bf16_before.json
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# By op name (the first that matches; matmuls by op type). The backward ops of a custom gradient (tfkit's
# bf16 GELU) carry no layer name and count as "other".
PARTS = {"gelu": r"/Gelu|intermediate_dense[_0-9]*/(Erf|Cast|mul|add|IdentityN)", "dropout": r"dropout",
         "layer_norm": r"layer_norm", "softmax": r"softmax", "optimizer": r"adam_w/|^AddN"}


def timed(fn, calls: int = 10) -> float:
    """Median milliseconds a call after 3 untimed calls (tracing), each call waited for (`tfkit.timing.measure`)."""
    import tensorflow as tf

    from tfkit.timing import measure

    def call(_):
        for tensor in tf.nest.flatten(fn(), expand_composites=True):  # every output, a gradient list too
            getattr(tensor, "numpy", lambda: None)()

    return measure(call, warmup=3, iterations=calls).median


def op_stats(logdir: str, steps: int) -> dict:
    """Self milliseconds a step by op type and by network part, from the profiler's framework op stats."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler

    data, _ = profiler.xspace_to_tools_data(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True), "framework_op_stats", {})
    table = next(t for t in json.loads(data) if t["rows"])
    cols = [c["id"] for c in table["cols"]]
    rows = [dict(zip(cols, [c.get("v") for c in r["c"]])) for r in table["rows"]]
    rows = [r for r in rows if r["type"] != "IDLE"]

    by_type, by_part = collections.Counter(), collections.Counter()
    for r in rows:
        ms = r["total_self_time"] / 1000 / steps
        by_type[r["type"]] += ms
        part = "matmul" if "MatMul" in r["type"] else next((p for p, pat in PARTS.items() if re.search(pat, r["operation"])), "other")
        by_part[part] += ms
    return {"by_type": dict(by_type.most_common()), "by_part": dict(by_part.most_common())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="mixed_bfloat16", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--out", help="JSON file for the figures")
    parser.add_argument("--before", action="store_true",
                        help="TensorFlow's own GELU at every dtype and Keras' own AdamW update, as before 2026-12-04")
    args = parser.parse_args()
    import tensorflow as tf

    from tfkit.devices import configure_devices

    configure_devices(1, None)
    from benchmarks.train_speed import use_keras_adamw, use_tf_gelu
    from tfkit.train import TrainConfig, build, prepare

    if args.before:
        use_tf_gelu()

    config = TrainConfig(max_length=64, precision=args.precision, jit="off")
    splits, precision = prepare(config)
    run = build(config, splits, precision)
    if args.before:
        use_keras_adamw(run.model)
    model, optimizer = run.model, run.model.optimizer
    x, y = next(iter(run.train_ds.filter(lambda x, y: tf.shape(x["token_ids"])[1] == 64)))
    loss = lambda: model.compute_loss(x=x, y=y, y_pred=model(x, training=True))

    def gradients():
        with tf.GradientTape() as tape:
            value = loss()
        return value, tape.gradient(value, model.trainable_variables)

    @tf.function
    def step():
        value, grads = gradients()
        optimizer.apply(grads, model.trainable_variables)
        return value

    forward = tf.function(loss)
    backward = tf.function(gradients)
    grads = backward()[1]
    update = tf.function(lambda: optimizer.apply(grads, model.trainable_variables))
    ms = {"forward": timed(forward), "forward_backward": timed(backward), "step": timed(step), "optimizer": timed(update)}
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(5):
            step()
        tf.profiler.experimental.stop()
        stats = op_stats(logdir, 5)
    result = {"precision": args.precision, "before": args.before, "batch": list(x["token_ids"].shape), "ms": ms, **stats}
    for name, value in ms.items():
        print(f"{name:18s} {value:7.1f} ms")
    total = sum(stats["by_part"].values())
    for part, value in stats["by_part"].items():
        print(f"  {part:12s} {value:7.1f} ms a step of op time ({100 * value / total:.0f}%)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
