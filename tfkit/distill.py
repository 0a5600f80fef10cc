"""Knowledge distillation: train a small student on the teacher's soft targets (a Keras model, trained by `fit_model`).

`Distiller` is the keras-io distiller grown for cached logits. Keras 3.15's
`keras.distillation.Distiller` runs the teacher forward on every step; here the teacher's
logits are computed once per training example and carried in the tf.data targets, so a
distillation epoch costs what a hard-label epoch costs. The KD term itself is Keras'
`LogitsDistillation` (KL at temperature T, scaled by T^2). Passing `teacher=` instead of
cached logits recomputes them each step (for inputs that change every epoch).

Two optional levers: hidden-state transfer (TinyBERT's MSE between each student layer and a
teacher layer, on standardised states, through one learned projection when the widths differ;
it needs the teacher's hidden states, so the teacher runs every step), and teacher-labelled
augmentation (word-dropped copies of the training texts, labelled once by the teacher and
cached like the rest). Keras' `FeatureDistillation` has no padding mask and no projection
between widths, so the hidden-state term is written here.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

import keras
import numpy as np

from tfkit.artifacts import check_output
from tfkit.classifier import Classifier, ModelConfig, backbone_of, build_classifier, classification_metrics
from tfkit.config import DistillConfig, check_distill_args
from tfkit.devices import place
from tfkit.loop import Schedule, compile_model, fit_model, verbosity
from tfkit.resume import check_resume, remove_resume, resume_dir, run_settings
from tfkit.data import fingerprint
from tfkit.errors import TfkitError
from tfkit import probe
from tfkit.preprocess import batch_count, make_dataset, make_stream, plan_buckets
from tfkit.student import make_student, student_shape, student_tokenizer, trim_vocab
from tfkit.train import evaluate, save_model_dir

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
        hidden_weight: weight of the hidden-state MSE (0 = off); needs `teacher`. Student layer i
            imitates teacher layer `hidden_layer_map(...)[i]`; `call` then also returns hidden states.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model | None = None, temperature: float = 3.0,
                 alpha: float = 0.5, hidden_weight: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        check_distill_args(temperature, alpha, hidden_weight)
        self.student, self.teacher, self.temperature, self.alpha = student, teacher, temperature, alpha
        self.hidden_weight = hidden_weight
        if teacher is not None:
            teacher.trainable = False
        # An explicit KLDivergence instance: Keras 3.15 turns the default "kl_divergence" string into
        # a plain function, which skips LogitsDistillation's softmax + T^2 branch (KL on raw logits).
        self.kd = keras.distillation.LogitsDistillation(temperature=temperature, loss=keras.losses.KLDivergence())
        self.hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if hidden_weight:
            if teacher is None:
                raise ValueError("hidden-state transfer needs the `teacher` model")
            s, t = backbone_of(student), backbone_of(teacher)
            self.layer_pairs = hidden_layer_map(t.num_layers, s.num_layers)
            self.student_taps, self.teacher_taps = with_hidden_states(student), with_hidden_states(teacher)
            # One projection shared by all layers, as in TinyBERT; trained here, not part of the student.
            self.projection = None
            if s.hidden_dim != t.hidden_dim:
                self.projection = keras.layers.Dense(t.hidden_dim, name="hidden_projection")
                self.projection.build((None, None, s.hidden_dim))

    def call(self, inputs, training=False):
        if self.hidden_weight:
            return self.student_taps(inputs, training=training)
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels, teacher_logits = _split_targets(y)
        logits = y_pred[0] if self.hidden_weight else y_pred
        if self.hidden_weight:
            teacher_out = [keras.ops.stop_gradient(t) for t in self.teacher_taps(x, training=False)]
            teacher_logits = teacher_out[0] if teacher_logits is None else teacher_logits
        elif teacher_logits is None:
            if self.teacher is None:
                raise ValueError("Distiller needs cached `teacher_logits` in the targets or a `teacher` model")
            teacher_logits = keras.ops.stop_gradient(self.teacher(x, training=False))
        loss = self.alpha * self.hard(labels, logits)
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * self.kd.compute_loss(keras.ops.cast(teacher_logits, "float32"), logits)
        if self.hidden_weight:
            teacher_hidden = [teacher_out[1 + j] for j in self.layer_pairs]
            loss = loss + self.hidden_weight * hidden_state_loss(y_pred[1:], teacher_hidden, x["padding_mask"], self.projection)
        return loss + keras.ops.sum(self.losses) if self.losses else loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, _split_targets(y)[0], y_pred[0] if self.hidden_weight else y_pred, sample_weight)


def hidden_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layer each student layer imitates: the last of each equal block ((6, 2) -> [2, 5])."""
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def with_hidden_states(classifier: keras.Model) -> keras.Model:
    """The classifier's inputs -> [logits, the output of each transformer layer], in one forward pass.

    Wires the layers of a `build_classifier` model to more outputs, so it shares every weight.
    """
    backbone = backbone_of(classifier)
    taps = keras.Model(backbone.input, [backbone.output["pooled_output"], *(layer.output for layer in backbone.transformer_layers)])
    inputs = classifier.input
    pooled, *hidden = taps({"token_ids": inputs["token_ids"], "segment_ids": keras.ops.zeros_like(inputs["token_ids"]),
                            "padding_mask": inputs["padding_mask"]})
    logits = classifier.get_layer("logits")(classifier.get_layer("head_dropout")(pooled))
    return keras.Model(inputs, [logits, *hidden])


