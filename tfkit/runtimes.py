"""Exported files loaded by the runtimes an app uses: LiteRT (ai-edge-litert), ONNX Runtime, MediaPipe Tasks.

Verification must run what ships, so nothing here touches TensorFlow or Keras: TFLite files
run in `ai_edge_litert`'s interpreter (string-in files with the tensorflow-text custom ops
registered), ONNX files in `onnxruntime` (string-in files with onnxruntime-extensions), the
MediaPipe file in MediaPipe's own TextClassifier, which tokenizes. Every exported model has one
output, `probabilities` [batch, classes]; id-level models take int32 `token_ids` and
`padding_mask` [batch, sequence], string-in models take `texts` [batch].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfkit import mediapipe_export
from tfkit.errors import TfkitError
from tfkit.timing import measure

SIGNATURE = "serve"


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """What the runtimes raise for a file or an input they reject: LiteRT's ValueError/RuntimeError and
    ONNX Runtime's own C++-backed exception classes (not subclasses of either)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    ort = tuple(v for v in vars(ort_state).values() if isinstance(v, type) and issubclass(v, Exception))
    return (ValueError, RuntimeError, *ort)


RUNTIME_ERRORS = _runtime_errors()


class Runtime:
    """One exported file, loaded once: `predict(inputs)` -> probabilities; `signature` as loaded, for the manifest."""

    name = ""
    signature: dict  # {"inputs": [...], "outputs": [...]}, read before any call resizes a tensor

    def predict(self, inputs) -> np.ndarray:
        raise NotImplementedError

    def latency_ms(self, inputs, repeats: int = 5) -> float:
        """Median wall time of one call in milliseconds, after one warm-up call (`tfkit.timing.measure`)."""
        return measure(self.predict, [inputs], warmup=1, iterations=repeats).median


def _spec(name: str, dtype: str, shape) -> dict:
    """A tensor as the manifest records it; dynamic dimensions are null."""
    dims = [None if d is None or isinstance(d, str) or d < 0 else int(d) for d in shape]
    return {"name": name, "dtype": dtype, "shape": dims}


class LiteRT(Runtime):
    """A .tflite file in the LiteRT interpreter; `text=True` registers the tensorflow-text custom ops."""

    name = "ai-edge-litert"

    def __init__(self, path: str | Path, text: bool = False, threads: int = 1, signature: str = SIGNATURE):
        from ai_edge_litert import interpreter as litert

        from tfkit.quiet import filtered_native_stderr

        try:
            with filtered_native_stderr():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate for CPU." line
                if text:
                    import tensorflow_text

                    self.interpreter = litert.InterpreterWithCustomOps(
                        model_path=str(path), num_threads=threads,
                        custom_op_registerers=tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS)
                else:
                    self.interpreter = litert.Interpreter(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()  # applies the delegate, which says so, here rather than on the first call
                self.runner = self.interpreter.get_signature_runner(signature)
        except (ValueError, RuntimeError) as e:
            raise TfkitError(f"{Path(path).name}: LiteRT cannot load it: {str(e).splitlines()[0]}") from None
        dtype = lambda t: "string" if t in (np.bytes_, np.object_) else np.dtype(t).name
        describe = lambda details: [_spec(name, dtype(t["dtype"]), t["shape_signature"]) for name, t in sorted(details.items())]
        self.signature = {"inputs": describe(self.runner.get_input_details()), "outputs": describe(self.runner.get_output_details())}

    def predict(self, inputs) -> np.ndarray:
        if not isinstance(inputs, dict):
            inputs = {"texts": np.asarray(inputs, dtype=object)}
        return self.runner(**inputs)["probabilities"]


class OnnxRuntime(Runtime):
    """An .onnx file in ONNX Runtime; `text=True` registers the onnxruntime-extensions custom ops."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, text: bool = False, threads: int = 1, spin: bool = True):
        import onnxruntime as ort

        self.path = str(path)
        self.options = options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        if not spin:  # idle ORT threads sleep instead of busy-waiting: a server's other threads need the cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if text:
            import onnxruntime_extensions

            options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except RUNTIME_ERRORS as e:
            raise TfkitError(f"{Path(path).name}: ONNX Runtime cannot load it: {str(e).splitlines()[0][:300]}") from None
        dtype = lambda t: {"float": "float32", "double": "float64"}.get(t[len("tensor("):-1], t[len("tensor("):-1])
        describe = lambda args: [_spec(a.name, dtype(a.type), a.shape) for a in sorted(args, key=lambda a: a.name)]
        self.signature = {"inputs": describe(self.session.get_inputs()), "outputs": describe(self.session.get_outputs())}

    def predict(self, inputs) -> np.ndarray:
        if not isinstance(inputs, dict):
            inputs = {"texts": np.asarray(inputs, dtype=object)}
        return self.session.run(["probabilities"], inputs)[0]

    def token_ids(self, texts: list[str]) -> np.ndarray:
        """What a string-in file's own tokenizer makes of `texts`: its internal `token_ids`, exposed as an output."""
        if not hasattr(self, "_tokens"):
            import onnx
            import onnxruntime as ort

            model = onnx.load(self.path)
            model.graph.output.append(onnx.helper.make_tensor_value_info("token_ids", onnx.TensorProto.INT32, None))
            self._tokens = ort.InferenceSession(model.SerializeToString(), self.options, providers=["CPUExecutionProvider"])
        return self._tokens.run(["token_ids"], {"texts": np.asarray(texts, dtype=object)})[0]

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)


