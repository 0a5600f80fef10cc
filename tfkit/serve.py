"""`tfkit serve`: one verified ONNX file behind HTTP (FastAPI + uvicorn), with dynamic batching.

The process imports no TensorFlow: ids come from `tfkit.wordpiece.FastTokenizer` (checked at
start-up against the training tokenizer's ids that `tfkit export` recorded) or from inside
`model_text.onnx`. Concurrent requests wait in an asyncio queue; one task groups them up to
`max_batch` texts or `max_wait_ms`, sorts the texts by length, runs ONNX Runtime on runs of
similar length in a worker thread (off the event loop) and hands each request its own rows.
Routes: TEI's `POST /predict`, the Open Inference Protocol v2 (`/v2/...`), `/health`,
`/info`, `/metrics` (Prometheus) and `/docs`. Every error is JSON: `{"error", "error_type"}`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib.metadata
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np

from tfkit import runtimes
from tfkit.artifacts import file_sha256
from tfkit.errors import TfkitError
from tfkit.timing import measure
from tfkit.wordpiece import CHECK_FILE, FastTokenizer, check_texts

log = logging.getLogger("tfkit.serve")
ONNX_FORMATS = {"onnx-int8": "model_int8.onnx", "onnx": "model.onnx", "onnx-text": "model_text.onnx"}  # default: first present
MAX_PADDING = 1.5  # a length-sorted run of texts is split when padding would make it 1.5x its real tokens
# --threads 0: the start-up trial times batches of this many test texts, sorted by length, with 1 thread and
# with one per core, twice each; more threads win only if this much faster (they cost CPU per text).
THREAD_TRIAL = {"texts": 48, "batch": 8, "rounds": 2, "faster": 1.10}


@dataclasses.dataclass
class ServeConfig:
    """How `tfkit serve` loads, batches and limits; `/info` reports it."""

    export_dir: str
    model: str | None = None  # a file of export_dir; default: `format`
    format: str | None = None  # onnx-int8 | onnx | onnx-text; default: the first of those that passed its gate
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch: int = 32  # texts per ONNX Runtime run
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for company
    max_inputs: int = 64  # texts per request
    max_chars: int = 10_000  # characters per text
    max_body_bytes: int = 1_000_000
    max_concurrent: int = 256  # requests admitted at once; more get 429
    threads: int = 0  # ONNX Runtime intra-op threads; 0: 1 or one per core, measured at start-up
    drain_seconds: float = 30.0  # on SIGTERM, how long in-flight requests may take
    allow_tokenizer_mismatch: bool = False

    def check(self) -> None:
        """Range checks a user can fail: one line each."""
        if not 0 <= self.port <= 65535:
            raise TfkitError(f"port {self.port} is out of range (0-65535; 0 picks a free one)")
        for name in ("max_batch", "max_inputs", "max_chars", "max_body_bytes", "max_concurrent"):
            if getattr(self, name) < 1:
                raise TfkitError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.max_wait_ms < 0 or self.threads < 0 or self.drain_seconds < 0:
            raise TfkitError("--max-wait-ms, --threads and --drain-seconds must not be negative")
        if self.format is not None and self.format not in ONNX_FORMATS:
            raise TfkitError(f"unknown format '{self.format}' (choose from {', '.join(ONNX_FORMATS)})")


@dataclasses.dataclass
class Model:
    """One verified ONNX file of an export, loaded: session, tokenizer (None if inside the file) and what /info says."""

    name: str
    key: str
    path: Path
    manifest: dict
    runtime: runtimes.OnnxRuntime
    tokenizer: FastTokenizer | None
    tokenizer_check: dict
    threads: dict = dataclasses.field(default_factory=dict)  # {"threads", "chosen_by", "texts_per_s"}

    @property
    def labels(self) -> list[str]:
        return self.manifest["model"]["labels"]

    def tokenize(self, texts: list[str]) -> list:
        """Each text's ids (the texts themselves for a string-in file): tokenized once, sorted by length, then run."""
        return texts if self.tokenizer is None else self.tokenizer.ids(texts)

    def run(self, tokens: list) -> np.ndarray:
        """Probabilities [len(tokens), classes] in one ONNX Runtime run; the rows should be of similar length."""
        return self.runtime.predict(tokens if self.tokenizer is None else self.tokenizer.pad(tokens))

    def predict(self, texts: list[str]) -> np.ndarray:
        return self.run(self.tokenize(texts))


