"""Reading and splitting labelled text, and every bad input a user can hand us."""

import json
import os

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
        (lambda d: write_csv(d / "data.csv", synthetic_rows(40) + [("odd one", "meh")]), "class 'meh' has a single example"),
        (lambda d: write_csv(d / "data.csv", [(f"t {i}", "ab"[i % 2]) for i in range(8)]), "every class in"),
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


def test_a_rare_class_stays_in_training_and_the_log_says_which_splits_lack_it(tmp_path, caplog):
    path = write_csv(tmp_path / "d.csv", synthetic_rows(40) + [(f"odd one {i}", "meh") for i in range(3)])
    s = load_splits(path)
    meh = s.label_names.index("meh")
    assert s.label_names == ["meh", "neg", "pos"] and (s.train.labels == meh).sum() == 3
    assert meh not in s.val.labels and meh not in s.test.labels and s.sizes() == {"train": 35, "val": 4, "test": 4}
    assert "'meh' (3) have fewer than 10 examples: all kept for training" in caplog.text
    assert "the test split has no examples of meh" in caplog.text


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


def _hostile_files(d):
    """name -> (path, what must happen: None = reads cleanly, or a fragment of the one-line error)."""
    rows = "\n".join(f"{t},{y}" for t, y in synthetic_rows(40))
    rng = np.random.default_rng(0)
    loop = d / "loop"
    for label, text in (("neg", "awful"), ("pos", "great")):
        (loop / label).mkdir(parents=True)
        for k in range(12):
            (loop / label / f"{k}.txt").write_text(f"{text} film {k}")
    os.symlink(loop, loop / "pos" / "again")  # a symlinked folder pointing at its own parent: must not loop
    os.symlink(loop / "neg" / "0.txt", loop / "pos" / "linked.txt")  # a symlinked file is one text
    os.symlink(d / "nowhere.txt", loop / "neg" / "broken.txt")  # a broken link is skipped
    (d / "empty-classes" / "neg").mkdir(parents=True)
    (d / "empty-classes" / "pos").mkdir()
    (d / "no-classes").mkdir()
    (d / "no-classes" / "a.txt").write_text("hello")
    return {
        "binary": (_write_bytes(d / "binary.csv", rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()), "is not UTF-8 text"),
        "nul bytes": (_write_bytes(d / "nul.csv", b"text,label\n" + b"a\x00b,pos\nc\x00d,neg\n" * 15), None),
        "bom": (_write_bytes(d / "bom.csv", "\ufefftext,label\n".encode() + rows.encode()), None),
        "crlf and quoted newlines": (_write_bytes(d / "crlf.csv", b"text,label\r\n" + b'"two\r\nlines good",pos\r\n"bad,\nvery",neg\r\n' * 20), None),
        "a million characters": (_write(d / "long.csv", "text,label\n" + "good " * 200_000 + ",pos\n" + rows), None),
        "duplicate columns": (_write(d / "dup.csv", "text,label,text\n" + "\n".join(f"{t},{y},x" for t, y in synthetic_rows(40))), "2 columns named 'text'"),
        "numeric labels": (_write(d / "num.csv", "text,label\n" + "\n".join(f"t{i},{[1, 2, 10][i % 3]}" for i in range(60))), None),
        "mixed-type labels": (_write(d / "mixed.jsonl", "\n".join(json.dumps({"text": f"t{i}", "label": [1, 1.0, "one"][i % 3]}) for i in range(60))), None),
        "NaN labels": (_write(d / "nan.jsonl", "\n".join(json.dumps({"text": f"t{i}", "label": None if i == 7 else "ab"[i % 2]}) for i in range(40))), "have an empty label"),
        "empty class folders": (str(d / "empty-classes"), "no text files"),
        "no class folders": (str(d / "no-classes"), "no class sub-folders"),
        "symlinks": (str(loop), None),
    }


def test_hostile_files_give_a_clean_result_or_one_line(tmp_path):
    for name, (path, expect) in _hostile_files(tmp_path).items():
        try:
            splits = load_splits(path)
        except TfkitError as e:  # anything else is a traceback: the test fails
            assert expect is not None, f"{name}: {e}"
            assert expect in str(e) and "\n" not in str(e), f"{name}: {e}"
            continue
        assert expect is None, f"{name} should have failed with {expect!r}"
        texts = splits.train.texts + splits.val.texts + splits.test.texts
        if name == "bom":
            assert len(texts) == 40
        if name == "crlf and quoted newlines":
            assert sorted(set(texts)) == ["bad,\nvery", "two\r\nlines good"]
        if name == "a million characters":
            assert max(map(len, texts)) == 1_000_000
        if name == "numeric labels":
            assert splits.label_names == ["1", "2", "10"]
        if name == "mixed-type labels":
            assert splits.label_names == ["1", "one"]
        if name == "symlinks":
            assert len(texts) == 25 and texts.count("awful film 0") == 2


def test_encoding_flag_reads_latin1_and_the_error_names_it(tmp_path):
    rows = "\n".join(f"{t},{y}" for t, y in synthetic_rows(40))
    path = _write_bytes(tmp_path / "latin.csv", ("text,label\n" + rows + "\ncafé crème great,pos").encode("latin-1"))
    with pytest.raises(TfkitError, match=r"is not UTF-8 text \(byte 0xe9 .*pass --encoding"):
        load_splits(path)
    s = load_splits(path, encoding="latin-1")
    assert "café crème great" in s.train.texts + s.val.texts + s.test.texts


def test_data_report_flags_leaked_splits_missing_classes_and_duplicates(tmp_path):
    from tfkit.data import Examples, Splits, data_report

    names = ["a", "b", "c"]
    train = Examples(["x one", "x two", "X  one", "y"] * 3, np.array([0, 1, 0, 2] * 3), names)
    test = Examples(["x one", "fresh text"], np.array([0, 1]), names)
    val = Examples(["new", "newer"], np.array([0, 0]), names)
    report = data_report(Splits(train, val, test, names, dropped_empty=2))
    assert report["classes"]["val"] == {"a": 2, "b": 0, "c": 0} and report["dropped_empty"] == 2
    assert report["duplicates_in_train"] == 9  # "x one" and "X  one" are the same text
    assert report["shared_with_train"] == {"val": 0, "test": 1}
    assert any("1 of 2 test texts also appear in training" in w for w in report["warnings"])
    assert any("fewer than 10 training examples: 'a' (6), 'b' (3), 'c' (3)" in w for w in report["warnings"])
