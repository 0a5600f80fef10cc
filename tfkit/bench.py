"""The benchmark: every format of a model, and its teacher's, measured side by side on this CPU.

`bench()` takes a verified export directory and measures one row per file (plus the float32
Keras models of the student and its teacher, and the teacher's own exports, so the gain of
distillation is separated from the gain of export) and per thread count. Every row runs in a
fresh process (`tfkit.bench_worker`): its peak RSS is that file's, and TensorFlow's thread
pools, fixed when TensorFlow starts, really get the requested size. Every timing comes from
`tfkit.timing.measure`. Ratios are taken within this one run: the teacher's Keras model is
the baseline of every speed-up, the teacher's file of the same format the second one.
Writes bench.json (every raw figure), bench.md and bench.png, atomically.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from tfkit.artifacts import atomic_dir, check_output, package_versions, read_json, write_json
from tfkit.errors import TfkitError

log = logging.getLogger("tfkit")

TEACHER_FORMATS = ("tflite-fp32", "tflite-int8", "onnx", "onnx-int8")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")
LIBRARIES = ("numpy", "tensorflow", "keras", "keras-hub", "tensorflow-text", "ai-edge-litert", "onnxruntime",
             "onnxruntime-extensions", "onnx", "tf2onnx")
MACHINE_PEAK_SHAPE = (1024, 1024, 1024)


def parse_ints(text: str | list[int] | tuple[int, ...], flag: str) -> list[int]:
    """`1,2` -> [1, 2]: positive integers, sorted, no duplicates; anything else is a one-line error."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = sorted({int(v) for v in items if str(v).strip()})
    except ValueError:
        raise TfkitError(f"{flag} takes comma-separated positive integers (got '{text}')") from None
    if not values or values[0] < 1:
        raise TfkitError(f"{flag} takes comma-separated positive integers (got '{text}')")
    return values


def default_out(export_dir: str | Path) -> Path:
    """Where `tfkit bench EXPORT_DIR` writes without --out: bench/<export dir name>."""
    return Path("bench") / Path(export_dir).resolve().name


