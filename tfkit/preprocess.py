"""WordPiece tokenization (tensorflow-text) and the tf.data input pipeline.

`WordPieceTokenizer.encode` is the single definition of how text becomes model inputs:
training, prediction and the string-in TFLite export all call it. After the tokenizer op it
uses dense ops only, because ragged slicing/concat becomes TFLite custom ops no runtime has.
The training pipeline buckets examples by length (padded to a multiple of 8) so short texts
don't pay for long ones; where every batch shape costs an XLA compile, `plan_buckets` pads to fewer lengths.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from tfkit.errors import TfkitError
from tfkit.wordpiece import kept_head

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
BUCKET_STEP = 8


@dataclasses.dataclass
class TokenizerConfig:
    """What a model needs to turn text into ids; saved in every model's config.json."""

    vocab_file: str = "vocab.txt"
    lowercase: bool = True
    max_length: int = 128
    truncation: str = "head"  # head | head+tail: what a text longer than max_length keeps (`tfkit.wordpiece.cut`)


def read_vocab(path: str | Path) -> list[str]:
    """One token a line; duplicates or missing special tokens are an error."""
    try:
        vocab = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TfkitError(f"cannot read vocabulary {path}: {e}") from None
    missing = [t for t in SPECIALS if t not in vocab]
    if missing:
        raise TfkitError(f"vocabulary {path} lacks {', '.join(missing)}")
    if len(set(vocab)) != len(vocab):
        raise TfkitError(f"vocabulary {path} has duplicate tokens")
    return vocab


