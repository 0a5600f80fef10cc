"""The text classifier model and the model directory every later stage reads.

A model directory (`models/teacher`, `models/student`) holds `model.keras` (a Keras model
taking int32 `token_ids` and `padding_mask`, returning float32 logits), `config.json`
(`ModelConfig`: labels, tokenizer settings, how it was trained), `vocab.txt`,
`history.json` and `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import weakref
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfkit.artifacts import check_model_dir, read_json, write_json
from tfkit.backbone import Backbone  # noqa: F401  (registers tfkit>Backbone so load_model finds it)
from tfkit.data import Examples, Splits, fingerprint, load_splits, read_heldout
from tfkit.errors import TfkitError
from tfkit.preprocess import TokenizerConfig, WordPieceTokenizer

MODEL_FILE, CONFIG_FILE, HELDOUT_FILE = "model.keras", "config.json", "heldout.jsonl"


def build_classifier(backbone: keras.Model, num_classes: int, dropout: float = 0.1, seed: int = 0) -> keras.Model:
    """[CLS] pooled output -> dropout -> float32 logits; single-segment, so segment ids are made inside.

    The head's initializer and dropout get explicit seeds so a build never depends on what
    else consumed Python's random state first.
    """
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
    features = backbone({"token_ids": token_ids, "segment_ids": keras.ops.zeros_like(token_ids), "padding_mask": padding_mask})
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(features["pooled_output"])
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits",
                                kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02, seed=seed))(x)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, logits, name="text_classifier")


def backbone_of(model: keras.Model) -> keras.Model:
    """The transformer backbone inside a classifier built by `build_classifier`."""
    return next(layer for layer in model.layers if hasattr(layer, "transformer_layers"))


@keras.saving.register_keras_serializable(package="tfkit")
class MacroF1(keras.metrics.F1Score):
    """Macro-averaged F1 on integer labels and logits (Keras' F1Score wants one-hot labels)."""

    def __init__(self, num_classes: int, name: str = "macro_f1", **kwargs):
        kwargs.pop("average", None), kwargs.pop("threshold", None)
        super().__init__(average="macro", threshold=None, name=name, **kwargs)
        self.num_classes = num_classes

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = keras.ops.one_hot(keras.ops.reshape(keras.ops.cast(y_true, "int32"), [-1]), self.num_classes)
        return super().update_state(y_true, y_pred, sample_weight)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}


@dataclasses.dataclass
class ModelConfig:
    """config.json of a model directory: everything needed to use or reproduce the model."""

    kind: str
    labels: list[str]
    tokenizer: TokenizerConfig
    precision: str
    training: dict[str, Any]
    data: dict[str, Any]
    tfkit_version: str = "0.1.0"


class Classifier:
    """A loaded model directory: the Keras model, its tokenizer and config, ready to predict."""

    def __init__(self, model: keras.Model, tokenizer: WordPieceTokenizer, config: ModelConfig, path: Path | None = None):
        self.model, self.tokenizer, self.config, self.path = model, tokenizer, config, path

    @property
    def labels(self) -> list[str]:
        return self.config.labels

    @classmethod
    def load(cls, model_dir: str | Path) -> "Classifier":
        path = Path(model_dir)
        check_model_dir(path)
        config = read_json(path / CONFIG_FILE, ModelConfig)
        try:
            model = keras.saving.load_model(path / MODEL_FILE, compile=False)
        except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as e:  # a truncated or foreign file
            raise TfkitError(f"cannot load {path / MODEL_FILE}: {str(e).splitlines()[0][:200]}") from None
        return cls(model, WordPieceTokenizer.from_config(config.tokenizer, path), config, path)

    def heldout(self) -> tuple[Examples, Examples]:
        """The validation and test examples this model was checked on, carried in its directory."""
        if self.path is not None and (self.path / HELDOUT_FILE).is_file():
            return read_heldout(self.path / HELDOUT_FILE, self.labels)
        splits = self.splits()  # a model directory from before tfkit carried them
        return splits.val, splits.test

    def splits(self, data: str | None = None, encoding: str | None = None) -> Splits:
        """The train/val/test split this model was trained on: training data re-read from where
        config.json says (checked against its recorded sha256), held-out examples from the directory.

        Args:
            data: split this file the same way instead (same columns and seed; labels must be the model's).
            encoding: of `data` (default: the training data's).
        """
        d = self.config.data
        encoding = encoding or d.get("encoding", "utf-8")
        if data:
            return load_splits(data, None, None, d["text_column"], d["label_column"], d["split_seed"],
                               label_names=self.labels, encoding=encoding)
        source = d["source"]
        expected = d.get("sha256", {}).get("source")
        if expected is not None:
            if not Path(source).exists():
                raise TfkitError(f"the training data of {self.path} is no longer at {source}; put it back or pass --data FILE")
            if fingerprint(source) != expected:
                raise TfkitError(f"{source} has changed since {self.path} was trained on it (sha256 differs); "
                                 "restore it or pass --data FILE")
        known = None
        if self.path is not None and (self.path / HELDOUT_FILE).is_file():
            known = dict(zip(("val", "test"), read_heldout(self.path / HELDOUT_FILE, self.labels)))
        return load_splits(source, d["val"], d["test"], d["text_column"], d["label_column"], d["split_seed"],
                           label_names=self.labels, encoding=encoding, known=known)

    def save(self, directory: str | Path) -> None:
        """Writes model, config and vocab into `directory` (callers make it atomic)."""
        self.model.save(Path(directory) / MODEL_FILE)
        write_json(Path(directory) / CONFIG_FILE, self.config)
        self.tokenizer.save_vocab(directory)

    def predict_logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return predict_logits(self.model, self.tokenizer, texts, batch_size)

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return tf.nn.softmax(self.predict_logits(texts, batch_size)).numpy()


_FORWARD = weakref.WeakKeyDictionary()  # one traced inference function per model


def predict_logits(model: keras.Model, tokenizer: WordPieceTokenizer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Logits in input order; texts are batched by length so padding stays small.

    A plain `tf.function` rather than `predict_on_batch`: inference needs no distribution
    strategy, and under MirroredStrategy predict_on_batch returned each replica's copy.
    """
    if model not in _FORWARD:
        _FORWARD[model] = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    forward = _FORWARD[model]
    order = np.argsort(tokenizer.lengths(texts), kind="stable")
    out = np.zeros([len(texts), model.output_shape[-1]], np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = forward(tokenizer.encode(tf.constant([texts[i] for i in idx]))).numpy()
    return out


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class F1 (named), as saved in metrics.json.

    Macro-F1 averages over the classes the split has; a class it lacks gets None, not a 0 that
    would drag the average down for a reason that has nothing to do with the model.
    """
    from sklearn.metrics import f1_score

    ids = list(range(len(label_names)))
    per_class = f1_score(labels, predictions, labels=ids, average=None, zero_division=0)
    present = np.isin(ids, labels)
    return {
        "accuracy": float(np.mean(labels == predictions)),
        "macro_f1": float(np.mean(per_class[present])) if present.any() else 0.0,
        "per_class_f1": {name: float(f) if here else None for name, f, here in zip(label_names, per_class, present)},
    }
