"""Knowledge distillation: train a small student on the teacher's soft targets with plain `fit`.

`Distiller` is the keras-io distiller grown for cached logits. Keras 3.15's
`keras.distillation.Distiller` runs the teacher forward on every step; here the teacher's
logits are computed once per training example and carried in the tf.data targets, so a
distillation epoch costs what a hard-label epoch costs. The KD term itself is Keras'
`LogitsDistillation` (KL at temperature T, scaled by T^2). Passing `teacher=` instead of
cached logits recomputes them each step (for inputs that change every epoch).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import keras
import numpy as np

from tfkit.artifacts import check_writable
from tfkit.classifier import Classifier, MacroF1, ModelConfig, backbone_of, build_classifier, classification_metrics
from tfkit.data import load_splits
from tfkit.devices import configure_devices, make_strategy
from tfkit.errors import TfkitError
from tfkit.preprocess import make_dataset
from tfkit.student import PRESETS, make_student, student_shape, student_tokenizer, trim_vocab
from tfkit.train import EpochTimer, early_stopping, evaluate, fit_verbosity, make_optimizer, save_model_dir

log = logging.getLogger("tfkit")


@keras.saving.register_keras_serializable(package="tfkit")
class Distiller(keras.Model):
    """Trains `student` on `alpha * CE(labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))`.

    Targets are `{"label": int, "teacher_logits": float[classes]}` (cached), or just the labels
    when `teacher` is given to compute logits on the fly.

    Args:
        student: the classifier being trained; `call` is the student.
        teacher: optional frozen teacher, used only when the targets carry no logits.
        temperature: softens both distributions; > 0.
        alpha: weight of the hard-label loss, in [0, 1]; 1 trains on labels only.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model | None = None, temperature: float = 3.0,
                 alpha: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        check_distill_args(temperature, alpha)
        self.student, self.teacher, self.temperature, self.alpha = student, teacher, temperature, alpha
        if teacher is not None:
            teacher.trainable = False
        # An explicit KLDivergence instance: Keras 3.15 turns the default "kl_divergence" string into
        # a plain function, which skips LogitsDistillation's softmax + T^2 branch (KL on raw logits).
        self.kd = keras.distillation.LogitsDistillation(temperature=temperature, loss=keras.losses.KLDivergence())
        self.hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels, teacher_logits = _split_targets(y)
        if teacher_logits is None:
            if self.teacher is None:
                raise ValueError("Distiller needs cached `teacher_logits` in the targets or a `teacher` model")
            teacher_logits = keras.ops.stop_gradient(self.teacher(x, training=False))
        loss = self.alpha * self.hard(labels, y_pred)
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * self.kd.compute_loss(keras.ops.cast(teacher_logits, "float32"), y_pred)
        return loss + keras.ops.sum(self.losses) if self.losses else loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, _split_targets(y)[0], y_pred, sample_weight)


def _split_targets(y):
    if isinstance(y, dict):
        return y["label"], y.get("teacher_logits")
    return y, None


