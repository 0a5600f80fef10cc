"""Fine-tune a pretrained BERT into a text classifier (trained by `tfkit.loop.fit_model`: Keras `fit` on one machine).

AdamW with linear warmup and linear decay, dropout, early stopping on validation macro-F1
with best-weights restore, length-bucketed batches, under a `tf.distribute` strategy (the
default one for a single device). `train()` writes a complete model directory atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from pathlib import Path

import keras
import numpy as np

from tfkit import assets
from tfkit.artifacts import atomic_dir, check_output, write_json
from tfkit.baseline import compare as compare_with_baseline
from tfkit.baseline import fit_baseline
from tfkit.classifier import HELDOUT_FILE, Classifier, ModelConfig, build_classifier, classification_metrics
from tfkit.config import TrainConfig
from tfkit.data import Splits, data_report, fingerprint, load_splits, log_report, write_heldout
from tfkit.devices import configure_devices, place
from tfkit.errors import TfkitError
from tfkit import probe
from tfkit.loop import Schedule, compile_model, fit_model, verbosity
from tfkit.resume import check_resume, remove_resume, resume_dir, run_settings
from tfkit.preprocess import (WordPieceTokenizer, batch_count, choose_max_length, choose_truncation, length_report,
                              make_dataset, make_stream, plan_buckets)

log = logging.getLogger("tfkit")


MIN_STEPS = 600  # full batches a run gets at least: 2 epochs of the built-in data's 10,246 texts are 642
MAX_AUTO_EPOCHS = 20
IMBALANCE = 3.0  # `--class-weight auto` balances when the largest class has this many times the smallest's examples


def training_length(train_size: int, batch_size: int, epochs: int | None = None,
                    patience: int | None = None) -> tuple[int, int, str]:
    """(epochs, early-stopping patience, why) for `train_size` training texts in batches of `batch_size`.

    Two epochs of a few hundred texts are a few dozen steps, too few to get past the majority
    class; so by default a run sees at least MIN_STEPS batches' worth of texts (2 to MAX_AUTO_EPOCHS
    epochs), and early stopping on validation macro-F1 with the best weights restored ends it when it
    stops improving. The budget counts texts, not the batches length bucketing makes: texts of widely
    spread lengths fill many part-empty buckets (the 897 debate statements made 75 batches an epoch,
    not 29), which would cut the epochs for exactly the data that needs them. An explicit --epochs
    means exactly that many (less if early stopping ends it).
    """
    full_batches = max(1, math.ceil(train_size / batch_size))
    if epochs is None:
        epochs = min(MAX_AUTO_EPOCHS, max(2, math.ceil(MIN_STEPS / full_batches)))
        why = (f"{train_size} texts = {full_batches} batches of {batch_size} an epoch -> {epochs} epochs, "
               f"for at least {MIN_STEPS} batches' worth (at most {MAX_AUTO_EPOCHS} epochs)")
    else:
        why = "--epochs"
    if patience is None:  # measured: patience 1 stopped a 9-class run at its first validation dip, still learning
        patience = 1 if epochs <= 2 else max(2, epochs // 4)
    return epochs, patience, why


def class_weights(labels, num_classes: int, mode: str) -> tuple[dict[int, float] | None, str]:
    """Per-class loss weights (sklearn's 'balanced': n / (classes x count)) and the mode that was applied.

    `auto` balances only when the classes are imbalanced by IMBALANCE or more (the built-in data,
    58/42, is trained as before).
    """
    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    if mode == "auto":
        mode = "balanced" if present.max() >= IMBALANCE * present.min() else "none"
    if mode == "none":
        return None, mode
    weights = len(labels) / (len(present) * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}, mode


def prepare(config: TrainConfig) -> tuple[Splits, str]:
    """Validates the config and data before any model work; returns splits and the precision asked for
    (`auto` is decided by `build`, by measurement)."""
    config.validate()
    assets.check_checkpoint(config.pretrained or assets.default_teacher_dir())
    configure_devices(config.devices)
    precision = config.precision
    keras.utils.set_random_seed(config.seed)
    splits = load_splits(config.data, config.val, config.test, config.text_column, config.label_column, config.seed,
                         encoding=config.encoding)
    return splits, precision


@dataclasses.dataclass
class Run:
    """A compiled model with its data pipelines, ready for `fit_model` (what `build` returns)."""

    model: keras.Model
    tokenizer: WordPieceTokenizer
    train_ds: object  # one epoch (reshuffled each time it is iterated)
    stream: object  # epoch -> the batches from that epoch to the last (`make_stream`)
    val_ds: object
    strategy: object
    config: TrainConfig  # resolved: pretrained path, max_length and learning rate filled in
    lengths: dict


def build(config: TrainConfig, splits: Splits, precision: str, strategy=None, probe_speed: bool = True) -> Run:
    """Loads the pretrained backbone under the strategy, picks max_length, precision and XLA, compiles the classifier.

    `strategy`: the run's (`tfkit.devices.place`); None places one from the config. `probe_speed`
    False takes the static choice for `auto` instead of measuring (several workers must agree).
    """
    from tfkit.backbone import load_backbone

    config = dataclasses.replace(config, precision=precision)
    pretrained = config.pretrained or str(assets.default_teacher_dir())
    strategy = strategy or place(config.strategy, config.devices).strategy
    learning_rate = config.learning_rate or (1e-3 if config.freeze_backbone else 5e-5)
    classes = len(splits.label_names)

    def classifier(dtype: str, jit: str, steps: int, warmup_ratio: float) -> keras.Model:
        backbone, _ = load_backbone(pretrained, max_length=10**6, dtype=dtype, dropout=config.dropout)
        backbone.trainable = not config.freeze_backbone
        model = build_classifier(backbone, classes, config.dropout, config.seed)
        compile_model(model, classes, learning_rate, steps, warmup_ratio, config.weight_decay,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit == "on")
        return model

    with strategy.scope():
        backbone, tokenizer = load_backbone(pretrained, max_length=10**6, dropout=config.dropout)
        lengths = tokenizer.lengths(splits.train.texts)
        max_length = config.max_length or choose_max_length(lengths, backbone.max_sequence_length)
        if max_length > backbone.max_sequence_length:
            raise TfkitError(f"--max-length {max_length} exceeds the model's limit of {backbone.max_sequence_length}")
        report = length_report(lengths, max_length)
        truncation, why = choose_truncation(config.truncation, report["truncated"])
        tokenizer = WordPieceTokenizer(tokenizer.vocab, tokenizer.lowercase, max_length, truncation)
        log.info("token lengths p50 %(p50)d p95 %(p95)d p99 %(p99)d max %(max)d -> max_length %(max_length)d "
                 "(%(truncated).2f%% truncated)", {**report, "truncated": 100 * report["truncated"]})
        if report["truncated"]:
            log.info("truncation %s (%s): a longer text keeps its first %d word pieces%s", truncation, why, tokenizer.head,
                     f" and its last {max_length - 2 - tokenizer.head}" if truncation == "head+tail" else "")
        epochs, patience, why = training_length(len(splits.train), config.batch_size, config.epochs, config.patience)
        log.info("training length: %s; early stopping after %d epoch(s) without a better validation macro-F1", why, patience)
        steps = epochs * batch_count(tokenizer, splits.train.texts, config.batch_size, config.bucket)
        shape = {k: getattr(backbone, k) for k in ("num_layers", "hidden_dim", "num_heads", "intermediate_dim", "vocabulary_size")}
        texts = probe.probe_texts(config.batch_size, len(splits.train))
        plan = functools.partial(plan_buckets, lengths, max_length, epochs, batch_size=config.batch_size)
        speed = probe.decide(
            config, "teacher", {**shape, "classes": classes, "frozen": config.freeze_backbone}, max_length,
            make_model=lambda c: classifier(c.precision, c.jit, steps, 0.0),
            probe_data=lambda: make_dataset(tokenizer, splits.train.texts[:texts], splits.train.labels[:texts],
                                            config.batch_size, shuffle=True, seed=config.seed, bucket=config.bucket),
            train_steps=steps, plan=plan if config.bucket else None, bucket=config.bucket,
            static=None if probe_speed else "several workers take the static choice (they must agree)")
        pads = speed["pads"]
        train_ds = make_dataset(tokenizer, splits.train.texts, splits.train.labels, config.batch_size,
                                shuffle=True, seed=config.seed, bucket=config.bucket, pads=pads)
        val_ds = make_dataset(tokenizer, splits.val.texts, splits.val.labels, config.batch_size, bucket=config.bucket, pads=pads)
        stream = functools.partial(make_stream, tokenizer, splits.train.texts, splits.train.labels, config.batch_size,
                                   config.seed, config.bucket, epochs=epochs, pads=pads)
        steps = epochs * int(train_ds.cardinality())
        keras.utils.set_random_seed(config.seed)  # the same training whether the probe ran, was cached or skipped
        model = classifier(speed["precision"], speed["jit"], steps, config.warmup_ratio)
    resolved = dataclasses.replace(config, pretrained=pretrained, max_length=max_length, truncation=truncation,
                                   learning_rate=learning_rate, epochs=epochs, patience=patience,
                                   precision=speed["precision"], jit=speed["jit"], probe=speed)
    return Run(model, tokenizer, train_ds, stream, val_ds, strategy, resolved, report)


def train(config: TrainConfig, out: str | Path = "models/teacher") -> dict | None:
    """Fine-tunes the pretrained backbone on `config.data`; writes the model directory `out`.

    Returns the metrics also written to `out/metrics.json` (None on a worker other than the
    chief of a multi-worker cluster: the chief writes the model). A run interrupted before the
    end resumes from its last checkpoint when started again with the same settings.
    """
    config.validate()
    check_output(out, "model", inputs=(config.data, config.val, config.test, config.pretrained))
    settings = run_settings(config, {"data": config.data, "val": config.val, "test": config.test})
    check_resume(out, settings)
    placement = place(config.strategy, config.devices)  # before any other TensorFlow op
    splits, precision = prepare(config)
    report = data_report(splits)
    log_report(report)
    weights, weighting = class_weights(splits.train.labels, len(splits.label_names), config.class_weight)
    if weights:
        log.info("class weights (%s): %s", weighting, ", ".join(f"{splits.label_names[i]} {w:.2f}" for i, w in weights.items()))
    baseline = None
    if config.tfidf_baseline and placement.is_chief:
        baseline = fit_baseline(splits, balanced=weights is not None, seed=config.seed)
        log.info("TF-IDF baseline: test accuracy %.4f, macro-F1 %.4f (%.1f s)", baseline["test"]["accuracy"],
                 baseline["test"]["macro_f1"], baseline["seconds"])
    run = build(config, splits, precision, placement.strategy, probe_speed=placement.cluster is None)
    run.config = dataclasses.replace(run.config, class_weight=weighting)
    precision = run.config.precision
    log.info("training on %d examples (%s), %s, %s, XLA %s", len(splits.train), splits.sizes(), placement.describe(),
             precision, run.config.jit)
    schedule = Schedule(run.config.epochs, run.config.patience, config.checkpoint_every, verbosity())
    fitted = fit_model(run.model, run.stream, len(run.train_ds), run.val_ds, schedule, strategy=placement.strategy,
                       resume_area=resume_dir(out) / "teacher", settings=settings, cluster=placement.cluster,
                       class_weight=weights)
    if not placement.is_chief:
        log.info("worker %d done; the chief writes %s", placement.cluster.index, out)
        placement.finish()
        return None
    model_config = ModelConfig(
        kind="teacher", labels=splits.label_names, tokenizer=run.tokenizer.config(), precision=precision,
        training=dataclasses.asdict(run.config), data={**data_summary(config, splits, run.lengths), "report": report},
    )
    classifier = Classifier(run.model, run.tokenizer, model_config)
    seconds = fitted.epoch_seconds
    metrics = {
        **evaluate(classifier, splits),
        "epoch_seconds": seconds,
        "train_seconds": float(sum(seconds)),
        "examples_per_second": len(splits.train) * len(seconds) / max(sum(seconds), 1e-9),
        "epochs_run": len(seconds),
        "replicas": placement.strategy.num_replicas_in_sync,
        "strategy": placement.kind,
        "resumed_from": fitted.resumed_from,
        "precision": precision,
        "parameters": int(run.model.count_params()),
    }
    if baseline:
        metrics["tfidf_baseline"] = baseline
        warning = compare_with_baseline(metrics, baseline)
        if warning:
            log.warning("%s", warning)
    save_model_dir(classifier, out, fitted.history, metrics, splits)
    remove_resume(out)
    placement.finish()
    return metrics


def data_summary(config: TrainConfig, splits: Splits, lengths: dict) -> dict:
    """Where the data came from (absolute paths and content hashes, so a later stage run from
    anywhere finds it, or says it moved or changed) and what it looked like, for config.json."""
    where = lambda p: p if p in (None, assets.DEFAULT_DATA) else str(Path(p).resolve())
    return {"source": where(config.data), "val": where(config.val), "test": where(config.test),
            "sha256": {"source": fingerprint(config.data), "val": config.val and fingerprint(config.val),
                       "test": config.test and fingerprint(config.test)},
            "text_column": config.text_column, "label_column": config.label_column, "encoding": config.encoding,
            "split_seed": config.seed, "sizes": splits.sizes(), "dropped_empty": splits.dropped_empty,
            "token_lengths": lengths}


def evaluate(classifier: Classifier, splits: Splits) -> dict:
    """Validation and test metrics of `classifier` on `splits`, plus the split sizes."""
    result = {"split_sizes": splits.sizes()}
    for name in ("val", "test"):
        part = getattr(splits, name)
        predictions = classifier.predict_logits(part.texts).argmax(-1)
        result[name] = classification_metrics(part.labels, predictions, splits.label_names)
        never = [splits.label_names[i] for i in np.unique(part.labels) if i not in predictions]
        result[name]["never_predicted"] = never
        if never and name == "val":
            log.warning("the model never predicts %s on validation, though the split has examples of it "
                        "(try --class-weight balanced or more epochs)", ", ".join(never))
    log.info("test accuracy %.4f, macro-F1 %.4f", result["test"]["accuracy"], result["test"]["macro_f1"])
    return result


def save_model_dir(classifier: Classifier, out: str | Path, history: dict, metrics: dict, splits: Splits) -> None:
    """Writes model, config, vocab, history, metrics and the held-out examples into `out`, atomically."""
    classifier.model.compile(loss=classifier.model.loss)  # drop optimizer slots: the saved model is for inference
    with atomic_dir(out, "model") as tmp:
        classifier.save(tmp)
        write_heldout(tmp / HELDOUT_FILE, splits)
        metrics["model_bytes"] = (tmp / "model.keras").stat().st_size
        write_json(tmp / "history.json", {k: [float(v) for v in vs] for k, vs in history.items()})
        write_json(tmp / "metrics.json", metrics)
    log.info("wrote %s", out)
