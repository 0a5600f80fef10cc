"""`tfkit run`, the main job: teacher, then student, then the student's verified export."""

import json

import pytest

from tfkit.cli import main
from tfkit.formats import FORMATS


def test_run_trains_teacher_distills_student_and_exports_it(tmp_path, sentiment_csv, tiny_checkpoint, capsys):
    code = main(["run", "--data", sentiment_csv, "--pretrained", tiny_checkpoint, "--models", str(tmp_path / "models"),
                 "--export", str(tmp_path / "export"), "--bench", str(tmp_path / "bench"), "--epochs", "1", "--batch-size", "16", "--learning-rate", "5e-3",
                 "--precision", "float32", "--distill-epochs", "1", "--formats", "tflite-int8,onnx-text"])
    assert code == 0
    out = capsys.readouterr().out
    assert "teacher: test accuracy" in out and "retained" in out and "tflite-int8" in out and "onnx-text" in out
    assert "wall time: teacher" in out.splitlines()[-1] and "bench" in out.splitlines()[-1]
    assert "| model | file | runtime | threads |" in out  # the benchmark's table
    bench = json.loads((tmp_path / "bench" / "student" / "bench.json").read_text())
    assert {(r["network"], r["format"]) for r in bench["rows"]} >= {("teacher", "keras-fp32"), ("student", "onnx-text")}
    assert {r["threads"] for r in bench["rows"]} == {1} and not [r for r in bench["rows"] if r["error"]]
    student = json.loads((tmp_path / "models" / "student" / "config.json").read_text())
    assert student["training"]["teacher"] == str(tmp_path / "models" / "teacher")
    manifest = json.loads((tmp_path / "export" / "student" / "manifest.json").read_text())
    assert manifest["model"]["source"] == str(tmp_path / "models" / "student") and manifest["failed"] == {}
    assert sorted(manifest["files"]) == sorted([FORMATS["tflite-int8"].file, FORMATS["onnx-text"].file, "vocab.txt", "tokenizer_check.jsonl"])


@pytest.mark.parametrize("args, message", [
    (["--formats", "tflite-fp32,coreml"], "unknown format 'coreml'"),
    (["--student", "huge"], "unknown student preset 'huge'"),
    (["--distill-epochs", "0"], "--distill-epochs must be at least 1 (got 0)"),
    (["--formats", "tflite-mediapipe", "--truncation", "head+tail"],
     "--formats names tflite-mediapipe: MediaPipe's BertTokenizer keeps only the start of a long text"),
])
def test_run_rejects_bad_settings_before_training(tmp_path, sentiment_csv, tiny_checkpoint, capsys, args, message):
    code = main(["run", "--data", sentiment_csv, "--pretrained", tiny_checkpoint, "--models", str(tmp_path / "models"), *args])
    assert code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "models").exists()


def test_run_for_mediapipe_keeps_the_head_of_long_texts():
    """MediaPipe's tokenizer keeps a text's start, so `auto` must not train the model on head+tail."""
    from tfkit.cli import make_parser
    from tfkit.commands.run import training_config

    args = lambda *flags: make_parser().parse_args(["run", *flags])
    assert training_config(args("--formats", "tflite-int8,tflite-mediapipe")).truncation == "head"
    assert training_config(args("--formats", "tflite-int8")).truncation == "auto"
    assert training_config(args()).truncation == "auto"