def check_distill_args(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise TfkitError(f"--temperature must be positive (got {temperature})")
    if not 0 <= alpha <= 1:
        raise TfkitError(f"--alpha must be in [0, 1] (got {alpha})")


@dataclasses.dataclass
class DistillConfig:
    """Every setting of a distillation run; saved in the student's config.json."""

    teacher: str = "models/teacher"
    student: str = "from-teacher"
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    intermediate: int | None = None
    temperature: float = 3.0
    alpha: float = 0.5
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    patience: int = 2
    trim_vocab: bool = True
    recompute_teacher: bool = False
    baseline: bool = True
    data: str | None = None  # None = the teacher's own data and split
    seed: int = 0
    devices: int = 1


def teacher_logits(teacher: Classifier, texts: list[str]) -> np.ndarray:
    """The teacher's logits for `texts`, computed once (length-sorted batches)."""
    return teacher.predict_logits(texts, batch_size=128)


def distill(config: DistillConfig, out: str | Path = "models/student") -> dict:
    """Distills the teacher model dir into a student model dir `out`; returns its metrics."""
    check_distill_args(config.temperature, config.alpha)
    if config.student not in PRESETS:
        raise TfkitError(f"unknown student preset '{config.student}' (choose from {', '.join(PRESETS)})")
    check_writable(out)
    configure_devices(config.devices)
    teacher = Classifier.load(config.teacher)
    splits = _teacher_splits(teacher, config)
    shape = student_shape(backbone_of(teacher.model), config.student, config.layers, config.hidden,
                          config.heads, config.intermediate)
    keep = trim_vocab(teacher.tokenizer, splits.train.texts) if config.trim_vocab else None
    tokenizer = student_tokenizer(teacher.tokenizer, keep)
    log.info("student %s %s, vocab %d of %d", config.student, dataclasses.asdict(shape), len(tokenizer.vocab),
             len(teacher.tokenizer.vocab))

    log.info("caching teacher logits for %d training texts", len(splits.train))
    targets = {name: {"label": part.labels, "teacher_logits": teacher_logits(teacher, part.texts)}
               for name, part in (("train", splits.train), ("val", splits.val))}
    if config.recompute_teacher:
        targets = {name: {"label": t["label"]} for name, t in targets.items()}
    teacher_test = classification_metrics(splits.test.labels, teacher.predict_logits(splits.test.texts).argmax(-1), teacher.labels)

    runs = {"distilled": config.alpha}
    if config.baseline:
        runs["hard_labels"] = 1.0
    results, students = {}, {}
    for name, alpha in runs.items():
        keras.utils.set_random_seed(config.seed)
        strategy = make_strategy(config.devices)
        with strategy.scope():
            student = build_classifier(make_student(backbone_of(teacher.model), shape, keep, config.dropout, config.seed),
                                       len(teacher.labels), config.dropout, config.seed)
            train_ds = make_dataset(tokenizer, splits.train.texts, targets["train"], config.batch_size, shuffle=True, seed=config.seed)
            val_ds = make_dataset(tokenizer, splits.val.texts, targets["val"], config.batch_size)
            model = Distiller(student, teacher.model if config.recompute_teacher else None, config.temperature, alpha)
            model.compile(optimizer=make_optimizer(config.learning_rate, config.epochs * len(train_ds), config.warmup_ratio,
                                                   config.weight_decay),
                          metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), MacroF1(len(teacher.labels))])
        log.info("training the %s student (alpha %.2f, T %.1f)", name.replace("_", "-"), alpha, config.temperature)
        timer = EpochTimer()
        history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, verbose=fit_verbosity(), shuffle=False,
                            callbacks=[timer, early_stopping(config.patience)])
        students[name] = (student, history.history)
        results[name] = {"epoch_seconds": timer.seconds}

    model_config = ModelConfig(kind="student", labels=teacher.labels, tokenizer=tokenizer.config(),
                               precision="float32", training=dataclasses.asdict(config),
                               data={**teacher.config.data, "student_shape": dataclasses.asdict(shape)})
    student, history = students["distilled"]
    classifier = Classifier(student, tokenizer, model_config)
    metrics = {**evaluate(classifier, splits), "teacher": {"test": teacher_test, "parameters": teacher.model.count_params(),
                                                           "model_bytes": os.path.getsize(Path(config.teacher) / "model.keras")}}
    metrics["parameters"] = student.count_params()
    metrics["compression"] = metrics["teacher"]["parameters"] / metrics["parameters"]
    metrics["accuracy_retained"] = metrics["test"]["accuracy"] / teacher_test["accuracy"]
    metrics["teacher_agreement"] = float(np.mean(classifier.predict_logits(splits.test.texts).argmax(-1)
                                                 == teacher.predict_logits(splits.test.texts).argmax(-1)))
    metrics["epoch_seconds"] = results["distilled"]["epoch_seconds"]
    metrics["vocab_size"] = len(tokenizer.vocab)
    if "hard_labels" in students:
        baseline = Classifier(students["hard_labels"][0], tokenizer, model_config)
        metrics["hard_label_baseline"] = {
            "test": classification_metrics(splits.test.labels, baseline.predict_logits(splits.test.texts).argmax(-1), teacher.labels),
            "epoch_seconds": results["hard_labels"]["epoch_seconds"],
        }
        metrics["distill_epoch_cost_ratio"] = float(np.mean(metrics["epoch_seconds"]) / np.mean(results["hard_labels"]["epoch_seconds"]))
    save_model_dir(classifier, out, history, metrics)
    return metrics


def _teacher_splits(teacher: Classifier, config: DistillConfig):
    """The teacher's own train/val/test split (or `config.data` split the same way); labels must match."""
    d = teacher.config.data
    source = config.data or d["source"]
    splits = load_splits(source, None if config.data else d["val"], None if config.data else d["test"],
                         d["text_column"], d["label_column"], d["split_seed"], label_names=teacher.labels)
    present = sorted({teacher.labels[i] for i in np.unique(splits.train.labels)})
    if present != sorted(teacher.labels):
        missing = sorted(set(teacher.labels) - set(present))
        raise TfkitError(f"{source} has no examples of the teacher's label(s) {', '.join(missing)}; distill on data with the teacher's labels")
    return splits