def read_manifest(export_dir: str | Path) -> dict:
    """The export's manifest.json; a missing directory or a directory that is not a tfkit export is a TfkitError."""
    directory = Path(export_dir)
    if not directory.is_dir():
        raise TfkitError(f"{directory} not found (expected a tfkit export directory, e.g. export/student)")
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        raise TfkitError(f"{directory} is not a tfkit export (no manifest.json); run `tfkit export MODEL_DIR` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TfkitError(f"{directory}/manifest.json is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or not {"model", "artifacts", "files", "tokenizer"} <= set(manifest):
        raise TfkitError(f"{directory}/manifest.json is not a tfkit export manifest")
    return manifest


def choose(config: ServeConfig, manifest: dict) -> str:
    """The format key to serve: --model's file, --format, or the best verified id-level ONNX file."""
    artifacts, directory = manifest["artifacts"], Path(config.export_dir)
    if config.model:
        path = Path(config.model)
        if path.parent != Path(".") and path.resolve().parent != directory.resolve():
            raise TfkitError(f"--model {config.model}: name a file of {directory} (its manifest vouches for it)")
        keys = [k for k in ONNX_FORMATS if k in artifacts and artifacts[k]["file"] == path.name]
        if not keys:
            raise TfkitError(f"--model {path.name}: not a verified ONNX file of {directory} "
                             f"(verified: {', '.join(a['file'] for k, a in artifacts.items() if k in ONNX_FORMATS) or 'none'})")
        return keys[0]
    if config.format:
        if config.format not in artifacts:
            why = manifest.get("failed", {}).get(config.format, "it was not exported")
            raise TfkitError(f"--format {config.format}: no verified {ONNX_FORMATS[config.format]} in {directory} ({why})")
        return config.format
    for key in ONNX_FORMATS:
        if key in artifacts:
            return key
    raise TfkitError(f"no verified ONNX file in {directory}; export one with `tfkit export MODEL_DIR --formats onnx-int8`")


def load(config: ServeConfig) -> Model:
    """Reads the manifest, checks the file's sha256 against it, opens one ONNX Runtime session and the tokenizer."""
    config.check()
    manifest = read_manifest(config.export_dir)
    key = choose(config, manifest)
    artifact, directory = manifest["artifacts"][key], Path(config.export_dir)
    path, expected = directory / artifact["file"], manifest["files"].get(artifact["file"], {})
    if not path.is_file():
        raise TfkitError(f"{path} is listed in the manifest but missing; re-export")
    if file_sha256(path) != expected.get("sha256"):
        raise TfkitError(f"{path} differs from the file the manifest verified (sha256); re-export")
    text = bool(artifact.get("text_input"))
    if text:
        tokenizer = None
        check = {"implementation": "onnxruntime-extensions BertTokenizer inside the file (gated at export)",
                 "texts": artifact["texts"], "agreement": artifact.get("tokenization_agreement"),
                 "mismatches": artifact.get("tokenization_mismatches", [])}
    else:
        tokenizer = FastTokenizer.from_export(directory, manifest["tokenizer"])
        check = {"implementation": f"tokenizers {importlib.metadata.version('tokenizers')} WordPiece", **tokenizer.check(directory)}
        if check["agreement"] != 1.0 and not config.allow_tokenizer_mismatch:
            detail = (f"no {check['file']} in the export (exported by an older tfkit); re-export" if not check["texts"] else
                      f"{check['mismatched']} of {check['texts']} check texts get other ids than the training tokenizer, "
                      f"e.g. {check['mismatches'][0]['text'][:60]!r}")
            raise TfkitError(f"tokenizer check failed: {detail} (or pass --allow-tokenizer-mismatch)")
        if check["agreement"] != 1.0:
            log.warning("SERVING WITH AN UNCHECKED OR MISMATCHED TOKENIZER: %s", check)
    runtime = runtimes.OnnxRuntime(path, text, config.threads or 1, spin=False)
    name = Path(manifest["model"].get("source") or directory.name).name or directory.resolve().name
    model = Model(name, key, path, manifest, runtime, tokenizer, check, {"threads": config.threads, "chosen_by": "--threads"})
    if not config.threads:
        trial_threads(model, min(config.max_batch, THREAD_TRIAL["batch"]))
    return model


def cores() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0))


