"""The command line as a user meets it: fast help, quiet start, and every refused input one line.

Each refused input runs `tfkit` in a fresh process (the real stderr, TensorFlow's native logging
included) and must exit 2 with exactly one line on stderr, no traceback, and nothing written or
removed anywhere in the working directory. README's table of refused inputs is this list.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import synthetic_rows, write_csv, write_hf_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def tfkit(*args, cwd, stdin=None):
    env = {**{k: v for k, v in os.environ.items() if k != "TF_CONFIG"}, "PYTHONPATH": str(ROOT)}
    if args and isinstance(args[0], dict):  # environment variables first, as in `TF_CONFIG=... tfkit train`
        env, args = {**env, **args[0]}, args[1:]
    return subprocess.run([sys.executable, "-m", "tfkit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          input=stdin, env=env, timeout=300)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A user's folder: data, a checkpoint, a model and an export tfkit wrote, and folders of their own."""
    root = tmp_path_factory.mktemp("workspace")
    write_csv(root / "data.csv", synthetic_rows(60))
    (root / "latin.csv").write_bytes(("text,label\n" + "\n".join(f"café {t},{y}" for t, y in synthetic_rows(40))).encode("latin-1"))
    write_hf_checkpoint(str(root / "ckpt"), max_position_embeddings=64)
    write_hf_checkpoint(str(root / "bad-ckpt"))
    (root / "bad-ckpt" / "tokenizer_config.json").write_text("{do_lower_case: yes")
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("my own notes")
    shutil.copy(root / "data.csv", root / "mine" / "reviews.csv")
    (root / "mine" / "teacher").mkdir()
    (root / "mine" / "teacher" / "thesis.tex").write_text("years of work")
    (root / "models" / "teacher").mkdir(parents=True)  # what tfkit writes: recognised, so replaceable
    (root / "models" / "teacher" / "model.keras").write_bytes(b"not really a model")
    (root / "models" / "teacher" / "config.json").write_text(json.dumps({"kind": "teacher"}))
    (root / "export" / "old").mkdir(parents=True)
    (root / "export" / "old" / "vocab.txt").write_text("[PAD]\n")
    (root / "export" / "old" / "manifest.json").write_text(json.dumps({"artifacts": {}, "files": {"vocab.txt": {}}}))
    (root / "models" / ".interrupted.resume" / "teacher").mkdir(parents=True)  # another run's checkpoints
    (root / "models" / ".interrupted.resume" / "teacher" / "resume.json").write_text(json.dumps(
        {"settings": {"config": {"epochs": 9}}, "checkpoint": "step-000000010"}))
    (root / "empty.txt").write_text("")
    (root / "file").write_text("a file, not a folder")
    return root