class MediaPipe(Runtime):
    """A .tflite with TFLite Model Metadata in MediaPipe Tasks' TextClassifier: strings in, MediaPipe tokenizes.

    MediaPipe classifies one text a call and returns its categories sorted by score; `predict`
    puts them back in the model's label order. Its Python API has no thread setting (`threads`
    is accepted for `load`'s sake). `signature` is the file's own tensors, as LiteRT reads them.
    """

    name = "mediapipe"

    def __init__(self, path: str | Path, text: bool = True, threads: int = 1):
        self.path = Path(path)
        self.signature = LiteRT(path, signature=mediapipe_export.SIGNATURE).signature
        self.classes = self.signature["outputs"][0]["shape"][-1]
        self.classifier = self._open(model_asset_path=str(path))

    def _open(self, **source):
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.text import text_classifier

        from tfkit.quiet import filtered_native_stderr

        options = text_classifier.TextClassifierOptions(base_options=BaseOptions(**source), max_results=-1)
        try:
            with filtered_native_stderr():  # its graph's start: glog's pre-init notice, the feedback manager, XNNPACK
                return text_classifier.TextClassifier.create_from_options(options)
        except (ValueError, RuntimeError, OSError, IndexError) as e:  # what MediaPipe maps its C++ status codes to
            raise TfkitError(f"{self.path.name}: MediaPipe's TextClassifier cannot load it: {str(e).splitlines()[0][:300]}") from None

    def _scores(self, classifier, text: str, size: int) -> np.ndarray:
        scores = np.zeros([size], np.float32)
        for category in classifier.classify(text).classifications[0].categories:
            scores[category.index] = category.score
        return scores

    def predict(self, inputs) -> np.ndarray:
        if isinstance(inputs, dict):
            raise TfkitError(f"{self.path.name}: MediaPipe takes texts, not token ids")
        return np.stack([self._scores(self.classifier, text, self.classes) for text in inputs]).reshape(-1, self.classes)

    def token_ids(self, texts: list[str]) -> list[np.ndarray]:
        """The ids MediaPipe's tokenizer fed the model for each text ([CLS] ... [SEP], no padding).

        Read by running a probe (`mediapipe_export.token_probe`: the file's tokenizer metadata and
        vocabulary on a model that outputs its input) in MediaPipe's own TextClassifier.
        """
        if not hasattr(self, "_probe"):
            self._probe = self._open(model_asset_buffer=mediapipe_export.token_probe(self.path.read_bytes()))
        length = self.signature["inputs"][0]["shape"][-1]
        fed = [self._scores(self._probe, text, length) for text in texts]
        return [np.rint(f[f > 0.5] - 1).astype(np.int64) for f in fed]

    def close(self) -> None:
        """Shuts MediaPipe's graphs down now (at interpreter exit its own finalizer fails noisily)."""
        for classifier in (self.__dict__.pop("classifier", None), self.__dict__.pop("_probe", None)):
            if classifier is not None:
                classifier.close()

    def __del__(self):
        self.close()


RUNTIMES = {"tflite": LiteRT, "onnx": OnnxRuntime, "mediapipe": MediaPipe}


def load(path: str | Path, runtime: str, text: bool = False, threads: int = 1) -> Runtime:
    """The file at `path` in its runtime (a key of RUNTIMES: `tflite`, `onnx`, `mediapipe`)."""
    if runtime not in RUNTIMES:
        raise TfkitError(f"{Path(path).name}: no runtime '{runtime}' in this tfkit (known: {', '.join(RUNTIMES)})")
    return RUNTIMES[runtime](path, text, threads)