def read_export(export_dir: str | Path) -> dict:
    """manifest.json of a complete export directory; a missing, half-written or altered one is a TfkitError."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise TfkitError(f"export directory {export_dir} not found; write one with `tfkit export MODEL_DIR`")
    if not (export_dir / "manifest.json").is_file():
        raise TfkitError(f"{export_dir} is not a complete tfkit export (no manifest.json); run `tfkit export` again")
    manifest = read_json(export_dir / "manifest.json")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), dict) or "files" not in manifest:
        raise TfkitError(f"{export_dir / 'manifest.json'} is not a tfkit export manifest")
    if not manifest["artifacts"]:
        raise TfkitError(f"{export_dir} holds no verified files (every format failed; see its manifest.json)")
    for key, artifact in manifest["artifacts"].items():
        path, want = export_dir / artifact["file"], manifest["files"].get(artifact["file"], {}).get("size")
        have = path.stat().st_size if path.is_file() else None
        if have != want:
            raise TfkitError(f"{path} is missing or incomplete ({have} bytes, manifest.json says {want}); run `tfkit export` again")
    return manifest


def architecture(model_dir: str | Path) -> dict:
    """Layers, widths and position capacity of the BERT inside model.keras, read from its saved config (no TF)."""
    with zipfile.ZipFile(Path(model_dir) / "model.keras") as z:
        config = json.loads(z.read("config.json"))
    keys = ("num_layers", "hidden_dim", "intermediate_dim", "num_heads", "max_sequence_length", "vocabulary_size")
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if all(k in node for k in keys):
                return {k: int(node[k]) for k in keys}
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise TfkitError(f"{model_dir}/model.keras holds no BERT backbone config")


def flops(arch: dict, length: int, classes: int) -> int:
    """Multiply-adds x 2 of one text of `length` tokens: Q/K/V/output and feed-forward matmuls, attention, pooler, head."""
    h, i = arch["hidden_dim"], arch["intermediate_dim"]
    per_layer = 2 * length * (4 * h * h + 2 * h * i) + 4 * length * length * h
    return arch["num_layers"] * per_layer + 2 * h * h + 2 * h * classes


def machine() -> dict:
    """CPU model, the flags that matter for these kernels, cores, load, library versions."""
    import platform

    model, flags = platform.processor(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = package_versions(LIBRARIES)
    return {"cpu": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS},
            "python": sys.version.split()[0], "libraries": versions, "load_average_start": os.getloadavg()[0]}


class Network:
    """One model directory (teacher or student): its tokenizer, test split and pre-tokenized inputs."""

    def __init__(self, role: str, model_dir: Path, data: str | None, scratch: Path, limit: int, encoding: str = "utf-8"):
        import tensorflow as tf

        from tfkit.classifier import CONFIG_FILE, MODEL_FILE, Classifier, ModelConfig
        from tfkit.preprocess import WordPieceTokenizer

        if not (model_dir / MODEL_FILE).is_file():
            raise TfkitError(f"{role} model directory {model_dir} not found (no {MODEL_FILE}); pass --{role} DIR")
        self.role, self.dir = role, model_dir
        self.config = read_json(model_dir / CONFIG_FILE, ModelConfig)
        self.tokenizer = WordPieceTokenizer.from_config(self.config.tokenizer, model_dir)
        model = Classifier(None, self.tokenizer, self.config, model_dir)
        test = model.splits(data, encoding).test if data else model.heldout()[1]
        self.texts, self.labels = test.texts[:limit], np.asarray(test.labels[:limit])
        self.arch = architecture(model_dir)
        encoded = {k: v.numpy().astype(np.int32) for k, v in self.tokenizer.encode(tf.constant(self.texts)).items()}
        self.inputs, self.texts_file = scratch / f"{role}_inputs.npz", scratch / f"{role}_texts.json"
        np.savez(self.inputs, **encoded, lengths=encoded["padding_mask"].sum(1))
        self.texts_file.write_text(json.dumps(self.texts, ensure_ascii=False), encoding="utf-8")
        self.lengths = encoded["padding_mask"].sum(1)

    def describe(self) -> dict:
        return {"dir": str(self.dir), "kind": self.config.kind, "architecture": self.arch, "labels": self.config.labels,
                "max_length": self.tokenizer.max_length, "test_texts": len(self.texts),
                "natural_length": {"mean": float(self.lengths.mean()), "p50": float(np.median(self.lengths)),
                                   "max": int(self.lengths.max())},
                "keras_bytes": (self.dir / "model.keras").stat().st_size}


def rows_of(network: Network, export_dir: Path | None, manifest: dict | None) -> list[dict]:
    """The Keras float32 row, then one row per verified file of the manifest, in its order."""
    from tfkit.export import FORMATS

    rows = [{"network": network.role, "format": "keras-fp32", "kind": "keras", "runtime": "keras", "precision": "fp32",
             "text_input": False, "file": "model.keras", "path": str(network.dir),
             "size_bytes": (network.dir / "model.keras").stat().st_size}]
    for key, a in (manifest or {}).get("artifacts", {}).items():
        # the runtime key `runtimes.load` takes; the manifest's `runtime` is the loaded runtime's name
        runtime = FORMATS[key].runtime if key in FORMATS else a["runtime"]
        rows.append({"network": network.role, "format": key, "kind": "file", "runtime": runtime,
                     "precision": a.get("precision"), "text_input": bool(a.get("text_input")), "file": a["file"],
                     "path": str(export_dir / a["file"]), "size_bytes": manifest["files"][a["file"]]["size"]})
    return rows


def _lengths_for(network: Network, lengths: list[int]) -> list[int]:
    """The requested fixed lengths the network's position table can take (its capacity itself if one was cut)."""
    capacity = network.arch["max_sequence_length"]
    kept = [n for n in lengths if n <= capacity]
    return kept + [capacity] if len(kept) < len(lengths) and capacity not in kept else kept


def _worker(spec: dict, scratch: Path, name: str, threads: int) -> tuple[dict | None, str | None]:
    """Runs `tfkit.bench_worker` on `spec` in a fresh process; (result, None) or (None, its one-line error)."""
    spec = {**spec, "out": str(scratch / f"{name}.json"), "predictions": str(scratch / f"{name}.npy")}
    (scratch / f"{name}.spec.json").write_text(json.dumps(spec))
    package_root = str(Path(__file__).resolve().parent.parent)  # the tfkit this process runs, also in the child
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    try:
        done = subprocess.run([sys.executable, "-m", "tfkit.bench_worker", str(scratch / f"{name}.spec.json")],
                              capture_output=True, text=True, env=env, timeout=1800)
    except subprocess.TimeoutExpired:
        return None, "timed out after 30 minutes"
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return None, (lines[-1][:300] if lines else f"exit code {done.returncode}")
    result = json.loads(Path(spec["out"]).read_text())
    if spec["kind"] != "peak":
        result["_probabilities"] = np.load(spec["predictions"])
    return result, None


