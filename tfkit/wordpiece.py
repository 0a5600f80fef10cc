"""The training tokenizer rebuilt without TensorFlow, for servers: HF `tokenizers`' WordPiece.

A server should not import TensorFlow (seconds of start-up, hundreds of MB) only to split
text. `FastTokenizer` builds the same BERT tokenization from an export's own `vocab.txt` and
the manifest's settings with the `tokenizers` library (Rust). tf-text's
`lower_case_nfd_strip_accents` is NFKC case folding, then NFD without accents, and it turns
control characters into spaces, so the normalizer here is NFKC, control characters to spaces,
then BERT's lowercase and accent stripping. Measured against tf-text on every code point below
U+3100 inside a word: 1% still differ (combining marks of rare scripts, punctuation added in
recent Unicode versions, "ß"). `tfkit export` therefore writes `tokenizer_check.jsonl` (the
model's test texts and a few probes, with the training tokenizer's ids) and `check()` compares.

How a text longer than the model's length is cut is defined here once, without TensorFlow
(`kept_head`, `cut`): the training tokenizer, the ONNX tokenizer graph and this one follow it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfkit.errors import TfkitError

CHECK_FILE = "tokenizer_check.jsonl"
# Beyond the test texts: empty, blank, accents, CJK, emoji, tabs and NUL, NFKC-folded characters, over-length.
PROBE_TEXTS = ["", "   ", "Café naïve CAFÉ", "電影 很好 🎬", "tab\there\nnew\x00line", "wait… ﬁne", "GOOD. Superb!!", "word " * 300]
_CONTROL = "".join(chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), *range(127, 160)])
# What a text longer than max_length keeps: its first word pieces (head), or a quarter of them from its
# start and the rest from its end (head+tail, Sun et al. 2019: 128 + 382 of 510 on long reviews).
TRUNCATIONS = ("head", "head+tail")


def kept_head(truncation: str, max_length: int) -> int:
    """How many word pieces of a cut text's start are kept (the rest of the `max_length - 2` come from its end)."""
    if truncation not in TRUNCATIONS:
        raise TfkitError(f"unknown truncation '{truncation}' (choose from {', '.join(TRUNCATIONS)})")
    body = max_length - 2
    return body if truncation == "head" else body // 4


def cut(ids: list[int], max_length: int, head: int) -> list[int]:
    """`[CLS] pieces [SEP]` ids cut to `max_length`: the first `head` pieces, then the last ones and [SEP]."""
    if len(ids) <= max_length:
        return ids
    return ids[: 1 + head] + ids[len(ids) - (max_length - 1 - head):]


class FastTokenizer:
    """BERT WordPiece with [CLS]/[SEP], cut to `max_length`, padded to the longest text in a batch.

    Args:
        vocab: the word pieces, index = id (the export's vocab.txt).
        lowercase: the manifest's `tokenizer.lowercase` (tf-text `lower_case_nfd_strip_accents`).
        max_length: longest sequence, special tokens included.
        truncation: `head` or `head+tail` (TRUNCATIONS), as the model was trained.
    """

    def __init__(self, vocab: list[str], lowercase: bool, max_length: int, truncation: str = "head"):
        from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

        ids = {token: i for i, token in enumerate(vocab)}
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in ids]
        if missing or len(ids) != len(vocab):
            raise TfkitError(f"vocabulary lacks {', '.join(missing)}" if missing else "vocabulary has duplicate tokens")
        self.pad_id, self.max_length, self.head = ids["[PAD]"], max_length, kept_head(truncation, max_length)
        tokenizer = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]", max_input_chars_per_word=100))
        steps = [normalizers.NFKC()] if lowercase else []
        steps += [normalizers.Replace(Regex(f"[{_CONTROL}]"), " "),
                  normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase)]
        tokenizer.normalizer = normalizers.Sequence(steps)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
        self.tokenizer = tokenizer  # untruncated: `cut` keeps what the model was trained on

    @classmethod
    def from_export(cls, directory: str | Path, settings: dict) -> "FastTokenizer":
        """From an export directory's vocab.txt and its manifest's `tokenizer` entry."""
        path = Path(directory) / "vocab.txt"
        try:
            vocab = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise TfkitError(f"cannot read {path}: {e}") from None
        return cls(vocab, bool(settings["lowercase"]), int(settings["max_length"]), settings.get("truncation", "head"))

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids, [CLS] ... [SEP], unpadded (a server sorts texts by their length before batching)."""
        return [cut(e.ids, self.max_length, self.head) for e in self.tokenizer.encode_batch(texts)]

    def pad(self, ids: list[list[int]]) -> dict[str, np.ndarray]:
        """int32 `token_ids` and `padding_mask` [batch, longest], as `WordPieceTokenizer.encode` gives them."""
        width = max(len(row) for row in ids)
        token_ids = np.full([len(ids), width], self.pad_id, np.int32)
        mask = np.zeros([len(ids), width], np.int32)
        for i, row in enumerate(ids):
            token_ids[i, : len(row)], mask[i, : len(row)] = row, 1
        return {"token_ids": token_ids, "padding_mask": mask}

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Model inputs for `texts`, padded to the longest."""
        return self.pad(self.ids(texts))

    def check(self, directory: str | Path) -> dict:
        """Compares this tokenizer's ids with the training tokenizer's, as recorded in `tokenizer_check.jsonl`.

        Returns:
            `texts`, `agreement` (share identical), `mismatches` (up to 5 texts with both id lists);
            `texts` is 0 when the export has no check file (exported before it existed).
        """
        path = Path(directory) / CHECK_FILE
        if not path.exists():
            return {"file": CHECK_FILE, "texts": 0, "agreement": None, "mismatches": []}
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        ours = self.ids([row["text"] for row in rows])
        bad = [{"text": row["text"][:200], "expected": row["ids"], "got": got}
               for row, got in zip(rows, ours) if got != row["ids"]]
        return {"file": CHECK_FILE, "texts": len(rows), "agreement": 1 - len(bad) / len(rows) if rows else None,
                "mismatches": bad[:5], "mismatched": len(bad)}


def check_texts(directory: str | Path) -> list[str]:
    """The model's test texts that `tfkit export` recorded in `tokenizer_check.jsonl` (the probes left out)."""
    path = Path(directory) / CHECK_FILE
    if not path.exists():
        raise TfkitError(f"{path} not found: re-export with this tfkit")
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [t for t in texts[: len(texts) - len(PROBE_TEXTS)] if t.strip()] or texts


def write_check(encode, texts: list[str], directory: str | Path) -> None:
    """Writes `tokenizer_check.jsonl`: each text with its ids (padding dropped) from `encode`, the training tokenizer.

    Args:
        encode: texts -> {"token_ids", "padding_mask"} as numpy arrays (`WordPieceTokenizer.encode`).
    """
    texts = list(texts) + PROBE_TEXTS
    encoded = encode(texts)
    with open(Path(directory) / CHECK_FILE, "w", encoding="utf-8") as f:
        for text, ids, mask in zip(texts, encoded["token_ids"], encoded["padding_mask"]):
            f.write(json.dumps({"text": text, "ids": ids[mask == 1].tolist()}, ensure_ascii=False) + "\n")
