"""Fine-tune a pretrained BERT into a text classifier with plain Keras `fit`.

AdamW with linear warmup and linear decay, dropout, early stopping on validation macro-F1
with best-weights restore, length-bucketed batches, under a `tf.distribute` strategy (the
default one for a single device). `train()` writes a complete model directory atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

import keras

from tfkit import assets
from tfkit.artifacts import atomic_dir, check_writable, write_json
from tfkit.classifier import Classifier, MacroF1, ModelConfig, build_classifier, classification_metrics
from tfkit.data import Splits, load_splits
from tfkit.devices import configure_devices, make_strategy, resolve_precision
from tfkit.errors import TfkitError
from tfkit.preprocess import WordPieceTokenizer, choose_max_length, length_report, make_dataset

log = logging.getLogger("tfkit")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; saved (resolved) in the model's config.json."""

    data: str = assets.DEFAULT_DATA
    val: str | None = None
    test: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    pretrained: str | None = None  # a HF BERT checkpoint dir; None = the default teacher
    epochs: int = 2
    batch_size: int = 32
    max_length: int | None = None  # None = chosen from the training texts' token lengths
    learning_rate: float | None = None  # None = 5e-5 fine-tuning, 1e-3 with a frozen backbone
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    patience: int = 1
    seed: int = 0
    freeze_backbone: bool = False
    devices: int = 1
    precision: str = "auto"
    bucket: bool = True
    jit_compile: bool = False

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "devices"):
            if getattr(self, name) < 1:
                raise TfkitError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise TfkitError(f"--learning-rate must be positive (got {self.learning_rate})")
        if self.max_length is not None and self.max_length < 8:
            raise TfkitError(f"--max-length must be at least 8 (got {self.max_length})")
        if self.batch_size % self.devices:
            raise TfkitError(f"--batch-size {self.batch_size} must be divisible by --devices {self.devices}")


@keras.saving.register_keras_serializable(package="tfkit")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then linear decay to 0 at `total_steps`."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int):
        self.peak, self.total_steps, self.warmup_steps = peak, max(1, total_steps), warmup_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = step / max(1, self.warmup_steps)
        decay = (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps)
        return self.peak * keras.ops.clip(keras.ops.minimum(warm, decay), 0.0, 1.0)

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


def make_optimizer(learning_rate: float, total_steps: int, warmup_ratio: float = 0.1, weight_decay: float = 0.01):
    """AdamW on the warmup/decay schedule; biases and LayerNorm weights are not decayed (as in BERT)."""
    schedule = WarmupLinearDecay(learning_rate, total_steps, int(warmup_ratio * total_steps))
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay, clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch's training steps (the validation pass excluded)."""

    def on_train_begin(self, logs=None):
        self.seconds, self._start = [], None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):  # validation starts: the epoch's training is over
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_epoch_end(self, epoch, logs=None):  # when there is no validation data
        self.on_test_begin()


