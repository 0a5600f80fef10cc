"""The verification gate: an exported file, run by its real runtime, must agree with the Keras model.

`export()` writes files; `verify()` loads one with LiteRT or ONNX Runtime, runs it on held-out
test texts of the model's own split and compares it with the Keras model on the same texts:
max absolute probability difference, label agreement, accuracy and macro-F1. A missed
threshold, or any NaN/Inf, raises a typed `VerificationError` whose one-line message names
the file, the metric, the threshold and the measured value.

A string-in ONNX file tokenizes with onnxruntime-extensions' BertTokenizer, another
implementation than the tf-text tokenizer the model was trained with, and the two disagree on
some characters (e.g. "…", and accented letters beyond Latin-1, which it turns into [UNK]).
Its gate therefore reads the file's own token ids: texts it tokenizes like tf-text must meet
float32 parity, and the share of texts it tokenizes differently is itself a gated number.
MediaPipe's TextClassifier also tokenizes with its own BertTokenizer; its ids are read the same
way (through a probe model, see `runtimes.MediaPipe.token_ids`) and the share is reported, while
its gate is the int8 one: label agreement and accuracy, whatever the tokenizer did.
"""

from __future__ import annotations

import dataclasses
import operator
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfkit import runtimes
from tfkit.classifier import Classifier, classification_metrics
from tfkit.data import Examples
from tfkit.errors import TfkitError

BATCH_SIZE = 32
LATENCY_TEXTS = 50
PROBE_LENGTHS = (8, 32)  # plus the model's max length: dynamic shapes must really be dynamic


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """What an exported file must meet; None means reported, not gated."""

    max_abs_diff: float | None = None
    agreement: float | None = None
    accuracy_delta: float | None = None
    tokenization: float | None = None  # share of texts the file's own tokenizer splits exactly as tf-text


THRESHOLDS = {
    "fp32": Thresholds(max_abs_diff=1e-4, agreement=1.0),
    "fp16": Thresholds(max_abs_diff=1e-2),
    "int8": Thresholds(agreement=0.99, accuracy_delta=0.01),
    # float32 parity on the texts tokenized identically; a differently tokenized text may change its label.
    "ort-tokenizer": Thresholds(max_abs_diff=1e-4, agreement=0.99, accuracy_delta=0.01, tokenization=0.99),
}


class VerificationError(TfkitError):
    """An exported file failed the gate; the export removes it."""


class NonFiniteError(VerificationError):
    """The file produced NaN or Inf probabilities (e.g. a converter dropped the weights)."""


class ParityError(VerificationError):
    """The file disagrees with the Keras model by more than its threshold allows."""

    def __init__(self, artifact: str, metric: str, value: float, relation: str, threshold: float, texts: int):
        self.artifact, self.metric, self.threshold, self.value = artifact, metric, threshold, value
        super().__init__(f"{artifact}: {metric} {value:.4g} {relation} threshold {threshold:g} "
                         f"(vs the Keras model on {texts} test texts)")


@dataclasses.dataclass
class Reference:
    """Held-out test texts with their labels and the Keras model's probabilities on them."""

    classifier: Classifier
    texts: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    metrics: dict  # the Keras model's accuracy and macro-F1 on these texts

    @classmethod
    def build(cls, classifier: Classifier, test: Examples, limit: int = 2000) -> "Reference":
        """The first `limit` test texts (all of a smaller split), predicted once by Keras."""
        texts, labels = test.texts[:limit], test.labels[:limit]
        probabilities = classifier.predict_proba(texts)
        return cls(classifier, texts, labels, probabilities,
                   classification_metrics(labels, probabilities.argmax(1), classifier.labels))

    def batches(self, text: bool):
        """(indices, inputs) batches sorted by length, so the files see many sequence lengths."""
        tokenizer = self.classifier.tokenizer
        order = np.argsort(tokenizer.lengths(self.texts), kind="stable")
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            texts = [self.texts[i] for i in idx]
            yield idx, texts if text else self.encode(texts)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.classifier.tokenizer.encode(tf.constant(texts)).items()}


