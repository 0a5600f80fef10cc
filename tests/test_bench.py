"""`tfkit bench`: a tiny exported model measured in fresh processes, every field, the outputs, bad input."""

import json
import os
import shutil

import numpy as np
import pytest

from tfkit.bench import bench, flops, read_export
from tfkit.bench_report import pareto
from tfkit.cli import main
from tfkit.timing import measure

FILES = ("tflite-int8", "onnx", "tflite-text", "tflite-mediapipe")  # LiteRT, ONNX Runtime, string-in files
FIELDS = ("runtime", "runtime_version", "format", "precision", "size_bytes", "threads", "threads_applied", "load_ms",
          "first_inference_ms", "latency_ms", "latency_settings", "fixed_length_ms", "throughput", "peak_rss_mb",
          "accuracy", "macro_f1", "agreement", "speedup_vs_teacher_keras", "smaller_than_teacher_keras",
          "speedup_vs_teacher_same_format", "smaller_than_teacher_same_format", "efficiency", "pid", "os_threads")


def subset(exported, out, keys, source=None):
    """A copy of the export with only `keys` (as if exported with --formats), its source optionally re-pointed."""
    src, manifest = exported
    out.mkdir()
    manifest = json.loads(json.dumps(manifest))
    manifest["artifacts"] = {k: manifest["artifacts"][k] for k in keys}
    manifest["files"] = {a["file"]: manifest["files"][a["file"]] for a in manifest["artifacts"].values()}
    for name in manifest["files"]:
        shutil.copy(src / name, out / name)
    if source:
        manifest["model"]["source"] = str(source)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out, manifest


@pytest.fixture(scope="module")
def student_bench(tmp_path_factory, trained_teacher, exported_teacher):
    """A 'student' (a copy of the tiny teacher, distilled from it on paper) benchmarked at 1 thread.

    The teacher's files are the fixture's export, reused, so nothing is converted here; one extra
    artifact names a runtime tfkit does not know, as a format added later would.
    """
    root = tmp_path_factory.mktemp("bench")
    student = root / "student"
    shutil.copytree(trained_teacher, student)
    config = json.loads((student / "config.json").read_text())
    config["kind"], config["training"]["teacher"] = "student", str(trained_teacher)
    (student / "config.json").write_text(json.dumps(config))
    export_dir, manifest = subset(exported_teacher, root / "export", FILES, source=student)
    shutil.copy(export_dir / "model_int8.tflite", export_dir / "model_future.bin")
    manifest["artifacts"]["future-format"] = {**manifest["artifacts"]["tflite-int8"], "file": "model_future.bin",
                                              "runtime": "future-runtime"}
    manifest["files"]["model_future.bin"] = manifest["files"]["model_int8.tflite"]
    (export_dir / "manifest.json").write_text(json.dumps(manifest))
    teacher_export, _ = subset(exported_teacher, root / "teacher_export", ("tflite-int8", "onnx"))
    result = bench(export_dir, root / "out", threads="1", lengths=(8, 16, 1000), iterations=20, warmup=2,
                   teacher_export=teacher_export, teacher_formats=("tflite-int8", "onnx"), throughput_passes=1, progress=False)
    return result, root


def test_every_row_has_every_field_and_ordered_percentiles(student_bench):
    result, _ = student_bench
    rows = [r for r in result["rows"] if r["format"] != "future-format"]
    expected = {(net, fmt, 1) for net, fmts in (("teacher", ("keras-fp32", "tflite-int8", "onnx")),
                                                                  ("student", ("keras-fp32", *FILES))) for fmt in fmts}
    assert {(r["network"], r["format"], r["threads"]) for r in rows} == expected
    for r in rows:
        assert r["error"] is None, r
        no_counterpart = r["network"] == "teacher" or r["format"] in ("tflite-text", "tflite-mediapipe")  # none in the teacher export
        missing = [f for f in FIELDS if f not in r or (r[f] is None and not (f.endswith("same_format") and no_counterpart))]
        assert not missing, (r["network"], r["file"], missing)
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], r["file"]
        assert lat["count"] == 20 and r["latency_settings"]["warmup"] == 2
        assert r["throughput"]["texts_per_s"] > 0 and r["load_ms"] > 0 and r["first_inference_ms"] > 0
        assert 0.5 <= r["accuracy"] <= 1 and r["agreement"] == 1.0  # the same network in every format
        # fixed lengths for id-level files only, capped at the position table (64 in the tiny model)
        assert sorted(r["fixed_length_ms"], key=int) == ([] if r["text_input"] else ["8", "16", "64"]), r["file"]
        assert all(e["flops"] > 0 and e["of_peak"] > 0 for e in r["efficiency"].values())
    teacher_keras = next(r for r in rows if r["network"] == "teacher" and r["format"] == "keras-fp32" and r["threads"] == 1)
    assert teacher_keras["speedup_vs_teacher_keras"] == 1.0
    assert {"cpu", "cores", "flags", "libraries"} <= set(result["machine"]) and "amx_int8" in result["machine"]["flags"]
    assert set(result["peak"]) == {"1"} and all("onnxruntime_int8" in v for v in result["peak"]["1"].values())


