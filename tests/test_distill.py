"""Distillation on a tiny teacher: the loss, cached logits, students, vocabulary trimming, bad input."""

import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import VOCAB, synthetic_rows, write_csv
from tfkit.backbone import Backbone
from tfkit.classifier import Classifier, build_classifier
from tfkit.cli import main
from tfkit.distill import (DistillConfig, Distiller, augment_texts, distill, hidden_layer_map, hidden_state_loss, teacher_logits,
                           with_hidden_states)
from tfkit.student import layer_map, make_student, student_shape, student_tokenizer, trim_vocab

FAST = dict(epochs=2, batch_size=16, learning_rate=5e-3, warmup_ratio=0.0, patience=2)


@pytest.fixture(scope="module")
def teacher_dir(trained_teacher):
    return str(trained_teacher)


def tiny_classifier(vocab=30, classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = Backbone(vocabulary_size=vocab, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16, max_sequence_length=16)
    return build_classifier(backbone, classes, dropout=0.0)


def test_loss_equals_hand_computed_value():
    student = tiny_classifier()
    x = {"token_ids": np.array([[2, 5, 7, 3], [2, 9, 3, 0]], "int32"), "padding_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]], "int32")}
    labels = np.array([0, 2])
    cached = np.array([[2.0, -1.0, 0.5], [0.1, 0.3, 1.5]], "float32")
    distiller = Distiller(student, temperature=2.0, alpha=0.3)
    logits = keras.ops.convert_to_numpy(student(x))
    loss = float(distiller.compute_loss(x, {"label": labels, "teacher_logits": cached}, logits))

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    ce = -np.log(softmax(logits)[np.arange(2), labels]).mean()
    p, q = softmax(cached / 2.0), softmax(logits / 2.0)
    kl = (p * np.log(p / q)).sum(-1).mean()
    assert loss == pytest.approx(0.3 * ce + 0.7 * 4.0 * kl, rel=1e-5)
    assert float(Distiller(student, alpha=1.0).compute_loss(x, {"label": labels, "teacher_logits": cached}, logits)) == pytest.approx(ce, rel=1e-5)


def test_recomputed_teacher_gives_the_cached_loss():
    teacher, student = tiny_classifier(seed=1), tiny_classifier(seed=2)
    x = {"token_ids": np.array([[2, 5, 3]], "int32"), "padding_mask": np.ones([1, 3], "int32")}
    y_pred = student(x)
    cached = Distiller(student, alpha=0.5).compute_loss(x, {"label": np.array([1]), "teacher_logits": teacher(x)}, y_pred)
    live = Distiller(student, teacher=teacher, alpha=0.5).compute_loss(x, np.array([1]), y_pred)
    assert float(cached) == pytest.approx(float(live), rel=1e-6)
    assert not teacher.trainable


def test_hidden_states_share_the_classifier_weights_and_forward_pass():
    model = tiny_classifier(seed=3)
    taps = with_hidden_states(model)
    x = {"token_ids": np.array([[2, 5, 7, 3]], "int32"), "padding_mask": np.ones([1, 4], "int32")}
    logits, hidden = taps(x)[0], taps(x)[1:]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), keras.ops.convert_to_numpy(model(x)), atol=1e-6)
    assert len(hidden) == 1 and tuple(hidden[0].shape) == (1, 4, 8)
    assert {id(w) for w in taps.weights} == {id(w) for w in model.weights}
    assert hidden_layer_map(6, 2) == [2, 5] and hidden_layer_map(6, 3) == [1, 3, 5] and hidden_layer_map(4, 4) == [0, 1, 2, 3]


def test_hidden_state_loss_standardises_tokens_and_ignores_padding():
    student = [np.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 3.0], [50.0, -50.0, 0.0]]], "float32")]
    teacher = [np.array([[[3.0, 2.0, 1.0], [10.0, 10.0, 40.0], [0.0, 0.0, 0.0]]], "float32")]
    mask = np.array([[1, 1, 0]], "int32")  # the third token is padding: its huge error must not count
    # Token 1 standardises to +-sqrt(3/2) * [-1, 0, 1] on both sides, opposite signs: squared error 6 + 0 + 6.
    # Token 2's teacher is 10 * student + 10: the same direction and spread, so no error.
    expected = (12.0 + 0.0) / (2 * 3)
    assert float(hidden_state_loss(student, teacher, mask)) == pytest.approx(expected, rel=1e-5)