TRAIN = ["train", "--data", "data.csv", "--pretrained", "ckpt", "--epochs", "1"]
TWO_WORKERS = {"cluster": {"worker": ["127.0.0.1:29001", "127.0.0.1:29002"]}, "task": {"type": "worker", "index": 0}}
# (what is refused, the command line, a fragment of the one line it gets). Keep README's table in step.
REFUSED = [
    ("training data that does not exist", ["train", "--data", "nope.csv"], "data not found: nope.csv"),
    ("a data format tfkit cannot read", ["train", "--data", "file"], "unknown format 'file'"),
    ("a column the data does not have", [*TRAIN, "--text-column", "body"], "has no column 'body' (columns: text, label)"),
    ("text in another encoding", ["train", "--data", "latin.csv", "--pretrained", "ckpt"], "pass --encoding"),
    ("an unknown encoding", [*TRAIN, "--encoding", "klingon"], "unknown --encoding 'klingon'"),
    ("zero epochs", [*TRAIN, "--epochs", "0"], "--epochs must be at least 1 (got 0)"),
    ("a batch size of zero", [*TRAIN, "--batch-size", "0"], "--batch-size must be at least 1"),
    ("a learning rate of zero", [*TRAIN, "--learning-rate", "0"], "--learning-rate must be in (0, 1] (got 0)"),
    ("dropout of 1 or more", [*TRAIN, "--dropout", "1.5"], "--dropout must be in [0, 1) (got 1.5)"),
    ("a warm-up ratio of 1", [*TRAIN, "--warmup-ratio", "1"], "--warmup-ratio must be in [0, 1) (got 1)"),
    ("a negative patience", [*TRAIN, "--patience", "-1"], "--patience must be at least 0"),
    ("a negative seed", [*TRAIN, "--seed", "-3"], "--seed must be at least 0"),
    ("a max length below 8", [*TRAIN, "--max-length", "4"], "--max-length must be at least 8"),
    ("a max length beyond the model's", [*TRAIN, "--max-length", "1000"], "--max-length 1000 exceeds the model's limit of 64"),
    ("an unknown precision", [*TRAIN, "--precision", "fp8"], "unknown --precision 'fp8'"),
    ("an unknown XLA setting", [*TRAIN, "--jit", "yes"], "unknown --jit 'yes' (choose from auto, on, off)"),
    ("a batch that does not split over the devices", [*TRAIN, "--batch-size", "15", "--devices", "2"], "must be divisible by --devices 2"),
    ("a number that is not a number", [*TRAIN, "--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    ("a checkpoint that does not exist", ["train", "--data", "data.csv", "--pretrained", "nowhere"], "pretrained checkpoint not found"),
    ("a corrupt tokenizer_config.json", ["train", "--data", "data.csv", "--pretrained", "bad-ckpt"], "tokenizer_config.json is not valid JSON"),
    ("--out that is a file", [*TRAIN, "--out", "file"], "--out file is a file"),
    ("--out that is the current directory", [*TRAIN, "--out", "."], "--out . is the current directory"),
    ("--out that is a folder tfkit did not write", [*TRAIN, "--out", "mine/teacher"], "holds files tfkit did not write"),
    ("--out that is another kind of artifact", [*TRAIN, "--out", "export/old"], "is a tfkit export directory, not a model directory"),
    ("--out that contains the training data", ["train", "--data", "mine/reviews.csv", "--pretrained", "ckpt", "--out", "mine"],
     "--out mine contains the input mine/reviews.csv"),
    ("an unknown strategy", [*TRAIN, "--strategy", "ps"], "unknown --strategy 'ps'"),
    ("a checkpoint interval of zero", [*TRAIN, "--checkpoint-every", "0"], "--checkpoint-every must be at least 1 (got 0)"),
    ("--strategy multiworker without TF_CONFIG", [*TRAIN, "--strategy", "multiworker"], "--strategy multiworker needs TF_CONFIG"),
    ("TF_CONFIG that is not JSON", [{"TF_CONFIG": "{cluster"}, *TRAIN], "TF_CONFIG is not valid JSON"),
    ("TF_CONFIG without a task", [{"TF_CONFIG": json.dumps({"cluster": TWO_WORKERS["cluster"]})}, *TRAIN],
     'TF_CONFIG has no "task"'),
    ("a TF_CONFIG task index out of range", [{"TF_CONFIG": json.dumps({**TWO_WORKERS, "task": {"type": "worker", "index": 2}})}, *TRAIN],
     "TF_CONFIG task index 2 is out of range: the cluster has 2 worker task(s)"),
    ("several workers with several devices each", [{"TF_CONFIG": json.dumps(TWO_WORKERS)}, *TRAIN, "--devices", "2", "--batch-size", "16"],
     "--strategy multiworker trains one device per worker"),
    ("checkpoints of a run with other settings", [*TRAIN, "--out", "models/interrupted"],
     "models/.interrupted.resume holds the checkpoints of a run with other settings"),
    ("a teacher that is not a model directory", ["distill", "--teacher", "mine"], "not a tfkit model directory: mine"),
    ("an unknown student preset", ["distill", "--teacher", "models/teacher", "--student", "huge"], "unknown student preset 'huge'"),
    ("a from-teacher student with its own heads", ["distill", "--teacher", "models/teacher", "--heads", "4"],
     "--heads cannot change a from-teacher student"),
    ("a temperature of zero", ["distill", "--teacher", "models/teacher", "--temperature", "0"], "--temperature must be positive"),
    ("alpha outside [0, 1]", ["distill", "--teacher", "models/teacher", "--alpha", "2"], "--alpha must be in [0, 1]"),
    ("a vocabulary cut-off of zero", ["distill", "--teacher", "models/teacher", "--vocab-min-count", "0"], "--vocab-min-count must be at least 1"),
    ("an unknown student precision", ["distill", "--teacher", "models/teacher", "--precision", "fp16"], "unknown --precision 'fp16'"),
    ("an unknown student XLA setting", ["distill", "--teacher", "models/teacher", "--jit", "always"], "unknown --jit 'always'"),
    ("a student written over its teacher", ["distill", "--teacher", "models/teacher", "--out", "models/teacher"], "is the input models/teacher"),
    ("a student written into the teacher's parent", ["distill", "--teacher", "models/teacher", "--out", "models"], "contains the input models/teacher"),
    ("exporting a directory that is not a model", ["export", "mine"], "not a tfkit model directory: mine"),
    ("an unknown export format", ["export", "models/teacher", "--formats", "tflite-fp32,coreml"], "unknown format 'coreml'"),
    ("an export over a folder of the user's", ["export", "models/teacher", "--out", "mine"], "holds files tfkit did not write"),
    ("an export over the model itself", ["export", "models/teacher", "--out", "models/teacher"], "is the input models/teacher"),
    ("predicting from an empty file", ["predict", "models/teacher", "--file", "empty.txt"], "no texts in empty.txt"),
    ("predicting from a missing file", ["predict", "models/teacher", "--file", "gone.txt"], "cannot read gone.txt"),
    ("predicting from text in another encoding", ["predict", "models/teacher", "--file", "latin.csv"], "pass --encoding"),
    ("a run with an unknown format", ["run", "--formats", "bogus"], "unknown format 'bogus'"),
    ("a run whose models folder is the user's", ["run", "--models", "mine"], "--models mine/teacher already exists and holds files"),
    ("a run with zero student epochs", ["run", "--distill-epochs", "0"], "--distill-epochs must be at least 1"),
    ("a whole run across several machines", [{"TF_CONFIG": json.dumps(TWO_WORKERS)}, "run"], "tfkit run trains on one machine"),
    ("a run with an unknown XLA setting", ["run", "--jit", "true"], "unknown --jit 'true'"),
    ("benchmarking an export that does not exist", ["bench", "nope"], "export directory nope not found"),
    ("benchmarking a folder that is not an export", ["bench", "mine"], "mine is not a complete tfkit export"),
    ("a benchmark with zero threads", ["bench", "export/old", "--threads", "0"], "--threads takes comma-separated positive integers"),
    ("serving a folder that is not an export", ["serve", "mine"], "mine is not a tfkit export (no manifest.json)"),
    ("a port out of range", ["serve", "export/old", "--port", "70000"], "port 70000 is out of range"),
    ("a load test aimed at another machine", ["loadtest", "http://10.0.0.1:8080", "--requests", "10"],
     "10.0.0.1 is not a loopback address"),
]


@pytest.mark.parametrize("what, argv, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_input_is_one_line_exit_2_and_nothing_written(workspace, what, argv, message):
    before = snapshot(workspace)
    done = tfkit(*argv, cwd=workspace)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (what, done.stderr[-2000:])
    assert len(lines) == 1 and message in lines[0] and "error: " in lines[0], (what, lines)
    assert snapshot(workspace) == before, f"{what}: the working directory changed"


def test_the_table_has_at_least_25_refusals_and_readme_lists_them():
    readme = (ROOT / "README.md").read_text()
    assert len(REFUSED) >= 25
    missing = [what for what, _, _ in REFUSED if f"| {what} |" not in readme]
    assert not missing, f"README's table of refused inputs lacks: {missing}"


def test_help_and_version_are_instant_and_import_no_tensorflow(tmp_path):
    probe = ("import sys, time; t = time.perf_counter(); from tfkit.cli import make_parser; make_parser()\n"
             "print(time.perf_counter() - t, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds, tensorflow, keras = done.stdout.split()
    assert tensorflow == keras == "False" and float(seconds) < 1.0, done.stdout
    for command in ([], ["train"], ["distill"], ["export"], ["predict"], ["run"], ["bench"], ["serve"], ["loadtest"]):
        start = time.perf_counter()
        shown = tfkit(*command, "--help", cwd=tmp_path)
        assert shown.returncode == 0 and "usage: tfkit" in shown.stdout and shown.stderr == "", command
        assert time.perf_counter() - start < 3.0, command  # a cold interpreter: well under TensorFlow's ~6 s import
    assert tfkit("--version", cwd=tmp_path).stdout.strip() == "tfkit 0.1.0"


def test_tensorflow_starts_without_its_native_noise(trained_teacher, tmp_path):
    done = tfkit("predict", str(trained_teacher), "a good film", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("pos\t"), done.stderr[-1000:]
    assert done.stderr == "", done.stderr  # no oneDNN, cudart_stub, cuInit or absl lines


def test_the_noise_filter_keeps_everything_else():
    from tfkit.quiet import is_noise

    assert is_noise("I0000 00:00:1796155538.429382    7878 port.cc:153] oneDNN custom operations are on.\n")
    assert is_noise("I0000 00:00:1796155538.429706    7878 cudart_stub.cc:31] Could not find cuda drivers\n")
    assert is_noise("E0000 00:00:1796155368.088072    3734 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n")
    assert is_noise("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    assert is_noise("WARNING: Logging before InitGoogle() is written to STDERR\n")
    assert not is_noise("E0000 00:00:1796155368.088072    3734 op_kernel.cc:1857] OP_REQUIRES failed at matmul\n")
    assert not is_noise("Traceback (most recent call last):\n") and not is_noise("tfkit: error: x\n")
    assert not is_noise("UserWarning: something the user should see\n")


def test_an_existing_model_directory_is_replaced_and_a_users_folder_kept(workspace, tmp_path, tiny_checkpoint):
    """The happy path of the same rule: a tfkit model directory at --out is replaced, and the log says so."""
    shutil.copy(workspace / "data.csv", tmp_path / "data.csv")
    args = ["train", "--data", "data.csv", "--pretrained", tiny_checkpoint, "--epochs", "1", "--out", "m", "--precision", "float32"]
    assert tfkit(*args, cwd=tmp_path).returncode == 0
    first = (tmp_path / "m" / "model.keras").stat().st_mtime_ns
    again = tfkit(*args, cwd=tmp_path)
    assert again.returncode == 0 and "replacing the previous model in m" in again.stderr
    assert (tmp_path / "m" / "model.keras").stat().st_mtime_ns != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "m"]  # no temporary folders left


def test_a_first_run_prints_only_what_tfkit_means_to_say(workspace, tmp_path):
    """A fresh cache: Keras imports matplotlib, which logs that it built its font cache; that line is not tfkit's."""
    fresh = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    done = tfkit(fresh, "train", "--data", "data.csv", "--pretrained", "ckpt", "--epochs", "1", "--text-column", "body", cwd=workspace)
    assert done.returncode == 2 and list((tmp_path / "mpl").glob("fontlist*")), "matplotlib did not build its cache here"
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        "tfkit: error: data.csv has no column 'body' (columns: text, label); pass --text-column"]
