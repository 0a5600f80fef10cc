"""One benchmark row in a fresh process: `python -m tfkit.bench_worker SPEC.json`.

A fresh process per row and thread count, so that its peak RSS is what loading that one file
and running its latency loop costs, and so TensorFlow's thread pools (fixed when TensorFlow
starts) really have the requested size. The parent (`tfkit.bench`) writes the spec and the
pre-tokenized test inputs; this process imports only the runtime it measures (TensorFlow
only for Keras rows and string-in TFLite files, whose tokenizer ops are tensorflow-text's).
Results go to the spec's `out` JSON, the probabilities to its `predictions` .npy.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import resource
import sys
import time

import numpy as np

from tfkit.timing import measure


# What `tfkit.runtimes` imports when it loads such a file; other runtimes pay their imports in load time.
PREIMPORT = {("tflite", False): ("ai_edge_litert.interpreter",), ("tflite", True): ("ai_edge_litert.interpreter", "tensorflow_text"),
             ("onnx", False): ("onnxruntime",), ("onnx", True): ("onnxruntime", "onnxruntime_extensions")}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _rss_mb() -> float:
    """This process's peak resident set so far, in MB.

    VmHWM, not `getrusage`: Linux carries ru_maxrss across exec, so a child started from a parent
    that holds TensorFlow would report the parent's peak.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _os_threads() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def load_keras(model_dir: str, threads: int):
    """The float32 Keras model as a compiled `tf.function` returning probabilities; TF's pools set first."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    # One op at a time, each with `threads` threads: a BERT forward pass is a chain of ops, and a
    # second inter-op thread on these cores only competes with the intra-op pool.
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from tfkit.classifier import Classifier
    from tfkit.export import float32_model

    start = time.perf_counter()
    model = float32_model(Classifier.load(model_dir).model)
    forward = tf.function(lambda x: tf.nn.softmax(model(x, training=False)), reduce_retracing=True)
    load_ms = 1000 * (time.perf_counter() - start)
    info = {"runtime": "keras", "runtime_version": f"{_version('keras')} (tensorflow {tf.__version__})",
            "threads_applied": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                                "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}}
    return (lambda inputs: forward(inputs).numpy()), load_ms, info


def load_file(path: str, runtime: str, text: bool, threads: int):
    """The exported file through `tfkit.runtimes.load`, whatever runtime the manifest names."""
    from tfkit import runtimes

    start = time.perf_counter()
    model = runtimes.load(path, runtime, text, threads)
    load_ms = 1000 * (time.perf_counter() - start)
    info = {"runtime": model.name or runtime, "runtime_version": _version(model.name) if model.name else None,
            "threads_applied": {"num_threads": threads}}
    session = getattr(model, "session", None)
    if session is not None:  # ONNX Runtime reads its settings back
        options = session.get_session_options()
        info["threads_applied"] = {"intra_op": options.intra_op_num_threads, "inter_op": options.inter_op_num_threads}
    return model.predict, load_ms, info


def inputs_of(spec: dict):
    """Batch-1 inputs at natural length, and length-sorted batches with dynamic padding (indices, inputs)."""
    data = np.load(spec["inputs"])
    ids, mask, lengths = data["token_ids"], data["padding_mask"], data["lengths"]
    texts = json.loads(open(spec["texts"], encoding="utf-8").read()) if spec["text"] else None

    def make(idx):
        if spec["text"]:
            return np.asarray([texts[i] for i in idx], dtype=object)
        longest = int(lengths[idx].max())
        return {"token_ids": ids[idx, :longest], "padding_mask": mask[idx, :longest]}

    singles = [make(np.array([i])) for i in range(len(lengths))]
    order = np.argsort(lengths, kind="stable")
    batches = [(order[s:s + spec["batch_size"]], make(order[s:s + spec["batch_size"]]))
               for s in range(0, len(order), spec["batch_size"])]
    return singles, batches, len(lengths)


def run(spec: dict) -> dict:
    """Load, first inference, latency loop (then RSS), fixed lengths, throughput and predictions."""
    threads = spec["threads"]
    start = time.perf_counter()
    for module in PREIMPORT.get((spec["runtime"], spec["text"]), ()):  # imports are startup, not load time
        importlib.import_module(module)
    if spec["kind"] == "keras":
        predict, load_ms, info = load_keras(spec["path"], threads)
    else:
        predict, load_ms, info = load_file(spec["path"], spec["runtime"], spec["text"], threads)
    startup_ms = 1000 * (time.perf_counter() - start) - load_ms  # imports, paid once per process
    singles, batches, n = inputs_of(spec)

    start = time.perf_counter()
    predict(singles[0])
    first_ms = 1000 * (time.perf_counter() - start)

    timing = measure(predict, singles, warmup=spec["warmup"], iterations=spec["iterations"],
                     budget_s=spec["budget_s"], min_iterations=spec["min_iterations"])
    result = {**info, "threads": threads, "load_ms": load_ms, "startup_ms": startup_ms, "first_inference_ms": first_ms,
              "latency_ms": timing.stats(), "latency_settings": timing.describe(),
              "peak_rss_mb": _rss_mb(), "os_threads": _os_threads(), "pid": os.getpid()}

    result["fixed_length_ms"] = {}
    if not spec["text"]:
        for length in spec["lengths"]:
            ids = np.full([1, length], spec["cls_id"], np.int32)
            fixed = measure(predict, [{"token_ids": ids, "padding_mask": np.ones_like(ids)}], warmup=2,
                            iterations=spec["fixed_iterations"], budget_s=spec["budget_s"] / 4, min_iterations=5)
            result["fixed_length_ms"][str(length)] = {**fixed.stats(), **fixed.describe()}

    probabilities = None

    def one_pass(_):
        nonlocal probabilities
        out = None
        for idx, batch in batches:
            p = np.asarray(predict(batch))
            if out is None:
                out = np.zeros([n, p.shape[-1]], np.float32)
            out[idx] = p
        probabilities = out

    for _, batch in batches[:2] + batches[-1:]:  # warm-up: the shortest and the longest shapes
        predict(batch)
    passes = measure(one_pass, warmup=0, iterations=spec["throughput_passes"])  # the first pass gives the predictions
    result["throughput"] = {"texts_per_s": n / (passes.median / 1000), "batch_size": spec["batch_size"], "texts": n,
                            "padding": "length-sorted, each batch padded to its longest", **passes.describe(),
                            "warmup": "3 batches"}
    result["peak_rss_mb_end"] = _rss_mb()
    np.save(spec["predictions"], probabilities)
    return result


def _matmul_session(m: int, k: int, n: int, int8: bool, threads: int):
    """ONNX Runtime running one MatMul (float32) or MatMulInteger (uint8 x int8, the dynamic-int8 kernel)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        b = rng.integers(-127, 128, [k, n], dtype=np.int8)
        node, a_type, out_type = helper.make_node("MatMulInteger", ["a", "b"], ["c"]), TensorProto.UINT8, TensorProto.INT32
    else:
        b = rng.standard_normal([k, n]).astype(np.float32)
        node, a_type, out_type = helper.make_node("MatMul", ["a", "b"], ["c"]), TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "matmul", [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("c", out_type, [m, n])], [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, [m, k], dtype=np.uint8) if int8 else rng.standard_normal([m, k]).astype(np.float32)
    return lambda _: session.run(None, {"a": a})


def peak(spec: dict) -> dict:
    """GFLOP/s of dense matmuls, best call of a short budget: numpy and ONNX Runtime float32, ORT int8."""
    rng = np.random.default_rng(0)
    result = {}
    for m, k, n in spec["shapes"]:
        flop = 2 * m * k * n
        a, b = rng.standard_normal([m, k]).astype(np.float32), rng.standard_normal([k, n]).astype(np.float32)
        calls = {"numpy_fp32": lambda _: a @ b,
                 "onnxruntime_fp32": _matmul_session(m, k, n, False, spec["threads"]),
                 "onnxruntime_int8": _matmul_session(m, k, n, True, spec["threads"])}
        result[f"{m}x{k}x{n}"] = {name: flop / (measure(call, warmup=3, budget_s=spec["budget_s"], min_iterations=5).best / 1000) / 1e9
                                  for name, call in calls.items()}
    return result


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[0]).read())
    from tfkit.errors import TfkitError

    try:
        result = peak(spec) if spec["kind"] == "peak" else run(spec)
    except TfkitError as e:  # e.g. a runtime that cannot load the file: the row says so, the bench goes on
        print(f"tfkit: error: {e}", file=sys.stderr)
        return 2
    with open(spec["out"], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv[1:]))
