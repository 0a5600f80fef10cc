"""`tfkit loadtest`: load a local `tfkit serve` and compare it with ONNX Runtime in-process, in one run.

Only loopback URLs are accepted (this is a benchmark, not a traffic generator), and a run is
bounded by its request count and by `max_seconds`. Each request is `POST /predict` with
`batch` texts taken in turn from the export's own test texts (`tokenizer_check.jsonl`).
After the HTTP phase the same file is run in this process, tokenized the same way, at the
client's batch size and at the mean batch size the server actually ran (read from
`/metrics`), so the server's overhead is a ratio of two numbers taken on one machine minutes
apart. The server's resident memory is read from /proc after each repeat.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import re
import time
import urllib.parse
from pathlib import Path

import numpy as np

from tfkit.errors import TfkitError
from tfkit.wordpiece import CHECK_FILE, PROBE_TEXTS, FastTokenizer

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def check_loopback(url: str) -> str:
    """The URL without a trailing slash, if its host is this machine; anything else is a TfkitError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TfkitError(f"{url!r} is not an http URL (e.g. http://127.0.0.1:8080)")
    host = parts.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower() in LOOPBACK_NAMES
    if not loopback:
        raise TfkitError(f"loadtest only targets this machine: {host} is not a loopback address (use 127.0.0.1, ::1 or localhost)")
    return url.rstrip("/")


def export_texts(directory: Path) -> list[str]:
    """The export's test texts, as `tfkit export` recorded them for the tokenizer check."""
    path = directory / CHECK_FILE
    if not path.exists():
        raise TfkitError(f"{path} not found: re-export with this tfkit, or pass --texts FILE")
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [t for t in texts[: len(texts) - len(PROBE_TEXTS)] if t.strip()] or texts


def percentiles(seconds: list[float]) -> dict:
    ms = 1000 * np.asarray(seconds)
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)} if len(ms) else {}


def batch_counts(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of the server's `tfkit_batch_size` histogram."""
    values = {}
    for name in ("sum", "count"):
        match = re.search(rf"^tfkit_batch_size_{name} (\S+)$", metrics_text, re.M)
        values[name] = float(match.group(1)) if match else 0.0
    return values["sum"], values["count"]


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else None


async def _http_phase(url: str, texts: list[str], requests: int, concurrency: int, batch: int, max_seconds: float) -> dict:
    import httpx

    bodies = [{"inputs": [texts[(i * batch + j) % len(texts)] for j in range(batch)]} for i in range(requests)]
    latencies, statuses, next_index = [], collections.Counter(), [0]
    stop_at = time.perf_counter() + max_seconds

    async def worker(client):
        while next_index[0] < requests and time.perf_counter() < stop_at:
            body = bodies[next_index[0]]
            next_index[0] += 1
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/predict", json=body)
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
            except httpx.HTTPError as e:
                statuses[f"error: {type(e).__name__}"] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(min(concurrency, 4))))  # warm-up: connections, caches
        latencies.clear(), statuses.clear()
        next_index[0] = 0
        before = batch_counts((await client.get(f"{url}/metrics")).text)
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
        after = batch_counts((await client.get(f"{url}/metrics")).text)
    sent = sum(statuses.values())
    runs = after[1] - before[1]
    return {"requests": sent, "texts": sent * batch, "seconds": wall, "requests_per_s": sent / wall, "texts_per_s": sent * batch / wall,
            **percentiles(latencies), "statuses": dict(statuses),
            "server_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
            "server_mean_batch": (after[0] - before[0]) / runs if runs else None, "timed_out": sent < requests}


def in_process(path: Path, text: bool, tokenizer: FastTokenizer | None, texts: list[str], batch: int, threads: int,
               seconds: float = 3.0) -> float:
    """Texts per second of the same file in this process (tokenization included), batches of `batch` texts."""
    from tfkit import runtimes

    runtime = runtimes.OnnxRuntime(path, text, threads)
    run = lambda chunk: runtime.predict(chunk if tokenizer is None else tokenizer.encode(chunk))
    run(texts[:batch])
    done, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [texts[(i + j) % len(texts)] for j in range(batch)]
        run(chunk)
        i, done = i + batch, done + batch
    return done / (time.perf_counter() - start)


