"""Labelled text in, validated train/validation/test splits out.

Reads CSV, TSV, JSONL (optionally .gz/.bz2/.xz/.zip compressed) and a directory with one
sub-folder per class (the layout `keras.utils.text_dataset_from_directory` reads). Every
problem a user's file can have becomes a one-line `TfkitError`; empty texts are dropped
and counted. Labels are kept as strings and sorted, so ids are stable across runs.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
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


def _decoding_error(path: Path, e: UnicodeDecodeError, encoding: str) -> TfkitError:
    shown = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding
    return TfkitError(f"{path} is not {shown} text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                      "pass --encoding (e.g. latin-1, cp1252) if it is in another encoding, or re-save it as UTF-8")


def python_encoding(encoding: str) -> str:
    """UTF-8 also reads a byte-order mark (Excel writes one) instead of gluing it to the first column's name."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _read_table(path: Path, fmt: str, text_column: str, label_column: str, encoding: str = "utf-8"):
    import pandas as pd

    sep = "\t" if fmt == "tsv" else ","
    try:
        if fmt == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False, encoding=python_encoding(encoding))
            header = list(frame.columns)
        else:
            frame = pd.read_csv(path, sep=sep, dtype=str, encoding=python_encoding(encoding), keep_default_na=False,
                                na_values=[""])
            header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, encoding=python_encoding(encoding),
                                 keep_default_na=False).iloc[0].tolist()
    except UnicodeDecodeError as e:
        raise _decoding_error(path, e, encoding) from None
    except pd.errors.EmptyDataError:
        raise TfkitError(f"{path} is empty") from None
    except (ValueError, pd.errors.ParserError, csv.Error) as e:
        raise TfkitError(f"cannot parse {path} as {fmt.upper()}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if header.count(column) > 1:
            raise TfkitError(f"{path} has {header.count(column)} columns named '{column}'; rename them so {flag} names one")
        if column not in frame.columns:
            names = ", ".join(map(str, frame.columns)) or "none"
            raise TfkitError(f"{path} has no column '{column}' (columns: {names}); pass {flag}")
    return frame[text_column].tolist(), frame[label_column].tolist()


def _read_dir(path: Path, encoding: str = "utf-8") -> tuple[list, list]:
    """One sub-folder per class; every file below it (symlinked files too, symlinked folders not) is one text."""
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise TfkitError(f"{path} has no class sub-folders (expected one folder per class, each holding text files)")
    texts, labels = [], []
    for folder in folders:
        for root, dirs, files in os.walk(folder):  # does not follow symlinked folders: no loops
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                file = Path(root, name)
                if not file.is_file():  # a broken link, a socket
                    continue
                try:
                    texts.append(file.read_bytes().decode(python_encoding(encoding)))
                except UnicodeDecodeError as e:
                    raise _decoding_error(file, e, encoding) from None
                except OSError as e:
                    raise TfkitError(f"cannot read {file}: {e.strerror}") from None
                labels.append(folder.name)
    if not texts:
        raise TfkitError(f"{path} has class sub-folders ({', '.join(f.name for f in folders[:5])}) but no text files in them")
    return texts, labels


def _label_name(value) -> str:
    """A label as a string; integral floats (JSON's 1.0, a spreadsheet's 3.0) read as integers."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def sort_labels(names) -> list[str]:
    """Label names in id order: numerically when every name is a number ("2" before "10"), else alphabetically."""
    names = sorted(set(names))
    try:
        return sorted(names, key=float)
    except ValueError:
        return names


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def read_labelled(source: str, text_column: str = "text", label_column: str = "label",
                  encoding: str = "utf-8") -> tuple[list[str], list[str], int]:
    """Reads (texts, label strings, number of empty texts dropped) from a file, folder or built-in name."""
    if source == assets.DEFAULT_DATA:
        path, fmt, text_column, label_column, exclude = assets.rotten_tomatoes_path(), "csv", "text", "category", {"plot"}
    else:
        path, exclude = Path(source), set()
        if not path.exists():
            raise TfkitError(f"data not found: {source}")
        fmt = data_format(path)
    if fmt == "dir":
        texts, labels = _read_dir(path, encoding)
    else:
        texts, labels = _read_table(path, fmt, text_column, label_column, encoding)
    if not texts:
        raise TfkitError(f"{source} has no rows")
    bad = [i for i, label in enumerate(labels) if _missing(label)]
    if bad:
        raise TfkitError(f"{source}: {len(bad)} row(s) have an empty label (first at data row {bad[0] + 1}); fill or remove them")
    keep = [i for i, y in enumerate(labels) if _label_name(y) not in exclude]
    labels = [_label_name(labels[i]) for i in keep]
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
    encoding: str = "utf-8",
    known: dict[str, Examples] | None = None,
) -> Splits:
    """Train/val/test examples; splits not given as files are carved from `data`, stratified.

    A class too small to appear in every carved split (fewer than 1/holdout examples) stays in
    training whole, where its few examples do most good, and the log says which split lacks it.
    Only what cannot be learned is refused: a single class, or a class with a single example.

    Args:
        data: a CSV/TSV/JSONL file, a directory with one sub-folder per class, or `rotten_tomatoes`.
        val, test: optional files in the same layout; otherwise `holdout` of `data` each.
        label_names: fixes the label set (e.g. a teacher's); otherwise the labels of `data`, sorted.
        encoding: of every file read (UTF-8 also accepts a byte-order mark).
        known: held-out splits already at hand (a model directory carries them): their files are not read.
    """
    texts, labels, dropped = read_labelled(data, text_column, label_column, encoding)
    names = sort_labels(labels)
    if label_names is None and len(names) < 2:
        raise TfkitError(f"{data} has only one class ('{names[0]}'); a classifier needs at least two")
    names = list(label_names) if label_names is not None else names
    train = _encode(texts, labels, names, data)
    given = {}
    for name, path in (("val", val), ("test", test)):
        if path and known and name in known:
            given[name] = known[name]
        elif path:
            t, y, d = read_labelled(path, text_column, label_column, encoding)
            given[name], dropped = _encode(t, y, names, path), dropped + d
    carve = [name for name in ("val", "test") if name not in given]
    if carve:
        given.update(_carve(train, carve, holdout, seed, data))
        train = _subset(train, given.pop("train"))
    given.update(known or {})
    for name in ("val", "test"):
        absent = sorted(set(names) - {names[i] for i in np.unique(given[name].labels)})
        if absent and label_names is None:
            log.warning("the %s split has no examples of %s; its metrics leave them out", name, ", ".join(absent))
    return Splits(train, given["val"], given["test"], names, dropped)


def _carve(train: Examples, carve: list[str], holdout: float, seed: int, data: str) -> dict:
    """Stratified held-out splits from `train` (their indices under "train"); small classes stay in training."""
    names = train.label_names
    counts = np.bincount(train.labels, minlength=len(names))
    single = [names[i] for i, c in enumerate(counts) if c == 1]
    if single:
        raise TfkitError(f"class '{single[0]}' has a single example in {data}; a class needs at least 2 "
                         "to be learned: add examples or remove it")
    need = max(math.ceil(1 / holdout), len(carve) + 1)  # a carved split gets at least one of each class
    small = [i for i, c in enumerate(counts) if 0 < c < need]
    idx = np.flatnonzero(~np.isin(train.labels, small))
    if not len(idx):
        raise TfkitError(f"every class in {data} has fewer than {need} examples, too few to carve a "
                         f"{'/'.join(carve)} split: add examples or pass --val/--test files")
    if small:
        log.warning("class(es) %s have fewer than %d examples: all kept for training, so the %s split(s) have none; "
                    "pass --val/--test files to measure them", ", ".join(f"'{names[i]}' ({counts[i]})" for i in small),
                    need, "/".join(carve))
    try:
        rest, out = _stratified(idx, train.labels[idx], holdout * len(carve), seed)
        parts = [out] if len(carve) == 1 else list(_stratified(out, train.labels[out], 0.5, seed))
    except ValueError as e:
        raise TfkitError(f"cannot split {data}: {e}; pass --val/--test files") from None
    rest = np.concatenate([rest, np.flatnonzero(np.isin(train.labels, small))])  # the split's order kept: same runs as before
    return {"train": rest, **{name: _subset(train, part) for name, part in zip(carve, parts)}}


def fingerprint(source: str) -> str | None:
    """sha256 of a data file (or of every file under a class-folder directory, with its path); None for built-in data."""
    if source == assets.DEFAULT_DATA:
        return None
    path, digest = Path(source), hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path)).encode() if file != path else b"")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def write_heldout(path: str | Path, splits: Splits) -> None:
    """The validation and test examples as JSON lines ({"split", "text", "label"}), so a model directory
    carries what later stages evaluate on, wherever it is moved."""
    with open(path, "w", encoding="utf-8") as f:
        for name in ("val", "test"):
            part = getattr(splits, name)
            for text, label in zip(part.texts, part.labels):
                f.write(json.dumps({"split": name, "text": text, "label": splits.label_names[label]}, ensure_ascii=False) + "\n")


def read_heldout(path: str | Path, label_names: list[str]) -> tuple[Examples, Examples]:
    """(val, test) as `write_heldout` wrote them."""
    rows = {"val": ([], []), "test": ([], [])}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                rows[row["split"]][0].append(row["text"])
                rows[row["split"]][1].append(row["label"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TfkitError(f"cannot read {path}: {e}; the model directory is damaged") from None
    return tuple(_encode(texts, labels, label_names, str(path)) for texts, labels in rows.values())


def _subset(ex: Examples, idx: np.ndarray) -> Examples:
    return Examples([ex.texts[i] for i in idx], ex.labels[idx], ex.label_names)


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def data_report(splits: Splits, few: int = 10) -> dict:
    """Examples per class per split, duplicated texts within training and across splits (leakage),
    and warnings for what will hurt a model; logged at the start of training and saved in config.json."""
    names = splits.label_names
    parts = {name: getattr(splits, name) for name in ("train", "val", "test")}
    report = {"classes": {name: {label: int(count) for label, count in zip(names, np.bincount(part.labels, minlength=len(names)))}
                          for name, part in parts.items()}, "dropped_empty": splits.dropped_empty}
    train = [_normalised(t) for t in splits.train.texts]
    seen = set(train)
    report["duplicates_in_train"] = len(train) - len(seen)
    report["shared_with_train"] = {name: int(sum(_normalised(t) in seen for t in parts[name].texts)) for name in ("val", "test")}
    warnings = []
    small = [f"'{label}' ({count})" for label, count in report["classes"]["train"].items() if count < few]
    if small:
        warnings.append(f"class(es) with fewer than {few} training examples: {', '.join(small)}")
    for name, shared in report["shared_with_train"].items():
        if shared and shared >= 0.05 * len(parts[name]):
            warnings.append(f"{shared} of {len(parts[name])} {name} texts also appear in training: "
                            f"the {name} metrics overstate how the model does on new text")
    if report["duplicates_in_train"] >= 0.1 * len(train):
        warnings.append(f"{report['duplicates_in_train']} of {len(train)} training texts are duplicates")
    report["warnings"] = warnings
    return report


def log_report(report: dict) -> None:
    def counts(classes: dict) -> str:
        if len(classes) <= 12:
            return ", ".join(f"{label} {n}" for label, n in classes.items())
        ordered = sorted(classes.items(), key=lambda item: item[1])
        return f"{len(classes)} classes, {ordered[0][1]} ({ordered[0][0]}) to {ordered[-1][1]} ({ordered[-1][0]})"

    log.info("examples per class: %s", "; ".join(f"{name} {counts(classes)}" for name, classes in report["classes"].items()))
    for warning in report["warnings"]:
        log.warning("data: %s", warning)