def hidden_state_loss(student_hidden, teacher_hidden, padding_mask, projection=None):
    """MSE between paired hidden states, each token's vector standardised first, over real tokens.

    Standardising (a LayerNorm without scale or shift) matches the states' direction and spread,
    not their offset: with raw MSE the projection's bias alone could fit the teacher's mean state,
    and a narrow student's states collapsed to one constant (measured: every text the same class).
    """
    mask = keras.ops.expand_dims(keras.ops.cast(padding_mask, "float32"), -1)
    tokens = keras.ops.maximum(keras.ops.sum(mask), 1.0)
    total = 0.0
    for s, t in zip(student_hidden, teacher_hidden):
        s = keras.ops.cast(s, "float32")
        s = projection(s) if projection is not None else s
        error = keras.ops.square(_standardise(s) - _standardise(keras.ops.cast(t, "float32")))
        total = total + keras.ops.sum(error * mask) / (tokens * t.shape[-1])
    return total / len(student_hidden)


def _standardise(x, epsilon: float = 1e-6):
    x = x - keras.ops.mean(x, axis=-1, keepdims=True)
    return x * keras.ops.rsqrt(keras.ops.mean(keras.ops.square(x), axis=-1, keepdims=True) + epsilon)


def augment_texts(texts: list[str], copies: int, seed: int = 0, drop: float = 0.15) -> list[str]:
    """`copies` variants of every text with each word dropped with probability `drop` (at least one word kept).

    Word dropout keeps the text natural enough for the teacher to label it; the variants are
    returned copy by copy (all of copy 0, then all of copy 1, ...).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(copies):
        for text in texts:
            words = text.split()
            keep = rng.random(len(words)) >= drop
            if not keep.any():
                keep[rng.integers(len(words))] = True
            out.append(" ".join(w for w, k in zip(words, keep) if k))
    return out


def _split_targets(y):
    if isinstance(y, dict):
        return y["label"], y.get("teacher_logits")
    return y, None


def teacher_logits(teacher: Classifier, texts: list[str]) -> np.ndarray:
    """The teacher's logits for `texts`, computed once (length-sorted batches)."""
    return teacher.predict_logits(texts, batch_size=128)


