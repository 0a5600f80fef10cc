"""Where training runs: logical CPU devices, the strategy, and what the CPU can do (bf16 or not).

One code path serves 1 or N devices: training always runs under `strategy.scope()`; with one
device that is TensorFlow's default strategy. `--devices N` splits the CPU into N logical
devices so MirroredStrategy really mirrors on a CPU-only machine (and tests can prove it).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import platform

import tensorflow as tf

from tfkit.cluster import Cluster, join_timeout, resolve_strategy, wait_for_workers
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


@dataclasses.dataclass
class Placement:
    """Where a training run's replicas are: the strategy, and the cluster when there are several workers."""

    kind: str  # single | mirrored | multiworker
    strategy: tf.distribute.Strategy
    cluster: Cluster | None = None

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    def finish(self) -> None:
        """Every worker waits here until the chief has written the output (one leaving early looks like a crash to the others)."""
        if self.cluster:
            replica_sum(self.strategy, 1.0)

    def describe(self) -> str:
        replicas = self.strategy.num_replicas_in_sync
        if self.cluster:
            return f"{len(self.cluster.workers)} workers (this is worker {self.cluster.index}), {replicas} replicas"
        return f"{replicas} replica(s)"


def replica_sum(strategy: tf.distribute.Strategy, value: float) -> float:
    """`value` summed over every replica: a collective, so also a barrier every worker must reach."""
    return float(strategy.reduce("SUM", strategy.run(tf.function(lambda: tf.constant(float(value)))), axis=None))


def place(strategy: str = "auto", devices: int = 1) -> Placement:
    """Resolves `--strategy` and `--devices`, splits the CPU and creates the strategy (the run's first TensorFlow op)."""
    kind, cluster = resolve_strategy(strategy, devices)
    configure_devices(devices)
    if cluster and cluster.on_this_host() > 1:  # co-located workers share the cores instead of fighting over them
        tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // cluster.on_this_host()))
    return Placement(kind, make_strategy(kind, devices, cluster), cluster)


def make_strategy(kind: str = "single", devices: int = 1, cluster: Cluster | None = None) -> tf.distribute.Strategy:
    """The strategy `tfkit.cluster.resolve_strategy` chose; call it before any other TensorFlow op.

    `single`: TensorFlow's default strategy. `mirrored`: MirroredStrategy over all GPUs, or over
    `devices` logical CPUs. `multiworker`: MultiWorkerMirroredStrategy over the `TF_CONFIG`
    cluster, which waits at most `join_timeout()` seconds for every worker to start.
    """
    if kind == "multiworker":
        return _multiworker(cluster)
    if kind == "mirrored" and tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    if kind == "mirrored":
        # Collective all-gather of sparse (embedding) gradients fails when a remainder batch splits
        # unevenly across replicas ("Shape mismatch in the collective"); reducing on one device does not.
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")[:devices]]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.get_strategy()


@functools.cache
def _multiworker(cluster: Cluster) -> tf.distribute.Strategy:
    """One MultiWorkerMirroredStrategy per process (TensorFlow allows no second), once every worker is up."""
    timeout = join_timeout()
    log.info("worker %d of %d (%s): waiting up to %d s for the others", cluster.index, len(cluster.workers),
             cluster.address, timeout)
    wait_for_workers(cluster, timeout)
    options = tf.distribute.experimental.CommunicationOptions(implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    log.info("cluster of %d workers ready", strategy.num_replicas_in_sync)
    return strategy