class WordPieceTokenizer:
    """BERT tokenization: normalize, WordPiece, add [CLS]/[SEP], cut to `max_length`.

    Args:
        vocab: the word pieces, index = id.
        lowercase: lower-case, NFD-normalize and strip accents (uncased BERT checkpoints).
        max_length: longest sequence the model sees, special tokens included.
        truncation: what a longer text keeps: `head` (its first pieces) or `head+tail` (`tfkit.wordpiece.cut`).
    """

    def __init__(self, vocab: list[str], lowercase: bool = True, max_length: int = 128, truncation: str = "head"):
        if max_length < 3:
            raise TfkitError(f"max length must be at least 3 (got {max_length})")
        self.vocab, self.lowercase, self.max_length = list(vocab), lowercase, max_length
        self.truncation, self.head = truncation, kept_head(truncation, max_length)
        ids = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id, self.cls_id, self.sep_id = ids["[PAD]"], ids["[CLS]"], ids["[SEP]"]
        self.fast = tf_text.FastBertTokenizer(
            vocab=self.vocab, token_out_type=tf.int64, unknown_token="[UNK]",
            lower_case_nfd_strip_accents=lowercase,
        )

    @classmethod
    def from_config(cls, config: TokenizerConfig, directory: str | Path) -> "WordPieceTokenizer":
        return cls(read_vocab(Path(directory) / config.vocab_file), config.lowercase, config.max_length, config.truncation)

    def config(self) -> TokenizerConfig:
        return TokenizerConfig(lowercase=self.lowercase, max_length=self.max_length, truncation=self.truncation)

    def save_vocab(self, directory: str | Path) -> None:
        Path(directory, "vocab.txt").write_text("\n".join(self.vocab) + "\n", encoding="utf-8")

    def encode(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """int32 `token_ids` and `padding_mask` of shape [batch, longest in batch <= max_length]."""
        body_max, head = self.max_length - 2, self.head
        pieces = tf.cast(self.fast.tokenize(texts).to_tensor(default_value=self.pad_id), tf.int32)
        pieces = tf.pad(pieces, [[0, 0], [0, 1]], constant_values=self.pad_id)  # at least one column to gather from
        counts = tf.reduce_sum(tf.cast(pieces != self.pad_id, tf.int32), axis=1)[:, tf.newaxis]
        # Which piece each of the body_max places takes: the first `head`, then the text's last ones (`wordpiece.cut`).
        place = tf.range(body_max)[tf.newaxis, :]
        source = tf.where((counts > body_max) & (place >= head), counts - body_max + place, place)
        batch, width = tf.shape(pieces)[0], tf.shape(pieces)[1]
        flat = tf.range(batch)[:, tf.newaxis] * width + tf.minimum(source, width - 1)
        lengths = tf.minimum(counts, body_max)
        body = tf.where(place < lengths, tf.gather(tf.reshape(pieces, [-1]), flat), self.pad_id)
        body = body[:, : tf.reduce_max(tf.concat([lengths[:, 0], [0]], 0))]
        ids = tf.concat([tf.fill([batch, 1], self.cls_id), body, tf.fill([batch, 1], self.pad_id)], axis=1)
        positions = tf.range(tf.shape(ids)[1])[tf.newaxis, :]
        ends = lengths + 1
        ids = tf.where(positions == ends, self.sep_id, ids)
        return {"token_ids": ids, "padding_mask": tf.cast(positions <= ends, tf.int32)}

    def lengths(self, texts: list[str]) -> np.ndarray:
        """Untruncated token counts (special tokens included), for choosing max_length."""
        counts = [self.fast.tokenize(texts[i : i + 4096]).row_lengths().numpy() for i in range(0, len(texts), 4096)]
        return np.concatenate(counts) + 2 if counts else np.zeros([0], np.int64)


def choose_max_length(lengths: np.ndarray, limit: int, quantile: float = 0.99) -> int:
    """Smallest multiple of 16 covering `quantile` of the texts, capped at the model's limit."""
    need = float(np.quantile(lengths, quantile)) if len(lengths) else 16
    return int(min(limit, max(16, math.ceil(need / 16) * 16)))


AUTO_HEAD_TAIL = 0.01  # `auto` cuts head+tail when more texts than this are too long (the auto max length covers 99%)


def choose_truncation(setting: str, truncated: float) -> tuple[str, str]:
    """(truncation, why): `auto` is head+tail when over 1% of the training texts are longer than max_length.

    Keeping a long text's end paid where many texts are cut (convention speeches: 0.89 vs 0.84 test
    accuracy at 512 word pieces, 0.89 vs 0.68 at 256; benchmarks/README.md); where few are, the
    choice barely matters and the head keeps MediaPipe's tokenizer (head only) usable.
    """
    if setting != "auto":
        return setting, "as given"
    share = f"{100 * truncated:.1f}% of training texts are longer than max_length"
    return ("head+tail", share) if truncated > AUTO_HEAD_TAIL else ("head", share)


def length_report(lengths: np.ndarray, max_length: int) -> dict:
    """Token-length percentiles and the share of texts truncated, as logged and saved."""
    q = lambda p: int(np.percentile(lengths, p))
    return {"p50": q(50), "p95": q(95), "p99": q(99), "max": int(lengths.max()),
            "max_length": max_length, "truncated": float(np.mean(lengths > max_length))}


def default_pads(max_length: int) -> list[int]:
    """The lengths batches are padded to by default: every multiple of 8 below max_length, and max_length."""
    return list(range(BUCKET_STEP, max_length, BUCKET_STEP)) + [max_length]


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """Padded lengths for a run whose every batch shape costs a compile, and what they cost."""

    pads: list[int]  # the lengths batches are padded to (the last is max_length)
    shapes: int  # how many of them the training texts use (XLA compiles each)
    work: float  # padded tokens of an epoch against the default buckets' (>= 1)


def plan_buckets(lengths: np.ndarray, max_length: int, epochs: int, shape_steps: float, batch_size: int) -> BucketPlan:
    """The subset of the default padded lengths that minimises a run's padded tokens plus its compiles.

    Each batch shape the training texts use costs `shape_steps` training steps (XLA's compile
    time over its step time, as the speed probe measured), priced at the default buckets' tokens
    per step; the run pads `epochs` passes over `lengths`. A step's time is taken as proportional
    to its padded tokens, which overprices padding (a step also has a fixed cost), so the plan
    errs towards more shapes. Dynamic programming over the default lengths (at most max_length / 8).
    """
    pads = default_pads(max_length)
    lengths = np.minimum(np.asarray(lengths), max_length)
    counts = np.bincount(np.searchsorted(pads, lengths), minlength=len(pads))  # texts per smallest default pad
    default_tokens = float(np.dot(counts, pads)) or 1.0  # (no texts: any plan is as good)
    steps = sum(math.ceil(c / batch_size) for c in counts) or 1
    shape_tokens = shape_steps * default_tokens / steps / max(1, epochs)  # one compile, in tokens of one pass
    below = np.concatenate([[0], np.cumsum(counts)])  # texts in default buckets < i
    best, cut = [0.0] + [math.inf] * len(pads), [0] * (len(pads) + 1)
    for i in range(1, len(pads) + 1):  # pads[i - 1] tops a group of default buckets j..i-1
        for j in range(i):
            texts = below[i] - below[j]
            cost = best[j] + pads[i - 1] * texts + (shape_tokens if texts else 0.0)
            if cost < best[i]:
                best[i], cut[i] = cost, j
    chosen, i = [], len(pads)
    while i:
        if below[i] > below[cut[i]] or i == len(pads):  # a group with texts, and always max_length on top
            chosen.append(pads[i - 1])
        i = cut[i]
    chosen.reverse()
    per_pad = np.bincount(np.searchsorted(chosen, lengths), minlength=len(chosen))
    return BucketPlan(chosen, int(np.count_nonzero(per_pad)), float(np.dot(per_pad, chosen)) / default_tokens if len(lengths) else 1.0)


def _bucket_sizes(lengths: np.ndarray, max_length: int, batch_size: int, pads=None) -> tuple[list[int], int]:
    """Bucket boundaries (pad to `pads`, by default multiples of 8) and the number of batches they yield."""
    boundaries = [p + 1 for p in (pads or default_pads(max_length))]
    lengths = np.minimum(lengths, max_length)
    counts = np.bincount(np.searchsorted(boundaries, lengths, side="right"), minlength=len(boundaries) + 1)
    return boundaries, int(sum(math.ceil(c / batch_size) for c in counts))


def make_dataset(
    tokenizer: WordPieceTokenizer,
    texts: list[str],
    targets=None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    bucket: bool = True,
    pads: list[int] | None = None,
) -> tf.data.Dataset:
    """Batches of (inputs, targets): tokenized once and cached, then shuffled and length-bucketed.

    Args:
        targets: labels, or any nest of per-example arrays (e.g. labels plus cached teacher logits).
        shuffle: in a new order each time the dataset is iterated (from `seed`).
        bucket: batch texts of similar length together, padded to a multiple of 8; otherwise every
            batch is padded to `max_length` (the slow baseline).
        pads: the lengths buckets pad to instead of every multiple of 8 (`plan_buckets`: fewer shapes for XLA).
    """
    ds = _examples(tokenizer, texts, targets)
    if shuffle:
        ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    ds = _batches(ds, tokenizer, batch_size, _buckets(tokenizer, texts, batch_size, bucket, pads))
    if targets is None:
        ds = ds.map(lambda x, _: x)
    return _prefetched(ds)


def make_stream(tokenizer: WordPieceTokenizer, texts: list[str], targets, batch_size: int, seed: int, bucket: bool,
                first_epoch: int, epochs: int, pads: list[int] | None = None) -> tf.data.Dataset:
    """The training batches of epochs `first_epoch` to `epochs - 1`, back to back.

    Epoch e's order depends only on (seed, e), not on how many epochs this process iterated
    before, so a run resumed at epoch e trains on the batches an uninterrupted one would.
    """
    examples, buckets = _examples(tokenizer, texts, targets), _buckets(tokenizer, texts, batch_size, bucket, pads)
    shuffled = lambda e: examples.shuffle(len(texts), seed=seed * 1_000_003 + e, reshuffle_each_iteration=False)
    parts = [_batches(shuffled(e), tokenizer, batch_size, buckets) for e in range(first_epoch, max(epochs, first_epoch + 1))]
    return _prefetched(functools.reduce(tf.data.Dataset.concatenate, parts))


def _prefetched(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Two batches prefetched, with tf.data's autotuner off.

    The pipeline has nothing to tune (batches are padded slices of a cache), and the autotuner's
    thread, which sleeps up to 10.24 s between wake-ups, made an iterator's end wait for it:
    measured on 2 cores, fits and validation passes stalled with no CPU in use, their wall time
    rounded up to a multiple of 10.24 s (a 5 s validation pass took 10.3 s; benchmarks/README.md).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options)


def batch_count(tokenizer: WordPieceTokenizer, texts: list[str], batch_size: int, bucket: bool = True,
                pads: list[int] | None = None) -> int:
    """Batches in one epoch of `texts` (what `make_dataset` and each epoch of `make_stream` give)."""
    return _buckets(tokenizer, texts, batch_size, bucket, pads)[1]


def _examples(tokenizer: WordPieceTokenizer, texts: list[str], targets) -> tf.data.Dataset:
    """(token ids without padding, targets) per text, tokenized once and cached."""
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(1024).map(tokenizer.encode).unbatch()
    ds = ds.map(lambda x: x["token_ids"][: tf.reduce_sum(x["padding_mask"])])
    if targets is not None:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(targets))
    else:
        ds = ds.map(lambda ids: (ids, 0))
    return ds.cache()


