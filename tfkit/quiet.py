"""Start TensorFlow without its native start-up noise on stderr.

TensorFlow's C++ libraries log through absl before absl is initialised, which ignores
TF_CPP_MIN_LOG_LEVEL: every import prints "oneDNN custom operations are on", "Could not find
cuda drivers" and, on a machine without a GPU, "failed call to cuInit" (as an E-level line).
These are facts about the install, not about the user's job, so the CLI starts TensorFlow with
file descriptor 2 captured and writes back every line that is not one of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

# Info/warning lines in absl's format ("I0000 00:00:1796.12  3734 port.cc:153] ..."), absl's own
# pre-init notice, and the GPU probe's complaints on a CPU-only machine.
NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|WARNING: Logging before InitGoogle\(\) is written to STDERR$"  # glog's notice (MediaPipe's graph start)
    r"|[IW]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.]+:\d+\] "
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"
    r"|E\d{4} \d\d:\d\d:[\d.]+\s+\d+ (cuda_\w+|cuda_platform)\.cc:\d+\] .*(cuInit|CUDA)"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"  # LiteRT, once per process, on its first interpreter
)


def is_noise(line: str) -> bool:
    return bool(NOISE.match(line))


@contextlib.contextmanager
def filtered_native_stderr():
    """Captures fd 2 (C++ and Python writes alike) for the block, then replays the lines that are not noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True) if not is_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def start_tensorflow() -> None:
    """Imports TensorFlow and tensorflow-text and probes for GPUs, quietly; later imports are free."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_native_stderr():
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (loads TensorFlow's native libraries once more: the same lines again)

        tf.config.list_physical_devices("GPU")
    tf.get_logger().setLevel("ERROR")
    logging.getLogger("absl").setLevel(logging.WARNING)  # TensorFlow's checkpoint writer logs each save at INFO
