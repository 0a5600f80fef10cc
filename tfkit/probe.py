"""Precision and XLA chosen by measurement: a few real training steps of each candidate, once per machine.

`--precision auto` and `--jit auto` time float32 / mixed_bfloat16 x XLA off / on on batches of
the run's own data, with the run's model, batch size and max length, and train the fastest
candidate whose loss stays finite and close to float32's on the same batches. Which one is
fastest differs from one CPU to the next (XLA was worth 1.76x on one AMX machine, 1.1x on an AMD
one, and measured slower than plain TensorFlow on another AMX one), so it is measured, not read
from a flag table. The figures are cached per CPU model, model shape, batch size and max length
(`cache_dir()`), so a machine pays for the probe once.

`pick` is pure (figures in, choice out) so tests drive it with fake timings; `measure` takes the
timings; `choose` ties them to the flags, the cache and the run's length.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import hashlib
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

from tfkit.artifacts import write_json
from tfkit.timing import Timing
from tfkit.timing import measure as time_calls

log = logging.getLogger("tfkit")

WARMUP_STEPS = 2  # untimed: tracing and the XLA compile, then one step the kernels have met
TIMED_STEPS = 16  # timed per candidate at most ...
TIMED_SECONDS = 8.0  # ... or until this long was spent timing it
MIN_TIMED_STEPS = 4  # ... but at least this many
PAYBACK = 4  # probe only runs of at least this many times the probe's own steps; shorter ones take the static default
RTOL, ATOL = 0.05, 0.02  # a candidate's loss vs float32's after the same steps on the same batches
LOSS_WINDOW = 4  # the loss compared is the mean over the last this many of those steps
CACHE_VERSION = 2  # 2: bf16 GELU computed in float32 and the fused AdamW changed every candidate's speed
# XLA allocates a train step's buffers at once; where that would take over this share of the memory
# free, its candidates are not tried (an XLA step asked for 10.6 GiB at 512 tokens and the process died).
XLA_MEMORY_SHARE = 0.25
# With XLA every batch shape is compiled twice: for the training step and for the validation pass. The
# probe times the first; a default teacher's first epoch on a 2-core AVX2 machine paid 79 s a shape
# (8 shapes) against the probe's 42.7 s train-step compile.
COMPILES_PER_SHAPE = 2


@dataclasses.dataclass(frozen=True)
class Candidate:
    precision: str  # float32 | mixed_bfloat16
    jit: str  # off | on

    def __str__(self) -> str:
        return f"{self.precision}, XLA {self.jit}"


def candidates(precision: str, jit: str, bf16_fast: bool) -> tuple[list[Candidate], str | None]:
    """What `auto` tries, float32 and XLA off first, and a note when bf16 is left out.

    Args:
        precision, jit: the flags; an explicit value fixes that dimension.
        bf16_fast: the CPU has AVX-512 BF16 or AMX, or there is a GPU (elsewhere bf16 is emulated, ~0.2x).
    """
    note = None
    if precision == "auto":
        precisions = ["float32", "mixed_bfloat16"] if bf16_fast else ["float32"]
        if not bf16_fast:
            note = "mixed_bfloat16 not tried: the CPU has neither avx512_bf16 nor amx_bf16 and there is no GPU"
    else:
        precisions = [precision]
    jits = ["off", "on"] if jit == "auto" else [jit]
    return [Candidate(p, j) for p in precisions for j in jits], note


def compared_loss(figure: dict, steps: int) -> float:
    """The mean training loss over the last LOSS_WINDOW of the first `steps` probe steps."""
    tail = figure["losses"][:steps][-LOSS_WINDOW:]
    return float(sum(tail) / len(tail))


def safe(figure: dict, reference: dict) -> str | None:
    """Why a candidate is not numerically safe (None if it is): its loss must be finite and near the reference's
    after the same steps (candidates may time different numbers of steps); one not tried is not either."""
    if figure.get("skipped"):
        return figure["skipped"]
    if not all(math.isfinite(v) for v in figure["losses"]):
        return "non-finite loss"
    if figure is reference:
        return None
    if not all(math.isfinite(v) for v in reference["losses"]):
        return "float32's own loss is not finite"
    steps = min(len(figure["losses"]), len(reference["losses"]))
    loss, expected = compared_loss(figure, steps), compared_loss(reference, steps)
    if abs(loss - expected) > ATOL + RTOL * abs(expected):
        return f"loss {loss:.4f} vs {expected:.4f} ({reference['precision']}, XLA {reference['jit']}) after {steps} steps"
    return None


def estimated_seconds(figure: dict, train_steps: int | None, plan: Callable[[float], object] | None = None) -> tuple[float, list[int] | None]:
    """What the run would spend training with this candidate, and the padded lengths it would train on.

    Without XLA: its steps and one trace. With XLA every batch shape is compiled COMPILES_PER_SHAPE
    times (training and validation); `plan`, given that cost in steps, picks padded lengths that trade
    a little padding for fewer shapes (`tfkit.preprocess.plan_buckets`), and the estimate is its
    steps, their extra padding and its compiles. None for the lengths means the default buckets (or
    one shape, without `plan`).
    """
    step, compile_ = figure["step_seconds"], figure["compile_seconds"]
    if not train_steps:
        return step, None
    if figure["jit"] != "on":
        return train_steps * step + compile_, None
    per_shape = COMPILES_PER_SHAPE * compile_
    if plan is None:
        return train_steps * step + per_shape, None
    buckets = plan(per_shape / step)
    return train_steps * step * buckets.work + buckets.shapes * per_shape, buckets.pads


def pick(figures: list[dict], train_steps: int | None = None, plan: Callable[[float], object] | None = None) -> dict:
    """The fastest numerically safe candidate: `{"precision", "jit", "pads"}`, with every figure annotated.

    The reference is the first figure (float32, XLA off, where it was tried). Faster means fewer
    estimated training seconds when `train_steps` is known (XLA's compiles included, over the
    batch shapes `plan` chose for it), else a shorter step; ties go to the earlier candidate. If
    none is safe, the reference is used.
    """
    reference = figures[0]
    annotated = []
    for figure in figures:
        why = safe(figure, reference)
        seconds, pads = (None, None) if figure.get("skipped") else estimated_seconds(figure, train_steps, plan)
        annotated.append({**figure, "unsafe": why, "estimated_seconds": seconds, "pads": pads})
    usable = [f for f in annotated if f["unsafe"] is None] or annotated[:1]
    best = min(usable, key=lambda f: f["estimated_seconds"])  # min keeps the first of equals
    return {"precision": best["precision"], "jit": best["jit"], "pads": best["pads"], "candidates": annotated,
            "none_safe": not any(f["unsafe"] is None for f in annotated)}


def probe_batches(dataset, count: int) -> list:
    """`count` real batches of one sequence length (the first length to reach `count`: the commonest)."""
    by_length: dict[int, list] = {}
    for batch in dataset:
        group = by_length.setdefault(int(batch[0]["token_ids"].shape[1]), [])
        group.append(batch)
        if len(group) == count:
            return group
    return max(by_length.values(), key=len) if by_length else []


def measure(make_model: Callable[[Candidate], object], batches: Sequence, cands: Sequence[Candidate],
            seed: int = 0) -> list[dict]:
    """Times `train_on_batch` of a fresh model of each candidate on the same `batches` (same seed, same order).

    Every candidate's model is built and warmed first: the first WARMUP_STEPS batches are untimed
    (tracing and XLA's compile: their time beyond a step's is `compile_seconds`). Then the
    candidates take their timed steps in turn, one step each per round (each timed by
    `tfkit.timing.measure`), so a load that comes and goes on a shared machine slows them all
    alike; up to TIMED_STEPS rounds or TIMED_SECONDS per candidate (at least MIN_TIMED_STEPS). The
    batches share one length, so the median step stands for the candidate.
    """
    import keras

    warm, timed = batches[:WARMUP_STEPS], batches[WARMUP_STEPS:]
    size = lambda b: int(b[0]["token_ids"].shape[0])
    runs = []
    for cand in cands:
        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        model = make_model(cand)
        built = time.perf_counter()
        losses = []
        for b in warm:
            losses.append(float(model.train_on_batch(b[0], b[1], return_dict=True)["loss"]))
        runs.append({"cand": cand, "model": model, "losses": losses, "samples": [], "build": built - start,
                     "warm": time.perf_counter() - built})
    step = lambda run, b: run["losses"].append(float(run["model"].train_on_batch(b[0], b[1], return_dict=True)["loss"]))
    budget = TIMED_SECONDS * len(cands)
    for i, b in enumerate(timed):
        for run in runs:
            run["samples"] += time_calls(lambda x: step(run, x), [b], warmup=0).samples_ms
        spent = sum(sum(run["samples"]) for run in runs) / 1000
        if i + 1 >= min(MIN_TIMED_STEPS, len(timed)) and spent >= budget:
            break
    figures = []
    for run in runs:  # medians: one step stalled by another process must not decide
        steps, step = len(run["samples"]), Timing(run["samples"], 0, None, None).median / 1000
        rate = statistics.median(size(b) / (ms / 1000) for b, ms in zip(timed, run["samples"]))
        figures.append({
            "precision": run["cand"].precision, "jit": run["cand"].jit, "steps": steps, "step_seconds": step,
            "examples_per_second": rate, "step_ms": Timing(run["samples"], 0, None, None).stats(),
            "compile_seconds": max(0.0, run["warm"] - len(warm) * step), "build_seconds": run["build"],
            "losses": run["losses"], "finite": all(math.isfinite(v) for v in run["losses"]),
        })
        log.info("probe: %s: %.1f examples/s over %d steps, %.1f s compile", run["cand"],
                 figures[-1]["examples_per_second"], steps, figures[-1]["compile_seconds"])
    runs.clear()
    gc.collect()
    return figures


def xla_step_gib(model: dict, batch: int, length: int) -> float | None:
    """A rough size of a BERT train step's activations (GiB, float32), which XLA allocates for the whole step.

    Per layer: attention scores, probabilities and dropout mask (batch x heads x length^2) and the
    dense layers' inputs and outputs (batch x length x (12 hidden + 3 intermediate)). For the default
    teacher at batch 32 and 512 tokens it says 10.1 GiB; its XLA step asked for 10.64 GiB, failed with
    21 GiB free, and the process then crashed in free(). None for a model without those dimensions.
    """
    if not all(k in model for k in ("num_layers", "num_heads", "hidden_dim", "intermediate_dim")):
        return None
    attention = 3 * batch * model["num_heads"] * length**2
    dense = batch * length * (12 * model["hidden_dim"] + 3 * model["intermediate_dim"])
    return model["num_layers"] * (attention + dense) * 4 / 2**30


def free_gib() -> float | None:
    """MemAvailable of /proc/meminfo in GiB (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return kib / 2**20


def not_tried(cand: Candidate, why: str) -> dict:
    """The figure of a candidate the probe left out, with why (never picked)."""
    return {"precision": cand.precision, "jit": cand.jit, "skipped": why, "steps": 0, "step_seconds": None,
            "examples_per_second": None, "step_ms": None, "compile_seconds": None, "build_seconds": 0.0, "losses": [],
            "finite": True}


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/tfkit`, or `~/.cache/tfkit`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tfkit"


def cache_key(kind: str, model: dict, batch_size: int, max_length: int, cands: Sequence[Candidate], **more) -> dict:
    """What the figures depend on: this machine (CPU model, cores, TensorFlow), the model's shape and the batches."""
    import tensorflow as tf

    from tfkit.devices import cpu_model

    return {"version": CACHE_VERSION, "cpu": cpu_model(), "cores": os.cpu_count(), "tensorflow": tf.__version__,
            "kind": kind, "model": model, "batch_size": batch_size, "max_length": max_length,
            "candidates": [dataclasses.asdict(c) for c in cands], **more}


def cache_file(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"probe-{digest}.json"


def load_cached(key: dict) -> dict | None:
    """The cached probe for `key`, or None (no file, another key, or a file that is not ours)."""
    path = cache_file(key)
    try:
        entry = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("ignoring the unreadable speed-probe cache %s (%s)", path, e)
        return None
    same = isinstance(entry, dict) and entry.get("key") == json.loads(json.dumps(key))  # as JSON reads it back
    return entry if same and entry.get("figures") else None


def store(key: dict, figures: list[dict], seconds: float) -> Path:
    """Writes the figures for `key` atomically; returns the file."""
    path = cache_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"key": key, "figures": figures, "probe_seconds": seconds,
                      "measured": datetime.datetime.now().isoformat(timespec="seconds")})
    return path


def choose(precision: str, jit: str, key: Callable[[list[Candidate]], dict],
           run_probe: Callable[[list[Candidate]], list[dict]], train_steps: int, plan: Callable[[float], object] | None = None,
           bf16_fast: bool | None = None, static: str | None = None) -> dict:
    """The precision and jit a run trains with, and how they were chosen (saved in config.json as `probe`).

    Args:
        precision, jit: the flags (`auto` or an explicit value, which is kept and not probed).
        key: the cache key for a list of candidates (`cache_key`).
        run_probe: measures a list of candidates (`measure` with the run's model and batches).
        train_steps: the run's optimizer steps; a run shorter than PAYBACK x the probe's steps is not probed
            (`auto` is then float32 and XLA off: the safe choice, and speed matters little in a short run).
        plan: the run's padded lengths for an XLA candidate, given its compile cost in steps
            (`tfkit.preprocess.plan_buckets`); None where every batch has one shape.
        bf16_fast: whether bf16 is worth trying (default: `devices.bf16_hardware()`).
        static: why this run must not probe (then `auto` takes the static choice, as for a short run).
    """
    from tfkit.devices import bf16_hardware

    bf16_fast = bf16_hardware() if bf16_fast is None else bf16_fast
    cands, note = candidates(precision, jit, bf16_fast)
    record = {"asked": {"precision": precision, "jit": jit}, "bf16_note": note, "train_steps": train_steps,
              "pads": None, "probe_seconds": 0.0}
    if len(cands) == 1:
        how = "explicit" if "auto" not in (precision, jit) else "the only candidate"
        return {**record, "precision": cands[0].precision, "jit": cands[0].jit, "how": how}
    probe_steps = len(cands) * (WARMUP_STEPS + TIMED_STEPS)  # at most
    if static or train_steps < PAYBACK * probe_steps:
        return {**record, "precision": "float32" if precision == "auto" else precision, "jit": "off" if jit == "auto" else jit,
                "how": f"static: {static or f'{train_steps} training steps do not pay for a {probe_steps}-step probe'}"}
    cache_key_ = key(cands)
    cached = load_cached(cache_key_)
    if cached:
        figures, how, cost = cached["figures"], f"cached {cached.get('measured', '')}", 0.0
    else:
        start = time.perf_counter()
        figures = run_probe(cands)
        cost = time.perf_counter() - start
        store(cache_key_, figures, cost)
        how = "measured"
    choice = pick(figures, train_steps, plan)
    return {**record, **choice, "how": how, "probe_seconds": cost, "cache": str(cache_file(cache_key_)),
            "cached_probe_seconds": cached.get("probe_seconds") if cached else None}


def probe_texts(batch_size: int, available: int) -> int:
    """How many training texts to batch for the probe: enough for its steps at one length, in most data."""
    return min(available, batch_size * (WARMUP_STEPS + TIMED_STEPS) * 8)


def decide(config, kind: str, model: dict, max_length: int, make_model: Callable[[Candidate], object],
           probe_data: Callable[[], object], train_steps: int, plan: Callable[[float], object] | None = None,
           static: str | None = None, **key_more) -> dict:
    """`choose` for a training run: keyed by its model, batch size, max length and devices; logged in one line.

    Args:
        config: a TrainConfig or DistillConfig (precision, jit, batch_size, devices, seed).
        kind, model: what is trained ("teacher", "student") and its shape, for the cache key.
        make_model: a compiled model of a candidate, under the run's strategy.
        probe_data: the dataset the probe's batches come from (built only when the probe runs).
    """
    def run_probe(cands: list[Candidate]) -> list[dict]:
        batches = probe_batches(probe_data(), WARMUP_STEPS + TIMED_STEPS)
        batches = [batches[i % len(batches)] for i in range(WARMUP_STEPS + TIMED_STEPS)]  # small data: repeat them
        size, length = (int(n) for n in batches[0][0]["token_ids"].shape)
        need, free = xla_step_gib(model, size, length), free_gib()
        skip = None  # XLA asked for by `--jit on` is tried whatever the memory; `auto` leaves it out where it would not fit
        if need is not None and free is not None and need > XLA_MEMORY_SHARE * free and any(c.jit == "off" for c in cands):
            skip = f"not tried: an XLA step of {length} tokens needs about {need:.1f} GiB, {free:.1f} GiB free"
        tried = [c for c in cands if not (skip and c.jit == "on")]
        log.info("probing %s on %d batches of %d tokens%s", ", ".join(map(str, tried)), len(batches), length,
                 f" (XLA {skip})" if skip else "")
        figures = {(f["precision"], f["jit"]): f for f in measure(make_model, batches, tried, config.seed)}
        return [figures.get((c.precision, c.jit)) or not_tried(c, skip) for c in cands]

    key = lambda cands: cache_key(kind, model, config.batch_size, max_length, cands, devices=config.devices, **key_more)
    record = choose(config.precision, config.jit, key, run_probe, train_steps, plan, static=static)
    log.info("%s: %s", kind, describe(record))
    return record


def describe(record: dict) -> str:
    """The one log line: the choice, how it was made, every candidate's rate and the probe's cost."""
    line = f"precision {record['precision']}, XLA {record['jit']} ({record['how']}"
    if "candidates" not in record:
        return line + ")" + (f"; {record['bf16_note']}" if record.get("bf16_note") else "")
    parts = []
    for f in record["candidates"]:
        mark = " <-" if (f["precision"], f["jit"]) == (record["precision"], record["jit"]) else ""
        if f.get("skipped"):
            parts.append(f"{f['precision']}/XLA {f['jit']} {f['skipped']}")
            continue
        unsafe = f" UNSAFE: {f['unsafe']}" if f["unsafe"] else ""
        parts.append(f"{f['precision']}/XLA {f['jit']} {f['examples_per_second']:.1f} ex/s, "
                     f"compile {f['compile_seconds']:.1f} s{unsafe}{mark}")
    training = next(f["estimated_seconds"] for f in record["candidates"] if (f["precision"], f["jit"]) == (record["precision"], record["jit"]))
    if record["how"] == "measured":
        cost = f"probe {record['probe_seconds']:.0f} s = {100 * record['probe_seconds'] / max(training, 1e-9):.0f}% of the estimated {training:.0f} s of training"
    else:
        cost = f"probe skipped (it took {record.get('cached_probe_seconds') or 0:.0f} s when measured)"
    line += f", {cost}; cache {record['cache']}): " + "; ".join(parts)
    if record.get("pads"):
        line += f"; XLA batches padded to {', '.join(map(str, record['pads']))} (chosen against its compile time)"
    if record.get("none_safe"):
        line += "; no candidate was numerically safe: training with the reference"
    return line + (f"; {record['bf16_note']}" if record.get("bf16_note") else "")
