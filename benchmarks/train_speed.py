"""Training throughput of the default teacher (and the default student) on this machine, one configuration per process.

Compares fixed-length padding vs length bucketing, float32 vs mixed_bfloat16, XLA off vs on, one
device vs MirroredStrategy over 2 logical CPU devices, and what `--precision auto --jit auto`
picks by its probe (`tfkit.probe`, measured in a fresh cache, then again as a cache hit), all in
one run so the ratios are comparable on a shared machine. Each configuration first trains a
warm-up pass that meets every bucket shape (its time, which includes tracing and any XLA
compiles, is reported too), then `--steps` timed batches; the configurations run `--repeats`
times, interleaved, and the median is reported. Where the PyTorch route's virtualenv exists
(`../shared/peer/setup.sh`), its `train_hf.py` runs in the same loop (`peer-*` configurations)
and `peak.py` measures the matmul peak that compute efficiency is judged against. The `levers`
group changes one thing at a time against bf16 (steps_per_execution, inter-op threads, a free
optimizer, the input cached in memory or on its own thread, tf.data's autotuner back on), and
every teacher row also times two validation passes (the first traces) against its epoch.

    python benchmarks/train_speed.py --steps 30 --repeats 2 --out benchmarks/results/train_speed.json
    python benchmarks/train_speed.py --configs probe --steps 30 --repeats 1 --out benchmarks/results/train_speed_probe.json
    python benchmarks/train_speed.py --configs levers --steps 40 --repeats 2 --out benchmarks/results/train_speed_levers.json
    python benchmarks/train_speed.py --teacher models/teacher --configs student,student+bf16,student+xla,student+bf16+xla,student-auto,student-auto-cached \
        --steps 30 --repeats 3 --out benchmarks/results/train_speed_student_auto.json

The student-* rows distil from a trained teacher (`--teacher`, default models/teacher: what `tfkit run` writes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEER = Path(os.environ.get("TFKIT_PEER", Path(__file__).resolve().parents[2] / "shared" / "peer"))  # ../shared/peer
PEER_PYTHON = Path(os.environ.get("TMPDIR", "/tmp")) / "peer" / "venv" / "bin" / "python"
TEACHER_ENV = "TFKIT_SPEED_TEACHER"  # the trained teacher the student rows distil from (read only); --teacher sets it

CONFIGS = {
    "fixed-64": dict(bucket=False),
    "bucketed": dict(bucket=True),
    "bucketed+bf16": dict(bucket=True, precision="mixed_bfloat16"),
    "bucketed+2-devices": dict(bucket=True, devices=2),  # tfkit's default: the cores shared out per replica
    "bucketed+2-devices+tf-default-threads": dict(bucket=True, devices=2, threads=0),
    "bucketed+xla": dict(bucket=True, jit="on"),
    "bucketed+bf16+xla": dict(bucket=True, precision="mixed_bfloat16", jit="on"),
    "auto": dict(precision="auto", jit="auto", cache="fresh"),  # the probe runs (a fresh cache)
    "auto-cached": dict(precision="auto", jit="auto", cache="auto"),  # the same probe, from auto's cache
    "student": dict(student=True),
    "student+bf16": dict(student=True, precision="mixed_bfloat16"),
    "student+xla": dict(student=True, jit="on"),
    "student+bf16+xla": dict(student=True, precision="mixed_bfloat16", jit="on"),
    "student-auto": dict(student=True, precision="auto", jit="auto", cache="fresh"),
    "student-auto-cached": dict(student=True, precision="auto", jit="auto", cache="student-auto"),
    # the rest of the step (each against bucketed+bf16, what the probe picks on a CPU with bf16):
    "bucketed+bf16+spe-8": dict(bucket=True, precision="mixed_bfloat16", steps_per_execution=8),
    "bucketed+bf16+inter-op-1": dict(bucket=True, precision="mixed_bfloat16", inter_op=1),
    "bucketed+bf16+sgd": dict(bucket=True, precision="mixed_bfloat16", optimizer="sgd"),  # a free optimizer: a fused AdamW's ceiling
    "bucketed+bf16+input-in-memory": dict(bucket=True, precision="mixed_bfloat16", input="memory"),  # tf.data's ceiling
    "bucketed+bf16+input-own-thread": dict(bucket=True, precision="mixed_bfloat16", input="own-thread"),  # tf.data off the inter-op pool
    "bucketed+bf16+inter-op-4": dict(bucket=True, precision="mixed_bfloat16", inter_op=4),
    "bucketed+bf16+autotune": dict(bucket=True, precision="mixed_bfloat16", input="autotune"),  # tf.data's autotuner back on
    "bucketed+bf16+keras-gelu": dict(bucket=True, precision="mixed_bfloat16", gelu="keras"),  # tf.nn.gelu in bf16 (before)
    "bucketed+bf16+keras-gelu+keras-adamw": dict(bucket=True, precision="mixed_bfloat16", gelu="keras", optimizer="keras-adamw"),
    "bucketed+keras-adamw": dict(bucket=True, optimizer="keras-adamw"),  # Keras' own AdamW update, unfused (before)
    "peer-fp32": dict(peer=[]),  # the PyTorch route, length-grouped, float32
    "peer-bf16": dict(peer=["--bf16"]),  # ... with bf16 autocast
}
LEVERS = {"steps_per_execution", "inter_op", "optimizer", "input", "gelu"}  # set around `build`, not TrainConfig fields
DEFAULT = ["fixed-64", "bucketed", "bucketed+bf16", "bucketed+2-devices", "bucketed+2-devices+tf-default-threads"]
GROUPS = {"probe": ["bucketed", "bucketed+xla", "bucketed+bf16", "bucketed+bf16+xla", "auto", "auto-cached",
                    "student", "student+bf16", "student-auto", "student-auto-cached", "peer-fp32", "peer-bf16"],
          "student-xla": ["student+xla", "student+bf16+xla"],
          "levers": ["bucketed+bf16", "bucketed+bf16+spe-8", "bucketed+bf16+inter-op-1", "bucketed+bf16+sgd",
                     "bucketed+bf16+input-in-memory", "bucketed+bf16+input-own-thread", "bucketed+bf16+inter-op-4",
                     "bucketed+bf16+autotune"]}


def teacher_run(options: dict):
    """(compiled model, training dataset, resolved config, seconds spent in `build`) for the default teacher."""
    from tfkit.train import TrainConfig, build, prepare

    config = TrainConfig(max_length=64, **{"precision": "float32", "jit": "off", **options})
    splits, precision = prepare(config)
    start = time.perf_counter()
    run = build(config, splits, precision)
    return run.model, run.train_ds, run.val_ds, run.config, time.perf_counter() - start, non_embedding_parameters(run.model)


def student_run(options: dict):
    """The same for the default student (`from-teacher`, trimmed vocabulary) of a trained default teacher.

    The cached teacher logits are zeros: what they hold does not change a step's cost, and
    computing the real ones would take minutes.
    """
    import dataclasses

    import keras
    import numpy as np

    from tfkit.classifier import Classifier, backbone_of
    from tfkit.config import DistillConfig
    from tfkit.distill import compiled_student, student_speed
    from tfkit.preprocess import make_dataset
    from tfkit.student import student_shape, student_tokenizer, trim_vocab

    config = DistillConfig(teacher=os.environ[TEACHER_ENV], **{"precision": "float32", "jit": "off", **options})
    keras.utils.set_random_seed(config.seed)
    teacher = Classifier.load(config.teacher)
    splits = teacher.splits()
    shape = student_shape(backbone_of(teacher.model), config.student)
    keep = trim_vocab(teacher.tokenizer, splits.train.texts, config.vocab_min_count)
    tokenizer = student_tokenizer(teacher.tokenizer, keep)
    data = {"texts": splits.train.texts, "label": splits.train.labels,
            "teacher_logits": np.zeros([len(splits.train), len(teacher.labels)], np.float32)}
    targets = lambda d: {k: d[k] for k in ("label", "teacher_logits")}
    start = time.perf_counter()
    train_ds = make_dataset(tokenizer, data["texts"], targets(data), config.batch_size, shuffle=True, seed=config.seed)
    steps = config.epochs * len(train_ds)
    compiled = lambda precision, jit, warmup: compiled_student(teacher, shape, keep, config, config.alpha, 0.0, False,
                                                               precision, jit, steps, warmup)
    speed = student_speed(config, tokenizer, data, targets, shape, False, compiled, steps, len(teacher.labels))
    model, student = compiled(speed["precision"], speed["jit"], config.warmup_ratio)
    resolved = dataclasses.replace(config, precision=speed["precision"], jit=speed["jit"], probe=speed)
    return model, train_ds, None, resolved, time.perf_counter() - start, non_embedding_parameters(student)


def non_embedding_parameters(model) -> int:
    """Parameters outside the embedding tables (what the 6 x parameters x tokens FLOPs estimate counts)."""
    return int(sum(w.numpy().size for w in model.weights if "embedding" not in w.path and w.trainable))


def use_tf_gelu() -> None:
    """TensorFlow's own GELU at every dtype, as before tfkit computed bf16's in float32 (call before building)."""
    import keras

    import tfkit.backbone

    tfkit.backbone.gelu = lambda x: keras.activations.gelu(x, approximate=False)


def use_keras_adamw(model) -> None:
    """The compiled model's optimizer (schedule, decay, exclusions) with Keras' own AdamW update, unfused (before)."""
    import keras

    model.optimizer.__class__ = keras.optimizers.AdamW


def tfkit_config(name: str, steps: int) -> dict:
    """Runs in a fresh process: devices must be set before TensorFlow starts."""
    options = dict(CONFIGS[name])
    threads = options.pop("threads", None)
    options.pop("cache", None)
    student = options.pop("student", False)
    levers = {k: options.pop(k) for k in LEVERS if k in options}
    import tensorflow as tf

    from tfkit.devices import configure_devices

    if "inter_op" in levers:
        tf.config.threading.set_inter_op_parallelism_threads(levers["inter_op"])
    configure_devices(options.get("devices", 1), threads)
    if levers.get("gelu") == "keras":
        use_tf_gelu()
    model, train_ds, val_ds, config, build_seconds, parameters = (student_run if student else teacher_run)(options)
    model.steps_per_execution = levers.get("steps_per_execution", 1)
    if levers.get("optimizer") == "sgd":
        import keras

        model.optimizer = keras.optimizers.SGD(learning_rate=1e-6)
    if levers.get("optimizer") == "keras-adamw":
        use_keras_adamw(model)
    if levers.get("input") in ("own-thread", "autotune"):
        data_options = tf.data.Options()
        if levers["input"] == "own-thread":  # tf.data's work on a thread of its own, not the inter-op pool the step uses
            data_options.threading.private_threadpool_size = 1
        else:  # as before tfkit turned it off (`tfkit.preprocess`)
            data_options.autotune.enabled = True
        train_ds = train_ds.with_options(data_options)
        val_ds = val_ds if val_ds is None else val_ds.with_options(data_options)
    warm_steps = len(train_ds) // 8  # shuffled: meets every bucket shape
    start = time.perf_counter()
    model.fit(train_ds.take(warm_steps), epochs=1, verbose=0)
    warm_seconds = time.perf_counter() - start
    timed = train_ds.repeat().skip(warm_steps).take(steps)
    if levers.get("input") == "memory":  # batches made before the clock starts: no tf.data work in the timed steps
        timed = timed.cache()
    tokens = sum(int(x["token_ids"].shape[0] * x["token_ids"].shape[1]) for x, _ in timed)
    start = time.perf_counter()
    model.fit(timed, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    examples = steps * config.batch_size
    record = config.probe or {}
    evaluation = {}
    if val_ds is not None:  # what validation costs an epoch: the first pass traces, the second is the steady cost
        for key in ("eval_first_seconds", "eval_seconds"):
            start = time.perf_counter()
            model.evaluate(val_ds, verbose=0)
            evaluation[key] = time.perf_counter() - start
        epoch = len(train_ds) * config.batch_size / (examples / seconds)
        evaluation.update(eval_batches=len(val_ds), epoch_train_seconds_at_this_rate=epoch,
                          eval_share_of_epoch=evaluation["eval_seconds"] / (epoch + evaluation["eval_seconds"]))
    return {**levers, **evaluation, "config": name, "precision": config.precision, "jit": config.jit, "steps": steps, "seconds": seconds,
            "examples_per_second": examples / seconds, "padded_tokens_per_example": tokens / examples,
            "non_embedding_parameters": parameters, "warmup_steps": warm_steps, "warmup_seconds": warm_seconds,
            "build_seconds": build_seconds, "probe_how": record.get("how"), "probe_seconds": record.get("probe_seconds"),
            "probe": record if record.get("candidates") else None}


def peer_config(name: str, steps: int, scratch: str) -> dict:
    """The PyTorch route (`train_hf.py --group-by-length`, 2 threads): its steady rate from a short and a long run.

    Its own examples/s include its first steps (start-up, oneDNN's first kernels); tfkit's rows exclude
    their warm-up, so the peer's steady rate is (examples of the long run - the short one's) / (seconds likewise).
    """
    runs = []
    for n in (steps // 2, 2 * steps):
        out = Path(scratch) / f"{name}-{n}"
        subprocess.run([str(PEER_PYTHON), "train_hf.py", "--out", str(out), "--group-by-length", "--threads", "2",
                        "--steps", str(n), *CONFIGS[name]["peer"]], cwd=PEER, check=True, capture_output=True, text=True)
        runs.append(json.loads((out / "metrics.json").read_text()))
    short, long = runs
    seconds = long["train_seconds"] - short["train_seconds"]
    return {"config": name, "precision": "bf16 autocast" if long["bf16"] else "float32", "steps": 2 * steps - steps // 2,
            "seconds": seconds, "examples_per_second": (long["train_examples"] - short["train_examples"]) / seconds,
            "examples_per_second_incl_start": long["examples_per_s"], "torch": long["torch"]}


def run_one(name: str, steps: int, scratch: str, caches: dict) -> dict | None:
    """One configuration in its own process (tfkit) or the peer's virtualenv; None if it failed."""
    if "peer" in CONFIGS[name]:
        return peer_config(name, steps, scratch)
    cache = CONFIGS[name].get("cache")
    env = dict(os.environ)
    if cache:  # `fresh`: a new, empty cache; else the cache the named configuration used
        caches.setdefault(name, tempfile.mkdtemp(prefix=f"{name}-", dir=scratch) if cache == "fresh" else caches[cache])
        env["XDG_CACHE_HOME"] = caches[name]
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, __file__, "--probe", name, "--steps", str(steps)], capture_output=True,
                         text=True, env=env)
    if out.returncode:
        print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load_average": [load, os.getloadavg()[0]]}


