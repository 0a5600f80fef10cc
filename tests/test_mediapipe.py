"""tflite-mediapipe end to end on the tiny trained model: MediaPipe's own TextClassifier runs the file alone."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfkit import mediapipe_export
from tfkit.classifier import Classifier
from tfkit.cli import main
from tfkit.errors import TfkitError
from tfkit.export import Builder, export
from tfkit.formats import DEFAULT_FORMATS, FORMATS, Format, parse_formats
from tfkit.runtimes import LiteRT, MediaPipe
from tfkit.verify import ParityError, Reference, VerificationError, verify

# every test but the missing-extra one runs MediaPipe (the `test` extra installs it)
needs_mediapipe = pytest.mark.skipif(not mediapipe_export.available(), reason=f"MediaPipe is not installed: {mediapipe_export.EXTRA}")

ROOT = Path(__file__).resolve().parents[1]
FILE = FORMATS[mediapipe_export.FORMAT].file
ASCII_TEXTS = ["a good film", "awful and dull", "GOOD. Superb!", "the plot was poor", "", "zebra\tquantum\n", "awful " * 40]


@pytest.fixture(scope="module")
def exported(trained_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("mediapipe") / "export"
    return out, export(trained_teacher, out, mediapipe_export.FORMAT, progress=False)


@pytest.fixture(scope="module")
def classifier(trained_teacher):
    return Classifier.load(trained_teacher)


@needs_mediapipe
def test_text_classifier_runs_the_file_alone_like_keras(exported, classifier, tmp_path):
    """Only the .tflite, in an empty directory: MediaPipe tokenizes, names the classes, scores like Keras."""
    from mediapipe.tasks.python.text import text_classifier

    out, manifest = exported
    alone = tmp_path / "app" / FILE
    alone.parent.mkdir()
    shutil.copy(out / FILE, alone)
    keras = classifier.predict_proba(ASCII_TEXTS)
    with text_classifier.TextClassifier.create_from_model_path(str(alone)) as mp:
        for text, expected in zip(ASCII_TEXTS, keras):
            categories = mp.classify(text).classifications[0].categories
            assert sorted(c.category_name for c in categories) == ["neg", "pos"]
            scores = {c.category_name: c.score for c in categories}
            assert categories[0].category_name == classifier.labels[int(expected.argmax())], text
            assert np.abs([scores[n] - p for n, p in zip(classifier.labels, expected)]).max() <= 0.02, text  # int8
    a = manifest["artifacts"][mediapipe_export.FORMAT]
    assert manifest["failed"] == {} and a["runtime"] == "mediapipe" and a["gate"] == "int8" and a["quantization"] == "dynamic-int8"
    assert a["label_agreement"] >= 0.99 and abs(a["accuracy"] - manifest["verification"]["keras_accuracy"]) <= 0.01
    assert a["inputs"] == [{"name": n, "dtype": "int32", "shape": [1, 16]} for n in ("input_mask", "input_type_ids", "input_word_ids")]
    assert a["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [1, 2]}]
    # the tiny test split has "café": MediaPipe keeps the accent that tf-text strips, and the gate says so
    assert 0 < a["tokenization_agreement"] < 1 and all("café" in t for t in a["tokenization_mismatches"])
    assert a["latency_ms"]["batch1_natural"] > 0


@needs_mediapipe
def test_metadata_carries_vocabulary_tokenizer_and_labels(exported, classifier):
    out, _ = exported
    data = (out / FILE).read_bytes()
    files = mediapipe_export.read_files(data)
    assert files["vocab.txt"].decode().splitlines() == classifier.tokenizer.vocab
    assert files["labels.txt"].decode().splitlines() == classifier.labels == ["neg", "pos"]

    md = mediapipe_export.metadata_schema()
    metadata = mediapipe_export.read_metadata(data)
    assert metadata.minParserVersion == b"1.1.0" and metadata.name == b"TextClassifier"
    graph = metadata.subgraphMetadata[0]
    (tokenizer,) = graph.inputProcessUnits
    assert tokenizer.optionsType == md.ProcessUnitOptions.BertTokenizerOptions
    (vocab,) = tokenizer.options.vocabFile
    assert (vocab.name, vocab.type) == (b"vocab.txt", md.AssociatedFileType.VOCABULARY)
    names = [n[len("serving_default_"):-2] for n in mediapipe_export.input_names(data)]  # metadata follows tensor order
    assert [t.name.decode() for t in graph.inputTensorMetadata] == [mediapipe_export.INPUTS[n] for n in names]
    (labels,) = graph.outputTensorMetadata[0].associatedFiles
    assert (labels.name, labels.type) == (b"labels.txt", md.AssociatedFileType.TENSOR_AXIS_LABELS)

    sys.path.insert(0, str(ROOT / "examples"))  # tfkit's own entries are there too
    try:
        from classify_tflite import read_metadata
    finally:
        sys.path.pop(0)
    info = json.loads(read_metadata(str(out / FILE), "tfkit"))
    assert info["format"] == mediapipe_export.FORMAT and info["tokenizer"]["lowercase"] is True
    assert info["inputs"] == ["input_word_ids", "input_mask", "input_type_ids"]


@needs_mediapipe
def test_mediapipe_token_ids_are_read_from_its_own_tokenizer(exported, classifier):
    out, _ = exported
    model = MediaPipe(out / FILE)
    ids = model.token_ids(["a good film", "GOOD. Superb!", "awful " * 40, "café"])
    tokenizer = classifier.tokenizer
    encode = lambda t: [int(i) for i, m in zip(*_padded(classifier, t)[:2]) if m]
    assert ids[0].tolist() == encode("a good film") and ids[1].tolist() == encode("GOOD. Superb!")
    assert ids[2].tolist() == encode("awful " * 40) and len(ids[2]) == tokenizer.max_length  # truncated alike, [SEP] last
    assert ids[3].tolist() != encode("café") and ids[3][0] == tokenizer.cls_id  # MediaPipe keeps the accent
    model.close()


@needs_mediapipe
def test_mediapipe_starts_without_native_noise_on_stderr(exported):
    """A fresh process: MediaPipe's graph start logs glog's pre-init notice, a feedback-manager warning and XNNPACK's line."""
    out, _ = exported
    script = ("import sys; from tfkit import quiet; quiet.start_tensorflow(); from tfkit.runtimes import MediaPipe; "
              "m = MediaPipe(sys.argv[1]); m.predict(['a good film']); m.token_ids(['a good film']); m.close()")
    done = subprocess.run([sys.executable, "-c", script, str(out / FILE)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stderr == ""


@needs_mediapipe
def test_fixed_length_float32_file_matches_keras_to_float32_precision(trained_teacher, classifier, tmp_path):
    """Padding to [1, L] changes nothing but float noise: the float32 variant meets the fp32 gate's 1e-4."""
    builder = Builder(classifier, tmp_path, [])
    fp32 = Format("model_mediapipe_fp32.tflite", "mediapipe", "none", True, "float32 variant")
    path = tmp_path / fp32.file
    path.write_bytes(builder.mediapipe(fp32, builder.metadata(mediapipe_export.FORMAT)))
    model = MediaPipe(path)
    probabilities = model.predict(ASCII_TEXTS)
    assert np.abs(probabilities - classifier.predict_proba(ASCII_TEXTS)).max() <= 1e-4
    ids = {k: v[None, :] for k, v in zip(("input_word_ids", "input_mask", "input_type_ids"), _padded(classifier, "a good film"))}
    plain = LiteRT(path, signature=mediapipe_export.SIGNATURE).runner(**ids)["probabilities"]  # still a plain .tflite
    assert np.abs(plain - probabilities[:1]).max() <= 1e-5
    model.close()


@needs_mediapipe
def test_gate_refuses_broken_files(exported, classifier, tmp_path):
    out, _ = exported
    test = classifier.splits().test
    reference = Reference.build(classifier, test)
    assert verify(out / FILE, "mediapipe", True, "int8", reference)["label_agreement"] >= 0.99

    import keras

    flipped = keras.models.clone_model(classifier.model)  # the logits negated: every label swaps
    flipped.set_weights([-w if i >= len(classifier.model.get_weights()) - 2 else w
                         for i, w in enumerate(classifier.model.get_weights())])
    builder = Builder(Classifier(flipped, classifier.tokenizer, classifier.config), tmp_path, [])
    path = tmp_path / FILE
    path.write_bytes(builder.mediapipe(FORMATS[mediapipe_export.FORMAT], builder.metadata(mediapipe_export.FORMAT)))
    with pytest.raises(ParityError, match=r"model_mediapipe.tflite: label agreement 0 < threshold 0\.99"):
        verify(path, "mediapipe", True, "int8", reference)

    data = (out / FILE).read_bytes()
    without_files = tmp_path / "no_vocab.tflite"  # the flatbuffer only: metadata names a vocabulary that is not there
    without_files.write_bytes(data[: _zip_start(data)])
    with pytest.raises(VerificationError, match=r"no_vocab.tflite: MediaPipe.s TextClassifier cannot load it: No associated file with name: labels.txt"):
        verify(without_files, "mediapipe", True, "int8", reference)


@needs_mediapipe
def test_a_cased_model_is_refused_with_the_reason(exported):
    out, _ = exported
    with pytest.raises(TfkitError, match="always lower-cases"):
        mediapipe_export.model_metadata((out / FILE).read_bytes(), ["neg", "pos"], False, "cased")


def test_missing_mediapipe_is_one_line_and_exit_2_and_the_rest_still_exports(trained_teacher, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # `import mediapipe` fails as if it were not installed (or it is not)
    assert not mediapipe_export.available()
    monkeypatch.setattr(Classifier, "load", lambda *a: pytest.fail("the model was loaded before the check"))
    code = main(["export", str(trained_teacher), "--out", str(tmp_path / "named"), "--formats", f"tflite-int8,{mediapipe_export.FORMAT}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ['tfkit: error: format tflite-mediapipe needs MediaPipe, which is not installed: pip install "tfkit[mediapipe]"']
    assert not (tmp_path / "named").exists()

    assert parse_formats(None) == [k for k in DEFAULT_FORMATS if k != mediapipe_export.FORMAT]
    assert mediapipe_export.FORMAT in DEFAULT_FORMATS and mediapipe_export.FORMAT not in parse_formats("all")
    monkeypatch.undo()  # the default set, shortened to keep the test fast, with MediaPipe missing again
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    monkeypatch.setattr("tfkit.formats.DEFAULT_FORMATS", ["tflite-int8", mediapipe_export.FORMAT])
    with caplog.at_level(logging.INFO, logger="tfkit"):
        assert main(["export", str(trained_teacher), "--out", str(tmp_path / "default")]) == 0
    left_out = [r.message for r in caplog.records if "leaving out" in r.message]
    assert left_out == ['leaving out tflite-mediapipe: MediaPipe is not installed (pip install "tfkit[mediapipe]")']
    manifest = json.loads((tmp_path / "default" / "manifest.json").read_text())
    assert list(manifest["artifacts"]) == ["tflite-int8"] and manifest["failed"] == {}


@needs_mediapipe
def test_example_script_classifies_like_keras(exported, classifier):
    out, _ = exported
    texts = ["a good film", "awful and dull"]
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "classify_mediapipe.py"), str(out / FILE), *texts],
                          capture_output=True, text=True, cwd="/")  # cwd: tfkit must not be importable
    assert done.returncode == 0, done.stderr[-800:]
    labels = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert labels == [classifier.labels[i] for i in classifier.predict_proba(texts).argmax(1)] == ["pos", "neg"]


def _padded(classifier, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tf-text's ids of `text`, 0-padded to max length as MediaPipe feeds them, with mask and segment ids."""
    import tensorflow as tf

    encoded = classifier.tokenizer.encode(tf.constant([text]))
    ids, mask = encoded["token_ids"].numpy()[0], encoded["padding_mask"].numpy()[0]
    pad = classifier.tokenizer.max_length - len(ids)
    return np.pad(ids * mask, (0, pad)).astype(np.int32), np.pad(mask, (0, pad)).astype(np.int32), np.zeros(len(ids) + pad, np.int32)


def _zip_start(data: bytes) -> int:
    """Where the packed files begin, i.e. the length of the flatbuffer before them."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # offsets are made absolute in the file on reading
        return min(info.header_offset for info in archive.infolist())
