"""The export formats: one file each, where it runs, how it is quantized (no heavy imports).

`tfkit export --help` lists these without starting TensorFlow; `tfkit.export` builds them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from tfkit import mediapipe_export
from tfkit.errors import TfkitError

log = logging.getLogger("tfkit")


@dataclasses.dataclass(frozen=True)
class Format:
    """One exported file: where it runs, how it is quantized, whether it takes raw strings."""

    file: str
    runtime: str  # tflite | onnx | mediapipe (a .tflite with TFLite Model Metadata, run by MediaPipe Tasks)
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
                               "full integer (int8 activations too), calibrated on validation texts; opt-in"),
    "tflite-text": Format("model_text.tflite", "tflite", "none", True, "raw strings in, tokenizer inside"),
    "tflite-text-int8": Format("model_text_int8.tflite", "tflite", "dynamic-int8", True,
                               "raw strings in, tokenizer inside, int8 weights"),
    "onnx": Format("model.onnx", "onnx", "none", False, "float32"),
    "onnx-int8": Format("model_int8.onnx", "onnx", "dynamic-int8", False, "int8 weights and activations, a scale per token"),
    "onnx-text": Format("model_text.onnx", "onnx", "none", True, "raw strings in, tokenizer inside"),
    mediapipe_export.FORMAT: Format("model_mediapipe.tflite", "mediapipe", "dynamic-int8", True,
                                    "for MediaPipe Tasks' TextClassifier: int8, fixed length, vocab and labels inside"),
}


# Full-integer int8 is opt-in: on the default student it was 2.4x slower than dynamic-range int8
# (1.07 vs 0.44 ms a text) and agreed with float32 on 93.5% of labels (gate: 99%); int8
# softmax and LayerNorm cost a transformer too much. `--formats all` (or its name) still builds it.
DEFAULT_FORMATS = [key for key in FORMATS if key != "tflite-int8-full"]


def named(formats: str | list[str] | None) -> list[str] | None:
    """The format names a user gave (`a,b` or a list), or None for the default set and for `all`."""
    names = None if formats is None else [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    return None if names == ["all"] else names


def parse_formats(formats: str | list[str] | None, log_left_out: bool = False) -> list[str]:
    """Format keys in FORMATS order; None -> DEFAULT_FORMATS, `all` -> every format; unknown names fail.

    `tflite-mediapipe` needs the `mediapipe` extra: named, it fails without it; None and `all`
    leave it out (one log line if `log_left_out`), so the other formats still export.
    """
    names = named(formats)
    if names is None:
        keys = list(DEFAULT_FORMATS if formats is None else FORMATS)
        if mediapipe_export.available():
            return keys
        if log_left_out:
            log.info("leaving out %s: MediaPipe is not installed (%s)", mediapipe_export.FORMAT, mediapipe_export.EXTRA)
        return [k for k in keys if k != mediapipe_export.FORMAT]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise TfkitError(f"unknown format '{unknown[0] if unknown else ''}' (choose from all, {', '.join(FORMATS)})")
    if mediapipe_export.FORMAT in names:
        mediapipe_export.require()
    return [key for key in FORMATS if key in names]


def for_model(keys: list[str], formats: str | list[str] | None, lowercase: bool, truncation: str) -> list[str]:
    """`keys` without tflite-mediapipe when MediaPipe's tokenizer cannot feed this model; named in `formats`, an error."""
    problem = mediapipe_export.tokenizer_problem(lowercase, truncation) if mediapipe_export.FORMAT in keys else None
    if problem is None:
        return keys
    if named(formats) is not None:
        raise TfkitError(f"{mediapipe_export.FORMAT}: {problem}")
    log.info("leaving out %s: %s", mediapipe_export.FORMAT, problem)
    return [k for k in keys if k != mediapipe_export.FORMAT]


def default_out(model_dir: str | Path) -> Path:
    """Where `tfkit export MODEL_DIR` writes without --out: export/<model dir name>."""
    return Path("export") / Path(model_dir).resolve().name
