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
import json
import logging
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfkit import mediapipe_export, onnx_graph
from tfkit.artifacts import atomic_dir, check_output, file_sha256, package_versions, write_json
from tfkit.classifier import Classifier
from tfkit.errors import TfkitError
from tfkit.formats import FORMATS, Format, default_out, for_model, parse_formats
from tfkit.runtimes import RUNTIME_ERRORS, SIGNATURE
from tfkit.verify import THRESHOLDS, Reference, VerificationError, verify
from tfkit.wordpiece import write_check

log = logging.getLogger("tfkit")

OPSET = 17
CALIBRATION_TEXTS = 200
TOOLS = ("tensorflow", "keras", "keras-hub", "tensorflow-text", "ai-edge-litert", "tf2onnx", "onnx",
         "onnxruntime", "onnxruntime-extensions", "mediapipe")


class ExportError(TfkitError):
    """Some formats failed (conversion or verification); the others were written. `manifest` has the details."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


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

    keys = parse_formats(formats, log_left_out=True)
    model_dir = Path(model_dir)
    out = Path(out) if out else default_out(model_dir)
    check_output(out, "export", inputs=(model_dir,))
    loaded = Classifier.load(model_dir)
    keys = for_model(keys, formats, loaded.tokenizer.lowercase, loaded.tokenizer.truncation)
    classifier = Classifier(float32_model(loaded.model), loaded.tokenizer, loaded.config, loaded.path)
    artifacts, failed = {}, {}
    val, test = classifier.heldout()
    with atomic_dir(out, "export") as tmp, tempfile.TemporaryDirectory(prefix="tfkit-export-") as scratch:
        reference = Reference.build(classifier, test)
        builder = Builder(classifier, Path(scratch), val.texts)
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

    def __init__(self, classifier: Classifier, scratch: Path, calibration_texts: list[str]):
        self.classifier, self.scratch, self.calibration_texts = classifier, scratch, calibration_texts

    def write(self, key: str, path: Path) -> None:
        fmt = FORMATS[key]
        try:
            if fmt.runtime == "mediapipe":
                path.write_bytes(self.mediapipe(fmt, self.metadata(key)))
            elif fmt.runtime == "tflite":
                path.write_bytes(with_tflite_metadata(self.tflite(fmt), self.metadata(key)))
            else:
                import onnx

                model = self.onnx(fmt)
                model.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in self.metadata(key).items())
                onnx.save(model, path)
        except TfkitError as e:
            raise BuildError(f"{fmt.file}: {e}") from None
        except converter_errors() as e:  # one format failing must not stop the others; a tfkit bug still surfaces
            raise BuildError(f"{fmt.file}: conversion failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from None

    def metadata(self, key: str) -> dict[str, str]:
        """What an app reads from the file itself: `labels` (one per line) and `tfkit` (JSON)."""
        fmt, tokenizer = FORMATS[key], self.classifier.tokenizer
        info = {"format": key, "labels": self.classifier.labels, "output": "probabilities",
                "inputs": list(mediapipe_export.INPUTS) if fmt.runtime == "mediapipe" else ["texts"] if fmt.text else ["token_ids", "padding_mask"],
                "tokenizer": tokenizer_info(tokenizer),
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
    def mediapipe_saved_model(self) -> Path:
        """The endpoint MediaPipe's BERT preprocessor feeds: three int32 [1, max length] inputs, probabilities out.

        The segment ids are accepted and unused (the model is single-segment); the padding mask
        makes the fixed length equivalent to the Keras model's dynamic one.
        """
        import keras

        model, length = self.classifier.model, self.classifier.tokenizer.max_length
        archive = keras.export.ExportArchive()
        archive.track(model)
        signature = [tf.TensorSpec([1, length], tf.int32, name=name) for name in mediapipe_export.INPUTS]
        serve = lambda ids, mask, segments: {"probabilities": tf.nn.softmax(model({"token_ids": ids, "padding_mask": mask}, training=False))}
        archive.add_endpoint(mediapipe_export.SIGNATURE, serve, input_signature=signature)
        archive.write_out(str(self.scratch / "saved_model_mediapipe"), verbose=False)
        return self.scratch / "saved_model_mediapipe"

    @functools.cached_property
    def ids_saved_model(self) -> Path:
        return self._archive("saved_model_ids", text=False)

    @functools.cached_property
    def text_saved_model(self) -> Path:
        return self._archive("saved_model_text", text=True)

    def _calibration(self):
        """Representative inputs for full-integer quantization: validation texts (carried by the model
        directory, unlike the training data), one per batch, natural length."""
        texts = self.calibration_texts
        rng = np.random.default_rng(0)
        for i in rng.choice(len(texts), min(CALIBRATION_TEXTS, len(texts)), replace=False):
            yield {k: v.numpy() for k, v in self.classifier.tokenizer.encode(tf.constant([texts[i]])).items()}

    def tflite(self, fmt: Format) -> bytes:
        """A new converter per file (a converter converts once)."""
        if fmt.runtime == "mediapipe":
            source, signature = self.mediapipe_saved_model, mediapipe_export.SIGNATURE
        else:
            source, signature = self.text_saved_model if fmt.text else self.ids_saved_model, SIGNATURE
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source), signature_keys=[signature])
        if fmt.text and fmt.runtime == "tflite":  # tensorflow-text ops stay custom ops; the app links their kernels (no Flex delegate)
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

    def mediapipe(self, fmt: Format, entries: dict[str, str]) -> bytes:
        """The .tflite MediaPipe's TextClassifier runs as it is: tfkit's `entries`, TFLite Model Metadata, vocab and labels."""
        tokenizer, labels = self.classifier.tokenizer, self.classifier.labels
        flatbuffer = self.tflite(fmt)
        description = f"tfkit {self.classifier.config.kind}: {', '.join(labels)}"
        metadata = mediapipe_export.model_metadata(flatbuffer, labels, tokenizer.lowercase, description, tokenizer.truncation)
        flatbuffer = with_tflite_metadata(flatbuffer, {**entries, mediapipe_export.METADATA_NAME: metadata})
        return mediapipe_export.pack_files(flatbuffer, mediapipe_export.associated_files(tokenizer.vocab, labels))

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
        onnx_graph.fold_constants(model)
        onnx_graph.fuse_layer_norms(model)
        onnx_graph.name_dimensions(model)
        onnx.checker.check_model(model, full_check=True)  # tf2onnx writes the file even when an op did not convert
        return model

    def onnx(self, fmt: Format):
        import onnx

        if fmt.quantize == "dynamic-int8":
            model = onnx_graph.quantize_int8(self.onnx_fp32)
        else:
            model = onnx.ModelProto()
            model.CopyFrom(self.onnx_fp32)
        return onnx_graph.with_tokenizer(model, self.classifier.tokenizer) if fmt.text else model


def converter_errors() -> tuple[type[BaseException], ...]:
    """What the converters raise for a model they cannot convert: TFLite's ConverterError, the ONNX checker's
    ValidationError, onnxruntime's quantizer (ValueError, RuntimeError, its C++ kinds)."""
    import onnx.checker
    from tensorflow.lite.python.convert_phase import ConverterError

    return (ConverterError, onnx.checker.ValidationError, *RUNTIME_ERRORS)


