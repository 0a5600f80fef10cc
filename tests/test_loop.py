"""The training loop's optimizer: the fused AdamW takes exactly Keras AdamW's steps, on one device, two, and under XLA."""

import json
import subprocess
import sys

import pytest

SAME_STEPS = """
import json, sys
devices, jit = json.loads(sys.argv[1])
from tfkit.devices import configure_devices
configure_devices(devices, None)
import keras, numpy as np, tensorflow as tf
from tfkit.loop import FusedAdamW, WarmupLinearDecay

fused_kernel, traced = tf.raw_ops.ResourceApplyAdam, []  # counts the kernel's uses as the step is traced
tf.raw_ops.ResourceApplyAdam = lambda **kw: traced.append(kw["var"]) or fused_kernel(**kw)

def trained(optimizer_class):
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy() if devices > 1 else tf.distribute.get_strategy()
    with strategy.scope():
        inputs = keras.Input([8], dtype="int32")
        x = keras.layers.Embedding(50, 16)(inputs)  # sparse gradients: Keras' own update
        x = keras.layers.LayerNormalization()(keras.layers.GlobalAveragePooling1D()(x))
        outputs = keras.layers.Dense(3)(keras.layers.Dense(32, activation="gelu")(x))
        model = keras.Model(inputs, outputs)
        optimizer = optimizer_class(learning_rate=WarmupLinearDecay(1e-2, 40, 4), weight_decay=0.05, clipnorm=1.0)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 50, [64, 8]), rng.integers(0, 3, [64])
    before = [w.numpy().copy() for w in model.weights]
    model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0)
    return before, [w.numpy() for w in model.weights], int(optimizer.iterations.numpy())

start, keras_adamw, steps = trained(keras.optimizers.AdamW)
_, fused, fused_steps = trained(FusedAdamW)
print(json.dumps({"steps": [steps, fused_steps], "fused_variables": len(traced),
                  "moved": min(float(np.abs(a - b).max()) for a, b in zip(start, keras_adamw)),
                  "diff": max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-6)) for a, b in zip(keras_adamw, fused))}))
"""


@pytest.mark.parametrize("devices, jit", [(1, False), (2, False), (1, True)])
def test_fused_adamw_takes_keras_adamw_steps(devices, jit):
    """A fresh process per case: logical devices must be set before TensorFlow starts."""
    done = subprocess.run([sys.executable, "-c", SAME_STEPS, json.dumps([devices, jit])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["steps"] == [20, 20]
    assert result["fused_variables"] >= 6 * devices, "the fused kernel never ran"  # 2 Dense + LayerNorm: kernels, biases, gamma, beta
    assert result["moved"] > 1e-3, "a weight did not train: the comparison means nothing"
    assert result["diff"] < 1e-5, result
