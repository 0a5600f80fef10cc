"""Fine-tuning end to end on a tiny random BERT: CLI, artifacts, determinism, MirroredStrategy."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfkit.cli import main
from tfkit.classifier import Classifier
from tfkit.errors import TfkitError
from tests.conftest import synthetic_rows, write_csv
from tfkit.train import TrainConfig, build, class_weights, prepare, train, training_length

# float32, no XLA: numerics tests must not depend on what the speed probe measures on this CPU (tests/test_probe.py).
FAST = dict(epochs=2, batch_size=16, learning_rate=5e-3, warmup_ratio=0.0, precision="float32", jit="off")


def tiny_config(data, checkpoint, **overrides):
    return TrainConfig(data=data, pretrained=checkpoint, **{**FAST, **overrides})


def test_train_writes_a_complete_model_dir_that_predicts(tmp_path, sentiment_csv, tiny_checkpoint, capsys):
    out = tmp_path / "teacher"
    code = main(["train", "--data", sentiment_csv, "--pretrained", tiny_checkpoint, "--out", str(out),
                 "--epochs", "8", "--patience", "8", "--batch-size", "16", "--learning-rate", "5e-3", "--warmup-ratio", "0"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "heldout.jsonl", "history.json", "metrics.json", "model.keras", "vocab.txt"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"train": 192, "val": 24, "test": 24}
    assert metrics["test"]["accuracy"] >= 0.85  # one sentiment word decides the label: learnable
    assert set(metrics["test"]["per_class_f1"]) == {"neg", "pos"}
    assert metrics["examples_per_second"] > 0 and metrics["epochs_run"] >= 1
    config = json.loads((out / "config.json").read_text())
    assert config["labels"] == ["neg", "pos"] and config["tokenizer"]["max_length"] == 16
    assert config["training"]["pretrained"] == tiny_checkpoint and config["precision"] == "float32"  # too short a run to probe
    assert not list(tmp_path.glob(".teacher*")), "temporary directories left behind"

    capsys.readouterr()
    assert main(["predict", str(out), "a good film", "awful and dull", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["label"] for line in lines] == ["pos", "neg"]
    assert abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-3

    # A fresh process, as a user runs it: load_model must find tfkit's registered layers.
    fresh = subprocess.run([sys.executable, "-m", "tfkit.cli", "predict", str(out), "--file", "-"],
                           input="a good film\nawful and dull\n", capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-500:]
    assert [line.split("\t")[0] for line in fresh.stdout.splitlines()] == ["pos", "neg"]


def test_same_seed_same_metrics(tmp_path, sentiment_csv, tiny_checkpoint):
    a = train(tiny_config(sentiment_csv, tiny_checkpoint, epochs=2), tmp_path / "a")
    b = train(tiny_config(sentiment_csv, tiny_checkpoint, epochs=2), tmp_path / "b")
    assert a["test"] == b["test"] and a["val"] == b["val"]
    ha, hb = (json.loads((tmp_path / d / "history.json").read_text()) for d in "ab")
    assert ha == hb


def test_mirrored_two_devices_matches_one_device(sentiment_csv, tiny_checkpoint):
    """Same global batch on 1 and 2 replicas gives the same weights.

    Plain SGD isolates the strategy's math (per-replica gradients all-reduced to the global
    mean); Adam divides by sqrt(v) + 1e-7 and so amplifies float summation-order noise in
    near-zero gradients (measured here: 0.1 apart after 12 steps, vs 2e-5 with SGD).
    Fixed-length batches of 16 from 192 examples split evenly; a bucket's remainder batch
    may not, and Keras averages per replica, so those few batches weigh slightly differently.
    The gap grows with the step size (float noise amplified by training): 2e-5 at lr 5e-3, 1e-3 at 5e-2.
    """
    import keras

    weights = []
    for devices in (1, 2):
        config = tiny_config(sentiment_csv, tiny_checkpoint, epochs=1, dropout=0.0, devices=devices, bucket=False)
        splits, precision = prepare(config)
        run = build(config, splits, precision)
        assert run.strategy.num_replicas_in_sync == devices
        with run.strategy.scope():
            run.model.compile(optimizer=keras.optimizers.SGD(0.01), loss=run.model.loss)
        initial = run.model.get_weights()
        run.model.fit(run.train_ds, epochs=1, verbose=0)
        weights.append(run.model.get_weights())
    for one, two in zip(*weights):
        np.testing.assert_allclose(one, two, atol=2e-4)
    assert max(np.abs(a - b).max() for a, b in zip(initial, weights[1])) > 2e-3  # training moved them 10x the tolerance


def test_train_on_two_devices_end_to_end(tmp_path, sentiment_csv, tiny_checkpoint):
    metrics = train(tiny_config(sentiment_csv, tiny_checkpoint, devices=2), tmp_path / "m")
    assert metrics["replicas"] == 2 and (tmp_path / "m" / "model.keras").exists()


def test_freeze_backbone_trains_only_the_head(tmp_path, sentiment_csv, tiny_checkpoint):
    config = tiny_config(sentiment_csv, tiny_checkpoint, epochs=1, freeze_backbone=True, learning_rate=None)
    splits, precision = prepare(config)
    run = build(config, splits, precision)
    assert run.config.learning_rate == 1e-3
    before = [w.copy() for w in run.model.get_weights()]
    run.model.fit(run.train_ds, epochs=1, verbose=0)
    changed = [not np.array_equal(a, b) for a, b in zip(before, run.model.get_weights())]
    assert changed[-2:] == [True, True] and not any(changed[:-2])  # logits kernel and bias only


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/missing.csv"], "data not found"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--precision", "fp8"], "unknown --precision 'fp8'"),
        (["--batch-size", "15", "--devices", "2"], "must be divisible by --devices 2"),
        (["--pretrained", "{tmp}/nowhere"], "pretrained checkpoint not found"),
        (["--max-length", "1000"], "exceeds the model's limit of 64"),
    ],
)
def test_bad_train_input_exits_2_with_one_line_and_writes_nothing(tmp_path, sentiment_csv, tiny_checkpoint, capsys, args, message):
    out = tmp_path / "model"
    base = ["train", "--data", sentiment_csv, "--pretrained", tiny_checkpoint, "--out", str(out), "--epochs", "1"]
    assert main(base + [a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tfkit: error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists() and not list(tmp_path.glob(".model*"))


def test_predict_bad_inputs(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "text"]) == 2
    assert "not a tfkit model directory" in capsys.readouterr().err
    (tmp_path / "model.keras").write_bytes(b"not a zip")
    (tmp_path / "config.json").write_text("{}")
    assert main(["predict", str(tmp_path), "text"]) == 2
    assert "config.json: missing key(s) kind, labels" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"labels": [], "bogus": 1}')
    assert main(["predict", str(tmp_path), "text"]) == 2
    assert "unknown key(s) bogus" in capsys.readouterr().err


def test_classifier_loads_from_python(trained_teacher):
    classifier = Classifier.load(trained_teacher)
    p = classifier.predict_proba(["a good film", "awful and dull", ""])
    assert p.shape == (3, 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert [classifier.labels[i] for i in p[:2].argmax(1)] == ["pos", "neg"]


def test_a_model_directory_is_self_contained(trained_teacher, tmp_path, monkeypatch):
    """Moved elsewhere and used from another directory: held-out examples travel with it; the training
    data is found by absolute path and checked by sha256, with one line when it moved or changed."""
    original = Classifier.load(trained_teacher)
    data = tmp_path / "data.csv"
    shutil.copy(original.config.data["source"], data)
    moved = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(trained_teacher, moved)
    config = json.loads((moved / "config.json").read_text())
    assert Path(config["data"]["source"]).is_absolute() and len(config["data"]["sha256"]["source"]) == 64
    config["data"]["source"] = str(data)
    (moved / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path / "elsewhere")
    copy = Classifier.load("teacher")
    val, test = copy.heldout()
    assert test.texts == original.heldout()[1].texts and val.labels.tolist() == original.heldout()[0].labels.tolist()
    assert copy.splits().train.texts == original.splits().train.texts
    data.write_text(data.read_text() + "one more,pos\n")
    with pytest.raises(TfkitError, match=f"{data} has changed since teacher was trained on it \\(sha256 differs\\)"):
        copy.splits()
    data.unlink()
    with pytest.raises(TfkitError, match=f"the training data of teacher is no longer at {data}; put it back or pass --data"):
        copy.splits()
    assert copy.heldout()[1].texts == test.texts  # export and bench need only these


@pytest.mark.parametrize("texts, batch, epochs, patience, expected", [
    (10246, 32, None, None, (2, 1)),  # the built-in data: 2 epochs, as before
    (3000, 32, None, None, (7, 2)),  # at least 600 batches' worth of texts
    (3000, 8, None, None, (2, 1)),  # ... counted at the batch size used
    (897, 32, None, None, (20, 5)),  # 900 texts: capped at 20 epochs, patience grows with them
    (897, 32, 3, None, (3, 2)),  # --epochs means exactly that
    (897, 32, None, 7, (20, 7)),
    (1, 32, None, None, (20, 5)),
])
def test_training_length_follows_the_data_size(texts, batch, epochs, patience, expected):
    assert training_length(texts, batch, epochs, patience)[:2] == expected


def test_warmup_and_decay_follow_the_real_step_count(sentiment_csv, tiny_checkpoint, monkeypatch):
    import tfkit.loop

    made = []  # make_optimizer's arguments: peak, total steps, warm-up ratio, weight decay
    real = tfkit.loop.make_optimizer
    monkeypatch.setattr(tfkit.loop, "make_optimizer", lambda *a: made.append(a) or real(*a))
    config = tiny_config(sentiment_csv, tiny_checkpoint, epochs=None, warmup_ratio=0.1)
    splits, precision = prepare(config)
    run = build(config, splits, precision)
    per_epoch = int(run.train_ds.cardinality())
    full_batches = -(-len(splits.train) // config.batch_size)  # the budget counts texts, not bucketed batches
    assert run.config.epochs == min(20, -(-600 // full_batches)) and run.config.patience == max(2, run.config.epochs // 4)
    assert made[-1][1:3] == (run.config.epochs * per_epoch, 0.1)


def test_class_weights_are_computed_and_applied(tmp_path, tiny_checkpoint, monkeypatch):
    import keras

    labels = np.array([0] * 9 + [1] * 3)
    weights, mode = class_weights(labels, 2, "auto")  # 3x imbalance: balanced
    assert mode == "balanced" and weights == pytest.approx({0: 12 / 18, 1: 12 / 6})
    assert class_weights(np.array([0] * 7 + [1] * 5), 2, "auto") == (None, "none")
    assert class_weights(labels, 2, "none") == (None, "none")
    seen = []
    real_fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, **k: seen.append(k.get("class_weight")) or real_fit(self, *a, **k))
    rows = [(t, y) for t, y in synthetic_rows(240) if y == "neg"] + [(t, y) for t, y in synthetic_rows(240) if y == "pos"][:30]
    data = write_csv(tmp_path / "imbalanced.csv", rows)
    metrics = train(tiny_config(data, tiny_checkpoint, epochs=1), tmp_path / "m")
    assert seen == [pytest.approx({0: 120 / (2 * 96), 1: 120 / (2 * 24)})]  # the carved training split: 96 neg, 24 pos
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["training"]["class_weight"] == "balanced" and metrics["tfidf_baseline"]["class_weight"] == "balanced"


def test_a_class_never_predicted_on_validation_is_warned_about(trained_teacher, caplog, monkeypatch):
    from tfkit.data import load_splits
    from tfkit.train import evaluate

    classifier = Classifier.load(trained_teacher)
    monkeypatch.setattr(classifier, "predict_logits", lambda texts: np.tile([[2.0, -2.0]], (len(texts), 1)))
    d = classifier.config.data
    result = evaluate(classifier, load_splits(d["source"], seed=d["split_seed"]))
    assert result["val"]["never_predicted"] == ["pos"]
    assert "the model never predicts pos on validation" in caplog.text


def test_truncation_is_chosen_from_the_share_of_cut_texts_and_recorded(tmp_path, sentiment_csv, tiny_checkpoint, caplog):
    """`auto`: 2-7 words at max length 8 cuts ~1 text in 6, so the model keeps their ends too; the choice is saved."""
    with caplog.at_level("INFO", logger="tfkit"):
        train(tiny_config(sentiment_csv, tiny_checkpoint, epochs=1, max_length=8), tmp_path / "cut")
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["tokenizer"]["truncation"] == config["training"]["truncation"] == "head+tail"
    assert "truncation head+tail (" in caplog.text and "keeps its first 1 word pieces and its last 5" in caplog.text
    assert Classifier.load(tmp_path / "cut").tokenizer.head == 1
    train(tiny_config(sentiment_csv, tiny_checkpoint, epochs=1, max_length=8, truncation="head"), tmp_path / "head")
    assert json.loads((tmp_path / "head" / "config.json").read_text())["tokenizer"]["truncation"] == "head"