def efficiency(results: list[dict], peak: dict | None) -> None:
    """GFLOP/s (6 x non-embedding parameters x padded tokens per example x examples/s) and its share of the matmul peak."""
    teacher = next((r for r in results if "non_embedding_parameters" in r and not r["config"].startswith("student")), None)
    for r in results:
        source = r if "non_embedding_parameters" in r else teacher if r["config"].startswith("peer") else None
        if not source:
            continue  # peer rows are charged the teacher's FLOPs per example (the same model and data)
        flops = 6 * source["non_embedding_parameters"] * source["padded_tokens_per_example"]
        r["gflop_per_example"] = flops / 1e9
        r["gflop_per_second"] = flops * r["examples_per_second"] / 1e9
        if peak:
            bf16 = "bf16" in r["precision"] or "bfloat16" in r["precision"]
            ref = peak.get("torch_bf16_threads2" if bf16 else "torch_fp32_threads2")
            r["of_peak"] = r["gflop_per_second"] / ref if ref else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--configs", default=",".join(DEFAULT), help=f"names, or a group: {', '.join(GROUPS)}")
    parser.add_argument("--repeats", type=int, default=2, help="runs of every configuration, interleaved (median reported)")
    parser.add_argument("--out", default="benchmarks/results/train_speed.json")
    parser.add_argument("--teacher", default=os.environ.get(TEACHER_ENV, "models/teacher"),
                        help="a trained teacher for the student-* rows (default: $TFKIT_SPEED_TEACHER or models/teacher)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(tfkit_config(args.probe, args.steps)))
        return
    names = [n for part in args.configs.split(",") for n in GROUPS.get(part, [part])]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    if any(CONFIGS[n].get("student") for n in names):
        if not (Path(args.teacher) / "config.json").is_file():
            parser.error(f"the student rows need a trained teacher: no {args.teacher}/config.json (pass --teacher DIR)")
        os.environ[TEACHER_ENV] = str(Path(args.teacher).resolve())  # the configurations' processes inherit it
    if not PEER_PYTHON.exists():
        skipped = [n for n in names if "peer" in CONFIGS[n]]
        names = [n for n in names if n not in skipped]
        if skipped:
            print(f"skipping {', '.join(skipped)}: no {PEER_PYTHON} (build it with ../shared/peer/setup.sh)", file=sys.stderr)
    from tfkit.devices import cpu_flags, cpu_model

    scratch = tempfile.mkdtemp(prefix="train-speed-")
    samples, caches = {name: [] for name in names}, {}
    started, load = time.time(), os.getloadavg()
    for _ in range(args.repeats):
        for name in names:
            r = run_one(name, args.steps, scratch, caches)
            if r is None:
                continue
            samples[name].append(r)
            extra = f"  (warm-up {r['warmup_steps']} steps: {r['warmup_seconds']:.0f} s)" if "warmup_steps" in r else ""
            if r.get("probe_how"):
                extra += f"  [{r['precision']}, XLA {r['jit']}: {r['probe_how']}, probe {r['probe_seconds']:.0f} s]"
            print(f"{name:40s} {r['examples_per_second']:7.1f} examples/s{extra}", flush=True)
    peak = None
    if PEER_PYTHON.exists():
        subprocess.run([str(PEER_PYTHON), "peak.py", f"{scratch}/peak.json"], cwd=PEER, check=True, capture_output=True)
        peak = json.loads(Path(f"{scratch}/peak.json").read_text())
    results = [{**runs[0], "examples_per_second": statistics.median(r["examples_per_second"] for r in runs),
                "samples": [r["examples_per_second"] for r in runs],
                "sample_eval_seconds": [r.get("eval_seconds") for r in runs]} for runs in samples.values() if runs]
    efficiency(results, peak)
    rate = {r["config"]: r["examples_per_second"] for r in results}
    for r in results:
        base = "student" if r["config"].startswith("student") else "bucketed"
        r["ratio_vs_" + base] = r["examples_per_second"] / rate[base] if base in rate else None
        parent = r["config"].rsplit("+", 1)[0]
        if LEVERS & r.keys() and parent in rate:  # a lever row: against the same row without it
            r["ratio_vs_" + parent] = r["examples_per_second"] / rate[parent]
            base = parent
        share = f"  {100 * r['of_peak']:.0f}% of peak" if r.get("of_peak") else ""
        print(f"median {r['config']:33s} {r['examples_per_second']:7.1f} examples/s"
              + (f"  {r['ratio_vs_' + base]:.2f}x {base}" if r["ratio_vs_" + base] else "") + share)
    summary = {}
    for prefix, explicit in (("", ["bucketed", "bucketed+xla", "bucketed+bf16", "bucketed+bf16+xla"]),
                             ("student-", ["student", "student+xla", "student+bf16", "student+bf16+xla"])):
        best = max((c for c in explicit if c in rate), key=rate.get, default=None)
        if best and prefix + "auto" in rate:
            summary[prefix + "auto_vs_best_explicit"] = {"best": best, "ratio": rate[prefix + "auto"] / rate[best]}
    peers = [c for c in ("peer-fp32", "peer-bf16") if c in rate]
    if peers and "auto" in rate:
        best_peer = max(peers, key=rate.get)
        summary["auto_vs_best_peer"] = {"peer": best_peer, "ratio": rate["auto"] / rate[best_peer]}
    for k, v in summary.items():
        print(f"{k}: {v}")
    flags = sorted({"avx512_bf16", "amx_bf16", "avx2", "avx512f"} & cpu_flags())
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"command": " ".join(["python", "benchmarks/train_speed.py", *sys.argv[1:]]), "cpu": cpu_model(),
                   "cpu_flags": flags, "cores": os.cpu_count(), "load_average_start": load, "load_average_end": os.getloadavg(),
                   "minutes": (time.time() - started) / 60, "peak_gflops": peak, "summary": summary, "results": results}, f, indent=2)
    print(f"wrote {args.out} (cpu: {cpu_model()}; flags: {', '.join(flags)})")


if __name__ == "__main__":
    main()