def distill(config: DistillConfig, out: str | Path = "models/student") -> dict:
    """Distills the teacher model dir into a student model dir `out`; returns its metrics."""
    config.validate()
    check_output(out, "model", inputs=(config.teacher, config.data))
    settings = run_settings(config, {"teacher": config.teacher, "data": config.data})
    check_resume(out, settings)
    placement = place(config.strategy, config.devices)  # before any other TensorFlow op (the teacher's too)
    teacher = Classifier.load(config.teacher)
    splits = _teacher_splits(teacher, config)
    shape = student_shape(backbone_of(teacher.model), config.student, config.layers, config.hidden,
                          config.heads, config.intermediate)
    keep = trim_vocab(teacher.tokenizer, splits.train.texts, config.vocab_min_count) if config.trim_vocab else None
    tokenizer = student_tokenizer(teacher.tokenizer, keep)
    log.info("student %s %s, vocab %d of %d", config.student, dataclasses.asdict(shape), len(tokenizer.vocab),
             len(teacher.tokenizer.vocab))

    train = {"texts": splits.train.texts, "label": splits.train.labels}
    val = {"texts": splits.val.texts, "label": splits.val.labels}
    if not config.recompute_teacher:
        log.info("caching teacher logits for %d training texts", len(splits.train) * (1 + config.augment))
        for d in (train, val):
            d["teacher_logits"] = teacher_logits(teacher, d["texts"])
    runs = {"distilled": (config.alpha, config.hidden_loss, _with_augmented(train, teacher, config))}
    if config.baseline:  # the same student without a teacher: hard labels of the original texts
        runs["hard_labels"] = (1.0, 0.0, train)
    live_teacher = config.recompute_teacher or config.hidden_loss > 0
    targets = lambda d: {k: d[k] for k in ("label", "teacher_logits") if k in d}
    results, speed = {}, None
    for name, (alpha, hidden_loss, data) in runs.items():
        keras.utils.set_random_seed(config.seed)
        with placement.strategy.scope():
            compiled = lambda precision, jit, warmup_ratio, steps: compiled_student(
                teacher, shape, keep, config, alpha, hidden_loss, live_teacher, precision, jit, config.epochs * steps, warmup_ratio)
            if speed is None:  # measured on the distilled run; the hard-label baseline trains the same way
                probed = batch_count(tokenizer, data["texts"], config.batch_size)  # steps an epoch with the default buckets
                speed = student_speed(config, tokenizer, data, targets, shape, live_teacher,
                                      lambda precision, jit, warmup_ratio: compiled(precision, jit, warmup_ratio, probed),
                                      config.epochs * probed, len(teacher.labels), probe_speed=placement.cluster is None)
                keras.utils.set_random_seed(config.seed)  # the same training whether the probe ran, was cached or skipped
            steps = batch_count(tokenizer, data["texts"], config.batch_size, pads=speed["pads"])
            val_ds = make_dataset(tokenizer, val["texts"], targets(val), config.batch_size, pads=speed["pads"])
            model, student = compiled(speed["precision"], speed["jit"], config.warmup_ratio, steps)
        log.info("training the %s student on %d texts (alpha %.2f, T %.1f, hidden loss %g), %s", name.replace("_", "-"),
                 len(data["texts"]), alpha, config.temperature, hidden_loss, placement.describe())
        stream = functools.partial(make_stream, tokenizer, data["texts"], targets(data), config.batch_size, config.seed,
                                   True, epochs=config.epochs, pads=speed["pads"])
        fitted = fit_model(model, stream, steps, val_ds, Schedule(config.epochs, config.patience, config.checkpoint_every, verbosity()),
                           strategy=placement.strategy, resume_area=resume_dir(out) / name, settings=settings,
                           cluster=placement.cluster)
        results[name] = {"student": student, "history": fitted.history, "epoch_seconds": fitted.epoch_seconds,
                         "resumed_from": fitted.resumed_from,
                         "seconds_per_example": float(np.mean(fitted.epoch_seconds)) / len(data["texts"])}
    if not placement.is_chief:
        log.info("worker %d done; the chief writes %s", placement.cluster.index, out)
        placement.finish()
        return None

    resolved = dataclasses.replace(config, precision=speed["precision"], jit=speed["jit"], probe=speed)
    model_config = ModelConfig(kind="student", labels=teacher.labels, tokenizer=tokenizer.config(),
                               precision=speed["precision"], training=dataclasses.asdict(resolved),
                               data={**_data_record(teacher, config), "student_shape": dataclasses.asdict(shape)})
    classifier = Classifier(results["distilled"]["student"], tokenizer, model_config)
    teacher_test = teacher.predict_logits(splits.test.texts).argmax(-1)
    metrics = {**evaluate(classifier, splits),
               "teacher": {"test": classification_metrics(splits.test.labels, teacher_test, teacher.labels),
                           "parameters": teacher.model.count_params(),
                           "model_bytes": os.path.getsize(Path(config.teacher) / "model.keras")}}
    metrics["parameters"] = classifier.model.count_params()
    metrics["compression"] = metrics["teacher"]["parameters"] / metrics["parameters"]
    metrics["accuracy_retained"] = metrics["test"]["accuracy"] / metrics["teacher"]["test"]["accuracy"]
    metrics["teacher_agreement"] = float(np.mean(classifier.predict_logits(splits.test.texts).argmax(-1) == teacher_test))
    metrics["epoch_seconds"] = results["distilled"]["epoch_seconds"]
    metrics["train_texts"] = len(runs["distilled"][2]["texts"])
    metrics["vocab_size"] = len(tokenizer.vocab)
    metrics["strategy"], metrics["resumed_from"] = placement.kind, results["distilled"]["resumed_from"]
    if "hard_labels" in results:
        baseline = Classifier(results["hard_labels"]["student"], tokenizer, model_config)
        metrics["hard_label_baseline"] = {
            "test": classification_metrics(splits.test.labels, baseline.predict_logits(splits.test.texts).argmax(-1), teacher.labels),
            "epoch_seconds": results["hard_labels"]["epoch_seconds"],
        }
        # Per training example, so augmented epochs (more texts) compare fairly: the teacher's overhead only.
        metrics["distill_cost_ratio"] = results["distilled"]["seconds_per_example"] / results["hard_labels"]["seconds_per_example"]
    save_model_dir(classifier, out, results["distilled"]["history"], metrics, splits)
    remove_resume(out)
    placement.finish()
    return metrics