def bench(export_dir: str | Path, out: str | Path | None = None, teacher: str | Path | None = None,
          student: str | Path | None = None, data: str | None = None, encoding: str = "utf-8", threads=(1,), lengths=(16, 64, 128),
          budget_s: float = 2.0, iterations: int | None = None, warmup: int = 10, batch_size: int = 32,
          texts: int = 2000, teacher_export: str | Path | None = None, teacher_formats=TEACHER_FORMATS,
          throughput_passes: int = 2, progress: bool = True) -> dict:
    """Measures every verified file in `export_dir` and the baselines; writes bench.json/.md/.png into `out`.

    Args:
        export_dir: a verified export directory (`tfkit export`), of a student or of a teacher.
        out: where the three files go (default `bench/<export dir name>`); replaced atomically.
        teacher, student: model directories; by default the ones the manifest and the student's config name.
        data: measure accuracy on this file's test split instead of the model's own (in `encoding`).
        threads: thread counts, each applied to every runtime in its own fresh process.
        lengths: fixed sequence lengths for id-level files (capped at the network's position capacity).
        budget_s: seconds of batch-1 timing per row (after `warmup` calls); `iterations` fixes the count instead.
        texts: at most this many test texts.
        teacher_export: where the teacher's own files are built (reused if already there); default a temporary dir.
        teacher_formats: which teacher formats to build (`tfkit.export` keys).
    Returns:
        The bench.json data: machine, settings, networks, peaks and rows.
    """
    from tqdm import tqdm

    from tfkit import bench_report

    threads, lengths = parse_ints(threads, "--threads"), parse_ints(lengths, "--lengths")
    if budget_s <= 0 or (iterations is not None and iterations < 1):
        raise TfkitError("--budget must be positive and --iterations at least 1")
    export_dir = Path(export_dir)
    manifest = read_export(export_dir)
    out = Path(out) if out is not None else default_out(export_dir)
    check_output(out, "bench", inputs=(export_dir, teacher, student, data))
    main_dir = Path(student) if student else Path(manifest["model"]["source"])
    settings = {"export_dir": str(export_dir), "threads": threads, "lengths": lengths, "budget_s": budget_s,
                "iterations": iterations, "warmup": warmup, "batch_size": batch_size, "throughput_passes": throughput_passes,
                "data": data, "process": "one fresh process per row and thread count (tfkit.bench_worker)"}
    result = {"machine": machine(), "settings": settings, "networks": {}, "peak": {}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="tfkit-bench-") as scratch:
        scratch = Path(scratch)
        networks, sources = {}, []
        main = Network("student", main_dir, data, scratch, texts, encoding)
        if main.config.kind == "teacher":  # a teacher's own export: it is the baseline
            main.role = "teacher"
            networks["teacher"] = main
            sources.append((main, export_dir, manifest))
        else:
            teacher_dir = Path(teacher) if teacher else Path(main.config.training.get("teacher") or "")
            networks["teacher"] = Network("teacher", teacher_dir, data, scratch, texts, encoding)
            teacher_manifest, teacher_out = _teacher_exports(teacher_dir, teacher_export, teacher_formats, scratch)
            result["teacher_export"] = {"dir": str(teacher_export) if teacher_export else None,
                                        "formats": list(teacher_formats), "failed": teacher_manifest.get("failed", {})}
            sources += [(networks["teacher"], teacher_out, teacher_manifest), (main, export_dir, manifest)]
            networks["student"] = main
        jobs = [(row, t) for network, d, m in sources for row in rows_of(network, d, m) for t in threads]
        result["networks"] = {role: n.describe() for role, n in networks.items()}
        result["peak"] = _peaks(networks, lengths, threads, scratch)
        for i, (row, t) in enumerate(tqdm(jobs, desc="bench", unit="row", disable=not progress)):
            network = networks[row["network"]]
            spec = {**row, "text": row["text_input"], "threads": t, "inputs": str(network.inputs),
                    "texts": str(network.texts_file), "lengths": _lengths_for(network, lengths), "budget_s": budget_s,
                    "iterations": iterations, "warmup": warmup, "min_iterations": 20, "fixed_iterations": iterations,
                    "batch_size": batch_size, "throughput_passes": throughput_passes, "cls_id": network.tokenizer.cls_id}
            measured, error = _worker(spec, scratch, f"row{i}", t)
            if error:
                log.warning("bench: %s %s (%d thread(s)) not measured: %s", row["network"], row["file"], t, error)
            result["rows"].append({**{k: v for k, v in row.items() if k != "kind"}, "threads": t, "error": error,
                                   **(measured or {})})
    _score(result, networks)
    result["machine"]["load_average_end"] = os.getloadavg()[0]
    with atomic_dir(out, "bench") as tmp:
        write_json(tmp / "bench.json", result)
        (tmp / "bench.md").write_text(bench_report.markdown(result) + "\n")
        bench_report.plot(result, tmp / "bench.png")
    result["out"] = str(out)
    return result


