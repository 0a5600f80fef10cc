"""Exported files loaded by the runtimes an app uses: LiteRT (ai-edge-litert) and ONNX Runtime.

Verification must run what ships, so nothing here touches TensorFlow or Keras: TFLite files
run in `ai_edge_litert`'s interpreter (string-in files with the tensorflow-text custom ops
registered), ONNX files in `onnxruntime` (string-in files with onnxruntime-extensions).
Every exported model has one output, `probabilities` [batch, classes]; id-level models take
int32 `token_ids` and `padding_mask` [batch, sequence], string-in models take `texts` [batch].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfkit.errors import TfkitError
from tfkit.timing import measure

SIGNATURE = "serve"


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

    def __init__(self, path: str | Path, text: bool = False, threads: int = 1):
        from ai_edge_litert import interpreter as litert

        try:
            if text:
                import tensorflow_text

                self.interpreter = litert.InterpreterWithCustomOps(
                    model_path=str(path), num_threads=threads,
                    custom_op_registerers=tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS)
            else:
                self.interpreter = litert.Interpreter(model_path=str(path), num_threads=threads)
            self.runner = self.interpreter.get_signature_runner(SIGNATURE)
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

    def __init__(self, path: str | Path, text: bool = False, threads: int = 1):
        import onnxruntime as ort

        self.path = str(path)
        self.options = options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        if text:
            import onnxruntime_extensions

            options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types from C++
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


def load(path: str | Path, runtime: str, text: bool = False, threads: int = 1) -> Runtime:
    """The file at `path` in its runtime (`tflite` or `onnx`)."""
    return (LiteRT if runtime == "tflite" else OnnxRuntime)(path, text, threads)
