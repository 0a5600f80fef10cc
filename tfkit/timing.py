"""The one timer: every latency and throughput tfkit reports (bench, export, the sweeps) comes from `measure`.

It warms up before it measures, then times each call on its own with `perf_counter`, until a
fixed number of iterations or a time budget is reached, and keeps every sample so callers can
report percentiles rather than one mean. Nothing heavy is imported here.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Callable, Sequence

import numpy as np


@dataclasses.dataclass
class Timing:
    """Milliseconds per call, and how they were taken (recorded next to every figure)."""

    samples_ms: list[float]
    warmup: int
    iterations: int | None  # the fixed count asked for, if any
    budget_s: float | None  # the time budget asked for, if any

    def stats(self) -> dict[str, float | int]:
        """p50/p90/p99/max/mean/min in ms and the number of timed calls."""
        s = np.asarray(self.samples_ms)
        p50, p90, p99 = np.percentile(s, [50, 90, 99])
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(s.max()), "min": float(s.min()),
                "mean": float(s.mean()), "count": int(s.size)}

    @property
    def median(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def best(self) -> float:
        return float(min(self.samples_ms))

    def describe(self) -> dict:
        """The settings, without the samples."""
        return {"warmup": self.warmup, "iterations": self.iterations, "budget_s": self.budget_s, "timed": len(self.samples_ms)}


def measure(call: Callable, inputs: Sequence = (None,), warmup: int = 1, iterations: int | None = None,
            budget_s: float | None = None, min_iterations: int = 1) -> Timing:
    """Times `call(x)` for x cycling through `inputs`, one call per sample, after `warmup` untimed calls.

    Args:
        iterations: stop after this many timed calls.
        budget_s: stop once this much time was spent timing (after at least `min_iterations` calls).
            With neither given, every input is timed once.
    """
    if iterations is None and budget_s is None:
        iterations = len(inputs)
    cycle = itertools.cycle(inputs)
    for _ in range(warmup):
        call(next(cycle))
    samples, clock, started = [], time.perf_counter, time.perf_counter()
    while True:
        x = next(cycle)
        start = clock()
        call(x)
        end = clock()
        samples.append(1000 * (end - start))
        if iterations is not None and len(samples) >= iterations:
            break
        if budget_s is not None and len(samples) >= min_iterations and end - started >= budget_s:
            break
    return Timing(samples, warmup, iterations, budget_s)
