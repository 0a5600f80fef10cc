"""Logical CPU devices get their share of the cores; bf16 is tried only where the CPU (or a GPU) has it."""

import json
import os
import subprocess
import sys

import pytest

from tfkit import devices
from tfkit.errors import TfkitError

PROBE = """
import json, sys
from tfkit.devices import configure_devices
configure_devices(2, *json.loads(sys.argv[1]))
import tensorflow as tf
print(json.dumps([len(tf.config.list_logical_devices("CPU")), tf.config.threading.get_intra_op_parallelism_threads()]))
"""


@pytest.mark.parametrize("threads, expected", [([], max(1, (os.cpu_count() or 1) // 2)), ([0], 0), ([3], 3)])
def test_split_cpu_shares_the_cores_out(threads, expected):
    """A fresh process: devices and thread pools must be set before TensorFlow runs an op."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(threads)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-800:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [2, expected]


@pytest.mark.parametrize("flags, gpu, expected", [
    ({"avx2"}, False, False),  # bf16 emulated: 0.2x float32, not worth probing
    ({"avx2", "avx512f", "avx512_bf16"}, False, True),
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, False, True),
    ({"avx2"}, True, True),
])
def test_bf16_is_tried_only_where_the_hardware_has_it(monkeypatch, flags, gpu, expected):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(devices.tf.config, "list_physical_devices", lambda kind=None: ["gpu"] if gpu and kind == "GPU" else [])
    assert devices.bf16_hardware() is expected


def test_cpu_model_names_this_machine():
    assert devices.cpu_model() and devices.cpu_model() == devices.cpu_model()


def test_bad_device_settings():
    with pytest.raises(TfkitError, match="--devices must be at least 1"):
        devices.configure_devices(0)
