"""Which machines a run trains on: `--strategy` and the `TF_CONFIG` cluster, checked before TensorFlow starts.

`TF_CONFIG` is TensorFlow's own description of a multi-worker cluster (the same variable a
Kubeflow TFJob or any launcher sets): `{"cluster": {"worker": ["host:port", ...]}, "task":
{"type": "worker", "index": i}}`, optionally with one `chief` task. Every mistake in it is one
line here, not a gRPC error after TensorFlow has started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time

from tfkit.errors import TfkitError

STRATEGIES = ("auto", "single", "mirrored", "multiworker")
JOIN_TIMEOUT = 120  # seconds every worker waits for the others to start (TFKIT_JOIN_TIMEOUT overrides)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process' place in a multi-worker cluster."""

    workers: tuple[str, ...]  # every task's address, the chief first
    index: int  # this task's position in `workers`

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def address(self) -> str:
        return self.workers[self.index]

    def on_this_host(self) -> int:
        """Workers whose address has this worker's host (they share its cores)."""
        host = self.address.rpartition(":")[0]
        return sum(a.rpartition(":")[0] == host for a in self.workers)

    def peers(self) -> tuple[str, ...]:
        return tuple(a for i, a in enumerate(self.workers) if i != self.index)


def read_tf_config(raw: str | None) -> Cluster | None:
    """The cluster `TF_CONFIG` describes (None when unset or a single task); malformed is a TfkitError."""
    if not raw or not raw.strip():
        return None
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise TfkitError(f"TF_CONFIG is not valid JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise TfkitError('TF_CONFIG has no "cluster" object (e.g. {"cluster": {"worker": ["host:port", ...]}, "task": {...}})')
    cluster = config["cluster"]
    unknown = sorted(set(cluster) - {"chief", "worker"})
    if unknown:
        raise TfkitError(f"TF_CONFIG cluster has job(s) {', '.join(unknown)}; tfkit trains with \"worker\" (and one \"chief\") only")
    jobs = {}
    for job in ("chief", "worker"):
        addresses = cluster.get(job, [])
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise TfkitError(f'TF_CONFIG cluster "{job}" must be a list of "host:port" strings')
        for address in addresses:
            check_address(address)
        jobs[job] = addresses
    if len(jobs["chief"]) > 1:
        raise TfkitError(f'TF_CONFIG names {len(jobs["chief"])} chiefs; a cluster has at most one')
    workers = tuple(jobs["chief"] + jobs["worker"])
    if not workers:
        raise TfkitError("TF_CONFIG cluster names no workers")
    if len(set(workers)) < len(workers):
        raise TfkitError("TF_CONFIG cluster names the same address twice")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise TfkitError('TF_CONFIG has no "task" with "type" and "index" (which of the cluster\'s tasks this process is)')
    kind, index = task["type"], task["index"]
    if kind not in ("chief", "worker"):
        raise TfkitError(f"TF_CONFIG task type '{kind}' is not \"chief\" or \"worker\"")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(jobs[kind]):
        raise TfkitError(f"TF_CONFIG task index {index!r} is out of range: the cluster has {len(jobs[kind])} {kind} task(s)")
    position = index if kind == "chief" else len(jobs["chief"]) + index
    return Cluster(workers, position)


def check_address(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TfkitError(f"TF_CONFIG address '{address}' is not host:port")


def resolve_strategy(strategy: str, devices: int, environ=os.environ) -> tuple[str, Cluster | None]:
    """(`single`, `mirrored` or `multiworker`, the cluster) for `--strategy` and `--devices`, before TensorFlow starts."""
    if strategy not in STRATEGIES:
        raise TfkitError(f"unknown --strategy '{strategy}' (choose from {', '.join(STRATEGIES)})")
    cluster = read_tf_config(environ.get("TF_CONFIG"))
    if strategy == "multiworker" and cluster is None:
        raise TfkitError("--strategy multiworker needs TF_CONFIG naming the cluster's workers and this process' task "
                         "(see examples/multiworker/)")
    if strategy == "auto":
        strategy = "multiworker" if cluster and len(cluster.workers) > 1 else ("mirrored" if devices > 1 else "single")
    if strategy == "multiworker" and devices > 1:
        raise TfkitError("--strategy multiworker trains one device per worker; drop --devices or start more workers")
    if strategy == "single" and devices > 1:
        raise TfkitError(f"--strategy single trains on one device, not --devices {devices}; use --strategy mirrored")
    return strategy, cluster if strategy == "multiworker" else None


def join_timeout(environ=os.environ) -> int:
    """Seconds to wait for every worker to start (TFKIT_JOIN_TIMEOUT, default JOIN_TIMEOUT)."""
    raw = environ.get("TFKIT_JOIN_TIMEOUT", str(JOIN_TIMEOUT))
    if not raw.isdigit() or int(raw) < 1:
        raise TfkitError(f"TFKIT_JOIN_TIMEOUT must be a whole number of seconds, at least 1 (got {raw!r})")
    return int(raw)


def wait_for_workers(cluster: Cluster, timeout: float) -> None:
    """Returns when every other worker answers on its TF_CONFIG port; names those that do not within `timeout` s.

    TensorFlow's own start-up waits for the cluster without a limit, so a worker that never
    starts would hang the others: before TensorFlow takes the port, each worker listens on it
    here and connects to the others' (a peer answers from this wait or from its TensorFlow server).
    """
    port = int(cluster.address.rpartition(":")[2])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
    except OSError as e:
        raise TfkitError(f"cannot listen on {cluster.address} (this worker's TF_CONFIG address): {e.strerror}") from None
    listener.listen(16)
    listener.settimeout(0.05)
    waiting, deadline = set(cluster.peers()), time.monotonic() + timeout
    try:
        while waiting and time.monotonic() < deadline:
            waiting -= {a for a in waiting if not unreachable([a], timeout=0.2)}
            with contextlib.suppress(OSError):
                listener.accept()[0].close()
    finally:
        listener.close()
    if waiting:
        raise TfkitError(f"worker(s) {', '.join(sorted(waiting))} did not join within {timeout:g} s (TFKIT_JOIN_TIMEOUT); "
                         "start the same command on every worker of TF_CONFIG")


def unreachable(addresses, timeout: float = 2.0) -> list[str]:
    """The addresses nothing answers on (a TCP connect)."""
    down = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        except OSError:
            down.append(address)
    return down
