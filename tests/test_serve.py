"""`tfkit serve` for real: the server in a subprocess on a free loopback port, talked to over HTTP."""

import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tensorflow as tf

from tfkit.cli import main
from tfkit.preprocess import WordPieceTokenizer
from tfkit.runtimes import OnnxRuntime
from tfkit.serve import ServeConfig, choose_threads, length_runs, load
from tfkit.wordpiece import CHECK_FILE, PROBE_TEXTS, FastTokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a good film", "awful boring plot", "", "café naïve CAFÉ", "電影 很好 🎬", "superb " * 40, "zebra\tquantum", "the cast was dull"]


class Server:
    """`tfkit serve` (the real launcher) in a subprocess; the URL comes from its start-up line, its log is kept."""

    def __init__(self, export_dir, *flags):
        self.proc = subprocess.Popen([sys.executable, "-m", "tfkit.cli", "serve", str(export_dir), "--port", "0", "--threads", "1", *flags],
                                     cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
                                     stderr=subprocess.PIPE, text=True)
        self.log, self.url, self.started = [], None, time.perf_counter()
        for line in self.proc.stderr:
            self.log.append(line)
            match = re.search(r" at (http://\S+) - ready", line)
            if match:
                self.url = match.group(1)
                break
        assert self.url, "".join(self.log)
        self.reader = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self.reader.start()
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def post(self, path, body):
        """One request on its own connection (safe from any thread)."""
        return httpx.post(self.url + path, json=body, timeout=30)

    def metric(self, name, **labels) -> float:
        """A sample of /metrics, 0 if absent."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.client.close()


@pytest.fixture(scope="module")
def export_dir(exported_teacher):
    return exported_teacher[0]


@pytest.fixture(scope="module")
def server(export_dir):
    # the default file (int8): a scale per token, so a text's scores do not move with the batch it lands in
    s = Server(export_dir, "--max-batch", "8", "--max-wait-ms", "150", "--max-inputs", "8", "--max-chars", "400",
               "--max-body-bytes", "20000")
    yield s
    s.stop()


def reference(export_dir, texts, file="model_int8.onnx"):
    """The ONNX file's own probabilities, on ids from the training tokenizer (tensorflow-text)."""
    manifest = json.loads((export_dir / "manifest.json").read_text())
    vocab = (export_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = WordPieceTokenizer(vocab, manifest["tokenizer"]["lowercase"], manifest["tokenizer"]["max_length"])
    ids = {k: v.numpy() for k, v in tokenizer.encode(tf.constant(texts)).items()}
    return OnnxRuntime(export_dir / file).predict(ids), manifest


def test_server_has_no_tensorflow_and_reports_its_model(server, export_dir):
    about = server.client.get("/info").json()
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert about["process"]["tensorflow_imported"] is False
    assert about["file"]["format"] == "onnx-int8" and about["file"]["sha256"] == manifest["files"]["model_int8.onnx"]["sha256"]
    assert about["model"]["labels"] == ["neg", "pos"]
    assert about["parity"]["max_abs_diff"] == manifest["artifacts"]["onnx-int8"]["max_abs_diff"]
    check = about["tokenizer"]["check"]
    assert check["agreement"] == 1.0 and check["texts"] == manifest["verification"]["texts"] + len(PROBE_TEXTS)
    assert about["batching"]["max_batch"] == 8 and about["limits"]["max_inputs"] == 8
    assert about["batching"]["threads"] == 1 and about["batching"]["threads_chosen_by"] == "--threads"
    assert server.client.get("/health").json() == {"status": "ok"}
    assert server.client.get("/docs").status_code == 200 and "/predict" in server.client.get("/openapi.json").json()["paths"]


def test_predict_gives_the_onnx_files_own_scores(server, export_dir):
    expected, _ = reference(export_dir, TEXTS)
    got = server.post("/predict", {"inputs": TEXTS})
    assert got.status_code == 200 and len(got.json()) == len(TEXTS)
    for row, p in zip(got.json(), expected):
        assert [x["score"] for x in row] == sorted([x["score"] for x in row], reverse=True)
        assert row[0]["label"] == ["neg", "pos"][int(p.argmax())]
        np.testing.assert_allclose(sorted(x["score"] for x in row), sorted(p), atol=1e-5)
    single = server.post("/predict", {"inputs": TEXTS[0]}).json()  # a string in, one list out
    assert [x["label"] for x in single] == [x["label"] for x in got.json()[0]]
    np.testing.assert_allclose([x["score"] for x in single], [x["score"] for x in got.json()[0]], atol=1e-5)
    raw = server.post("/predict", {"inputs": [TEXTS[0]], "raw_scores": True}).json()[0]
    np.testing.assert_allclose(np.exp([x["score"] for x in raw]), [x["score"] for x in single], atol=1e-5)


def test_open_inference_protocol_v2(server, export_dir):
    c = server.client
    assert c.get("/v2/health/live").json() == {"live": True} and c.get("/v2/health/ready").json() == {"ready": True}
    meta = c.get("/v2/models/teacher").json()
    assert meta["name"] == "teacher" and meta["inputs"] == [{"name": "texts", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    body = {"id": "42", "inputs": [{"name": "texts", "shape": [3, 1], "datatype": "BYTES", "data": [[t] for t in TEXTS[:3]]}]}
    out = server.post("/v2/models/teacher/infer", body).json()
    expected, _ = reference(export_dir, TEXTS[:3])
    assert out["id"] == "42" and out["model_name"] == "teacher"
    probabilities, label = out["outputs"]
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [3, 2]
    np.testing.assert_allclose(np.reshape(probabilities["data"], [3, 2]), expected, atol=1e-5)
    assert label == {"name": "label", "shape": [3], "datatype": "BYTES", "data": [["neg", "pos"][i] for i in expected.argmax(1)]}
    only = server.post("/v2/models/teacher/infer", {**body, "outputs": [{"name": "label"}]}).json()["outputs"]
    assert [o["name"] for o in only] == ["label"]
    assert c.get("/v2/models/other").status_code == 404 and c.get("/v2/models/teacher/ready").json()["ready"] is True


def test_concurrent_clients_share_a_batch_and_get_their_own_answers(server, export_dir):
    texts = [f"{w} film" for w in ["good", "awful", "superb", "dull", "lovely", "boring"]]
    expected, _ = reference(export_dir, texts)
    runs_before, texts_before = server.metric("tfkit_batch_size_count"), server.metric("tfkit_batch_size_sum")
    barrier = threading.Barrier(len(texts))

    def ask(i):
        barrier.wait()
        return server.post("/predict", {"inputs": [texts[i]] * (1 + i % 2)}).json()

    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(ask, range(len(texts))))
    for i, answer in enumerate(answers):
        assert len(answer) == 1 + i % 2
        for row in answer:
            np.testing.assert_allclose(sorted(x["score"] for x in row), sorted(expected[i]), atol=1e-5)
            assert row[0]["label"] == ["neg", "pos"][int(expected[i].argmax())]
    runs = server.metric("tfkit_batch_size_count") - runs_before
    texts_run = server.metric("tfkit_batch_size_sum") - texts_before
    assert texts_run == 9 and runs < 9, f"{runs} ORT runs for 9 texts: no batching"
    assert server.metric("tfkit_batch_size_bucket", le="1.0") < server.metric("tfkit_batch_size_count")


MALFORMED = [
    ("not JSON", {"content": b'{"inputs": ', "headers": {"content-type": "application/json"}}, 422),
    ("wrong type", {"json": {"inputs": 3}}, 422),
    ("list with a number", {"json": {"inputs": ["a", 2]}}, 422),
    ("not an object", {"json": ["a"]}, 422),
    ("raw_scores not a bool", {"json": {"inputs": "a", "raw_scores": "yes"}}, 422),
    ("empty list", {"json": {"inputs": []}}, 422),
    ("too many texts", {"json": {"inputs": ["a"] * 9}}, 413),
    ("text too long", {"json": {"inputs": "a" * 401}}, 413),
    ("body over the cap", {"content": b'{"inputs": "' + b"a" * 30000 + b'"}', "headers": {"content-type": "application/json"}}, 413),
]


def test_malformed_requests_get_their_status_and_the_server_stays_up(server):
    before = {s: server.metric("tfkit_requests_total", route="/predict", status=s) for s in ("413", "422")}
    for name, kwargs, status in MALFORMED:
        response = server.client.post("/predict", **kwargs)
        assert response.status_code == status, (name, response.text)
        body = response.json()
        assert set(body) == {"error", "error_type"} and "Traceback" not in body["error"], name
        assert server.client.get("/health").status_code == 200, name
    chunked = server.client.post("/predict", content=iter([b'{"inputs": "', b"a" * 30000, b'"}']),
                                 headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    v2 = server.post("/v2/models/teacher/infer", {"inputs": [{"name": "texts", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    assert v2.status_code == 422 and "BYTES" in v2.json()["error"]
    assert server.post("/v2/models/teacher/infer", {"inputs": [{"name": "texts", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}).status_code == 422
    counts = {s: sum(1 for _, _, st in MALFORMED if st == int(s)) for s in ("413", "422")}
    counts["413"] += 1
    for status, n in counts.items():
        assert server.metric("tfkit_requests_total", route="/predict", status=status) - before[status] == n, status
    assert server.post("/predict", {"inputs": "still fine"}).status_code == 200


def test_busy_server_answers_429_and_sigterm_drains_in_flight_requests(export_dir):
    s = Server(export_dir, "--max-concurrent", "1", "--max-wait-ms", "600")
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(s.post, "/predict", {"inputs": "good"})
            time.sleep(0.25)
            busy = s.post("/predict", {"inputs": "bad"})
            assert busy.status_code == 429 and busy.json()["error_type"] == "Overloaded"
            assert first.result().status_code == 200
            in_flight = pool.submit(s.post, "/predict", {"inputs": "lovely"})
            time.sleep(0.25)
            s.proc.send_signal(signal.SIGTERM)
            assert in_flight.result().status_code == 200
        assert s.proc.wait(30) == 0
        assert any("stopped serving" in line for line in s.log)
    finally:
        s.stop()


def test_an_internal_failure_is_a_500_with_a_request_id_and_the_details_only_in_the_log(export_dir, caplog):
    from fastapi.testclient import TestClient

    from tfkit.serve_app import create_app

    config = ServeConfig(str(export_dir), max_wait_ms=0)
    model = load(config)
    model.runtime.predict = lambda inputs: (_ for _ in ()).throw(RuntimeError("secret detail of the failure"))
    with caplog.at_level(logging.ERROR, logger="tfkit.serve"), TestClient(create_app(model, config), raise_server_exceptions=False) as client:
        response = client.post("/predict", json={"inputs": "a good film"})
        assert response.status_code == 500
        body = response.json()
        assert body["error_type"] == "Backend" and body["request_id"] == response.headers["x-request-id"]
        assert "secret" not in response.text
        assert client.get("/health").status_code == 200
    assert body["request_id"] in caplog.text and "secret detail of the failure" in caplog.text


def test_the_tokenizer_without_tensorflow_gives_the_training_ids(export_dir, tmp_path):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    fast = FastTokenizer.from_export(export_dir, manifest["tokenizer"])
    training = WordPieceTokenizer((export_dir / "vocab.txt").read_text().splitlines(), True, manifest["tokenizer"]["max_length"])
    texts = TEXTS + PROBE_TEXTS + ["wait… ﬁne ﬂat", "a\x00b\x07c", "ÀÉÎÕÜ ñ ç"]
    ours, theirs = fast.encode(texts), {k: v.numpy() for k, v in training.encode(tf.constant(texts)).items()}
    np.testing.assert_array_equal(ours["token_ids"], theirs["token_ids"])
    np.testing.assert_array_equal(ours["padding_mask"], theirs["padding_mask"])
    # a check file that disagrees is reported, and by default refuses to serve
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    rows = (copy / CHECK_FILE).read_text().splitlines()
    first = json.loads(rows[0])
    rows[0] = json.dumps({**first, "ids": first["ids"][:-1] + [1, first["ids"][-1]]})
    (copy / CHECK_FILE).write_text("\n".join(rows) + "\n")
    model = load(ServeConfig(str(copy), allow_tokenizer_mismatch=True))
    assert model.key == "onnx-int8", "the default is the int8 file when it passed its gate"
    check = model.tokenizer_check
    assert check["mismatched"] == 1 and check["mismatches"][0]["text"] == first["text"] and check["agreement"] < 1


def test_threads_are_chosen_by_a_start_up_trial(export_dir, monkeypatch):
    import tfkit.serve

    assert choose_threads({1: 100.0, 2: 109.0}) == 1 and choose_threads({1: 100.0, 2: 111.0}) == 2
    assert choose_threads({1: 100.0, 2: 90.0}) == 1
    monkeypatch.setattr(tfkit.serve, "cores", lambda: 2)
    model = load(ServeConfig(str(export_dir)))
    trial = model.threads
    assert set(trial["texts_per_s"]) == {"1", "2"} and all(v > 0 for v in trial["texts_per_s"].values())
    assert trial["threads"] == choose_threads({int(k): v for k, v in trial["texts_per_s"].items()})
    assert model.runtime.options.intra_op_num_threads == trial["threads"] and "start-up trial" in trial["chosen_by"]
    monkeypatch.setattr(tfkit.serve, "cores", lambda: 1)
    assert load(ServeConfig(str(export_dir))).threads == {"threads": 1, "chosen_by": "one core"}
    fixed = load(ServeConfig(str(export_dir), threads=2))
    assert fixed.threads == {"threads": 2, "chosen_by": "--threads"} and fixed.runtime.options.intra_op_num_threads == 2


def test_length_runs_group_similar_lengths():
    runs = length_runs([30, 5, 6, 31, 5, 29, 7, 60], max_batch=3)
    assert sorted(i for run in runs for i in run) == list(range(8))
    assert [sorted(r.tolist()) for r in runs] == [[1, 2, 4], [6], [0, 3, 5], [7]]
    assert all(len(r) <= 3 for r in length_runs(list(range(1, 20)), 3))


def _broken_exports(export_dir, root):
    """Export copies a server must refuse, each with a phrase of the expected message."""
    cases = {"missing": (root / "nowhere", "not found"), "empty": (root / "empty", "not a tfkit export")}
    (root / "empty").mkdir()
    no_onnx = root / "no_onnx"
    shutil.copytree(export_dir, no_onnx)
    manifest = json.loads((no_onnx / "manifest.json").read_text())
    manifest["artifacts"] = {k: v for k, v in manifest["artifacts"].items() if not v["file"].endswith(".onnx")}
    (no_onnx / "manifest.json").write_text(json.dumps(manifest))
    cases["no onnx"] = (no_onnx, "no verified ONNX file")
    changed = root / "changed"
    shutil.copytree(export_dir, changed)
    with open(changed / "model_int8.onnx", "ab") as f:
        f.write(b"\0")
    cases["changed file"] = (changed, "sha256")
    old = root / "old"
    shutil.copytree(export_dir, old)
    (old / CHECK_FILE).unlink()
    cases["no check file"] = (old, "tokenizer check failed")
    return cases


def test_bad_input_is_one_line_and_exit_2(export_dir, tmp_path, capsys, monkeypatch):
    import tfkit.serve

    def refuse(*_):
        raise AssertionError("bad input got as far as listening")

    monkeypatch.setattr(tfkit.serve, "bind", refuse)
    runs = [(["serve", str(path)], phrase) for path, phrase in _broken_exports(export_dir, tmp_path).values()]
    runs += [(["serve", str(export_dir), "--port", "70000"], "out of range"),
             (["serve", str(export_dir), "--format", "tflite-int8"], "unknown format"),
             (["serve", str(export_dir), "--model", "model_int8.tflite"], "not a verified ONNX file"),
             (["loadtest", "http://192.0.2.1:8080"], "not a loopback address"),
             (["loadtest", "http://example.com/"], "not a loopback address")]
    for argv, phrase in runs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("tfkit: error: ") and "\n" not in err and phrase in err, (argv, err)


def test_loadtest_reports_throughput_latency_and_the_in_process_ratio(server, tmp_path, capsys):
    out = tmp_path / "loadtest.json"
    assert main(["loadtest", server.url, "--requests", "24", "--concurrency", "4", "--batch", "2",
                 "--in-process-seconds", "0.4", "--json", str(out)]) == 0
    assert "HTTP / in-process throughput" in capsys.readouterr().out
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert run["statuses"] == {"200": 24} and run["server_5xx"] == 0 and run["texts"] == 48 and not run["timed_out"]
    assert 0 < run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"] and run["server_rss_mb"] > 0
    assert "2" in run["in_process"] and run["in_process"]["2"]["texts_per_s"] > 0 and run["ratio_same_batch"] > 0
    assert run["server_cpu_ms_per_text"] > 0 and run["client_cpu_ms_per_request"] > 0 and run["server_mean_batch"] >= 1
