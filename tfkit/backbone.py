"""Pretrained BERT weights from a HuggingFace checkpoint directory into a keras-hub BertBackbone.

keras-hub's own HF converter does the name mapping (`BertBackbone.from_preset(local_dir)`
loads offline). Two differences from HF BERT are fixed here: keras-hub hard-codes the tanh
approximation of GELU while HF BERT uses exact (erf) GELU, so `Backbone` makes the
feed-forward activation a saved config option; and the tokenizer's casing comes from the
checkpoint's `tokenizer_config.json`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import keras
import keras_hub
import tensorflow as tf
from safetensors import SafetensorError
from keras_hub.src.utils.keras_utils import gelu_approximate

from tfkit.assets import HF_ACTIVATIONS, check_checkpoint
from tfkit.errors import TfkitError
from tfkit.preprocess import WordPieceTokenizer, read_vocab



# Off: measured no better (test 0.8407/0.8322 over two seeds vs Keras' plain mixed policy's 0.8353/0.8431,
# float32 0.8486/0.8423) at 3% more CPU per step; benchmarks/bf16_accuracy.py turns it on to measure it.
FLOAT32_ISLANDS = False


@tf.custom_gradient
def _gelu_in_float32(x):
    """Exact GELU of a bf16/fp16 tensor computed in float32, with its gradient as one expression.

    TensorFlow's CPU kernels run bfloat16 elementwise ops several times slower than float32 ones:
    `tf.nn.gelu` (erfc) and the Mul/Square/Exp chain of its gradient were a quarter of a bf16 teacher
    step on an AMX CPU; this form costs a third of that (benchmarks/README.md, "GELU and AdamW under bf16").
    """
    y = tf.cast(x, tf.float32)
    cdf = 0.5 * (1.0 + tf.math.erf(y * (1.0 / math.sqrt(2.0))))

    def grad(upstream):
        pdf = tf.exp(-0.5 * tf.square(y)) * (1.0 / math.sqrt(2.0 * math.pi))
        return tf.cast(tf.cast(upstream, tf.float32) * (cdf + y * pdf), x.dtype)

    return tf.cast(y * cdf, x.dtype), grad


def gelu(x):
    """Exact (erf) GELU, as HF BERT; float32 graphs (every export) keep TensorFlow's own op."""
    x = tf.convert_to_tensor(x)
    return keras.activations.gelu(x, approximate=False) if x.dtype in (tf.float32, tf.float64) else _gelu_in_float32(x)


def _activation(name: str):
    return {"gelu": gelu, "gelu_approximate": gelu_approximate}.get(name) or keras.activations.get(name)


@keras.saving.register_keras_serializable(package="tfkit")
class Backbone(keras_hub.models.BertBackbone):
    """A keras-hub `BertBackbone` with a configurable feed-forward activation.

    Args:
        hidden_activation: `gelu` (exact, as HF BERT), `gelu_approximate` (keras-hub's default) or `relu`.
        **kwargs: `BertBackbone` arguments (vocabulary_size, num_layers, num_heads, hidden_dim, ...).
    """

    def __init__(self, *, hidden_activation: str = "gelu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_activation = hidden_activation
        activation = _activation(hidden_activation)
        for layer in self.transformer_layers:  # built by super(); Dense reads .activation at call time
            layer.activation = activation
            layer._feedforward_intermediate_dense.activation = activation
        if FLOAT32_ISLANDS and self.dtype_policy.compute_dtype != "float32":
            float32_islands(self)

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden_activation": self.hidden_activation}


def float32_islands(backbone: keras_hub.models.BertBackbone, residual: bool = True, softmax: bool = True) -> None:
    """Under a mixed policy, keeps everything but the matmuls in float32, as PyTorch's autocast does.

    Keras' mixed_bfloat16 runs the whole residual stream in bf16 (embeddings, each residual add,
    LayerNorm's output, dropout) and the attention softmax too; autocast keeps those in float32
    and only feeds the matmuls bf16. Done here by giving the non-matmul layers a float32 policy:
    each layer casts its inputs to its own compute dtype, so the matmul layers (attention
    projections, feed-forward) still compute in bf16 and the rest gets float32 inputs.
    """
    float32 = keras.DTypePolicy("float32")
    if residual:
        for name in ("token_embedding", "position_embedding", "segment_embedding", "embeddings_add",
                     "embeddings_layer_norm", "embeddings_dropout", "pooled_dense"):
            backbone.get_layer(name).dtype_policy = float32
    for layer in backbone.transformer_layers:
        if residual:  # the encoder layer's own policy decides the dtype of its input, i.e. of the residual
            layer.dtype_policy = float32
            for part in (layer._self_attention_layer_norm, layer._self_attention_dropout,
                         layer._feedforward_layer_norm, layer._feedforward_dropout):
                part.dtype_policy = float32
        if softmax:  # used when attention has dropout (BERT's 0.1); without it Keras' fused path runs
            layer._self_attention_layer._softmax.dtype_policy = float32


def _describe(error: Exception) -> str:
    """One line for a missing tensor or a shape that disagrees with config.json."""
    text = str(error)
    shapes = re.search(r"variable\.shape=(\(.*?\)).*?value\.shape=(\(.*?\)).*?path=(\S+?),", text, re.S)
    if shapes:
        want, got, name = shapes.groups()
        return f"tensor for {name} has shape {got} but config.json implies {want}"
    return text.splitlines()[0][:300] if text else type(error).__name__


def load_backbone(
    checkpoint_dir: str | Path, max_length: int = 128, dtype: str | None = None, dropout: float | None = None
) -> tuple[Backbone, WordPieceTokenizer]:
    """A pretrained `Backbone` and its matching tokenizer from a HF BERT checkpoint directory.

    Args:
        checkpoint_dir: holds `config.json`, `model.safetensors` and `vocab.txt` (HF layout).
        max_length: the tokenizer's sequence length; capped at the checkpoint's position limit.
        dtype: Keras dtype policy for the backbone, e.g. `mixed_bfloat16`.
        dropout: the backbone's dropout rate (None keeps keras-hub's 0.1).
    """
    path = Path(checkpoint_dir)
    config = check_checkpoint(path)
    try:
        reference = keras_hub.models.BertBackbone.from_preset(str(path))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:  # a truncated, foreign or mis-shaped checkpoint
        raise TfkitError(f"cannot load {path / 'model.safetensors'}: {_describe(e)}") from None
    kwargs = {k: v for k, v in reference.get_config().items() if k not in ("name", "trainable", "dtype")}
    if dropout is not None:
        kwargs["dropout"] = dropout
    backbone = Backbone(hidden_activation=HF_ACTIVATIONS[config.get("hidden_act", "gelu")], dtype=dtype, **kwargs)
    backbone.set_weights(reference.get_weights())
    tokenizer_config = path / "tokenizer_config.json"
    lowercase = json.loads(tokenizer_config.read_text()).get("do_lower_case", True) if tokenizer_config.exists() else True
    vocab = read_vocab(path / "vocab.txt")
    if len(vocab) != backbone.vocabulary_size:
        raise TfkitError(f"{path}: vocab.txt has {len(vocab)} tokens but the model has {backbone.vocabulary_size}")
    return backbone, WordPieceTokenizer(vocab, lowercase, min(max_length, backbone.max_sequence_length))
