"""The TF-IDF baseline every teacher is reported against."""

from tests.conftest import synthetic_rows, write_csv
from tfkit.baseline import compare, fit_baseline
from tfkit.data import load_splits


def test_baseline_learns_the_task_and_reports_both_splits(tmp_path):
    splits = load_splits(write_csv(tmp_path / "d.csv", synthetic_rows(400)))
    result = fit_baseline(splits)
    assert result["test"]["accuracy"] >= 0.9 and result["val"]["macro_f1"] >= 0.9  # one sentiment word decides
    assert result["seconds"] < 10 and result["class_weight"] is None
    assert fit_baseline(splits, balanced=True)["class_weight"] == "balanced"


def test_compare_says_plainly_when_the_teacher_does_not_beat_it():
    teacher, baseline = {"test": {"macro_f1": 0.70}}, {"test": {"macro_f1": 0.80}}
    assert "does not beat the TF-IDF baseline on test macro-F1 (0.7000 vs 0.8000)" in compare(teacher, baseline)
    assert compare({"test": {"macro_f1": 0.81}}, baseline) is None
