"""One training loop for teacher and student: Keras `fit` on one machine, a `strategy.run` step across several.

Both stages compile with `compile_model` and hand `fit_model` the model and their data; it adds what every run
has (an epoch timer, early stopping on validation macro-F1 with the best weights restored,
training checkpoints) and continues from the last checkpoint when the same run was
interrupted. Under MultiWorkerMirroredStrategy Keras 3's `fit` fails on this stack
(keras-team/keras#20585), so there the same model, loss, metrics, optimizer and callbacks are
driven by a `strategy.run` step; on one machine (one device or MirroredStrategy) it is `fit`.

A checkpoint (`tf.train.Checkpoint`: weights, optimizer slots and step, dropout RNG states)
is written to a temporary directory and renamed into the resume area; `resume.json` is
written after it (see `tfkit.resume`). The data position is the optimizer step: the training
stream is the shuffled, bucketed epochs repeated, deterministic for a seed, so a resumed run
skips exactly the batches already trained on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tfkit.artifacts import write_json
from tfkit.classifier import MacroF1
from tfkit.cluster import Cluster
from tfkit.devices import replica_sum
from tfkit.errors import TfkitError
from tfkit.resume import RESUME_FILE, read_state

log = logging.getLogger("tfkit")
CHECKPOINT = "ckpt"


@dataclasses.dataclass
class Schedule:
    """How long a run trains and how often it saves its progress."""

    epochs: int
    patience: int
    checkpoint_every: int | None = None  # optimizer steps between checkpoints; None = at each epoch's end only
    verbose: int = 2  # Keras verbosity: 1 a live progress bar, 2 a line per epoch, 0 silent


@dataclasses.dataclass
class Fitted:
    """What a finished `fit_model` leaves: per-epoch logs and timings, and where it resumed from."""

    history: dict[str, list[float]]
    epoch_seconds: list[float]
    resumed_from: dict | None  # {"epoch", "step"} of the checkpoint a resumed run continued from


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


@keras.saving.register_keras_serializable(package="tfkit")
class FusedAdamW(keras.optimizers.AdamW):
    """Keras' AdamW whose update runs as TensorFlow's fused `ResourceApplyAdam` kernel.

    Keras' Adam step is a chain of elementwise ops, each a pass over every weight; the kernel is
    one pass with the same formula and the same slot variables (checkpoints are interchangeable).
    An embedding's sparse gradient (whose moments Keras updates only in the rows it touches) and
    AMSGrad keep Keras' own update.
    """

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        handle = lambda v: (v.value if isinstance(v, keras.Variable) else v).handle
        tf.raw_ops.ResourceApplyAdam(
            var=handle(variable), m=handle(self._momentums[index]), v=handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


def make_optimizer(learning_rate: float, total_steps: int, warmup_ratio: float = 0.1, weight_decay: float = 0.01):
    """AdamW on the warmup/decay schedule; biases and LayerNorm weights are not decayed (as in BERT)."""
    schedule = WarmupLinearDecay(learning_rate, total_steps, int(warmup_ratio * total_steps))
    optimizer = FusedAdamW(learning_rate=schedule, weight_decay=weight_decay, clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_model(model: keras.Model, num_classes: int, learning_rate: float, total_steps: int, warmup_ratio: float,
                  weight_decay: float, loss=None, jit_compile: bool = False) -> None:
    """What every tfkit run compiles: AdamW on the warmup/decay schedule, accuracy and macro-F1 (early stopping's signal)."""
    model.compile(optimizer=make_optimizer(learning_rate, total_steps, warmup_ratio, weight_decay), loss=loss,
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), MacroF1(num_classes)],
                  jit_compile=jit_compile)


def verbosity() -> int:
    """A live Keras progress bar on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch's training steps (the validation pass excluded)."""

    def __init__(self, seconds: list[float] | None = None):
        super().__init__()
        self.seconds, self._start = list(seconds or []), None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):  # validation starts: the epoch's training is over
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_epoch_end(self, epoch, logs=None):  # when there is no validation data
        self.on_test_begin()


