"""Where training runs: logical CPU devices, the strategy, and what the CPU can do (bf16 or not).

One code path serves 1 or N devices: training always runs under `strategy.scope()`; with one
device that is TensorFlow's default strategy. `--devices N` splits the CPU into N logical
devices so MirroredStrategy really mirrors on a CPU-only machine (and tests can prove it).
"""

from __future__ import annotations

import functools
import logging
import os
import platform

import tensorflow as tf

from tfkit.errors import TfkitError

log = logging.getLogger("tfkit")


@functools.cache
def cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ("" where there is none)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    return frozenset(cpuinfo("flags").split())


def cpu_model() -> str:
    """The CPU's model name (what the speed probe's cache is keyed by)."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def bf16_hardware() -> bool:
    """Whether bf16 can be fast here: AVX-512 BF16 or AMX instructions, or a GPU.

    Elsewhere bf16 is emulated (measured on AVX2 only: 0.2x float32), so the speed probe does not try it.
    """
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) or bool(tf.config.list_physical_devices("GPU"))


def configure_devices(devices: int = 1, threads: int | None = None) -> None:
    """Splits the CPU into at least `devices` logical devices; must run before TensorFlow executes an op.

    Each replica's ops get their share of the cores: measured on 2 cores, 2 logical devices ran at
    0.22x the throughput of one device with TensorFlow's default thread pools (every replica's op
    wants every core) and at 0.89x with one intra-op thread each.

    Args:
        threads: intra-op threads for the process; None = the cores divided by `devices`, 0 = TensorFlow's default.
    """
    if devices < 1:
        raise TfkitError(f"--devices must be at least 1 (got {devices})")
    if devices == 1 or tf.config.list_physical_devices("GPU"):
        return
    cpus = tf.config.list_physical_devices("CPU")
    threads = max(1, (os.cpu_count() or 1) // devices) if threads is None else threads
    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError:  # TensorFlow already started: fine if it has enough devices
        have = len(tf.config.list_logical_devices("CPU"))
        if have < devices:
            raise TfkitError(f"cannot use {devices} devices: TensorFlow already started with {have}") from None


def make_strategy(devices: int = 1) -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs, or over `devices` logical CPUs; the default strategy for one CPU."""
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    if devices > 1:
        # Collective all-gather of sparse (embedding) gradients fails when a remainder batch splits
        # unevenly across replicas ("Shape mismatch in the collective"); reducing on one device does not.
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")[:devices]]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.get_strategy()