def compiled_student(teacher: Classifier, shape, keep, config: DistillConfig, alpha: float, hidden_loss: float,
                     live_teacher: bool, precision: str, jit: str, steps: int, warmup_ratio: float):
    """(the compiled `Distiller`, its student classifier), the student in `precision`, its train step XLA-compiled or not."""
    student = build_classifier(make_student(backbone_of(teacher.model), shape, keep, config.dropout, config.seed, precision),
                               len(teacher.labels), config.dropout, config.seed)
    model = Distiller(student, teacher.model if live_teacher else None, config.temperature, alpha, hidden_loss)
    compile_model(model, len(teacher.labels), config.learning_rate, steps, warmup_ratio, config.weight_decay,
                  jit_compile=jit == "on")
    return model, student


def student_speed(config: DistillConfig, tokenizer, data: dict, targets, shape, live_teacher: bool, compiled,
                  steps: int, classes: int, probe_speed: bool = True) -> dict:
    """The student's precision and XLA (`tfkit.probe.decide`), probed on its own training batches (unless `probe_speed` is False)."""
    texts = probe.probe_texts(config.batch_size, len(data["texts"]))
    head = {k: v[:texts] for k, v in targets(data).items()}
    model = {**dataclasses.asdict(shape), "vocabulary_size": len(tokenizer.vocab), "classes": classes,
             "live_teacher": live_teacher, "hidden_loss": config.hidden_loss > 0}
    return probe.decide(config, "student", model, tokenizer.max_length,
                        make_model=lambda c: compiled(c.precision, c.jit, 0.0)[0],
                        probe_data=lambda: make_dataset(tokenizer, data["texts"][:texts], head, config.batch_size,
                                                        shuffle=True, seed=config.seed),
                        train_steps=steps, plan=functools.partial(plan_buckets, tokenizer.lengths(data["texts"]), tokenizer.max_length,
                                                                  config.epochs, batch_size=config.batch_size),
                        static=None if probe_speed else "several workers take the static choice (they must agree)")


def _with_augmented(train: dict, teacher: Classifier, config: DistillConfig) -> dict:
    """The training texts plus `config.augment` word-dropped copies, labelled by the teacher (argmax, and logits if cached)."""
    if not config.augment:
        return train
    texts = augment_texts(train["texts"], config.augment, config.seed)
    logits = teacher_logits(teacher, texts)  # the copies' hard labels, even when the teacher runs every step
    out = {"texts": train["texts"] + texts, "label": np.concatenate([train["label"], logits.argmax(-1).astype(np.int32)])}
    if "teacher_logits" in train:
        out["teacher_logits"] = np.concatenate([train["teacher_logits"], logits])
    return out


def _data_record(teacher: Classifier, config: DistillConfig) -> dict:
    """config.json's `data` of the student: the teacher's, or the --data file it was distilled on."""
    if not config.data:
        return teacher.config.data
    return {**teacher.config.data, "source": str(Path(config.data).resolve()), "val": None, "test": None,
            "sha256": {"source": fingerprint(config.data), "val": None, "test": None}, "encoding": config.encoding}


def _teacher_splits(teacher: Classifier, config: DistillConfig):
    """The teacher's own train/val/test split (or `config.data` split the same way); labels must match."""
    source = config.data or teacher.config.data["source"]
    splits = teacher.splits(config.data, config.encoding if config.data else None)
    present = sorted({teacher.labels[i] for i in np.unique(splits.train.labels)})
    if present != sorted(teacher.labels):
        missing = sorted(set(teacher.labels) - set(present))
        raise TfkitError(f"{source} has no examples of the teacher's label(s) {', '.join(missing)}; distill on data with the teacher's labels")
    return splits
