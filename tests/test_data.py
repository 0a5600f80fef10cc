"""Reading and splitting labelled text, and every bad input a user can hand us."""

import json

import numpy as np
import pytest

from tests.conftest import synthetic_rows, write_csv
from tfkit.data import load_splits, read_labelled
from tfkit.errors import TfkitError


def test_csv_split_is_stratified_and_repeatable(sentiment_csv):
    a = load_splits(sentiment_csv, seed=0)
    b = load_splits(sentiment_csv, seed=0)
    assert a.sizes() == {"train": 192, "val": 24, "test": 24}
    assert a.label_names == ["neg", "pos"]
    assert a.test.texts == b.test.texts
    assert np.bincount(a.val.labels).tolist() == [12, 12]
    assert load_splits(sentiment_csv, seed=1).test.texts != a.test.texts


def test_tsv_jsonl_and_directory_read_the_same_rows(tmp_path):
    rows = synthetic_rows(30)
    tsv = write_csv(tmp_path / "d.tsv", [(t, y) for t, y in rows], header=("review", "stars"), sep="\t")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"review": t, "stars": y}) for t, y in rows))
    root = tmp_path / "folders"
    for k, (text, label) in enumerate(rows):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{k:03d}.txt").write_text(text)
    by_tsv = read_labelled(str(tsv), "review", "stars")
    by_jsonl = read_labelled(str(jsonl), "review", "stars")
    by_dir = read_labelled(str(root))
    assert by_tsv == by_jsonl
    assert sorted(zip(*by_dir[:2])) == sorted(zip(*by_tsv[:2]))


def test_explicit_val_and_test_files(tmp_path, sentiment_csv):
    val = write_csv(tmp_path / "val.csv", synthetic_rows(10, seed=5))
    test = write_csv(tmp_path / "test.csv", synthetic_rows(14, seed=6))
    s = load_splits(sentiment_csv, val=val, test=test)
    assert s.sizes() == {"train": 240, "val": 10, "test": 14}
    only_val = load_splits(sentiment_csv, val=val)
    assert only_val.sizes() == {"train": 216, "val": 10, "test": 24}


def test_empty_texts_are_dropped_and_counted(tmp_path, caplog):
    path = write_csv(tmp_path / "d.csv", synthetic_rows(40) + [("", "pos"), ("   ", "neg")])
    texts, labels, dropped = read_labelled(path)
    assert dropped == 2 and len(texts) == 40
    assert "dropped 2 row(s) with empty text" in caplog.text


def test_builtin_data_drops_plot_and_matches_the_reference_split():
    s = load_splits("rotten_tomatoes")
    assert s.label_names == ["fresh", "rotten"]
    assert s.sizes() == {"train": 10246, "val": 1281, "test": 1281}  # the peer pipeline's split


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: str(d / "missing.csv"), "data not found"),
        (lambda d: _write(d / "data.parquet", "x"), "unknown format '.parquet'"),
        (lambda d: _write(d / "data.csv", "text,stars\nhello,1\n"), "has no column 'label' (columns: text, stars); pass --label-column"),
        (lambda d: _write(d / "data.csv", ""), "is empty"),
        (lambda d: _write(d / "data.csv", "text,label\n"), "has no rows"),
        (lambda d: write_csv(d / "data.csv", [(f"text {i}", "pos") for i in range(30)]), "only one class ('pos')"),
        (lambda d: write_csv(d / "data.csv", synthetic_rows(40) + [("odd one", "meh")] * 3), "class 'meh' has 3 example(s)"),
        (lambda d: _write_bytes(d / "data.csv", b"text,label\ncaf\xe9,pos\n"), "is not UTF-8 text (byte 0xe9"),
        (lambda d: write_csv(d / "data.csv", synthetic_rows(40) + [("no label", "")]), "1 row(s) have an empty label (first at data row 41)"),
        (lambda d: _write(d / "data.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n'), "1 row(s) have an empty label"),
        (lambda d: _write(d / "data.csv", "text,label\n   ,pos\n,neg\n"), "has no rows with text"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, make, message):
    with pytest.raises(TfkitError) as error:
        load_splits(make(tmp_path))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_label_in_a_given_test_file(tmp_path, sentiment_csv):
    test = write_csv(tmp_path / "test.csv", [("what", "other")] * 3)
    with pytest.raises(TfkitError, match="label\\(s\\) the model does not know: other"):
        load_splits(sentiment_csv, test=test)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _write_bytes(path, data):
    path.write_bytes(data)
    return str(path)
