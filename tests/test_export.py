"""Export end to end on a tiny trained model: every format run by its real runtime, the gate, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfkit.classifier import Classifier
from tfkit.cli import main
from tfkit.data import Examples
from tfkit.export import float32_model
from tfkit.formats import DEFAULT_FORMATS, FORMATS, parse_formats
from tfkit.runtimes import LiteRT, OnnxRuntime
from tfkit.verify import NonFiniteError, ParityError, Reference, Thresholds, compare, verify

ROOT = Path(__file__).resolve().parents[1]
HARD_TEXTS = ["a good film", "", "   ", "café naïve CAFÉ", "電影 很好 🎬", "awful " * 40, "GOOD. Superb!", "zebra\tquantum\n"]


@pytest.fixture(scope="module")
def model_dir(trained_teacher):
    return trained_teacher


@pytest.fixture(scope="module")
def exported(exported_teacher):
    return exported_teacher


@pytest.fixture(scope="module")
def classifier(model_dir):
    return Classifier.load(model_dir)


def test_every_format_is_written_verified_and_listed(exported, classifier):
    out, manifest = exported
    assert list(manifest["artifacts"]) == list(FORMATS) and manifest["failed"] == {}
    assert sorted(manifest["files"]) == sorted([f.file for f in FORMATS.values()] + ["vocab.txt", "tokenizer_check.jsonl"])
    assert sorted(p.name for p in out.iterdir()) == sorted([*manifest["files"], "manifest.json"])
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not list(out.parent.glob(".exported*")), "temporary directories left behind"
    import hashlib

    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["model"]["labels"] == ["neg", "pos"] and manifest["model"]["max_length"] == 16
    assert manifest["tokenizer"]["lowercase"] is True and manifest["verification"]["texts"] == 24
    assert set(manifest["tools"]) >= {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert",
                                      "tensorflow-text", "onnxruntime-extensions"}
    for key, a in manifest["artifacts"].items():
        assert a["texts"] == 24 and np.isfinite(a["max_abs_diff"])
        if FORMATS[key].precision == "fp32":
            assert a["max_abs_diff"] <= 1e-4 and a["label_agreement"] == 1.0, key
        assert a["label_agreement"] >= 0.99 and abs(a["accuracy"] - manifest["verification"]["keras_accuracy"]) <= 0.01, key
        if FORMATS[key].runtime == "mediapipe":  # fixed [1, max length] inputs; tests/test_mediapipe.py checks the rest
            assert a["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [1, 2]}], key
            continue
        assert a["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [None, 2]}], key
        if key == "onnx-text":  # its own tokenizer: on this vocabulary it splits every test text as tf-text does
            assert a["tokenization_agreement"] == 1.0 and a["tokenization_mismatches"] == []
        if FORMATS[key].text:
            assert a["inputs"] == [{"name": "texts", "dtype": "string", "shape": [None]}], key
        else:  # dynamic batch and sequence, and the runtime really ran lengths 8 and max
            assert a["inputs"] == [{"name": n, "dtype": "int32", "shape": [None, None]} for n in ("padding_mask", "token_ids")], key
            assert {"batch1_length8", "batch1_length16"} <= set(a["latency_ms"]), key


def test_labels_and_settings_are_in_every_file(exported):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from classify_tflite import read_metadata
    finally:
        sys.path.pop(0)
    out, manifest = exported
    for key, fmt in FORMATS.items():
        path = out / fmt.file
        meta = ({n: read_metadata(str(path), n) for n in ("labels", "tfkit")} if fmt.file.endswith(".tflite")
                else OnnxRuntime(path, fmt.text).metadata())
        assert meta["labels"] == "neg\npos", key
        info = json.loads(meta["tfkit"])
        assert info["format"] == key and info["labels"] == ["neg", "pos"] and info["tokenizer"]["max_length"] == 16


def test_string_in_models_match_keras_on_hard_text(exported, classifier):
    """Empty, whitespace-only, accented, CJK/emoji and over-length text, in one batch and one at a time."""
    out, _ = exported
    keras = classifier.predict_proba(HARD_TEXTS)
    for fmt, runtime, tolerance in (("tflite-text", LiteRT, 1e-4), ("onnx-text", OnnxRuntime, 1e-4), ("tflite-text-int8", LiteRT, 5e-2)):
        model = runtime(out / FORMATS[fmt].file, text=True)
        batch = model.predict(HARD_TEXTS)
        single = np.concatenate([model.predict([t]) for t in HARD_TEXTS])
        assert np.abs(batch - keras).max() <= tolerance, fmt
        assert np.abs(single - keras).max() <= tolerance, fmt


def test_id_models_take_any_batch_and_length(exported):
    out, _ = exported
    for fmt in ("tflite-fp32", "onnx"):
        model = (LiteRT if FORMATS[fmt].runtime == "tflite" else OnnxRuntime)(out / FORMATS[fmt].file)
        for batch, length in ((1, 3), (5, 8), (2, 16)):
            ids = np.full([batch, length], 5, np.int32)
            p = model.predict({"token_ids": ids, "padding_mask": np.ones_like(ids)})
            assert p.shape == (batch, 2) and np.allclose(p.sum(1), 1, atol=1e-5), (fmt, batch, length)


@pytest.mark.parametrize("script, file", [("classify_tflite.py", "model_text.tflite"), ("classify_onnx.py", "model_text.onnx")])
def test_example_scripts_classify_like_keras(exported, classifier, script, file):
    out, _ = exported
    texts = ["a good film", "awful and dull"]
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), str(out / file), *texts],
                          capture_output=True, text=True, cwd="/")  # cwd: tfkit must not be importable
    assert done.returncode == 0, done.stderr[-800:]
    labels = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert labels == [classifier.labels[i] for i in classifier.predict_proba(texts).argmax(1)] == ["pos", "neg"]


def test_cli_exports_selected_formats_with_a_summary(model_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", str(model_dir), "--out", str(out), "--formats", "tflite-int8, tflite-fp32"]) == 0
    table = capsys.readouterr().out
    assert "tflite-fp32" in table and "tflite-int8" in table and "max|dp|" in table
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["artifacts"]) == ["tflite-fp32", "tflite-int8"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model_fp32.tflite", "model_int8.tflite", "tokenizer_check.jsonl", "vocab.txt"]


def test_gate_removes_a_file_whose_converter_dropped_the_weights(model_dir, tmp_path, monkeypatch, capsys):
    """A converter that silently loses the weights (FIELD-NOTES: TFLiteConverter.from_keras_model on a
    Keras 3 model wrote a file whose outputs were all NaN) must be caught by the gate, not shipped."""
    import keras

    from tfkit.export import Builder

    real = Builder.tflite

    def broken(self, fmt):
        if fmt.quantize != "none":
            return real(self, fmt)
        lost = keras.models.clone_model(self.classifier.model)
        lost.set_weights([np.full_like(w, np.nan) for w in self.classifier.model.get_weights()])
        return real(Builder(Classifier(lost, self.classifier.tokenizer, self.classifier.config), self.scratch / "lost", []), fmt)

    monkeypatch.setattr(Builder, "tflite", broken)
    out = tmp_path / "gated"
    code = main(["export", str(model_dir), "--out", str(out), "--formats", "tflite-fp32,tflite-int8"])
    captured = capsys.readouterr()
    assert code == 2
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("tfkit: error: 1 of 2 format(s) failed") and "model_fp32.tflite: " in error and "NaN/Inf" in error
    assert "FAILED" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["artifacts"]) == ["tflite-int8"] and list(manifest["failed"]) == ["tflite-fp32"]
    assert not (out / "model_fp32.tflite").exists() and (out / "model_int8.tflite").exists()
    assert "model_fp32.tflite" not in manifest["files"]


def test_gate_names_file_metric_threshold_and_value(exported, classifier, tmp_path):
    """A model that is slightly off (perturbed weights) fails the fp32 gate with a typed error."""
    out, _ = exported
    test = _test_examples(classifier)
    reference = Reference.build(classifier, test)
    assert verify(out / "model_fp32.tflite", "tflite", False, "fp32", reference)["label_agreement"] == 1.0

    import keras

    from tfkit.export import Builder

    model = keras.models.clone_model(classifier.model)
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in classifier.model.get_weights()])
    perturbed = Classifier(model, classifier.tokenizer, classifier.config)
    path = tmp_path / "model_fp32.tflite"
    path.write_bytes(Builder(perturbed, tmp_path, test.texts).tflite(FORMATS["tflite-fp32"]))
    with pytest.raises(ParityError) as caught:
        verify(path, "tflite", False, "fp32", reference)
    e = caught.value
    assert e.metric == "max abs probability difference" and e.threshold == 1e-4 and e.value > 1e-4
    assert str(e).startswith(f"model_fp32.tflite: max abs probability difference {e.value:.4g} > threshold 0.0001")


def test_onnx_int8_quantizes_every_projection_and_scores_a_text_the_same_in_any_batch(exported, classifier):
    """Every weight MatMul is int8 (Q, K and V quantize their input once), and a scale per token means a text's scores do not depend on its batch."""
    import onnx
    import onnxruntime as ort

    from tfkit import onnx_graph

    out, _ = exported
    fp32, int8 = onnx_graph.gemm_as_matmul(onnx.load(out / "model.onnx")), onnx.load(out / "model_int8.onnx")
    constant = lambda m: {i.name for i in m.graph.initializer}
    projections = [n for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in constant(fp32)]
    assert len(projections) == 2 * 6 + 2  # 2 layers x (Q, K, V, attention output, FFN in, FFN out); pooler, logits
    assert not [n.name for n in int8.graph.node if n.op_type == "MatMul" and n.input[1] in constant(int8)]
    int8_matmuls = [n for n in int8.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(int8_matmuls) == len(projections)
    weight = {i.name: i for i in int8.graph.initializer}
    assert all(weight[n.input[1]].data_type == onnx.TensorProto.INT8 for n in int8_matmuls)
    # each input quantized once: a layer's Q, K and V read one
    assert sum(n.op_type == "QuantizeLinear" for n in int8.graph.node) == len({n.input[0] for n in projections}) == 2 * 4 + 2

    session = ort.InferenceSession(str(out / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    short = {k: v.numpy() for k, v in classifier.tokenizer.encode(["a good film"]).items()}
    batch = {k: v.numpy() for k, v in classifier.tokenizer.encode(["a good film", "awful " * 40, "GOOD. Superb!"]).items()}
    alone, together = session.run(["probabilities"], short)[0], session.run(["probabilities"], batch)[0]
    assert batch["token_ids"].shape[1] > short["token_ids"].shape[1]  # padded in the batch
    np.testing.assert_allclose(together[0], alone[0], atol=1e-6)


def _tf2onnx_layer_norm_and_gelu():
    """A graph in tf2onnx's spelling: Keras LayerNormalization as moments, rsqrt, scale and shift; TF's exact GELU with Erfc."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    const = {"gamma": rng.normal(size=8), "beta": rng.normal(size=8), "eps": 1e-12, "half": 0.5, "inv_sqrt2": 2 ** -0.5}
    n = helper.make_node
    nodes = [n("GlobalAveragePool", ["x"], ["mean"]), n("Neg", ["mean"], ["neg"]), n("Sub", ["x", "mean"], ["d"]),
             n("Mul", ["d", "d"], ["sq"]), n("GlobalAveragePool", ["sq"], ["var"]), n("Add", ["var", "eps"], ["ve"]),
             n("Sqrt", ["ve"], ["root"]), n("Reciprocal", ["root"], ["inv"]), n("Mul", ["inv", "gamma"], ["scale"]),
             n("Mul", ["x", "scale"], ["a"]), n("Mul", ["neg", "scale"], ["b"]), n("Add", ["b", "beta"], ["shift"]),
             n("Add", ["a", "shift"], ["normed"]),
             n("Mul", ["half", "normed"], ["g_half"]), n("Neg", ["normed"], ["g_neg"]), n("Mul", ["g_neg", "inv_sqrt2"], ["g_arg"]),
             n("Erfc", ["g_arg"], ["g_erfc"]), n("Mul", ["g_half", "g_erfc"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 8])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in const.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_graph_fuses_layer_norms_and_rewrites_gelu_for_onnx_runtime(tmp_path):
    import collections

    import onnx
    import onnxruntime as ort
    from scipy.special import erf

    from tfkit import onnx_graph

    model = onnx_graph.erfc_as_erf(_tf2onnx_layer_norm_and_gelu())
    assert onnx_graph.fuse_layer_norms(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops == {"LayerNormalization": 1, "Mul": 2, "Div": 1, "Erf": 1, "Add": 1}, ops
    assert {i.name for i in model.graph.initializer} >= {"half"} and "inv_sqrt2" not in {i.name for i in model.graph.initializer}
    x = np.random.default_rng(1).normal(size=[2, 5, 8]).astype(np.float32) * 3
    gamma, beta = (numpy_helper_array(_tf2onnx_layer_norm_and_gelu(), k) for k in ("gamma", "beta"))
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12) * gamma + beta
    expected = 0.5 * normed * (1 + erf(normed / np.sqrt(2)))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    got = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    fused = collections.Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    assert fused["Gelu"] == 1 and fused["Erf"] == 0, "ONNX Runtime's session optimizer fuses the rewritten GELU"
    # a LayerNorm whose intermediate is used elsewhere is not the pattern: left alone
    other = _tf2onnx_layer_norm_and_gelu()
    other.graph.output.append(onnx.helper.make_tensor_value_info("var", onnx.TensorProto.FLOAT, None))
    assert onnx_graph.fuse_layer_norms(other) == 0 and len(other.graph.node) == 18


def numpy_helper_array(model, name):
    from onnx import numpy_helper

    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def test_default_formats_leave_out_full_integer_int8():
    assert parse_formats(None) == DEFAULT_FORMATS and "tflite-int8-full" not in DEFAULT_FORMATS
    assert parse_formats("all") == list(FORMATS)
    assert parse_formats("tflite-int8-full") == ["tflite-int8-full"]


def test_onnx_text_gate_reads_the_files_own_tokenizer(exported, classifier):
    """onnxruntime-extensions keeps '…' and turns 'ž' into [UNK] where tf-text makes '...' and 'z'."""
    out, _ = exported
    diverging = ["a good film…", "žižek was dull"]
    texts = diverging + [f"the film was {w}" for w in ("good", "bad", "superb", "awful", "fine", "poor")] * 4
    examples = Examples(texts, np.array([1, 0] + [1, 0] * 12), classifier.labels)
    reference = Reference.build(classifier, examples)
    path = out / FORMATS["onnx-text"].file
    assert OnnxRuntime(path, text=True).token_ids(["a good film"]).tolist() == [reference.encode(["a good film"])["token_ids"][0].tolist()]
    with pytest.raises(ParityError, match=r"model_text.onnx: tokenization agreement with tf-text 0\.9231 < threshold 0\.99"):
        verify(path, "onnx", True, "ort-tokenizer", reference)
    loose = Thresholds(max_abs_diff=1e-4, tokenization=0.9)
    import tfkit.verify

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(tfkit.verify.THRESHOLDS, "ort-tokenizer", loose)
        result = verify(path, "onnx", True, "ort-tokenizer", reference)
    assert result["tokenization_mismatches"] == diverging and result["max_abs_diff"] <= 1e-4  # parity on the rest


def test_compare_thresholds(classifier):
    test = _test_examples(classifier)
    reference = Reference.build(classifier, test)
    n = len(test.texts)
    flipped = reference.probabilities.copy()
    flipped[0] = flipped[0][::-1]  # one label of 24 changes: agreement 95.8% < 99%
    with pytest.raises(ParityError, match=r"label agreement 0\.9583 < threshold 0\.99 \(vs the Keras model on 24"):
        compare("m.onnx", flipped, reference, Thresholds(agreement=0.99))
    assert compare("m.onnx", flipped, reference, Thresholds(max_abs_diff=1.0))["label_agreement"] == (n - 1) / n
    broken = reference.probabilities.copy()
    broken[3, 1] = np.nan
    with pytest.raises(NonFiniteError, match="m.tflite: 1 NaN/Inf"):
        compare("m.tflite", broken, reference, Thresholds())


def test_float32_copy_of_a_mixed_precision_model(tiny_checkpoint):
    from tfkit.backbone import load_backbone
    from tfkit.classifier import build_classifier

    backbone, _ = load_backbone(tiny_checkpoint, 16, dtype="mixed_bfloat16")
    mixed = build_classifier(backbone, 2)
    copy = float32_model(mixed)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), mixed.get_weights()))
    backbone32, _ = load_backbone(tiny_checkpoint, 16, dtype="float32")
    reference = build_classifier(backbone32, 2)
    reference.set_weights(mixed.get_weights())
    ids = np.array([[2, 7, 9, 3]], np.int32)
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    np.testing.assert_allclose(copy(x).numpy(), reference(x).numpy(), atol=1e-6)
    assert float32_model(reference) is reference


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "not a tfkit model directory"),
    (["{model}", "--formats", "tflite-fp32,coreml"], "unknown format 'coreml'"),
    (["{model}", "--out", "{file}/out"], "cannot write to"),
])
def test_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)  # the default output directory would be ./export/<name>
    (tmp_path / "file").write_text("not a directory")
    paths = {"missing": tmp_path / "no-model", "model": model_dir, "file": tmp_path / "file"}
    code = main(["export", *[a.format(**paths) for a in args]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("tfkit: error: ") and message in err[-1], err
    assert not (tmp_path / "export").exists()


def _test_examples(classifier):
    return classifier.heldout()[1]


@pytest.fixture(scope="module")
def head_tail(model_dir, tmp_path_factory):
    """(export dir, classifier) of the tiny teacher as if trained with head+tail truncation, string-in formats only."""
    import shutil

    from tfkit.export import export

    root = tmp_path_factory.mktemp("head-tail")
    shutil.copytree(model_dir, root / "teacher")
    config = json.loads((root / "teacher" / "config.json").read_text())
    (root / "teacher" / "config.json").write_text(json.dumps({**config, "tokenizer": {**config["tokenizer"], "truncation": "head+tail"}}))
    export(root / "teacher", root / "export", "tflite-text,onnx-text,tflite-fp32", progress=False)
    return root / "export", Classifier.load(root / "teacher")


def test_head_tail_models_keep_a_long_texts_end_in_every_tokenizer(head_tail):
    """The training tokenizer, both string-in files and the server's tokenizer keep the same start and end."""
    import tensorflow as tf

    from tfkit.preprocess import WordPieceTokenizer
    from tfkit.wordpiece import FastTokenizer

    out, classifier = head_tail
    tokenizer, manifest = classifier.tokenizer, json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["truncation"] == "head+tail" and manifest["tokenizer"]["head"] == tokenizer.head
    long_texts = ["good " * 30 + "awful " * 30, "awful " * 30 + "good " * 30, "good film " * 3] + HARD_TEXTS
    ids = tokenizer.encode(tf.constant(long_texts))["token_ids"].numpy()
    head_only = WordPieceTokenizer(tokenizer.vocab, True, tokenizer.max_length).encode(tf.constant(long_texts))["token_ids"].numpy()
    assert not np.array_equal(ids[:2], head_only[:2]) and np.array_equal(ids[2], head_only[2])  # only long texts differ
    np.testing.assert_array_equal(FastTokenizer.from_export(out, manifest["tokenizer"]).encode(long_texts)["token_ids"], ids)
    np.testing.assert_array_equal(OnnxRuntime(out / "model_text.onnx", text=True).token_ids(long_texts), ids)
    keras = classifier.predict_proba(long_texts)
    for file, runtime in (("model_text.tflite", LiteRT), ("model_text.onnx", OnnxRuntime)):
        assert np.abs(runtime(out / file, text=True).predict(long_texts) - keras).max() <= 1e-4, file


def test_mediapipe_is_left_out_for_a_head_tail_model_and_refused_when_named(caplog):
    from tfkit.errors import TfkitError
    from tfkit.formats import for_model

    keys = ["tflite-int8", "tflite-mediapipe"]
    assert for_model(keys, None, True, "head") == keys
    with caplog.at_level("INFO", logger="tfkit"):
        assert for_model(keys, None, True, "head+tail") == ["tflite-int8"]
    assert "leaving out tflite-mediapipe: MediaPipe's BertTokenizer keeps only the start" in caplog.text
    with pytest.raises(TfkitError, match="tflite-mediapipe: .* trained on head\\+tail truncation"):
        for_model(keys, "tflite-mediapipe", True, "head+tail")
    with pytest.raises(TfkitError, match="always lower-cases"):
        for_model(keys, ["tflite-int8", "tflite-mediapipe"], False, "head")