def with_tflite_metadata(flatbuffer: bytes, entries: dict[str, str | bytes]) -> bytes:
    """The .tflite bytes with `entries` added as named Metadata buffers (text is stored as UTF-8).

    Apps read them with `tflite::FlatBufferModel::ReadAllMetadata()` (C++), or any FlatBuffers
    reader of the TFLite schema (`Model.Metadata(i).Name()` -> `Model.Buffers(...)`).
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    model.metadata = [m for m in model.metadata or [] if m.name.decode() not in entries]
    for name, value in entries.items():
        buffer, meta = schema.BufferT(), schema.MetadataT()
        buffer.data = np.frombuffer(value.encode("utf-8") if isinstance(value, str) else value, np.uint8)
        model.buffers.append(buffer)
        meta.name, meta.buffer = name, len(model.buffers) - 1
        model.metadata.append(meta)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _describe(fmt: Format) -> dict:
    return {"runtime": fmt.runtime, "quantization": fmt.quantize, "precision": fmt.precision, "gate": fmt.gate,
            "text_input": fmt.text, "description": fmt.description}


def tokenizer_info(tokenizer) -> dict:
    """What an app needs to feed an id-level file: the tokenizer's settings (`head`: pieces a cut text keeps from its start) and ids."""
    return {**dataclasses.asdict(tokenizer.config()), "head": tokenizer.head, "vocab_size": len(tokenizer.vocab),
            "pad_id": tokenizer.pad_id, "cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id}


def _manifest(classifier: Classifier, model_dir: Path, reference: Reference, artifacts: dict, failed: dict, out: Path) -> dict:
    tokenizer = classifier.tokenizer
    versions = package_versions(TOOLS)
    return {
        "model": {"source": str(model_dir), "kind": classifier.config.kind, "labels": classifier.labels,
                  "max_length": tokenizer.max_length, "trained_precision": classifier.config.precision,
                  "exported_precision": "float32"},
        "tokenizer": tokenizer_info(tokenizer),
        "verification": {"reference": "the float32 Keras model", "split": "test", "texts": len(reference.texts),
                         "keras_accuracy": reference.metrics["accuracy"], "keras_macro_f1": reference.metrics["macro_f1"],
                         "runtime_threads": 1, "thresholds": {k: dataclasses.asdict(v) for k, v in THRESHOLDS.items()}},
        "artifacts": artifacts,
        "failed": failed,
        "files": {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(out.iterdir()) if p.is_file()},
        "tools": {"python": sys.version.split()[0], **versions, "tfkit": classifier.config.tfkit_version},
    }
