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
import urllib.request
from pathlib import Path

import numpy as np

from tfkit.errors import TfkitError
from tfkit.wordpiece import FastTokenizer, check_texts

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all threads (from /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _http_slice(url: str, bodies: list[dict], concurrency: int, stop_at: float) -> dict:
    """Sends `bodies` with `concurrency` keep-alive connections (after a short warm-up); raw latencies and statuses."""
    import aiohttp

    latencies, statuses = [], collections.Counter()
    payloads = [json.dumps(body).encode() for body in reversed(bodies)]  # popped from the end: in order
    headers = {"content-type": "application/json"}

    async def worker(session, todo):
        while todo and time.perf_counter() < stop_at:
            payload = todo.pop()
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/predict", data=payload, headers=headers) as response:
                    await response.read()
                statuses[str(response.status)] += 1
                if response.status == 200:
                    latencies.append(time.perf_counter() - start)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                statuses[f"error: {type(e).__name__}"] += 1

    async def metrics(session) -> tuple[float, float]:
        async with session.get(f"{url}/metrics") as response:
            return batch_counts(await response.text())

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        warm = payloads[-2 * concurrency :]
        await asyncio.gather(*(worker(session, warm) for _ in range(concurrency)))  # connections, caches
        latencies.clear(), statuses.clear()
        before = await metrics(session)
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, payloads) for _ in range(concurrency)))
        wall = time.perf_counter() - start
        after = await metrics(session)
    return {"latencies": latencies, "statuses": statuses, "seconds": wall,
            "batch_texts": after[0] - before[0], "batch_runs": after[1] - before[1]}


class InProcess:
    """The server's file in this process, tokenized the same way: texts per second and CPU per text at a batch size."""

    def __init__(self, path: Path, text: bool, tokenizer: FastTokenizer | None, texts: list[str], threads: int):
        from tfkit import runtimes

        self.runtime, self.tokenizer, self.texts = runtimes.OnnxRuntime(path, text, threads, spin=False), tokenizer, texts
        self.offset = 0

    def measure(self, batch: int, seconds: float) -> tuple[int, float, float]:
        """(texts, wall seconds, CPU seconds) of batches of `batch` consecutive test texts for about `seconds`."""
        run = lambda chunk: self.runtime.predict(chunk if self.tokenizer is None else self.tokenizer.encode(chunk))
        run(self.texts[:batch])
        done, wall, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - wall < seconds:
            run([self.texts[(self.offset + j) % len(self.texts)] for j in range(batch)])
            self.offset, done = self.offset + batch, done + batch
        return done, time.perf_counter() - wall, time.process_time() - cpu


