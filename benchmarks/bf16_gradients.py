"""How far bf16 compute moves one batch's loss gradient from float32's, by which parts run in bf16.

    python benchmarks/bf16_gradients.py init                       # the pretrained start, a fresh head
    python benchmarks/bf16_gradients.py /work/realrun/models/teacher   # a trained teacher's weights
"""
import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))
import sys, numpy as np, keras, tensorflow as tf
from tfkit import assets
from tfkit.backbone import load_backbone, float32_islands
from tfkit.classifier import build_classifier, Classifier, backbone_of
from tfkit.data import load_splits

MIXED = keras.DTypePolicy("mixed_bfloat16")

def reset(b):  # every layer back to Keras' plain mixed policy
    for l in b._flatten_layers(include_self=True, recursive=True):
        if l.dtype_policy.name == "float32":
            l.dtype_policy = MIXED

where = sys.argv[1]  # "init" or a model dir
splits = load_splits("rotten_tomatoes")
models = {}
def make(policy):
    b, tok = load_backbone(assets.default_teacher_dir(), max_length=64, dtype=policy)
    m = build_classifier(b, 2)
    if where != "init":
        m.set_weights(Classifier.load(where).model.get_weights())
    return m, tok
ref, tok = make("float32")
mix, _ = make("mixed_bfloat16")
mix.set_weights(ref.get_weights())
rng = np.random.default_rng(0)
batches = [rng.choice(len(splits.train), 32, replace=False) for _ in range(6)]
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
def grads(model):
    out = []
    for idx in batches:
        x = tok.encode(tf.constant([splits.train.texts[i] for i in idx]))
        y = splits.train.labels[idx]
        with tf.GradientTape() as t:
            logits = model(x, training=False)
            loss = loss_fn(y, logits)
        g = t.gradient(loss, model.trainable_variables)
        out.append((logits.numpy(), np.concatenate([tf.convert_to_tensor(v).numpy().ravel() for v in g])))
    return out
r = grads(ref)
for name, residual, softmax in (("all bf16 (Keras mixed)", False, False), ("f32 softmax", False, True),
                                ("f32 residual stream/LN/dropout/embeddings", True, False), ("both (autocast-like)", True, True)):
    b = backbone_of(mix); reset(b); float32_islands(b, residual, softmax)
    g = grads(mix)
    cos = np.mean([np.dot(a[1], c[1]) / np.linalg.norm(a[1]) / np.linalg.norm(c[1]) for a, c in zip(r, g)])
    rel = np.mean([np.linalg.norm(a[1] - c[1]) / np.linalg.norm(a[1]) for a, c in zip(r, g)])
    dl = np.mean([np.abs(a[0] - c[0]).max() for a, c in zip(r, g)])
    print(f"{where:>6} | {name:45s} | grad cos {cos:.5f} | grad rel err {rel:.4f} | max logit diff {dl:.4f}", flush=True)