def loadtest(url: str, requests: int = 2000, concurrency: int = 16, batch: int = 1, repeat: int = 1,
             max_seconds: float = 300.0, texts: list[str] | None = None, in_process_seconds: float = 3.0) -> dict:
    """Loads the server at `url` `repeat` times, then runs its file in-process; all numbers in one dict.

    Args:
        url: a loopback URL of a running `tfkit serve`.
        batch: texts per request (and the in-process batch size compared).
        max_seconds: each repeat stops issuing requests after this long.
        in_process_seconds: how long each in-process measurement runs.
    """
    import httpx

    url = check_loopback(url)
    for name, value in (("requests", requests), ("concurrency", concurrency), ("batch", batch), ("repeat", repeat)):
        if value < 1:
            raise TfkitError(f"--{name} must be at least 1 (got {value})")
    try:
        about = httpx.get(f"{url}/info", timeout=10).json()
    except (httpx.HTTPError, ValueError) as e:
        raise TfkitError(f"no tfkit server answers at {url}/info ({type(e).__name__}); start one with `tfkit serve`") from None
    path = Path(about["file"]["path"])
    texts = texts or export_texts(path.parent)
    runs = []
    for _ in range(repeat):
        result = asyncio.run(_http_phase(url, texts, requests, concurrency, batch, max_seconds))
        result["server_rss_mb"] = rss_mb(about["process"]["pid"])
        runs.append(result)
    text = bool(about["file"]["text_input"])
    tokenizer = None if text else FastTokenizer.from_export(path.parent, about["tokenizer"])
    threads = about["batching"]["threads"]
    sizes = sorted({batch, *(max(1, round(r["server_mean_batch"])) for r in runs if r["server_mean_batch"])})
    local = {size: in_process(path, text, tokenizer, texts, size, threads, in_process_seconds) for size in sizes}
    best = runs[-1]
    return {"url": url, "file": about["file"]["name"], "format": about["file"]["format"], "threads": threads,
            "batching": about["batching"], "concurrency": concurrency, "batch": batch, "runs": runs,
            "in_process_texts_per_s": {str(k): v for k, v in local.items()},
            "ratio_vs_in_process_same_batch": best["texts_per_s"] / local[batch],
            "ratio_vs_in_process_server_batch": (best["texts_per_s"] / local[max(1, round(best["server_mean_batch"]))]
                                                 if best["server_mean_batch"] else None)}


def summary(result: dict) -> str:
    """A few lines a person can compare."""
    lines = [f"{result['file']} ({result['format']}, {result['threads']} ORT threads), concurrency {result['concurrency']}, "
             f"{result['batch']} text(s) a request, server max batch {result['batching']['max_batch']}, "
             f"max wait {result['batching']['max_wait_ms']} ms"]
    for i, r in enumerate(result["runs"], 1):
        lines.append(f"run {i}: {r['requests']} requests in {r['seconds']:.1f} s: {r['requests_per_s']:.0f} req/s, "
                     f"{r['texts_per_s']:.0f} texts/s; p50 {r.get('p50_ms', float('nan')):.1f} ms, "
                     f"p90 {r.get('p90_ms', float('nan')):.1f}, p99 {r.get('p99_ms', float('nan')):.1f} "
                     f"(p99/p50 {r.get('p99_ms', 0) / r['p50_ms'] if r.get('p50_ms') else float('nan'):.2f}); "
                     f"statuses {r['statuses']}; server mean batch {r['server_mean_batch'] or 0:.1f}; "
                     f"server RSS {r['server_rss_mb'] or 0:.0f} MB" + ("; STOPPED AT --max-seconds" if r["timed_out"] else ""))
    local = ", ".join(f"batch {k}: {v:.0f} texts/s" for k, v in result["in_process_texts_per_s"].items())
    lines.append(f"in-process ONNX Runtime, same file and tokenizer: {local}")
    ratio = result["ratio_vs_in_process_server_batch"]
    lines.append(f"HTTP / in-process: {result['ratio_vs_in_process_same_batch']:.2f} at the client's batch size"
                 + (f", {ratio:.2f} at the server's mean batch size" if ratio else ""))
    return "\n".join(lines)
