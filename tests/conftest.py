"""Tiny, fast fixtures: a random HF-format BERT checkpoint, a small vocab, synthetic labelled text."""

import json
import os
import random
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The speed probe's cache (tfkit.probe) goes to a fresh folder, never the user's ~/.cache (subprocesses inherit it).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="tfkit-test-cache-")

import numpy as np
import pytest
import tensorflow as tf

# Two logical CPUs before any TF op, so MirroredStrategy can be tested in this process;
# single-device runs use only the first.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

POSITIVE = ["good", "great", "fine", "superb", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring"]
NEUTRAL = ["the", "movie", "film", "plot", "was", "a", "very", "cast", "and", "café"]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["é", "."]
VOCAB = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + NEUTRAL[:-1] + ["zebra", "quantum"] + LETTERS + ["##" + c for c in LETTERS]))

TINY_BERT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)


def write_hf_checkpoint(path, vocab=VOCAB, seed=0, hidden_act="gelu", drop=(), **overrides):
    """A random BertModel checkpoint in HuggingFace's layout and tensor names."""
    from safetensors.numpy import save_file

    cfg = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(vocab), "type_vocab_size": 2,
           "hidden_act": hidden_act, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
           "attention_probs_dropout_prob": 0.1, "pad_token_id": 0, **TINY_BERT, **overrides}
    rng = np.random.default_rng(seed)
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    w = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)
    t = {"embeddings.word_embeddings.weight": w(len(vocab), h),
         "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], h),
         "embeddings.token_type_embeddings.weight": w(2, h),
         "embeddings.LayerNorm.weight": 1 + w(h), "embeddings.LayerNorm.bias": w(h),
         "pooler.dense.weight": w(h, h), "pooler.dense.bias": w(h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for name in ("query", "key", "value"):
            t[f"{p}attention.self.{name}.weight"], t[f"{p}attention.self.{name}.bias"] = w(h, h), w(h)
        t[f"{p}attention.output.dense.weight"], t[f"{p}attention.output.dense.bias"] = w(h, h), w(h)
        t[f"{p}attention.output.LayerNorm.weight"], t[f"{p}attention.output.LayerNorm.bias"] = 1 + w(h), w(h)
        t[f"{p}intermediate.dense.weight"], t[f"{p}intermediate.dense.bias"] = w(i, h), w(i)
        t[f"{p}output.dense.weight"], t[f"{p}output.dense.bias"] = w(h, i), w(h)
        t[f"{p}output.LayerNorm.weight"], t[f"{p}output.LayerNorm.bias"] = 1 + w(h), w(h)
    for key in drop:
        t.pop(key)
    os.makedirs(path, exist_ok=True)
    save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True}, f)
    return path


def synthetic_rows(n=240, seed=0, labels=("neg", "pos")):
    """Short 'reviews' whose label is decided by one sentiment word among filler words."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        label = labels[k % len(labels)]
        words = rng.sample(NEUTRAL, rng.randint(1, 6)) + [rng.choice(POSITIVE if label == labels[-1] else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path, rows, header=("text", "label"), sep=","):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return write_hf_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny-bert"))


@pytest.fixture
def sentiment_csv(tmp_path):
    return write_csv(tmp_path / "reviews.csv", synthetic_rows())


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory, tiny_checkpoint):
    """One tiny teacher that has learned the task, shared by every module (treat it as read-only).

    Confident predictions make label parity meaningful for export and distillation tests.
    """
    from tfkit.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    data = write_csv(root / "reviews.csv", synthetic_rows())
    config = TrainConfig(data=data, pretrained=tiny_checkpoint, epochs=8, patience=8, batch_size=16,
                         learning_rate=5e-3, warmup_ratio=0.0, precision="float32")
    train(config, root / "teacher")
    return root / "teacher"


@pytest.fixture(scope="session")
def exported_teacher(trained_teacher):
    """(directory, manifest) of every export format of `trained_teacher`, written once (read-only)."""
    from tfkit.export import export

    out = trained_teacher.parent / "exported"
    return out, export(trained_teacher, out, "all", progress=False)
