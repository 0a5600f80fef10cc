"""Outputs: what tfkit may replace, and that an interrupt at any moment leaves the old or the new artifact."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfkit.artifacts import artifact_kind, atomic_dir, check_output
from tfkit.errors import TfkitError

ROOT = Path(__file__).resolve().parents[1]


def sigint_as_default() -> None:
    """Run in the child before exec: a shell's background job (`cmd &`) ignores SIGINT, and Python keeps an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_model_dir(path: Path, content: str = "old") -> Path:
    path.mkdir(parents=True)
    (path / "model.keras").write_text(content)
    (path / "config.json").write_text(json.dumps({"kind": "teacher"}))
    return path


def test_artifact_kind_recognises_only_what_tfkit_writes(tmp_path):
    model = make_model_dir(tmp_path / "m")
    assert artifact_kind(model) == "model"
    (model / "notes.txt").write_text("mine")
    assert artifact_kind(model) is None  # a user's file inside: no longer ours to replace
    export = tmp_path / "e"
    export.mkdir()
    (export / "a.onnx").write_text("x")
    (export / "manifest.json").write_text(json.dumps({"artifacts": {}, "files": {"a.onnx": {}}}))
    assert artifact_kind(export) == "export"
    (export / "a.onnx").unlink()
    assert artifact_kind(export) is None  # half-written: a file the manifest lists is missing
    assert artifact_kind(tmp_path / "nothing") is None


def test_check_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_model_dir(tmp_path / "m")
    check_output("m", "model")  # a tfkit model directory: replaceable
    check_output("new/deeper", "model")
    (tmp_path / "empty").mkdir()
    check_output("empty", "export")
    for out, kind, inputs, message in [
        ("m", "export", (), "is a tfkit model directory, not a export directory"),
        (".", "model", (), "is the current directory"),
        ("m", "model", ("m",), "is the input m"),
        (str(tmp_path), "export", ("m",), "is the current directory"),
        ("sub", "model", ("sub/data.csv",), "contains the input sub/data.csv"),
    ]:
        with pytest.raises(TfkitError, match=message):
            check_output(out, kind, inputs)


SCRIPT = """
import os, shutil, signal, sys, time
from pathlib import Path
from tfkit.artifacts import atomic_dir
from tfkit.cli import _terminate
signal.signal(signal.SIGTERM, _terminate)
where = sys.argv[1]
if where == "swap":  # hold the process between the atomic exchange and removing the old artifact
    real = shutil.rmtree
    def slow(path, *a, **k):
        print("swapped", flush=True); time.sleep(60); real(path, *a, **k)
    shutil.rmtree = slow
try:
    with atomic_dir("out", "model") as tmp:
        (tmp / "config.json").write_text('{"kind": "teacher"}')
        (tmp / "model.keras").write_text("new")
        if where == "inside":
            print("inside", flush=True); time.sleep(60)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize("where, sig", [("inside", signal.SIGINT), ("inside", signal.SIGTERM), ("inside", signal.SIGKILL),
                                        ("swap", signal.SIGKILL)])
def test_an_interrupt_leaves_the_old_or_the_new_artifact(tmp_path, where, sig):
    make_model_dir(tmp_path / "out", "old")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", SCRIPT, where], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=env,
                             preexec_fn=sigint_as_default)
    assert child.stdout.readline().strip() == ("inside" if where == "inside" else "swapped")
    child.send_signal(sig)
    child.wait(timeout=30)
    expected = "new" if where == "swap" else "old"
    assert (tmp_path / "out" / "model.keras").read_text() == expected and artifact_kind(tmp_path / "out") == "model"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    if sig == signal.SIGKILL:  # nothing can clean up after kill -9: the next run writing "out" does
        assert leftovers and all(name.startswith(".out.") for name in leftovers)
        with atomic_dir(tmp_path / "out", "model") as tmp:
            (tmp / "model.keras").write_text("next")
            (tmp / "config.json").write_text(json.dumps({"kind": "teacher"}))
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    else:
        assert child.returncode == 130
    assert leftovers == []


def test_a_killed_two_rename_swap_puts_the_old_artifact_back(tmp_path):
    """Where the atomic exchange is unavailable, a kill between the two renames leaves the old one aside."""
    out = make_model_dir(tmp_path / "out", "old")
    aside = tmp_path / ".out.old-999999999-abc"  # a pid that cannot be alive
    aside.mkdir()
    os.rename(out, aside / "out")
    with atomic_dir(out, "model") as tmp:
        assert (out / "model.keras").read_text() == "old"  # restored before the new one is written
        (tmp / "model.keras").write_text("new")
        (tmp / "config.json").write_text(json.dumps({"kind": "student"}))
    assert (out / "model.keras").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ctrl_c_during_training_keeps_the_previous_model(trained_teacher, tmp_path, sentiment_csv, tiny_checkpoint):
    import shutil

    out = tmp_path / "teacher"
    shutil.copytree(trained_teacher, out)
    before = (out / "model.keras").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "tfkit.cli", "train", "--data", sentiment_csv, "--pretrained", tiny_checkpoint,
                              "--out", str(out), "--epochs", "50", "--patience", "50", "--precision", "float32"],
                             cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                             preexec_fn=sigint_as_default)
    deadline = time.monotonic() + 240
    for line in child.stderr:
        if "training on" in line or time.monotonic() > deadline:
            break
    child.send_signal(signal.SIGINT)
    rest = child.stderr.read()
    assert child.wait(timeout=60) == 130 and "interrupted" in rest and "Traceback" not in rest, rest[-2000:]
    assert (out / "model.keras").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.csv", "teacher"]
