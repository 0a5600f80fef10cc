"""Export a model directory to verified TFLite and ONNX files, with a manifest.

Every file comes from one float32 SavedModel written by Keras' `ExportArchive` (handing a
Keras 3 model to `TFLiteConverter.from_keras_model` silently loses its weights): TFLite
variants are converted from it, ONNX through the tf2onnx command line. The string-in files
carry the tokenizer: TFLite runs the same `WordPieceTokenizer.encode` graph as training
(tensorflow-text custom ops, no Flex ops), ONNX puts onnxruntime-extensions' BertTokenizer
in a Loop over the batch in front of the classifier. Label names and tokenizer settings
are embedded in every file. `tfkit.verify` checks each file with its real runtime; a file
that fails is deleted and recorded in manifest.json, the others are kept, and `export`
raises `ExportError` (the CLI exits 2). The output directory appears atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfkit import onnx_graph
from tfkit.artifacts import atomic_dir, check_writable, file_sha256, write_json
from tfkit.classifier import Classifier
from tfkit.errors import TfkitError
from tfkit.runtimes import SIGNATURE
from tfkit.verify import THRESHOLDS, Reference, VerificationError, verify
from tfkit.wordpiece import write_check

OPSET = 17
CALIBRATION_TEXTS = 200
TOOLS = ("tensorflow", "keras", "keras-hub", "tensorflow-text", "ai-edge-litert", "tf2onnx", "onnx",
         "onnxruntime", "onnxruntime-extensions")


@dataclasses.dataclass(frozen=True)
class Format:
    """One exported file: where it runs, how it is quantized, whether it takes raw strings."""

    file: str
    runtime: str  # tflite | onnx
    quantize: str  # none | fp16 | dynamic-int8 | full-int8
    text: bool
    description: str

    @property
    def precision(self) -> str:
        """fp32, fp16 or int8."""
        return {"none": "fp32", "fp16": "fp16"}.get(self.quantize, "int8")

    @property
    def gate(self) -> str:
        """Which `verify.THRESHOLDS` apply: the precision's, or `ort-tokenizer` for a file whose
        tokenizer is another implementation than the one the model was trained with."""
        return "ort-tokenizer" if self.text and self.runtime == "onnx" else self.precision


FORMATS = {
    "tflite-fp32": Format("model_fp32.tflite", "tflite", "none", False, "float32"),
    "tflite-fp16": Format("model_fp16.tflite", "tflite", "fp16", False, "float16 weights, half the size"),
    "tflite-int8": Format("model_int8.tflite", "tflite", "dynamic-int8", False,
                          "int8 weights, dynamic-range activations (the default int8)"),
    "tflite-int8-full": Format("model_int8_full.tflite", "tflite", "full-int8", False,
                               "full integer (int8 activations too), calibrated on training texts; opt-in"),
    "tflite-text": Format("model_text.tflite", "tflite", "none", True, "raw strings in, tokenizer inside"),
    "tflite-text-int8": Format("model_text_int8.tflite", "tflite", "dynamic-int8", True,
                               "raw strings in, tokenizer inside, int8 weights"),
    "onnx": Format("model.onnx", "onnx", "none", False, "float32"),
    "onnx-int8": Format("model_int8.onnx", "onnx", "dynamic-int8", False, "int8 weights (ONNX Runtime dynamic quantization)"),
    "onnx-text": Format("model_text.onnx", "onnx", "none", True, "raw strings in, tokenizer inside"),
}


# Full-integer int8 is opt-in: on the default student it was 2.4x slower than dynamic-range int8
# (1.07 vs 0.44 ms a text) and agreed with float32 on 93.5% of labels (gate: 99%); int8
# softmax and LayerNorm cost a transformer too much. `--formats all` (or its name) still builds it.
DEFAULT_FORMATS = [key for key in FORMATS if key != "tflite-int8-full"]


class ExportError(TfkitError):
    """Some formats failed (conversion or verification); the others were written. `manifest` has the details."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def parse_formats(formats: str | list[str] | None) -> list[str]:
    """Format keys in FORMATS order; None -> DEFAULT_FORMATS, `all` -> every format; unknown names fail."""
    if formats is None:
        return list(DEFAULT_FORMATS)
    names = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    if names == ["all"]:
        return list(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise TfkitError(f"unknown format '{unknown[0] if unknown else ''}' (choose from all, {', '.join(FORMATS)})")
    return [key for key in FORMATS if key in names]


def export(model_dir: str | Path, out: str | Path | None = None, formats: str | list[str] | None = None,
           progress: bool = True) -> dict:
    """Writes the requested formats, each verified by its runtime, and manifest.json into `out`.

    Args:
        model_dir: a tfkit model directory (`models/teacher`, `models/student`).
        out: output directory (default `export/<model dir name>`); replaced atomically.
        formats: keys of FORMATS, as a list or a comma-separated string; None for DEFAULT_FORMATS, `all` for every one.
    Returns:
        The manifest.
    Raises:
        ExportError: a format failed; its file is absent, the rest and the manifest were written.
    """
    from tqdm import tqdm

    keys = parse_formats(formats)
    model_dir = Path(model_dir)
    out = Path(out) if out else Path("export") / model_dir.resolve().name
    check_writable(out)
    loaded = Classifier.load(model_dir)
    classifier = Classifier(float32_model(loaded.model), loaded.tokenizer, loaded.config, loaded.path)
    artifacts, failed = {}, {}
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="tfkit-export-") as scratch:
        splits = classifier.splits()
        reference = Reference.build(classifier, splits.test)
        builder = Builder(classifier, Path(scratch), splits.train.texts)
        for key in tqdm(keys, desc="export", unit="format", disable=not progress):
            fmt, path = FORMATS[key], tmp / FORMATS[key].file
            try:
                builder.write(key, path)
                artifacts[key] = {"file": fmt.file, **_describe(fmt), **verify(path, fmt.runtime, fmt.text, fmt.gate, reference)}
            except (VerificationError, BuildError) as e:
                path.unlink(missing_ok=True)
                failed[key] = str(e)
        classifier.tokenizer.save_vocab(tmp)
        write_check(reference.encode, reference.texts, tmp)  # lets a server without TensorFlow prove its tokenizer
        manifest = _manifest(classifier, model_dir, reference, artifacts, failed, tmp)
        write_json(tmp / "manifest.json", manifest)
    if failed:
        raise ExportError(f"{len(failed)} of {len(keys)} format(s) failed and were removed (see {out / 'manifest.json'}): "
                          + "; ".join(failed.values()), manifest)
    return manifest