class Record(keras.callbacks.Callback):
    """Every epoch's logs, carried across a restart (Keras' History starts empty in each `fit`)."""

    def __init__(self, history: dict | None = None):
        super().__init__()
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping on validation macro-F1 whose progress survives a restart.

    The best weights are put back by `finish()` when the whole run is over, not at the end of
    each `fit` call (a resumed run may need two).
    """

    def __init__(self, patience: int):
        super().__init__(monitor="val_macro_f1", mode="max", patience=patience, restore_best_weights=True, verbose=1)
        self._restored = False

    def on_train_begin(self, logs=None):
        if not self._restored:
            super().on_train_begin(logs)

    def on_train_end(self, logs=None):
        self._restored = True  # keep the progress for the next `fit` call of the same run

    def finish(self) -> None:
        super().on_train_end()

    def state(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {"wait": self.wait, "stopped_epoch": self.stopped_epoch, "best": best, "best_epoch": self.best_epoch}

    def restore(self, state: dict, best_weights: list[np.ndarray] | None) -> None:
        self.wait, self.stopped_epoch, self.best_epoch = state["wait"], state["stopped_epoch"], state["best_epoch"]
        self.best, self.best_weights, self._restored = state["best"], best_weights, True


class Checkpoints(keras.callbacks.Callback):
    """Saves the run's whole state into the resume area every `every` steps and at each epoch's end.

    Under several workers every worker writes its checkpoint (TensorFlow's rule for this
    strategy), the chief into the resume area, the others into temporary directories removed
    at once; only the chief commits `resume.json`.
    """

    def __init__(self, area: Path, settings: dict, steps_per_epoch: int, every: int | None, cluster: Cluster | None,
                 early: EarlyStopping, record: Record, timer: EpochTimer):
        super().__init__()
        self.area, self.settings, self.steps_per_epoch, self.every = area, settings, steps_per_epoch, every
        self.chief = cluster is None or cluster.is_chief
        self.worker = 0 if cluster is None else cluster.index
        self.early, self.record, self.timer = early, record, timer
        self.best_file: str | None = None
        self.step = 0  # optimizer steps taken (counted here: reading the optimizer's counter would cost a sync)
        self.saved_seconds: list[float] = []

    def tracked(self, model: keras.Model) -> tf.train.Checkpoint:
        weights = {id(w) for w in model.weights}
        rng = [v.value for v in model.variables if id(v) not in weights]  # dropout seed generators
        return tf.train.Checkpoint(model=model, optimizer=model.optimizer, rng=rng)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.every and self.step % self.every == 0 and self.step % self.steps_per_epoch:
            self.save(self.step)

    def on_epoch_end(self, epoch, logs=None):
        self.save(self.step)

    def save(self, step: int) -> None:
        start = time.perf_counter()
        self.area.mkdir(parents=True, exist_ok=True)
        tmp = self.area / f"{'tmp' if self.chief else f'worker-{self.worker}'}-{os.getpid()}"
        self.tracked(self.model).write(str(tmp / CHECKPOINT))
        if not self.chief:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        early = self.early.state()
        best_file = f"best-{early['best_epoch']}.npz" if self.early.best_weights is not None else None
        if best_file and best_file != self.best_file:
            np.savez(tmp / "best.npz", *self.early.best_weights)
            os.replace(tmp / "best.npz", self.area / best_file)
        name = f"step-{step:09d}"
        shutil.rmtree(self.area / name, ignore_errors=True)  # an uncommitted one from a killed run
        os.rename(tmp, self.area / name)
        write_json(self.area / RESUME_FILE, {
            "settings": self.settings, "checkpoint": name, "best_weights": best_file,
            "epoch": step // self.steps_per_epoch, "step": step % self.steps_per_epoch, "global_step": step,
            "stopped": bool(self.model.stop_training), "history": self.record.history,
            "epoch_seconds": self.timer.seconds, "early_stopping": early,
        })
        self.best_file = best_file
        for old in self.area.iterdir():  # only the committed checkpoint and its best weights stay
            if old.name not in (name, best_file, RESUME_FILE) and not old.name.startswith("worker-"):
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        self.saved_seconds.append(time.perf_counter() - start)

    def restore(self, model: keras.Model) -> dict | None:
        """Loads the committed state into `model`, the early stopping and the records; None when there is none."""
        state = read_state(self.area) if self.area.is_dir() else None
        if state is None:
            return None
        status = self.tracked(model).read(str(self.area / state["checkpoint"] / CHECKPOINT))
        status.assert_existing_objects_matched()
        best = None
        if state["best_weights"]:
            with np.load(self.area / state["best_weights"]) as saved:
                best = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        self.early.restore(state["early_stopping"], best)
        self.record.history = state["history"]
        self.timer.seconds = list(state["epoch_seconds"])
        self.best_file, self.step = state["best_weights"], state["global_step"]
        return state


def fit_model(model: keras.Model, stream: Callable[[int], tf.data.Dataset], steps: int, val_ds: tf.data.Dataset,
              schedule: Schedule, *,
              strategy: tf.distribute.Strategy, resume_area: Path | None = None, settings: dict | None = None,
              cluster: Cluster | None = None, class_weight: dict | None = None) -> Fitted:
    """Trains compiled `model` for `schedule` and returns its record, the best epoch's weights in place.

    `stream(e)` is the training batches from epoch e to the last, `steps` batches an epoch, each
    epoch's order fixed by the seed (`tfkit.preprocess.make_stream`); with `resume_area`, progress
    is saved there and a previous run's is continued (the caller removes the area once its output
    is written: `tfkit.resume.remove_resume`).
    """
    if steps < 1:
        raise TfkitError("the training data gives no batches")
    timer, record, early = EpochTimer(), Record(), EarlyStopping(schedule.patience)
    checkpoints = None
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    if resume_area is not None:
        checkpoints = Checkpoints(resume_area, settings or {}, steps, schedule.checkpoint_every, cluster, early, record, timer)
    state = checkpoints.restore(model) if checkpoints else None
    done = state["global_step"] if state else 0
    if cluster is not None:
        agree_on_start(strategy, done, cluster)
    if state:
        log.info("resuming from epoch %d, step %d of %d (the checkpoint in %s)", state["epoch"] + 1, state["step"], steps,
                 resume_area)
    callbacks = [timer, early, record] + ([checkpoints] if checkpoints else [])
    finished = state is not None and (state["stopped"] or done >= schedule.epochs * steps)
    if not finished:
        if cluster is None:
            _fit(model, stream, val_ds, steps, done, schedule, callbacks, early, class_weight)
        else:
            StepLoop(model, strategy, class_weight).fit(stream, val_ds, steps, done, schedule, callbacks,
                                                        verbose=schedule.verbose if cluster.is_chief else 0)
    early.finish()
    if checkpoints and checkpoints.saved_seconds:
        log.info("checkpoints: %d written, %.2f s each on average", len(checkpoints.saved_seconds),
                 float(np.mean(checkpoints.saved_seconds)))
    resumed = {"epoch": state["epoch"], "step": state["step"]} if state else None
    return Fitted(record.history, timer.seconds, resumed)


def _fit(model, stream, val_ds, steps: int, done: int, schedule: Schedule, callbacks, early, class_weight) -> None:
    """Keras `fit` from optimizer step `done`: the rest of an interrupted epoch first, then whole epochs."""
    epoch, into = divmod(done, steps)
    fit = lambda data, first, per_epoch, last: model.fit(
        data, validation_data=val_ds, steps_per_epoch=per_epoch, initial_epoch=first, epochs=last,
        callbacks=callbacks, class_weight=class_weight, verbose=schedule.verbose, shuffle=False)
    if into:
        fit(stream(epoch).skip(into).take(steps - into), epoch, steps - into, epoch + 1)
        epoch += 1
        if early.stopped_epoch:  # early stopping ended the run at that epoch
            return
    if epoch < schedule.epochs:
        fit(stream(epoch), epoch, steps, schedule.epochs)


def agree_on_start(strategy: tf.distribute.Strategy, step: int, cluster: Cluster) -> None:
    """Every worker starts from the same step (a worker that cannot see the chief's checkpoints would not)."""
    if replica_sum(strategy, step) != step * strategy.num_replicas_in_sync:
        raise TfkitError(f"the workers would resume from different steps (this one: {step}); every worker must see the "
                         "chief's checkpoint area: put the output on storage they all share")


class StepLoop:
    """The same training and validation steps as Keras' `fit`, as a `strategy.run` step (for several workers).

    Each global batch is the one a single process would train on, split evenly across the
    replicas; the loss is Keras' own `compute_loss` (scaled for the replicas, as in `fit`),
    the metrics the model's compiled ones, updated in every replica and summed. As in `fit`
    under MirroredStrategy, Keras' optimizer clips (`clipnorm`) each replica's share of the
    gradient before summing them, so steps whose gradients are clipped differ slightly from one
    process' (summing first would send every gradient twice).
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, class_weight: dict | None = None):
        self.model, self.strategy = model, strategy
        self.loss = next(m for m in model.metrics if m.name == "loss")
        self.weights = None
        if class_weight:
            self.weights = tf.constant([class_weight.get(i, 1.0) for i in range(max(class_weight) + 1)], tf.float32)
        self.train_step = tf.function(lambda it: strategy.run(self._train, args=next(it)))
        self.test_step = tf.function(lambda it: strategy.run(self._test, args=next(it)))

    def _sample_weight(self, y):
        labels = y["label"] if isinstance(y, dict) else y
        return None if self.weights is None else tf.gather(self.weights, labels)

    def _train(self, x, y):
        model, weight = self.model, self._sample_weight(y)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=weight, training=True)
        model.optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        self._update(x, y, y_pred, loss, weight)

    def _test(self, x, y):
        y_pred = self.model(x, training=False)
        weight = self._sample_weight(y)
        self._update(x, y, y_pred, self.model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=weight, training=False), weight)

    def _update(self, x, y, y_pred, loss, weight):
        batch = tf.shape(x["token_ids"])[0]
        self.loss.update_state(loss * self.strategy.num_replicas_in_sync, sample_weight=batch)
        self.model.compute_metrics(x, y, y_pred, sample_weight=weight)

    def _distribute(self, ds: tf.data.Dataset):
        def shard(context: tf.distribute.InputContext):
            k, i = context.num_input_pipelines, context.input_pipeline_id

            def take(x, y):
                n = tf.shape(x["token_ids"])[0]
                lo, hi = i * n // k, (i + 1) * n // k
                return tf.nest.map_structure(lambda t: t[lo:hi], (x, y))

            return ds.map(take)

        return self.strategy.distribute_datasets_from_function(shard)

    def fit(self, stream, val_ds, steps: int, done: int, schedule: Schedule, callbacks, verbose: int) -> None:
        model = self.model
        hooks = keras.callbacks.CallbackList(callbacks, add_history=False, add_progbar=verbose != 0, model=model,
                                             verbose=verbose, epochs=schedule.epochs, steps=steps)
        model.stop_training = False
        epoch, into = divmod(done, steps)
        train = iter(self._distribute(stream(epoch).skip(into)))
        hooks.on_train_begin()
        try:
            while epoch < schedule.epochs and not model.stop_training:
                model.reset_metrics()
                hooks.on_epoch_begin(epoch)
                for step in range(into, steps):
                    hooks.on_train_batch_begin(step)
                    self.train_step(train)
                    hooks.on_train_batch_end(step, self._logs())
                logs = self._logs()
                model.reset_metrics()
                hooks.on_test_begin()
                val = iter(self._distribute(val_ds))
                for step in range(int(val_ds.cardinality())):
                    self.test_step(val)
                logs.update({f"val_{k}": v for k, v in self._logs().items()})
                hooks.on_test_end(logs)
                hooks.on_epoch_end(epoch, logs)
                epoch, into = epoch + 1, 0
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as e:
            raise TfkitError(f"a worker stopped answering ({e.message.splitlines()[0]}); run the same command on every "
                             "worker again to resume from the last checkpoint") from None
        hooks.on_train_end()

    def _logs(self) -> dict:
        return {k: float(v) for k, v in self.model.get_metrics_result().items()}