def compare(artifact: str, probabilities: np.ndarray, reference: Reference, thresholds: Thresholds,
            same_tokens: np.ndarray | None = None) -> dict:
    """Parity numbers of `probabilities` against the Keras model; raises if a threshold is missed.

    Args:
        same_tokens: for a file with its own tokenizer, which texts it tokenized exactly as tf-text;
            the probability difference is then measured on those texts only.
    """
    if thresholds.tokenization is not None and same_tokens is None:
        raise ValueError("a tokenization threshold needs `same_tokens`: the file's own tokenization, compared")
    n = len(reference.texts)
    bad = int(np.size(probabilities) - np.isfinite(probabilities).sum())
    if bad:
        raise NonFiniteError(f"{artifact}: {bad} NaN/Inf probabilities on {n} test texts (threshold 0); "
                             "the converted model is broken")
    predicted = probabilities.argmax(1)
    ours, keras = classification_metrics(reference.labels, predicted, reference.classifier.labels), reference.metrics
    same = np.ones(n, bool) if same_tokens is None else np.asarray(same_tokens, bool)
    diff = np.abs(probabilities - reference.probabilities)[same]
    result = {
        "texts": n,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "label_agreement": float(np.mean(predicted == reference.probabilities.argmax(1))),
        "accuracy": ours["accuracy"], "macro_f1": ours["macro_f1"],
        "thresholds": dataclasses.asdict(thresholds),
    }
    if same_tokens is not None:
        result["tokenization_agreement"] = float(np.mean(same))
        result["tokenization_mismatches"] = [reference.texts[i][:200] for i in np.flatnonzero(~same)[:5]]
    for metric, threshold, value, passes, texts in (
        ("max abs probability difference", thresholds.max_abs_diff, result["max_abs_diff"], operator.le, int(same.sum())),
        ("label agreement", thresholds.agreement, result["label_agreement"], operator.ge, n),
        ("accuracy change", thresholds.accuracy_delta, abs(ours["accuracy"] - keras["accuracy"]), operator.le, n),
        ("tokenization agreement with tf-text", thresholds.tokenization, result.get("tokenization_agreement"), operator.ge, n),
    ):
        if threshold is not None and not passes(value, threshold):
            raise ParityError(artifact, metric, value, ">" if passes is operator.le else "<", threshold, texts)
    return result


def verify(path: str | Path, runtime: str, text: bool, gate: str, reference: Reference) -> dict:
    """Runs the file at `path` in its runtime on the reference texts; parity numbers, signature and latency.

    Args:
        runtime: a key of `runtimes.RUNTIMES` (`tflite`, `onnx`, `mediapipe`).
        text: the file takes raw strings (tokenizer inside) rather than token ids.
        gate: a key of THRESHOLDS (`fp32`, `fp16`, `int8`, `ort-tokenizer`); a file whose runtime
            reads its own token ids also reports `tokenization_agreement`.
    Raises:
        VerificationError: the file cannot be loaded, rejects a shape, or misses a threshold.
    """
    name = Path(path).name
    thresholds = THRESHOLDS[gate]
    probabilities = np.zeros_like(reference.probabilities)
    try:  # only the runtime's own calls: what fails here is the file's problem, anything else is tfkit's bug
        model = runtimes.load(path, runtime, text)
        reads_tokens = text and hasattr(model, "token_ids")  # a file with its own tokenizer: compare its ids
        same = np.ones(len(reference.texts), bool) if reads_tokens else None
        for idx, inputs in reference.batches(text):
            probabilities[idx] = model.predict(inputs)
            if same is not None:
                same[idx] = _same_tokens(model.token_ids(inputs), reference.encode(inputs)["token_ids"], reference)
        latency = _latency(model, reference, text)
    except TfkitError as e:
        raise VerificationError(str(e)) from None
    except runtimes.RUNTIME_ERRORS as e:
        raise VerificationError(f"{name}: {runtime} failed to run it: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
    result = compare(name, probabilities, reference, thresholds, same)
    return {**result, "latency_ms": latency, "runtime": model.name, **model.signature}


def _same_tokens(ours: np.ndarray, theirs: np.ndarray, reference: Reference) -> np.ndarray:
    """Row by row: the same token ids once padding is dropped."""
    pad = reference.classifier.tokenizer.pad_id
    return np.array([a[a != pad].tolist() == b[b != pad].tolist() for a, b in zip(ours, theirs)])


def _latency(model: runtimes.Runtime, reference: Reference, text: bool) -> dict[str, float]:
    """Batch-1 milliseconds: median over test texts at their natural length, and at fixed lengths.

    The fixed lengths also prove that an id-level file accepts any sequence length up to the
    maximum (string-in files choose the length themselves, so they get the natural number only).
    """
    texts = reference.texts[:LATENCY_TEXTS]
    natural = [model.latency_ms([t] if text else reference.encode([t]), repeats=3) for t in texts]
    result = {"batch1_natural": float(np.median(natural))}
    if not text:
        max_length = reference.classifier.tokenizer.max_length
        for length in sorted({*(n for n in PROBE_LENGTHS if n < max_length), max_length}):
            ids = np.full([1, length], reference.classifier.tokenizer.cls_id, np.int32)
            result[f"batch1_length{length}"] = model.latency_ms({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    return result
