"""Tokenization matches HF BERT; the tf.data pipeline buckets by length without losing examples."""

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import VOCAB
from tfkit.errors import TfkitError
from tfkit.preprocess import (BucketPlan, WordPieceTokenizer, batch_count, choose_max_length, default_pads, make_dataset,
                              make_stream, plan_buckets, read_vocab)

TEXTS = ["good film", "", "   ", "The CAFÉ was awful.", "zzz qqq", "good " * 40]


def test_encode_matches_transformers_bert_tokenizer():
    transformers = pytest.importorskip("transformers")
    tok = WordPieceTokenizer(VOCAB, lowercase=True, max_length=16)
    ref = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True)
    x = tok.encode(tf.constant(TEXTS))
    ids, mask = x["token_ids"].numpy(), x["padding_mask"].numpy()
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids.shape == (len(TEXTS), 16)
    for row, text in enumerate(TEXTS):
        assert ids[row][mask[row] == 1].tolist() == ref(text, truncation=True, max_length=16)["input_ids"]
        assert (ids[row][mask[row] == 0] == 0).all()


def test_batch_is_padded_to_its_longest_text_only():
    tok = WordPieceTokenizer(VOCAB, max_length=64)
    assert tok.encode(tf.constant(["good", "bad film"]))["token_ids"].shape == (2, 4)
    assert tok.encode(tf.constant(["", ""]))["token_ids"].numpy().tolist() == [[2, 3], [2, 3]]


def test_bucketed_dataset_keeps_every_example_once():
    tok = WordPieceTokenizer(VOCAB, max_length=24)
    texts = [("good " * (i % 30)).strip() or "bad" for i in range(50)]
    labels = np.arange(50)
    ds = make_dataset(tok, texts, labels, batch_size=8, shuffle=True, seed=3)
    seen, widths = [], set()
    for x, y in ds:
        widths.add(int(x["token_ids"].shape[1]))
        lengths = x["padding_mask"].numpy().sum(1)
        for label, n in zip(y.numpy(), lengths):
            assert n == min(len(texts[label].split()) + 2, 24)
        seen += y.numpy().tolist()
    assert sorted(seen) == list(range(50))
    assert widths <= {8, 16, 24} and len(widths) > 1
    assert ds.cardinality() == sum(1 for _ in ds)


def test_datasets_run_without_the_tf_data_autotuner():
    """Its sleeping thread made iterators' ends wait up to 10.24 s (benchmarks/README.md, "The rest of the step")."""
    tok = WordPieceTokenizer(VOCAB, max_length=24)
    texts, labels = ["good film", "bad", "good bad film"] * 4, np.arange(12) % 2
    datasets = [make_dataset(tok, texts, labels, batch_size=4, shuffle=True), make_dataset(tok, texts, batch_size=4),
                make_stream(tok, texts, labels, 4, seed=0, bucket=True, first_epoch=0, epochs=2)]
    for ds in datasets:
        assert ds.options().autotune.enabled is False
        assert sum(1 for _ in ds) == (6 if ds is datasets[2] else 3)


def test_planned_pads_trade_padding_for_fewer_shapes():
    lengths = np.array([5] * 50 + [12] * 50 + [20] * 50 + [30] * 10 + [60] * 5)
    assert plan_buckets(lengths, 64, epochs=2, shape_steps=0, batch_size=8) == BucketPlan([8, 16, 24, 32, 64], 5, 1.0)
    few = plan_buckets(lengths, 64, epochs=2, shape_steps=10, batch_size=8)
    assert few.pads[-1] == 64 and few.shapes < 5 and few.work > 1.0
    assert plan_buckets(lengths, 64, epochs=2, shape_steps=10**6, batch_size=8) == BucketPlan([64], 1, 64 * 165 / 3040)
    costs = []  # a bigger compile cost never buys more shapes
    for shape_steps in (0, 1, 3, 10, 30, 100, 10**4):
        plan = plan_buckets(lengths, 64, epochs=2, shape_steps=shape_steps, batch_size=8)
        costs.append(plan.shapes)
        assert set(plan.pads) <= set(default_pads(64)) and plan.work >= 1.0
    assert costs == sorted(costs, reverse=True)
    assert default_pads(60) == [8, 16, 24, 32, 40, 48, 56, 60] and default_pads(8) == [8]


def test_a_dataset_pads_to_the_planned_lengths_only():
    tok = WordPieceTokenizer(VOCAB, max_length=24)
    texts = [("good " * (i % 20)).strip() or "bad" for i in range(40)]
    ds = make_dataset(tok, texts, np.arange(40), batch_size=4, pads=[16, 24])
    widths = {int(x["token_ids"].shape[1]) for x, _ in ds}
    assert widths == {16, 24} and ds.cardinality() == sum(1 for _ in ds) == batch_count(tok, texts, 4, pads=[16, 24])


def test_unbucketed_dataset_pads_to_max_length():
    tok = WordPieceTokenizer(VOCAB, max_length=24)
    x, _ = next(iter(make_dataset(tok, ["good"] * 5, np.zeros(5), batch_size=4, bucket=False)))
    assert x["token_ids"].shape == (4, 24)


def test_choose_max_length():
    assert choose_max_length(np.array([10] * 99 + [300]), limit=512) == 16
    assert choose_max_length(np.arange(1, 101), limit=512) == 112
    assert choose_max_length(np.array([900] * 10), limit=512) == 512


def test_bad_vocab(tmp_path):
    (tmp_path / "v.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(TfkitError, match="lacks \\[CLS\\], \\[SEP\\]"):
        read_vocab(tmp_path / "v.txt")


@pytest.mark.parametrize("max_length", [6, 11, 16])
def test_head_tail_keeps_a_quarter_from_the_start_and_the_rest_from_the_end(max_length):
    from tfkit.wordpiece import FastTokenizer, cut, kept_head

    texts = ["good bad " * 10 + "awful", "good film", "", "zzz " * 9]
    tok = WordPieceTokenizer(VOCAB, max_length=max_length, truncation="head+tail")
    full = WordPieceTokenizer(VOCAB, max_length=512).encode(tf.constant(texts))
    untruncated = [row[mask == 1].tolist() for row, mask in zip(full["token_ids"].numpy(), full["padding_mask"].numpy())]
    x = tok.encode(tf.constant(texts))
    got = [row[mask == 1].tolist() for row, mask in zip(x["token_ids"].numpy(), x["padding_mask"].numpy())]
    head = kept_head("head+tail", max_length)
    assert head == (max_length - 2) // 4
    assert got == [cut(ids, max_length, head) for ids in untruncated]
    body = max_length - 2
    assert got[0] == untruncated[0][: 1 + head] + untruncated[0][-(body - head) - 1:] and len(got[0]) == max_length
    assert got[1] == untruncated[1]  # short texts are not touched
    assert FastTokenizer(VOCAB, True, max_length, "head+tail").ids(texts) == got


def test_truncation_auto_keeps_the_end_only_when_many_texts_are_cut():
    from tfkit.preprocess import choose_truncation

    assert choose_truncation("auto", 0.0)[0] == "head"
    assert choose_truncation("auto", 0.01)[0] == "head"  # the auto max length covers 99% of texts
    truncation, why = choose_truncation("auto", 0.93)
    assert truncation == "head+tail" and why == "93.0% of training texts are longer than max_length"
    assert choose_truncation("head", 0.93) == ("head", "as given")
    with pytest.raises(TfkitError, match="unknown truncation 'middle'"):
        WordPieceTokenizer(VOCAB, truncation="middle")
