"""Labelled text in, validated train/validation/test splits out.

Reads CSV, TSV, JSONL (optionally .gz/.bz2/.xz/.zip compressed) and a directory with one
sub-folder per class (the layout `keras.utils.text_dataset_from_directory` reads). Every
problem a user's file can have becomes a one-line `TfkitError`; empty texts are dropped
and counted. Labels are kept as strings and sorted, so ids are stable across runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from tfkit import assets
from tfkit.errors import TfkitError

log = logging.getLogger("tfkit")

_COMPRESSED = (".gz", ".bz2", ".xz", ".zip")
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclasses.dataclass
class Examples:
    """Texts with integer labels indexing `label_names`."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclasses.dataclass
class Splits:
    train: Examples
    val: Examples
    test: Examples
    label_names: list[str]
    dropped_empty: int

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def data_format(path: Path) -> str:
    """`csv`, `tsv`, `jsonl` or `dir`, from the path; anything else is an error."""
    if path.is_dir():
        return "dir"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _FORMATS:
        return _FORMATS[suffixes[-1]]
    raise TfkitError(
        f"cannot read {path}: unknown format '{''.join(path.suffixes) or path.name}' "
        "(use .csv, .tsv, .jsonl or a directory with one sub-folder per class)"
    )


def _read_table(path: Path, fmt: str, text_column: str, label_column: str):
    import pandas as pd

    try:
        if fmt == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        else:
            frame = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TfkitError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); re-save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise TfkitError(f"{path} is empty") from None
    except (ValueError, pd.errors.ParserError) as e:
        raise TfkitError(f"cannot parse {path} as {fmt.upper()}: {str(e).splitlines()[0]}") from None
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in frame.columns:
            names = ", ".join(map(str, frame.columns)) or "none"
            raise TfkitError(f"{path} has no column '{column}' (columns: {names}); pass {flag}")
    return frame[text_column].tolist(), frame[label_column].tolist()


def _read_dir(path: Path) -> tuple[list, list]:
    texts, labels = [], []
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")):
            try:
                texts.append(file.read_bytes().decode("utf-8"))
            except UnicodeDecodeError as e:
                raise TfkitError(f"{file} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); re-save it as UTF-8") from None
            labels.append(folder.name)
    return texts, labels


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def read_labelled(source: str, text_column: str = "text", label_column: str = "label") -> tuple[list[str], list[str], int]:
    """Reads (texts, label strings, number of empty texts dropped) from a file, folder or built-in name."""
    if source == assets.DEFAULT_DATA:
        path, fmt, text_column, label_column, exclude = assets.rotten_tomatoes_path(), "csv", "text", "category", {"plot"}
    else:
        path, exclude = Path(source), set()
        if not path.exists():
            raise TfkitError(f"data not found: {source}")
        fmt = data_format(path)
    texts, labels = _read_dir(path) if fmt == "dir" else _read_table(path, fmt, text_column, label_column)
    if not texts:
        raise TfkitError(f"{source} has no rows")
    bad = [i for i, label in enumerate(labels) if _missing(label)]
    if bad:
        raise TfkitError(f"{source}: {len(bad)} row(s) have an empty label (first at data row {bad[0] + 1}); fill or remove them")
    keep = [i for i, (t, y) in enumerate(zip(texts, labels)) if str(y).strip() not in exclude]
    labels = [str(labels[i]).strip() for i in keep]
    texts = ["" if _missing(texts[i]) else str(texts[i]) for i in keep]
    nonempty = [i for i, t in enumerate(texts) if t.strip()]
    dropped = len(texts) - len(nonempty)
    if dropped:
        log.warning("%s: dropped %d row(s) with empty text", source, dropped)
    if not nonempty:
        raise TfkitError(f"{source} has no rows with text")
    return [texts[i] for i in nonempty], [labels[i] for i in nonempty], dropped


def _encode(texts: list[str], labels: list[str], names: list[str], source: str) -> Examples:
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise TfkitError(f"{source} has label(s) the model does not know: {', '.join(unknown[:5])} (known: {', '.join(names)})")
    index = {n: i for i, n in enumerate(names)}
    return Examples(texts, np.array([index[y] for y in labels], dtype=np.int32), names)


def _stratified(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    return train_test_split(idx, test_size=fraction, stratify=y, random_state=seed)


def load_splits(
    data: str,
    val: str | None = None,
    test: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 0,
    holdout: float = 0.1,
    label_names: list[str] | None = None,
) -> Splits:
    """Train/val/test examples; splits not given as files are carved from `data`, stratified.

    Args:
        data: a CSV/TSV/JSONL file, a directory with one sub-folder per class, or `rotten_tomatoes`.
        val, test: optional files in the same layout; otherwise `holdout` of `data` each.
        label_names: fixes the label set (e.g. a teacher's); otherwise the sorted labels of `data`.
    """
    texts, labels, dropped = read_labelled(data, text_column, label_column)
    names = sorted(set(labels))
    if label_names is None and len(names) < 2:
        raise TfkitError(f"{data} has only one class ('{names[0]}'); a classifier needs at least two")
    names = list(label_names) if label_names is not None else names
    train = _encode(texts, labels, names, data)
    given = {}
    for name, path in (("val", val), ("test", test)):
        if path:
            t, y, d = read_labelled(path, text_column, label_column)
            given[name], dropped = _encode(t, y, names, path), dropped + d
    carve = [name for name in ("val", "test") if name not in given]
    if carve:
        counts = np.bincount(train.labels, minlength=len(names))
        need = max(math.ceil(1 / holdout), len(carve) + 1)  # every split gets each class
        small = [(names[i], int(c)) for i, c in enumerate(counts) if 0 < c < need]
        if small:
            label, count = small[0]
            raise TfkitError(
                f"class '{label}' has {count} example(s) in {data}; a stratified {int(holdout * 100)}% "
                f"{'/'.join(carve)} split needs at least {need} per class: add examples or pass --val/--test files"
            )
        idx = np.arange(len(train))
        try:
            rest_idx, out_idx = _stratified(idx, train.labels, holdout * len(carve), seed)
            parts = [out_idx]
            if len(carve) == 2:
                parts = list(_stratified(out_idx, train.labels[out_idx], 0.5, seed))
        except ValueError as e:
            raise TfkitError(f"cannot split {data}: {e}; pass --val/--test files") from None
        for name, part in zip(carve, parts):
            given[name] = _subset(train, part)
        train = _subset(train, rest_idx)
    return Splits(train, given["val"], given["test"], names, dropped)


def _subset(ex: Examples, idx: np.ndarray) -> Examples:
    return Examples([ex.texts[i] for i in idx], ex.labels[idx], ex.label_names)