def loadtest(url: str, requests: int = 2000, concurrency: int = 16, batch: int = 1, repeat: int = 1,
             max_seconds: float = 300.0, texts: list[str] | None = None, in_process_seconds: float = 4.0,
             slices: int = 4) -> dict:
    """Loads the server at `url` `repeat` times, each in `slices` parts with in-process runs in between.

    On a shared machine the load of others drifts within minutes, so the HTTP requests and the
    in-process runs alternate and each side is summed over the run; CPU seconds per text
    (server process vs this process' ORT) are reported too: they move less with other load.

    Args:
        url: a loopback URL of a running `tfkit serve`.
        batch: texts per request (and the in-process batch size compared).
        max_seconds: each repeat stops issuing requests after this long.
        in_process_seconds: in-process time per batch size per repeat, spread over the slices.
    """
    url = check_loopback(url)
    for name, value in (("requests", requests), ("concurrency", concurrency), ("batch", batch), ("repeat", repeat)):
        if value < 1:
            raise TfkitError(f"--{name} must be at least 1 (got {value})")
    try:
        with urllib.request.urlopen(f"{url}/info", timeout=10) as response:
            about = json.loads(response.read())
    except (OSError, ValueError) as e:  # URLError, refused, timeout; not JSON
        raise TfkitError(f"no tfkit server answers at {url}/info ({type(e).__name__}); start one with `tfkit serve`") from None
    path, pid = Path(about["file"]["path"]), about["process"]["pid"]
    texts = texts or check_texts(path.parent)
    text_input = bool(about["file"]["text_input"])
    local = InProcess(path, text_input, None if text_input else FastTokenizer.from_export(path.parent, about["tokenizer"]),
                      texts, about["batching"]["threads"])
    bodies = [{"inputs": [texts[(i * batch + j) % len(texts)] for j in range(batch)]} for i in range(requests)]
    slices = max(1, min(slices, requests))
    runs = []
    for _ in range(repeat):
        stop_at, parts, sides = time.perf_counter() + max_seconds, [], collections.defaultdict(lambda: [0, 0.0, 0.0])
        cpu = client_cpu = 0.0
        for k in range(slices):
            cpu_before, client_before = cpu_seconds(pid), time.process_time()
            part = asyncio.run(_http_slice(url, bodies[k * requests // slices : (k + 1) * requests // slices], concurrency, stop_at))
            cpu += cpu_seconds(pid) - cpu_before
            client_cpu += time.process_time() - client_before
            parts.append(part)
            server_batch = max(1, round(part["batch_texts"] / part["batch_runs"])) if part["batch_runs"] else batch
            for size in sorted({batch, server_batch}):
                n, wall, used = local.measure(size, in_process_seconds / slices)
                side = sides[size]
                side[0], side[1], side[2] = side[0] + n, side[1] + wall, side[2] + used
        statuses = sum((p["statuses"] for p in parts), collections.Counter())
        latencies = [x for p in parts for x in p["latencies"]]
        sent, wall = sum(statuses.values()), sum(p["seconds"] for p in parts)
        batch_runs = sum(p["batch_runs"] for p in parts)
        mean_batch = sum(p["batch_texts"] for p in parts) / batch_runs if batch_runs else None
        in_process = {str(size): {"texts_per_s": n / w, "cpu_ms_per_text": 1000 * c / n} for size, (n, w, c) in sides.items() if n}
        same = in_process[str(batch)]
        near = in_process.get(str(max(1, round(mean_batch))) if mean_batch else "", same)
        runs.append({"requests": sent, "texts": sent * batch, "seconds": wall, "requests_per_s": sent / wall,
                     "texts_per_s": sent * batch / wall, **percentiles(latencies), "statuses": dict(statuses),
                     "server_5xx": sum(n for st, n in statuses.items() if st.startswith("5")),
                     "server_mean_batch": mean_batch, "server_cpu_ms_per_text": 1000 * cpu / max(1, sent * batch),
                     "client_cpu_ms_per_request": 1000 * client_cpu / max(1, sent),
                     "server_rss_mb": rss_mb(pid), "timed_out": sent < requests, "in_process": in_process,
                     "ratio_same_batch": sent * batch / wall / same["texts_per_s"],
                     "ratio_server_batch": sent * batch / wall / near["texts_per_s"],
                     "cpu_ratio_server_batch": near["cpu_ms_per_text"] / (1000 * cpu / max(1, sent * batch))})
    return {"url": url, "file": about["file"]["name"], "format": about["file"]["format"], "threads": about["batching"]["threads"],
            "batching": about["batching"], "concurrency": concurrency, "batch": batch, "slices": slices, "runs": runs}


def summary(result: dict) -> str:
    """A few lines a person can compare."""
    lines = [f"{result['file']} ({result['format']}, {result['threads']} ORT threads), concurrency {result['concurrency']}, "
             f"{result['batch']} text(s) a request, server max batch {result['batching']['max_batch']}, "
             f"max wait {result['batching']['max_wait_ms']} ms; HTTP and in-process alternate in {result['slices']} slices"]
    for i, r in enumerate(result["runs"], 1):
        nan = float("nan")
        local = ", ".join(f"batch {k}: {v['texts_per_s']:.0f} texts/s ({v['cpu_ms_per_text']:.2f} CPU ms/text)"
                          for k, v in r["in_process"].items())
        lines += [f"run {i}: {r['requests']} requests in {r['seconds']:.1f} s: {r['requests_per_s']:.0f} req/s, "
                  f"{r['texts_per_s']:.0f} texts/s; p50 {r.get('p50_ms', nan):.1f} ms, p90 {r.get('p90_ms', nan):.1f}, "
                  f"p99 {r.get('p99_ms', nan):.1f} (p99/p50 {r.get('p99_ms', nan) / r.get('p50_ms', nan):.2f}); "
                  f"statuses {r['statuses']}; server mean batch {r['server_mean_batch'] or 0:.1f}, "
                  f"{r['server_cpu_ms_per_text']:.2f} CPU ms/text, RSS {r['server_rss_mb'] or 0:.0f} MB; "
                  f"this client {r['client_cpu_ms_per_request']:.2f} CPU ms/request"
                  + ("; STOPPED AT --max-seconds" if r["timed_out"] else ""),
                  f"       in-process ONNX Runtime, same file and tokenizer: {local}",
                  f"       HTTP / in-process throughput: {r['ratio_same_batch']:.2f} at the client's batch size, "
                  f"{r['ratio_server_batch']:.2f} at the server's mean batch; CPU per text, in-process / server: "
                  f"{r['cpu_ratio_server_batch']:.2f}"]
    return "\n".join(lines)