def test_unknown_runtime_fails_its_row_only(student_bench):
    result, _ = student_bench
    future = [r for r in result["rows"] if r["format"] == "future-format"]
    assert len(future) == 1 and all(r["error"] and "model_future.bin" in r["error"] for r in future)


def test_rss_is_measured_in_a_fresh_process_per_row(student_bench):
    result, _ = student_bench
    rows = [r for r in result["rows"] if not r["error"]]
    assert os.getpid() not in {r["pid"] for r in rows} and len({r["pid"] for r in rows}) == len(rows)
    rss = {(r["network"], r["format"], r["threads"]): r["peak_rss_mb"] for r in rows}
    # ONNX Runtime alone needs a fraction of what a process with TensorFlow and Keras holds
    assert rss[("student", "onnx", 1)] < 0.5 * rss[("student", "keras-fp32", 1)]


def test_json_markdown_and_png_are_written(student_bench):
    result, root = student_bench
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]
    assert json.loads((out / "bench.json").read_text())["rows"][0]["latency_ms"] == result["rows"][0]["latency_ms"]
    md = (out / "bench.md").read_text()
    assert "| model | file | runtime | threads |" in md and "model_text.tflite" in md and result["machine"]["cpu"] in md
    assert "not measured" in md and "8 tokens ms" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in root.iterdir() if p.name.startswith(".out")]


def test_cli_benchmarks_a_teacher_export_at_each_thread_count_and_prints_the_table(tmp_path, exported_teacher, capsys):
    export_dir, _ = subset(exported_teacher, tmp_path / "export", ("onnx", "tflite-int8"))
    code = main(["bench", str(export_dir), "--threads", "1,2", "--lengths", "16", "--iterations", "5",
                 "--out", str(tmp_path / "bench")])
    assert code == 0
    out = capsys.readouterr().out
    assert "model_int8.tflite" in out and "model.keras" in out and f"wrote {tmp_path / 'bench'}/bench.json" in out
    result = json.loads((tmp_path / "bench" / "bench.json").read_text())
    by = {(r["format"], r["threads"]): r for r in result["rows"]}
    assert sorted(by) == sorted((f, t) for f in ("keras-fp32", "onnx", "tflite-int8") for t in (1, 2))
    assert all(r["network"] == "teacher" and r["error"] is None for r in by.values()) and set(result["peak"]) == {"1", "2"}
    for fmt in ("onnx", "keras-fp32"):
        assert by[(fmt, 2)]["threads_applied"]["intra_op"] == 2 and by[(fmt, 1)]["threads_applied"]["intra_op"] == 1
    for fmt in ("onnx", "tflite-int8"):  # a pool of 2 runs one more OS thread than a pool of 1
        assert by[(fmt, 2)]["os_threads"] > by[(fmt, 1)]["os_threads"], fmt


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("no-manifest", "is not a complete tfkit export (no manifest.json)"),
    ("truncated", "is missing or incomplete"),
    ("threads", "--threads takes comma-separated positive integers (got '0,x')"),
])
def test_missing_or_half_written_export_is_refused_with_one_line(tmp_path, exported_teacher, capsys, case, message):
    export_dir, _ = subset(exported_teacher, tmp_path / "export", ("onnx",))
    args = []
    if case == "missing":
        export_dir = tmp_path / "nothing"
    elif case == "no-manifest":  # what a crash mid-export would leave, were it not atomic
        (export_dir / "manifest.json").unlink()
    elif case == "truncated":
        (export_dir / "model.onnx").write_bytes((export_dir / "model.onnx").read_bytes()[:100])
    else:
        args = ["--threads", "0,x"]
    code = main(["bench", str(export_dir), "--out", str(tmp_path / "bench"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("tfkit: error: ") and message in err[0], err
    assert not (tmp_path / "bench").exists()


def test_read_export_accepts_the_fixture(exported_teacher):
    assert read_export(exported_teacher[0])["artifacts"].keys() == exported_teacher[1]["artifacts"].keys()


def test_measure_stops_at_the_count_or_the_budget():
    calls = []
    timing = measure(calls.append, [1, 2, 3], warmup=2, iterations=7)
    assert len(timing.samples_ms) == 7 and calls[:4] == [1, 2, 3, 1] and len(calls) == 9
    timing = measure(lambda _: None, budget_s=0.02, min_iterations=3)
    stats = timing.stats()
    assert stats["count"] >= 3 and stats["p50"] <= stats["p99"] <= stats["max"] and timing.describe()["budget_s"] == 0.02


def test_flops_and_pareto_front():
    arch = {"num_layers": 2, "hidden_dim": 4, "intermediate_dim": 8}
    # per layer: 2*L*(4*16 + 2*32) + 4*L*L*4; pooler 2*16; head 2*4*2
    assert flops(arch, 3, 2) == 2 * (2 * 3 * 128 + 4 * 9 * 4) + 32 + 16
    assert pareto([(1.0, 0.8), (2.0, 0.9), (3.0, 0.85), (0.5, 0.7)]) == [0, 1, 3]
    assert np.isfinite(flops(arch, 128, 2))