class BuildError(TfkitError):
    """A converter failed on one format."""


def float32_model(model):
    """The model itself if it computes in float32, else a float32 copy: exported graphs are float32."""
    import keras

    if {layer.dtype_policy.name for layer in model.layers} | {model.dtype_policy.name} == {"float32"}:
        return model

    def as_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {k: as_float32(v) for k, v in node.items()}
        return [as_float32(v) for v in node] if isinstance(node, list) else node

    copy = keras.Model.from_config(as_float32(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


class Builder:
    """Converts one classifier to every format; shared intermediates (SavedModels, ONNX) are built once."""

    def __init__(self, classifier: Classifier, scratch: Path, train_texts: list[str]):
        self.classifier, self.scratch, self.train_texts = classifier, scratch, train_texts

    def write(self, key: str, path: Path) -> None:
        fmt = FORMATS[key]
        try:
            if fmt.runtime == "tflite":
                path.write_bytes(with_tflite_metadata(self.tflite(fmt), self.metadata(key)))
            else:
                import onnx

                model = self.onnx(fmt)
                model.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in self.metadata(key).items())
                onnx.save(model, path)
        except TfkitError as e:
            raise BuildError(f"{fmt.file}: {e}") from None
        except Exception as e:  # converters raise many kinds; one format failing must not stop the others
            raise BuildError(f"{fmt.file}: conversion failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from None

    def metadata(self, key: str) -> dict[str, str]:
        """What an app reads from the file itself: `labels` (one per line) and `tfkit` (JSON)."""
        fmt, tokenizer = FORMATS[key], self.classifier.tokenizer
        info = {"format": key, "labels": self.classifier.labels, "output": "probabilities",
                "inputs": ["texts"] if fmt.text else ["token_ids", "padding_mask"],
                "tokenizer": {"lowercase": tokenizer.lowercase, "max_length": tokenizer.max_length,
                              "vocab_size": len(tokenizer.vocab), "pad_id": tokenizer.pad_id,
                              "cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id},
                "tfkit_version": self.classifier.config.tfkit_version}
        return {"labels": "\n".join(self.classifier.labels), "tfkit": json.dumps(info, ensure_ascii=False)}

    def _archive(self, name: str, text: bool) -> Path:
        """A SavedModel with one `serve` endpoint returning probabilities, from token ids or from strings."""
        import keras

        model, tokenizer = self.classifier.model, self.classifier.tokenizer
        archive = keras.export.ExportArchive()
        archive.track(model)
        if text:
            archive.track(tokenizer.fast)
            signature = [tf.TensorSpec([None], tf.string, name="texts")]
            serve = lambda texts: {"probabilities": tf.nn.softmax(model(tokenizer.encode(texts), training=False))}
        else:
            signature = [{name: tf.TensorSpec([None, None], tf.int32, name=name) for name in ("token_ids", "padding_mask")}]
            serve = lambda inputs: {"probabilities": tf.nn.softmax(model(inputs, training=False))}
        archive.add_endpoint(SIGNATURE, serve, input_signature=signature)
        archive.write_out(str(self.scratch / name), verbose=False)
        return self.scratch / name

    @functools.cached_property
    def ids_saved_model(self) -> Path:
        return self._archive("saved_model_ids", text=False)

    @functools.cached_property
    def text_saved_model(self) -> Path:
        return self._archive("saved_model_text", text=True)

    def _calibration(self):
        """Representative inputs for full-integer quantization: training texts, one per batch, natural length."""
        rng = np.random.default_rng(0)
        picks = rng.choice(len(self.train_texts), min(CALIBRATION_TEXTS, len(self.train_texts)), replace=False)
        for i in picks:
            yield {k: v.numpy() for k, v in self.classifier.tokenizer.encode(tf.constant([self.train_texts[i]])).items()}

    def tflite(self, fmt: Format) -> bytes:
        """A new converter per file (a converter converts once)."""
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(self.text_saved_model if fmt.text else self.ids_saved_model), signature_keys=[SIGNATURE])
        if fmt.text:  # tensorflow-text ops stay custom ops; the app links their kernels (no Flex delegate)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            converter.allow_custom_ops = True
        if fmt.quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if fmt.quantize == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        if fmt.quantize == "full-int8":
            converter.representative_dataset = self._calibration
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with warnings.catch_warnings():  # calibration runs TF's own deprecated tf.lite.Interpreter
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            return converter.convert()

    @functools.cached_property
    def onnx_fp32(self):
        """The classifier in ONNX via the tf2onnx command line (its Python API does not take Keras 3 models)."""
        import onnx

        path = self.scratch / "model.onnx"
        command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(self.ids_saved_model),
                   "--signature_def", SIGNATURE, "--opset", str(OPSET), "--output", str(path)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise TfkitError(f"tf2onnx failed: {done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else done.returncode}")
        model = onnx_graph.erfc_as_erf(onnx.load(path))
        onnx_graph.name_dimensions(model)
        onnx.checker.check_model(model, full_check=True)  # tf2onnx writes the file even when an op did not convert
        return model

    def onnx(self, fmt: Format):
        import onnx

        if fmt.quantize == "dynamic-int8":
            model = onnx_graph.quantize_int8(self.onnx_fp32, self.scratch)
        else:
            model = onnx.ModelProto()
            model.CopyFrom(self.onnx_fp32)
        return onnx_graph.with_tokenizer(model, self.classifier.tokenizer) if fmt.text else model


def with_tflite_metadata(flatbuffer: bytes, entries: dict[str, str]) -> bytes:
    """The .tflite bytes with `entries` added as named Metadata buffers.

    Apps read them with `tflite::FlatBufferModel::ReadAllMetadata()` (C++), or any FlatBuffers
    reader of the TFLite schema (`Model.Metadata(i).Name()` -> `Model.Buffers(...)`).
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    model.metadata = [m for m in model.metadata or [] if m.name.decode() not in entries]
    for name, value in entries.items():
        buffer, meta = schema.BufferT(), schema.MetadataT()
        buffer.data = np.frombuffer(value.encode("utf-8"), np.uint8)
        model.buffers.append(buffer)
        meta.name, meta.buffer = name, len(model.buffers) - 1
        model.metadata.append(meta)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _describe(fmt: Format) -> dict:
    return {"runtime": fmt.runtime, "quantization": fmt.quantize, "precision": fmt.precision, "gate": fmt.gate,
            "text_input": fmt.text, "description": fmt.description}


def _manifest(classifier: Classifier, model_dir: Path, reference: Reference, artifacts: dict, failed: dict, out: Path) -> dict:
    tokenizer = classifier.tokenizer
    versions = {}
    for tool in TOOLS:
        try:
            versions[tool] = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            versions[tool] = None
    return {
        "model": {"source": str(model_dir), "kind": classifier.config.kind, "labels": classifier.labels,
                  "max_length": tokenizer.max_length, "trained_precision": classifier.config.precision,
                  "exported_precision": "float32"},
        "tokenizer": {**dataclasses.asdict(tokenizer.config()), "vocab_size": len(tokenizer.vocab),
                      "pad_id": tokenizer.pad_id, "cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id},
        "verification": {"reference": "the float32 Keras model", "split": "test", "texts": len(reference.texts),
                         "keras_accuracy": reference.metrics["accuracy"], "keras_macro_f1": reference.metrics["macro_f1"],
                         "runtime_threads": 1, "thresholds": {k: dataclasses.asdict(v) for k, v in THRESHOLDS.items()}},
        "artifacts": artifacts,
        "failed": failed,
        "files": {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(out.iterdir()) if p.is_file()},
        "tools": {"python": sys.version.split()[0], **versions, "tfkit": classifier.config.tfkit_version},
    }
