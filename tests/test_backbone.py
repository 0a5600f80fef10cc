"""HF checkpoints load into keras-hub with HF's numerics (exact GELU) and HF's tokenization."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import write_hf_checkpoint
from tfkit.backbone import Backbone, load_backbone
from tfkit.errors import TfkitError

SENTENCES = ["Hello world!", "Très bleak, but worth it.", "naïve café façade — 東京 😀", "", "a " * 80]


def hf_outputs(path, ids, mask):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def keras_outputs(backbone, ids, mask):
    ids, mask = np.asarray(ids), np.asarray(mask)
    out = backbone({"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask})
    return keras.ops.convert_to_numpy(out["sequence_output"]), keras.ops.convert_to_numpy(out["pooled_output"])


def test_tiny_checkpoint_matches_transformers(tiny_checkpoint):
    backbone, tokenizer = load_backbone(tiny_checkpoint)
    inputs = tokenizer.encode(tf.constant(["good film", "the plot was very dull and boring", "café"]))
    ids, mask = inputs["token_ids"].numpy(), inputs["padding_mask"].numpy()
    (seq, pooled), (ref_seq, ref_pooled) = keras_outputs(backbone, ids, mask), hf_outputs(tiny_checkpoint, ids, mask)
    real = mask.astype(bool)
    assert np.abs(seq[real] - ref_seq[real]).max() < 1e-5
    assert np.abs(pooled - ref_pooled).max() < 1e-5


def test_exact_gelu_survives_save_and_load(tiny_checkpoint, tmp_path):
    backbone, tokenizer = load_backbone(tiny_checkpoint)
    assert backbone.hidden_activation == "gelu"
    backbone.save(tmp_path / "b.keras")
    loaded = keras.saving.load_model(tmp_path / "b.keras")
    assert isinstance(loaded, Backbone) and loaded.hidden_activation == "gelu"
    x = tokenizer.encode(tf.constant(["good film"]))
    a = keras_outputs(backbone, x["token_ids"], x["padding_mask"])[0]
    b = keras_outputs(loaded, x["token_ids"], x["padding_mask"])[0]
    np.testing.assert_array_equal(a, b)


def test_bf16_gelu_is_exact_gelu_and_its_gradient_and_float32_keeps_tensorflows_op():
    """bf16 GELU (computed in float32, its own gradient) against float64 exact GELU; float32 (every export) unchanged."""
    from tfkit.backbone import gelu

    x64 = tf.constant(np.linspace(-6, 6, 2001), tf.float64)
    def value_and_grad(f, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = f(x)
        return y, tape.gradient(y, x, output_gradients=tf.fill(tf.shape(y), tf.constant(0.75, y.dtype)))
    ref = value_and_grad(lambda x: tf.nn.gelu(x, approximate=False), x64)[0]
    x16 = tf.cast(x64, tf.bfloat16)
    y, grad = value_and_grad(gelu, x16)
    assert y.dtype == grad.dtype == tf.bfloat16
    exact, exact_grad = value_and_grad(lambda x: tf.nn.gelu(x, approximate=False), tf.cast(x16, tf.float64))  # at the bf16 inputs
    assert np.abs(tf.cast(y, tf.float64) - exact).max() <= 2 ** -8 * np.abs(exact).max()  # bf16's rounding
    assert np.abs(tf.cast(grad, tf.float64) - exact_grad).max() < 1e-2
    assert np.abs(tf.cast(y, tf.float64) - ref).max() < 0.05  # and it is GELU, not some other curve
    x32 = tf.cast(x64, tf.float32)
    np.testing.assert_array_equal(gelu(x32), keras.activations.gelu(x32, approximate=False))
    np.testing.assert_array_equal(value_and_grad(gelu, x32)[1], value_and_grad(lambda x: tf.nn.gelu(x, approximate=False), x32)[1])


def test_float32_islands_keep_all_but_the_matmuls_in_float32(tiny_checkpoint, tmp_path, monkeypatch):
    """With FLOAT32_ISLANDS, mixed_bfloat16 keeps the residual stream, LayerNorm and softmax in float32 (as
    PyTorch's autocast), after a reload too; without it (the default) Keras' plain mixed policy runs."""
    import tfkit.backbone

    plain, _ = load_backbone(tiny_checkpoint, dtype="mixed_bfloat16")
    assert plain.transformer_layers[0]._self_attention_layer_norm.compute_dtype == "bfloat16"
    monkeypatch.setattr(tfkit.backbone, "FLOAT32_ISLANDS", True)
    backbone, tokenizer = load_backbone(tiny_checkpoint, dtype="mixed_bfloat16")
    backbone.save(tmp_path / "b.keras")
    reference, _ = load_backbone(tiny_checkpoint, dtype="float32")
    x = tokenizer.encode(tf.constant(["good film", "the plot was very dull and boring"]))
    for model in (backbone, keras.saving.load_model(tmp_path / "b.keras")):
        layer = model.transformer_layers[0]
        assert model.get_layer("embeddings_layer_norm").compute_dtype == "float32"
        assert layer.compute_dtype == layer._self_attention_layer_norm.compute_dtype == "float32"
        assert layer._self_attention_layer._softmax.compute_dtype == "float32"
        assert layer._feedforward_intermediate_dense.compute_dtype == "bfloat16"
        assert layer._self_attention_layer._query_dense.compute_dtype == "bfloat16"
        out = model({"token_ids": x["token_ids"], "segment_ids": tf.zeros_like(x["token_ids"]), "padding_mask": x["padding_mask"]})
        assert out["sequence_output"].dtype == "float32"
        seq, ref = keras_outputs(model, x["token_ids"], x["padding_mask"])[0], keras_outputs(reference, x["token_ids"], x["padding_mask"])[0]
        assert 0 < np.abs(seq - ref).max() < 0.05  # bf16 matmuls: close to float32, not equal
    assert {l.compute_dtype for l in reference._flatten_layers()} == {"float32"}


def test_approximate_gelu_checkpoint(tmp_path):
    path = write_hf_checkpoint(str(tmp_path / "ck"), hidden_act="gelu_new")
    assert load_backbone(path)[0].hidden_activation == "gelu_approximate"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "model.safetensors").unlink(), "lacks model.safetensors"),
        (lambda p: (p / "config.json").write_text("{"), "config.json is not valid JSON"),
        (lambda p: _edit_config(p, model_type="gpt2"), "is a 'gpt2' checkpoint"),
        (lambda p: _edit_config(p, intermediate_size=48), "has shape (16, 32) but config.json implies (16, 48)"),
        (lambda p: write_hf_checkpoint(str(p), drop=["encoder.layer.1.output.dense.bias"]), "encoder.layer.1.output.dense.bias"),
    ],
)
def test_broken_checkpoint_is_one_clear_error(tmp_path, damage, message):
    path = tmp_path / "ck"
    write_hf_checkpoint(str(path))
    damage(path)
    with pytest.raises(TfkitError) as error:
        load_backbone(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_checkpoint_dir(tmp_path):
    with pytest.raises(TfkitError, match="pretrained checkpoint not found"):
        load_backbone(tmp_path / "nope")


@pytest.mark.large
def test_default_teacher_matches_transformers():
    """The bundled all-MiniLM-L6-v2: same token ids as HF BertTokenizer, hidden states within 1e-4."""
    transformers = pytest.importorskip("transformers")
    from tfkit.assets import default_teacher_dir

    path = str(default_teacher_dir())
    backbone, tokenizer = load_backbone(path, max_length=64)
    vocab = {t: i for i, t in enumerate(tokenizer.vocab)}
    reference = transformers.BertTokenizer(vocab=vocab, do_lower_case=True)
    inputs = tokenizer.encode(tf.constant(SENTENCES))
    ids, mask = inputs["token_ids"].numpy(), inputs["padding_mask"].numpy()
    for row, text in enumerate(SENTENCES):
        expected = reference(text, truncation=True, max_length=64)["input_ids"]
        assert ids[row][mask[row] == 1].tolist() == expected, text
    seq, ref_seq = keras_outputs(backbone, ids, mask)[0], hf_outputs(path, ids, mask)[0]
    assert np.abs(seq[mask == 1] - ref_seq[mask == 1]).max() < 1e-4


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))