def _buckets(tokenizer: WordPieceTokenizer, texts: list[str], batch_size: int, bucket: bool,
             pads: list[int] | None = None) -> tuple[list[int] | None, int]:
    """(bucket boundaries or None for no bucketing, batches an epoch), from the texts' token lengths."""
    if not bucket:
        return None, math.ceil(len(texts) / batch_size)
    lengths = np.array([min(n, tokenizer.max_length) for n in tokenizer.lengths(texts)])
    return _bucket_sizes(lengths, tokenizer.max_length, batch_size, pads)


def _batches(ds: tf.data.Dataset, tokenizer: WordPieceTokenizer, batch_size: int, buckets: tuple) -> tf.data.Dataset:
    """Length-bucketed (or padded to max_length) batches of model inputs."""
    pad = tokenizer.pad_id
    boundaries, n_batches = buckets
    if boundaries:
        ds = ds.bucket_by_sequence_length(
            lambda ids, _: tf.shape(ids)[0], boundaries, [batch_size] * (len(boundaries) + 1),
            padding_values=(pad, None), pad_to_bucket_boundary=True,
        )
    else:
        pad_to = lambda ids: tf.pad(ids, [[0, tokenizer.max_length - tf.shape(ids)[0]]], constant_values=pad)
        ds = ds.map(lambda ids, y: (pad_to(ids), y)).batch(batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(n_batches))
    return ds.map(lambda ids, y: ({"token_ids": ids, "padding_mask": tf.cast(ids != pad, tf.int32)}, y))