def choose_threads(texts_per_s: dict[int, float], faster: float = THREAD_TRIAL["faster"]) -> int:
    """The thread count to serve with: the fastest, if it beats 1 thread by `faster`; else 1 (less CPU per text)."""
    best = max(texts_per_s, key=texts_per_s.get)
    return best if texts_per_s[best] >= faster * texts_per_s[1] else 1


def trial_threads(model: Model, batch: int) -> None:
    """Sets `model`'s ORT threads by timing batches of its test texts with 1 thread and one per core.

    Measured on 2 cores (benchmarks/README.md#serving): 2 threads served 1.2x the texts/s of 1 when the
    machine was otherwise idle, and fewer when other jobs shared the cores, so it is decided here.
    """
    n = cores()
    if n == 1 or not (model.path.parent / CHECK_FILE).exists():
        model.threads = {"threads": 1, "chosen_by": "one core" if n == 1 else f"default (no {CHECK_FILE} to time)"}
        return
    texts = check_texts(model.path.parent)
    pick = np.random.default_rng(0).choice(len(texts), min(len(texts), THREAD_TRIAL["texts"]), replace=False)
    tokens = model.tokenize([texts[i] for i in pick])
    batches = [[tokens[i] for i in run] for run in length_runs([len(t) for t in tokens], batch)]
    sessions = {1: model.runtime, n: runtimes.OnnxRuntime(model.path, model.tokenizer is None, n, spin=False)}
    best = {k: 0.0 for k in sessions}
    for _ in range(THREAD_TRIAL["rounds"]):  # alternating, best of: other load drifts
        for k, runtime in sessions.items():
            model.runtime = runtime
            timing = measure(model.run, batches, warmup=1)
            best[k] = max(best[k], len(tokens) / (sum(timing.samples_ms) / 1000))
    chosen = choose_threads(best)
    model.runtime = sessions[chosen]
    model.threads = {"threads": chosen, "chosen_by": f"start-up trial ({len(tokens)} test texts in batches of <= {batch}, "
                     f"best of {THREAD_TRIAL['rounds']})", "texts_per_s": {str(k): round(v, 1) for k, v in best.items()}}


def length_runs(lengths: list[int], max_batch: int) -> list[np.ndarray]:
    """Indices sorted by length, cut into runs of at most `max_batch` whose padding stays within MAX_PADDING."""
    order = np.argsort(lengths, kind="stable")
    runs, start, real = [], 0, 0
    for end, i in enumerate(order):
        size = end - start + 1
        if size > max_batch or (size > 1 and lengths[i] * size > MAX_PADDING * (real + lengths[i])):
            runs.append(order[start:end])
            start, real = end, 0
        real += lengths[i]
    runs.append(order[start:])
    return [run for run in runs if len(run)]


class InferenceError(Exception):
    """ONNX Runtime or the tokenizer failed on a batch; the server logs why and answers 500."""


@dataclasses.dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future
    queued: float


class Batcher:
    """Groups concurrent requests into ONNX Runtime runs; one run at a time, in a worker thread."""

    def __init__(self, model: Model, max_batch: int, max_wait_ms: float, metrics):
        self.model, self.max_batch, self.max_wait, self.metrics = model, max_batch, max_wait_ms / 1000, metrics
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tfkit-inference")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> np.ndarray:
        """Probabilities for `texts`, computed in whichever batch they land."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(texts, future, time.perf_counter()))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self.queue.get()]
            size, deadline = len(group[0].texts), group[0].queued + self.max_wait
            while size < self.max_batch:
                try:
                    item = self.queue.get_nowait() if self.queue.qsize() else await asyncio.wait_for(
                        self.queue.get(), max(0.0, deadline - time.perf_counter()))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                group.append(item)
                size += len(item.texts)
            started = time.perf_counter()
            for item in group:
                self.metrics.queue_duration.observe(started - item.queued)
            texts = [t for item in group for t in item.texts]
            try:
                probabilities = await loop.run_in_executor(self.executor, self._run, texts)
            except InferenceError as e:
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            offset = 0
            for item in group:
                if not item.future.done():  # a client that went away cancelled its future
                    item.future.set_result(probabilities[offset : offset + len(item.texts)])
                offset += len(item.texts)

    def _run(self, texts: list[str]) -> np.ndarray:
        """All texts of a group, in runs of similar length; rows back in the group's order."""
        try:
            out = None
            tokens = self.model.tokenize(texts)
            for run in length_runs([len(t) for t in tokens], self.max_batch):
                start = time.perf_counter()
                probabilities = self.model.run([tokens[i] for i in run])
                self.metrics.inference_duration.observe(time.perf_counter() - start)
                self.metrics.batch_size.observe(len(run))
                if out is None:
                    out = np.zeros([len(texts), probabilities.shape[1]], np.float32)
                out[run] = probabilities
            return out
        except Exception as e:  # a server must answer 500 and stay up; the traceback goes to the log
            log.exception("inference failed on a batch of %d texts", len(texts))
            raise InferenceError(f"{type(e).__name__}") from e


