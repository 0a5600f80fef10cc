"""Student models: shapes by preset, initialised from the teacher, with an optional trimmed vocabulary.

A student at the teacher's width copies the teacher's embeddings and an evenly spaced subset
of its layers (`from-teacher`, half the teacher's depth unless told: DistilBERT's recipe, and
the best student measured on the default data), so it starts pretrained. A narrower student cannot copy
layers, but its embeddings start as the teacher's projected onto their top principal
components, which keeps the lexical knowledge that a 10k-example dataset cannot teach.
Vocabulary trimming keeps the word pieces the training texts use (optionally only those used
at least N times, for narrow students whose embedding is most of their size), every
single-character piece (so unseen words still tokenize) and the special tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfkit.backbone import Backbone
from tfkit.config import STUDENT_PRESETS
from tfkit.errors import TfkitError
from tfkit.preprocess import WordPieceTokenizer

PRESETS = STUDENT_PRESETS


@dataclasses.dataclass
class StudentShape:
    num_layers: int
    hidden_dim: int
    num_heads: int
    intermediate_dim: int


def student_shape(teacher: Backbone, preset: str, layers: int | None = None, hidden: int | None = None,
                  heads: int | None = None, intermediate: int | None = None) -> StudentShape:
    """The preset's shape with any explicit overrides; `from-teacher` takes the teacher's width."""
    if preset not in PRESETS:
        raise TfkitError(f"unknown student preset '{preset}' (choose from {', '.join(PRESETS)})")
    base = {"num_layers": (teacher.num_layers + 1) // 2, "hidden_dim": teacher.hidden_dim, "num_heads": teacher.num_heads,
            "intermediate_dim": teacher.intermediate_dim, **PRESETS[preset]}
    given = {"num_layers": layers, "hidden_dim": hidden, "num_heads": heads, "intermediate_dim": intermediate}
    shape = StudentShape(**{k: v if v is not None else base[k] for k, v in given.items()})
    if preset == "from-teacher":
        if shape.hidden_dim != teacher.hidden_dim:
            raise TfkitError(f"from-teacher students keep the teacher's width {teacher.hidden_dim}; use another preset for --hidden")
        if not 1 <= shape.num_layers <= teacher.num_layers:
            raise TfkitError(f"from-teacher --layers must be 1..{teacher.num_layers} (the teacher's depth), got {shape.num_layers}")
    if min(dataclasses.astuple(shape)) < 1 or shape.hidden_dim % shape.num_heads:
        raise TfkitError(f"invalid student shape {dataclasses.asdict(shape)}: sizes must be positive and hidden divisible by heads")
    return shape


def trim_vocab(tokenizer: WordPieceTokenizer, texts: list[str], min_count: int = 1) -> list[int]:
    """Ids to keep: pieces used at least `min_count` times by `texts`, single-character pieces and
    [bracketed] specials, in vocab order. A dropped piece's words re-tokenize into shorter pieces."""
    counts = np.zeros(len(tokenizer.vocab), np.int64)
    for start in range(0, len(texts), 4096):
        ids = tokenizer.fast.tokenize(texts[start : start + 4096]).flat_values.numpy()
        counts += np.bincount(ids, minlength=len(tokenizer.vocab))
    used = set(np.flatnonzero(counts >= min_count).tolist())
    single = {i for i, t in enumerate(tokenizer.vocab) if len(t.removeprefix("##")) == 1}
    special = {i for i, t in enumerate(tokenizer.vocab) if t.startswith("[") and t.endswith("]")}
    return sorted(used | single | special)


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, first and last included (6 -> 2 gives [0, 5])."""
    return [int(i) for i in np.linspace(0, teacher_layers - 1, student_layers).round()]


def make_student(teacher: Backbone, shape: StudentShape, keep_ids: list[int] | None = None,
                 dropout: float = 0.1, seed: int = 0, dtype: str | None = None) -> Backbone:
    """A student backbone initialised from `teacher` (see the module docstring); `dtype` is its Keras dtype policy."""
    keep = np.arange(teacher.vocabulary_size) if keep_ids is None else np.asarray(keep_ids)
    student = Backbone(
        vocabulary_size=len(keep), max_sequence_length=teacher.max_sequence_length, dropout=dropout,
        hidden_activation=teacher.hidden_activation, num_segments=teacher.num_segments, dtype=dtype,
        **dataclasses.asdict(shape),
    )
    token = teacher.get_layer("token_embedding").embeddings.numpy()
    project = _pca(token, shape.hidden_dim) if shape.hidden_dim != teacher.hidden_dim else None
    for name in ("token_embedding", "position_embedding", "segment_embedding"):
        weight = teacher.get_layer(name).weights[0].numpy()
        weight = weight[keep] if name == "token_embedding" else weight
        student.get_layer(name).weights[0].assign(weight if project is None else weight @ project)
    if project is None:
        student.get_layer("embeddings_layer_norm").set_weights(teacher.get_layer("embeddings_layer_norm").get_weights())
        for i, j in enumerate(layer_map(teacher.num_layers, shape.num_layers)):
            student.get_layer(f"transformer_layer_{i}").set_weights(teacher.get_layer(f"transformer_layer_{j}").get_weights())
        student.get_layer("pooled_dense").set_weights(teacher.get_layer("pooled_dense").get_weights())
    return student


def _pca(matrix: np.ndarray, width: int) -> np.ndarray:
    """Projection onto the top `width` principal directions, scaled to keep the embeddings' spread."""
    centered = matrix - matrix.mean(0)
    _, singular, vt = np.linalg.svd(centered[:: max(1, len(matrix) // 8192)], full_matrices=False)
    if width > vt.shape[0]:
        raise TfkitError(f"student width {width} exceeds what the teacher's embeddings can provide ({vt.shape[0]})")
    return (vt[:width].T * np.sqrt(matrix.shape[1] / width)).astype(np.float32)


def student_tokenizer(tokenizer: WordPieceTokenizer, keep_ids: list[int] | None) -> WordPieceTokenizer:
    """The teacher's tokenizer, over the kept vocabulary: the id remap is the new vocab's order."""
    if keep_ids is None:
        return tokenizer
    return WordPieceTokenizer([tokenizer.vocab[i] for i in keep_ids], tokenizer.lowercase, tokenizer.max_length, tokenizer.truncation)