def _teacher_exports(teacher_dir: Path, where: str | Path | None, formats, scratch: Path) -> tuple[dict, Path]:
    """The teacher's own verified files: reused from `where` when it already holds them, else exported there."""
    from tfkit.export import ExportError, export

    out = Path(where) if where else scratch / "teacher_export"
    if (out / "manifest.json").is_file():
        try:
            existing = read_export(out)
        except TfkitError:
            existing = None
        newer = (out / "manifest.json").stat().st_mtime >= (teacher_dir / "model.keras").stat().st_mtime  # not a retrained teacher
        if existing and newer and Path(existing["model"]["source"]).resolve() == teacher_dir.resolve() \
                and set(formats) <= set(existing["artifacts"]) | set(existing.get("failed", {})):
            return existing, out
    try:
        return export(teacher_dir, out, list(formats), progress=False), out
    except ExportError as e:  # a teacher file that fails its gate is left out of the comparison, and recorded
        log.warning("bench: teacher export: %s", e)
        return e.manifest, out


def _peaks(networks: dict, lengths: list[int], threads: list[int], scratch: Path) -> dict:
    """Same-run matmul peaks per thread count: each network's feed-forward shape at each length, and 1024^3."""
    shapes = sorted({(n, net.arch["hidden_dim"], net.arch["intermediate_dim"]) for net in networks.values()
                     for n in _lengths_for(net, lengths)} | {MACHINE_PEAK_SHAPE})
    peaks = {}
    for t in threads:
        measured, error = _worker({"kind": "peak", "shapes": shapes, "threads": t, "budget_s": 0.3}, scratch, f"peak{t}", t)
        peaks[str(t)] = measured or {"error": error}
    return peaks


def _score(result: dict, networks: dict) -> None:
    """Accuracy, macro-F1, agreement with the same network's Keras row, ratios and efficiency, per row."""
    from tfkit.classifier import classification_metrics

    rows = [r for r in result["rows"] if not r["error"]]
    keras = {(r["network"], r["threads"]): r for r in rows if r["format"] == "keras-fp32"}
    teacher_files = {(r["format"], r["threads"]): r for r in rows if r["network"] == "teacher"}
    for r in rows:
        network = networks[r["network"]]
        predicted = r.pop("_probabilities").argmax(1)
        r["_predicted"] = predicted
        metrics = classification_metrics(network.labels, predicted, network.config.labels)
        r["accuracy"], r["macro_f1"] = metrics["accuracy"], metrics["macro_f1"]
    for r in rows:
        own = keras.get((r["network"], r["threads"]))
        r["agreement"] = float(np.mean(r["_predicted"] == own["_predicted"])) if own else None
        base, same = keras.get(("teacher", r["threads"])), teacher_files.get((r["format"], r["threads"]))
        if r["network"] == "teacher" and r["format"] != "keras-fp32":
            same = None  # a teacher file against itself says nothing
        p50 = r["latency_ms"]["p50"]
        r["speedup_vs_teacher_keras"] = base["latency_ms"]["p50"] / p50 if base else None
        r["smaller_than_teacher_keras"] = base["size_bytes"] / r["size_bytes"] if base else None
        r["speedup_vs_teacher_same_format"] = same["latency_ms"]["p50"] / p50 if same and r["network"] != "teacher" else None
        r["smaller_than_teacher_same_format"] = same["size_bytes"] / r["size_bytes"] if same and r["network"] != "teacher" else None
        r["efficiency"] = _efficiency(r, network, result["peak"].get(str(r["threads"]), {}))
    for r in rows:
        r.pop("_predicted")
    for r in result["rows"]:
        r.pop("_probabilities", None)


def _efficiency(row: dict, network: Network, peak: dict) -> dict:
    """GFLOP/s at each fixed length, and the share of the same-run matmul peak of the same shape and precision."""
    arch, classes = network.arch, len(network.config.labels)
    out = {}
    for length, stats in row.get("fixed_length_ms", {}).items():
        work = flops(arch, int(length), classes)
        achieved = work / (stats["p50"] / 1000) / 1e9
        shape = peak.get(f"{length}x{arch['hidden_dim']}x{arch['intermediate_dim']}", {})
        fp32_peak = max((v for k, v in shape.items() if k.endswith("fp32")), default=None)
        ref = shape.get("onnxruntime_int8") if row.get("precision") == "int8" else fp32_peak
        out[length] = {"flops": work, "gflops": achieved, "peak_gflops": ref, "of_peak": achieved / ref if ref else None}
    return out