def versions() -> dict:
    """The serving stack's versions, for /info."""
    out = {"python": sys.version.split()[0]}
    for tool in ("tfkit", "onnxruntime", "onnxruntime-extensions", "tokenizers", "fastapi", "uvicorn", "prometheus-client"):
        try:
            out[tool] = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            out[tool] = None
    return out


def info(model: Model, config: ServeConfig) -> dict:
    """What `/info` returns: the model, its file and gate numbers, the tokenizer check, settings, versions."""
    artifact, manifest = model.manifest["artifacts"][model.key], model.manifest
    parity = {k: artifact.get(k) for k in ("texts", "max_abs_diff", "label_agreement", "accuracy", "macro_f1",
                                           "gate", "latency_ms") if k in artifact}
    return {
        "model": {"name": model.name, "labels": model.labels, "max_length": manifest["model"].get("max_length"),
                  "kind": manifest["model"].get("kind")},
        "file": {"format": model.key, "name": model.path.name, "path": str(model.path.resolve()), **manifest["files"][model.path.name],
                 "precision": artifact.get("precision"), "text_input": artifact.get("text_input")},
        "parity": {**parity, "reference": manifest.get("verification", {}).get("reference"),
                   "keras_accuracy": manifest.get("verification", {}).get("keras_accuracy")},
        "tokenizer": {**manifest["tokenizer"], "check": model.tokenizer_check},
        "batching": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms, "max_padding": MAX_PADDING,
                     "threads": model.threads["threads"], "threads_chosen_by": model.threads["chosen_by"],
                     "threads_texts_per_s": model.threads.get("texts_per_s")},
        "limits": {"max_inputs": config.max_inputs, "max_chars": config.max_chars, "max_body_bytes": config.max_body_bytes,
                   "max_concurrent": config.max_concurrent},
        "process": {"pid": os.getpid(), "tensorflow_imported": "tensorflow" in sys.modules},
        "versions": versions(),
    }


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, so a port in use is one line and port 0's real number is known before start."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        raise TfkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def serve(config: ServeConfig) -> int:
    """Loads the model, listens, serves until SIGTERM/SIGINT, drains in-flight requests, returns 0."""
    import uvicorn

    from tfkit.serve_app import create_app

    started = time.perf_counter()
    model = load(config)
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    app = create_app(model, config, on_ready=lambda: print(
        f"tfkit: serving {model.name} ({model.key}: {model.path.name}, {model.path.stat().st_size / 1e6:.1f} MB, "
        f"labels {', '.join(model.labels)}, {model.threads['threads']} ORT thread(s): {model.threads['chosen_by']}) at {url} - "
        f"ready in {time.perf_counter() - started:.2f} s; "
        f"tokenizer check {_check_line(model.tokenizer_check)}", file=sys.stderr, flush=True))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=config.drain_seconds or None))
    # uvicorn drains, then re-raises the signal it caught; with these handlers that ends the process with 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    print(f"tfkit: stopped serving {url}", file=sys.stderr, flush=True)
    return 0


def _check_line(check: dict) -> str:
    if check.get("agreement") is None:
        return "NOT DONE (no check file)"
    return f"{100 * check['agreement']:.2f}% identical ids on {check['texts']} texts"


def main(argv: list[str] | None = None) -> int:
    """`python -m tfkit.serve EXPORT_DIR ...`: the same command as `tfkit serve`, in a process without TensorFlow."""
    import argparse

    from tfkit.commands.serve import DESCRIPTION, add_serve_arguments

    parser = argparse.ArgumentParser(prog="python -m tfkit.serve", description=DESCRIPTION)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="tfkit: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except TfkitError as e:
        print(f"tfkit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
