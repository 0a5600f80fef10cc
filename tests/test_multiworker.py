"""Several workers and crash recovery, each run as real `tfkit` processes (on 127.0.0.1 only).

The test process' logical devices are fixed at start-up, so every multi-worker or killed run
is a subprocess; each is bounded in time.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import synthetic_rows, write_csv
from tfkit.cluster import Cluster, read_tf_config, resolve_strategy
from tfkit.errors import TfkitError

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})


def start(args, cwd, **env) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.Popen([sys.executable, "-m", "tfkit.cli", *args], cwd=cwd, env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"tfkit did not finish within {timeout} s: {err[-3000:]}")
    return process.returncode, err


def weights(model_dir: Path) -> list[np.ndarray]:
    from tfkit.classifier import Classifier

    return Classifier.load(model_dir).model.get_weights()


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_checkpoint):
    """A tiny training job: data, checkpoint and the flags every run of it shares."""
    root = tmp_path_factory.mktemp("multiworker")
    write_csv(root / "reviews.csv", synthetic_rows(400))
    flags = ["train", "--data", "reviews.csv", "--pretrained", tiny_checkpoint, "--batch-size", "16", "--epochs", "3",
             "--patience", "3", "--learning-rate", "2e-3", "--warmup-ratio", "0", "--dropout", "0", "--precision", "float32",
             "--no-tfidf-baseline", "--no-bucket"]
    return root, flags


# --- TF_CONFIG and --strategy, before TensorFlow starts -------------------------------------------------

def test_tf_config_is_read_and_checked():
    assert read_tf_config(None) is None and read_tf_config("  ") is None
    chief = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "task": {"type": "worker", "index": 1}})
    assert read_tf_config(chief) == Cluster(("a:1", "b:2", "c:3"), 2)
    assert not read_tf_config(chief).is_chief and read_tf_config(tf_config([5, 6], 0)).is_chief
    for raw, message in [
        ("{cluster", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', 'no "cluster" object'),
        (json.dumps({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}), "job(s) ps"),
        (json.dumps({"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}), "'b' is not host:port"),
        (json.dumps({"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}), "same address twice"),
        (json.dumps({"cluster": {"worker": ["a:1"]}}), 'no "task"'),
        (tf_config([1, 2], 2), "task index 2 is out of range: the cluster has 2 worker task(s)"),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}), "'evaluator'"),
    ]:
        with pytest.raises(TfkitError, match=None) as error:
            read_tf_config(raw)
        assert message in str(error.value), (raw, str(error.value))


def test_auto_strategy_follows_tf_config_and_devices():
    assert resolve_strategy("auto", 1, {}) == ("single", None)
    assert resolve_strategy("auto", 2, {}) == ("mirrored", None)
    kind, cluster = resolve_strategy("auto", 1, {"TF_CONFIG": tf_config([7, 8], 1)})
    assert kind == "multiworker" and cluster.index == 1
    assert resolve_strategy("auto", 1, {"TF_CONFIG": tf_config([7], 0)}) == ("single", None)  # a cluster of one
    with pytest.raises(TfkitError, match="needs TF_CONFIG"):
        resolve_strategy("multiworker", 1, {})
    with pytest.raises(TfkitError, match="one device per worker"):
        resolve_strategy("multiworker", 2, {"TF_CONFIG": tf_config([7, 8], 0)})


# --- several workers ----------------------------------------------------------------------------------------

def test_two_workers_train_the_model_one_process_trains(job):
    """The chief of 2 loopback workers writes the model a single process writes (same global batch and seed)."""
    root, flags = job
    ports = free_ports(2)
    workers = [start([*flags, "--out", "models/two"], root, TF_CONFIG=tf_config(ports, i)) for i in range(2)]
    single = start([*flags, "--out", "models/one"], root)
    results = [finish(p) for p in workers + [single]]
    for code, err in results:
        assert code == 0, err[-3000:]
    assert "cluster of 2 workers ready" in results[0][1] and "worker 1 done; the chief writes models/two" in results[1][1]
    two, one = (json.loads((root / "models" / d / "metrics.json").read_text()) for d in ("two", "one"))
    assert two["strategy"] == "multiworker" and two["replicas"] == 2 and one["replicas"] == 1
    # Not bit-equal: the replicas' half batches round differently from one whole batch, and Adam
    # turns rounding noise in near-zero gradients into full-size steps; far below what training moves.
    assert abs(two["test"]["accuracy"] - one["test"]["accuracy"]) <= 0.05 and two["epochs_run"] == one["epochs_run"]
    history = [json.loads((root / "models" / d / "history.json").read_text()) for d in ("two", "one")]
    np.testing.assert_allclose(history[0]["val_loss"], history[1]["val_loss"], rtol=1e-2)
    np.testing.assert_allclose(history[0]["loss"], history[1]["loss"], rtol=1e-2)
    assert history[1]["val_loss"][-1] < 0.9 * history[1]["val_loss"][0]  # it learned: the tolerance is meaningful
    a, b = (np.concatenate([w.ravel() for w in weights(root / "models" / d)]) for d in ("two", "one"))
    assert np.linalg.norm(a - b) < 1e-2 * np.linalg.norm(b)
    assert sorted(p.name for p in (root / "models").iterdir()) == ["one", "two"]  # no worker temporaries left


def test_a_worker_that_never_starts_is_named_within_the_join_timeout(job):
    root, flags = job
    ports = free_ports(2)
    began = time.monotonic()
    code, err = finish(start([*flags, "--out", "models/alone"], root, TF_CONFIG=tf_config(ports, 0), TFKIT_JOIN_TIMEOUT="3"), 120)
    lines = [line for line in err.splitlines() if line.startswith("tfkit: error")]
    assert code == 2 and lines == [f"tfkit: error: worker(s) 127.0.0.1:{ports[1]} did not join within 3 s (TFKIT_JOIN_TIMEOUT); "
                                   "start the same command on every worker of TF_CONFIG"], err[-2000:]
    assert time.monotonic() - began < 90
    assert not (root / "models" / "alone").exists()


# --- crash recovery -------------------------------------------------------------------------------------------

def wait_for_checkpoint(area: Path, process: subprocess.Popen, step: int) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            state = json.loads((area / "teacher" / "resume.json").read_text())
            if state["global_step"] >= step:
                return state
        except (FileNotFoundError, ValueError):
            pass
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared")


def test_killed_training_resumes_and_ends_where_an_uninterrupted_run_ends(job):
    """kill -9 mid-epoch; other settings are refused; the same command resumes and ends as a run never killed."""
    root, flags = job
    flags = [*flags, "--checkpoint-every", "5", "--dropout", "0.1"]  # dropout on: its RNG state is resumed too
    code, err = finish(start([*flags, "--out", "models/whole"], root))
    assert code == 0, err[-3000:]

    area = root / "models" / ".killed.resume"
    victim = start([*flags, "--out", "models/killed"], root)
    state = wait_for_checkpoint(area, victim, 25)  # epoch 2 of 3 (20 steps an epoch), mid-epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    assert not (root / "models" / "killed").exists()  # nothing that looks like a finished model
    assert not list(area.rglob("model.keras"))

    before = (area / "teacher" / "resume.json").read_text()  # another run's settings: refused, nothing mixed
    code, err = finish(start([*flags, "--out", "models/killed", "--learning-rate", "1e-3"], root), 60)
    assert code == 2 and err.strip().splitlines() == [
        "tfkit: error: models/.killed.resume holds the checkpoints of a run with other settings (learning_rate); "
        "rerun with that run's settings to resume it, or delete models/.killed.resume to start over"], err
    assert (area / "teacher" / "resume.json").read_text() == before

    code, err = finish(start([*flags, "--out", "models/killed"], root))
    assert code == 0, err[-3000:]
    resumed = json.loads((root / "models" / "killed" / "metrics.json").read_text())["resumed_from"]
    assert f"resuming from epoch {resumed['epoch'] + 1}, step {resumed['step']} of 20" in err
    assert resumed["epoch"] * 20 + resumed["step"] >= state["global_step"] >= 25
    assert not area.exists()  # checkpoints removed on success
    whole, killed = (json.loads((root / "models" / d / "history.json").read_text()) for d in ("whole", "killed"))
    np.testing.assert_allclose(killed["val_loss"], whole["val_loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(killed["val_macro_f1"], whole["val_macro_f1"], atol=1e-6)
    for a, b in zip(weights(root / "models" / "killed"), weights(root / "models" / "whole")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_step_loop_trains_exactly_as_keras_fit(tmp_path, tiny_checkpoint):
    """The multi-worker path's step (here on one device, in this process) is Keras' `fit`, step for step."""
    import tensorflow as tf

    from tfkit.loop import EarlyStopping, Record, Schedule, StepLoop, fit_model
    from tfkit.train import TrainConfig, build, prepare

    data = write_csv(tmp_path / "reviews.csv", synthetic_rows(160))
    config = TrainConfig(data=data, pretrained=tiny_checkpoint, epochs=2, patience=2, batch_size=16, learning_rate=2e-3,
                         warmup_ratio=0.0, precision="float32", tfidf_baseline=False, strategy="single")

    def train(step_loop: bool) -> tuple[dict, list]:
        strategy = tf.distribute.get_strategy()
        splits, precision = prepare(config)
        run = build(config, splits, precision, strategy)
        if step_loop:
            record, early = Record(), EarlyStopping(2)  # fit_model restores the best epoch's weights: so here too
            StepLoop(run.model, strategy).fit(run.stream, run.val_ds, len(run.train_ds), 0, Schedule(2, 2, verbose=0),
                                              [early, record], verbose=0)
            early.finish()
            return record.history, run.model.get_weights()
        return fit_model(run.model, run.stream, len(run.train_ds), run.val_ds, Schedule(2, 2, verbose=0),
                         strategy=strategy).history, run.model.get_weights()

    (fit_history, fit_weights), (step_history, step_weights) = train(False), train(True)
    assert set(step_history) == set(fit_history) >= {"loss", "accuracy", "macro_f1", "val_loss", "val_accuracy", "val_macro_f1"}
    for key in fit_history:
        np.testing.assert_allclose(step_history[key], fit_history[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for a, b in zip(step_weights, fit_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tfkit_run_keeps_a_finished_teacher_when_the_students_checkpoints_are_its(trained_teacher, tmp_path, monkeypatch):
    """An interrupted `tfkit run` resumes the student instead of training the teacher again."""
    import shutil

    from tfkit.cli import make_parser
    from tfkit.commands.run import distill_config, student_resumes
    from tfkit.resume import resume_dir, run_settings

    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained_teacher, "models/teacher")
    args = make_parser().parse_args(["run", "--models", "models"])
    assert not student_resumes(args)  # no checkpoints: the teacher is trained again (replaced)
    part = resume_dir("models/student") / "distilled"
    part.mkdir(parents=True)
    settings = run_settings(distill_config(args), {"teacher": "models/teacher", "data": None})
    (part / "resume.json").write_text(json.dumps({"settings": settings, "checkpoint": "step-000000004"}))
    assert student_resumes(args)
    with pytest.raises(TfkitError, match="other settings"):  # checkpoints of another student are not resumed
        student_resumes(make_parser().parse_args(["run", "--models", "models", "--student", "tiny"]))
    (Path("models/teacher") / "notes.txt").write_text("not only tfkit's")
    assert not student_resumes(args)  # not a complete tfkit model any more: nothing to keep