def fit_verbosity() -> int:
    """A live Keras progress bar on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


def early_stopping(patience: int) -> keras.callbacks.EarlyStopping:
    return keras.callbacks.EarlyStopping(monitor="val_macro_f1", mode="max", patience=patience,
                                         restore_best_weights=True, verbose=1)


def prepare(config: TrainConfig) -> tuple[Splits, str]:
    """Validates the config and data before any model work; returns splits and resolved precision."""
    config.validate()
    configure_devices(config.devices)
    precision = resolve_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    splits = load_splits(config.data, config.val, config.test, config.text_column, config.label_column, config.seed)
    return splits, precision


@dataclasses.dataclass
class Run:
    """A compiled model with its data pipelines, ready for `fit` (what `build` returns)."""

    model: keras.Model
    tokenizer: WordPieceTokenizer
    train_ds: object
    val_ds: object
    strategy: object
    config: TrainConfig  # resolved: pretrained path, max_length and learning rate filled in
    lengths: dict


def build(config: TrainConfig, splits: Splits, precision: str) -> Run:
    """Loads the pretrained backbone under the strategy, picks max_length, compiles the classifier."""
    from tfkit.backbone import load_backbone

    pretrained = config.pretrained or str(assets.default_teacher_dir())
    strategy = make_strategy(config.devices)
    with strategy.scope():
        backbone, tokenizer = load_backbone(pretrained, max_length=10**6, dtype=precision, dropout=config.dropout)
        lengths = tokenizer.lengths(splits.train.texts)
        max_length = config.max_length or choose_max_length(lengths, backbone.max_sequence_length)
        if max_length > backbone.max_sequence_length:
            raise TfkitError(f"--max-length {max_length} exceeds the model's limit of {backbone.max_sequence_length}")
        tokenizer = WordPieceTokenizer(tokenizer.vocab, tokenizer.lowercase, max_length)
        report = length_report(lengths, max_length)
        log.info("token lengths p50 %(p50)d p95 %(p95)d p99 %(p99)d max %(max)d -> max_length %(max_length)d "
                 "(%(truncated).2f%% truncated)", {**report, "truncated": 100 * report["truncated"]})
        backbone.trainable = not config.freeze_backbone
        model = build_classifier(backbone, len(splits.label_names), config.dropout, config.seed)
        learning_rate = config.learning_rate or (1e-3 if config.freeze_backbone else 5e-5)
        train_ds = make_dataset(tokenizer, splits.train.texts, splits.train.labels, config.batch_size,
                                shuffle=True, seed=config.seed, bucket=config.bucket)
        val_ds = make_dataset(tokenizer, splits.val.texts, splits.val.labels, config.batch_size, bucket=config.bucket)
        steps = config.epochs * int(train_ds.cardinality())
        model.compile(
            optimizer=make_optimizer(learning_rate, steps, config.warmup_ratio, config.weight_decay),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), MacroF1(len(splits.label_names))],
            jit_compile=config.jit_compile,
        )
    resolved = dataclasses.replace(config, pretrained=pretrained, max_length=max_length, learning_rate=learning_rate)
    return Run(model, tokenizer, train_ds, val_ds, strategy, resolved, report)


def train(config: TrainConfig, out: str | Path = "models/teacher") -> dict:
    """Fine-tunes the pretrained backbone on `config.data`; writes the model directory `out`.

    Returns the metrics also written to `out/metrics.json`.
    """
    check_writable(out)
    splits, precision = prepare(config)
    run = build(config, splits, precision)
    log.info("training on %d examples (%s), %d replica(s), %s", len(splits.train), splits.sizes(),
             run.strategy.num_replicas_in_sync, precision)
    timer = EpochTimer()
    history = run.model.fit(run.train_ds, validation_data=run.val_ds, epochs=config.epochs, verbose=fit_verbosity(),
                            shuffle=False, callbacks=[timer, early_stopping(config.patience)])
    model_config = ModelConfig(
        kind="teacher", labels=splits.label_names, tokenizer=run.tokenizer.config(), precision=precision,
        training=dataclasses.asdict(run.config), data=data_summary(config, splits, run.lengths),
    )
    classifier = Classifier(run.model, run.tokenizer, model_config)
    metrics = {
        **evaluate(classifier, splits),
        "epoch_seconds": timer.seconds,
        "train_seconds": float(sum(timer.seconds)),
        "examples_per_second": len(splits.train) * len(timer.seconds) / max(sum(timer.seconds), 1e-9),
        "epochs_run": len(timer.seconds),
        "replicas": run.strategy.num_replicas_in_sync,
        "precision": precision,
        "parameters": int(run.model.count_params()),
    }
    save_model_dir(classifier, out, history.history, metrics)
    return metrics


def data_summary(config: TrainConfig, splits: Splits, lengths: dict) -> dict:
    """Where the data came from and what it looked like, for config.json."""
    return {"source": config.data, "val": config.val, "test": config.test, "text_column": config.text_column,
            "label_column": config.label_column, "split_seed": config.seed, "sizes": splits.sizes(),
            "dropped_empty": splits.dropped_empty, "token_lengths": lengths}


def evaluate(classifier: Classifier, splits: Splits) -> dict:
    """Validation and test metrics of `classifier` on `splits`, plus the split sizes."""
    result = {"split_sizes": splits.sizes()}
    for name in ("val", "test"):
        part = getattr(splits, name)
        predictions = classifier.predict_logits(part.texts).argmax(-1)
        result[name] = classification_metrics(part.labels, predictions, splits.label_names)
    log.info("test accuracy %.4f, macro-F1 %.4f", result["test"]["accuracy"], result["test"]["macro_f1"])
    return result


def save_model_dir(classifier: Classifier, out: str | Path, history: dict, metrics: dict) -> None:
    """Writes model, config, vocab, history and metrics into `out`, atomically."""
    classifier.model.compile(loss=classifier.model.loss)  # drop optimizer slots: the saved model is for inference
    with atomic_dir(out) as tmp:
        classifier.save(tmp)
        metrics["model_bytes"] = (tmp / "model.keras").stat().st_size
        write_json(tmp / "history.json", {k: [float(v) for v in vs] for k, vs in history.items()})
        write_json(tmp / "metrics.json", metrics)
    log.info("wrote %s", out)