def test_distiller_adds_the_hidden_loss_through_a_projection():
    teacher = tiny_classifier(seed=1)
    keras.utils.set_random_seed(2)
    narrow = build_classifier(Backbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=4, intermediate_dim=8,
                                       max_sequence_length=16), 3, dropout=0.0)
    x = {"token_ids": np.array([[2, 5, 7, 3], [2, 9, 3, 0]], "int32"), "padding_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]], "int32")}
    y = {"label": np.array([0, 2]), "teacher_logits": keras.ops.convert_to_numpy(teacher(x))}
    plain = Distiller(narrow, alpha=0.5)
    hidden = Distiller(narrow, teacher=teacher, alpha=0.5, hidden_weight=2.0)
    y_pred = hidden(x)
    assert len(y_pred) == 2 and tuple(y_pred[1].shape) == (2, 4, 4)
    mse = hidden_state_loss([hidden.projection(y_pred[1])], [with_hidden_states(teacher)(x)[1]], x["padding_mask"])
    total = float(hidden.compute_loss(x, y, y_pred))
    assert total == pytest.approx(float(plain.compute_loss(x, y, y_pred[0])) + 2.0 * float(mse), rel=1e-5)
    with tf.GradientTape() as tape:
        loss = hidden.compute_loss(x, y, hidden(x))
    grads = tape.gradient(loss, hidden.projection.trainable_weights + teacher.trainable_weights)
    assert all(g is not None for g in grads[:2]) and not teacher.trainable  # projection learns; teacher frozen


def test_augmented_texts_drop_words_reproducibly():
    texts = ["a b c d e f g h", "single"]
    a, b = augment_texts(texts, 2, seed=0), augment_texts(texts, 2, seed=0)
    assert a == b and len(a) == 4 and a[1] == a[3] == "single"
    assert all(set(v.split()) <= set(t.split()) for v, t in zip(a, texts * 2))
    assert a[0] != texts[0] and a[0] != a[2]


def test_cached_logits_equal_fresh_ones(teacher_dir):
    teacher = Classifier.load(teacher_dir)
    texts = ["good film", "the plot was dull", "", "café " * 30]
    cached = teacher_logits(teacher, texts)
    for text, row in zip(texts, cached):
        fresh = teacher.model(teacher.tokenizer.encode(tf.constant([text])), training=False)
        np.testing.assert_allclose(row, keras.ops.convert_to_numpy(fresh)[0], atol=1e-5)


def test_trimmed_vocab_keeps_seen_tokenization_and_splits_unseen_words():
    from tfkit.preprocess import WordPieceTokenizer

    teacher = WordPieceTokenizer(VOCAB, max_length=32)
    seen = ["good film", "the plot was very dull"]
    keep = trim_vocab(teacher, seen)
    student = student_tokenizer(teacher, keep)
    assert len(student.vocab) < len(teacher.vocab) and "great" not in student.vocab
    pieces = lambda tok, text: [tok.vocab[i] for i in tok.fast.tokenize([text]).flat_values.numpy()]
    for text in seen:
        assert pieces(student, text) == pieces(teacher, text)
    assert pieces(student, "great") == ["g", "##r", "##e", "##a", "##t"]  # unseen word: pieces, not [UNK]


def test_vocab_min_count_drops_rare_pieces_and_their_words_still_tokenize():
    from tfkit.preprocess import WordPieceTokenizer

    teacher = WordPieceTokenizer(VOCAB, max_length=32)
    texts = ["good film", "good plot", "dull"]
    keep = trim_vocab(teacher, texts, min_count=2)
    student = student_tokenizer(teacher, keep)
    assert "good" in student.vocab and "film" not in student.vocab and "dull" not in student.vocab
    assert set(trim_vocab(teacher, texts)) > set(keep)  # min_count 1 keeps every used piece
    pieces = [student.vocab[i] for i in student.fast.tokenize(["good film"]).flat_values.numpy()]
    assert pieces == ["good", "f", "##i", "##l", "##m"]  # a dropped piece's word splits into characters


def test_from_teacher_student_copies_evenly_spaced_layers(tiny_checkpoint):
    from tfkit.backbone import load_backbone

    teacher, _ = load_backbone(tiny_checkpoint)
    assert layer_map(6, 2) == [0, 5] and layer_map(6, 3) == [0, 2, 5]
    for depth, half in ((6, 3), (5, 3), (2, 1), (1, 1)):  # the default: half the teacher's layers, rounded up
        fake = type("Teacher", (), dict(num_layers=depth, hidden_dim=16, num_heads=2, intermediate_dim=32))
        assert student_shape(fake, "from-teacher").num_layers == half
    student = make_student(teacher, student_shape(teacher, "from-teacher", layers=1))
    for a, b in zip(student.get_layer("transformer_layer_0").get_weights(), teacher.get_layer("transformer_layer_0").get_weights()):
        np.testing.assert_array_equal(a, b)
    narrow = make_student(teacher, student_shape(teacher, "tiny", hidden=8, heads=2, intermediate=16), keep_ids=[0, 1, 2, 3, 7])
    assert narrow.get_layer("token_embedding").embeddings.shape == (5, 8)


def test_distill_writes_student_with_comparisons(tmp_path, teacher_dir):
    metrics = distill(DistillConfig(teacher=teacher_dir, student="from-teacher", layers=1, baseline=True, **FAST), tmp_path / "student")
    assert (tmp_path / "student" / "model.keras").exists()
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["kind"] == "student" and config["labels"] == ["neg", "pos"]
    assert metrics["parameters"] < metrics["teacher"]["parameters"] and metrics["compression"] > 1
    assert metrics["vocab_size"] < len(VOCAB)  # trimmed
    for key in ("test", "teacher", "hard_label_baseline", "accuracy_retained", "teacher_agreement", "distill_cost_ratio", "train_texts", "model_bytes"):
        assert key in metrics
    student = Classifier.load(tmp_path / "student")
    assert student.predict_proba(["good", "awful"]).shape == (2, 2)


def test_distill_with_augmentation_and_hidden_loss(tmp_path, teacher_dir):
    metrics = distill(DistillConfig(teacher=teacher_dir, layers=1, augment=1, hidden_loss=1.0, **{**FAST, "epochs": 1}), tmp_path / "s")
    assert metrics["train_texts"] == 2 * metrics["split_sizes"]["train"]
    config = json.loads((tmp_path / "s" / "config.json").read_text())["training"]
    assert config["augment"] == 1 and config["hidden_loss"] == 1.0
    assert Classifier.load(tmp_path / "s").model.count_params() == metrics["parameters"]  # no projection inside


def test_distill_on_two_devices(tmp_path, teacher_dir):
    metrics = distill(DistillConfig(teacher=teacher_dir, layers=1, devices=2, baseline=False, **{**FAST, "epochs": 1}), tmp_path / "s")
    assert (tmp_path / "s" / "model.keras").exists() and "hard_label_baseline" not in metrics


def test_recompute_teacher_path_trains_without_caching(tmp_path, teacher_dir, monkeypatch):
    import tfkit.distill as distill_module

    labelled = []  # the teacher labels only the augmented copies (their hard labels); nothing else is cached
    real = distill_module.teacher_logits
    monkeypatch.setattr(distill_module, "teacher_logits", lambda teacher, texts: labelled.append(len(texts)) or real(teacher, texts))
    metrics = distill(DistillConfig(teacher=teacher_dir, layers=1, recompute_teacher=True, augment=1, baseline=False,
                                    **{**FAST, "epochs": 1}), tmp_path / "s")
    assert labelled == [metrics["split_sizes"]["train"]] and metrics["train_texts"] == 2 * labelled[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--teacher", "{tmp}/none"], "not a tfkit model directory"),
        (["--temperature", "0"], "--temperature must be positive"),
        (["--alpha", "1.5"], "--alpha must be in [0, 1]"),
        (["--layers", "3"], "from-teacher --layers must be 1..2"),
        (["--student", "huge"], "unknown student preset 'huge'"),
        (["--hidden-loss", "-1"], "--hidden-loss must be 0 (off) or positive"),
        (["--augment", "-2"], "--augment must be 0 (off) or a positive number of copies"),
        (["--vocab-min-count", "0"], "--vocab-min-count must be at least 1"),
        (["--data", "{tmp}/other.csv"], "label(s) the model does not know: bad"),
        (["--teacher", "{tmp}/broken"], "cannot load"),
    ],
)
def test_bad_distill_input_exits_2_and_writes_nothing(tmp_path, teacher_dir, capsys, args, message):
    write_csv(tmp_path / "other.csv", synthetic_rows(40, labels=("bad", "good")))
    shutil.copytree(teacher_dir, tmp_path / "broken")
    (tmp_path / "broken" / "model.keras").write_bytes(b"truncated")
    out = tmp_path / "student"
    code = main(["distill", "--teacher", teacher_dir, "--out", str(out), "--epochs", "1"] + [a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("tfkit: error: ") and message in err[-1], err
    assert not out.exists()

