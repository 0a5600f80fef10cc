"""tfkit: fine-tune, distill and export small, fast text classifiers (Keras 3, TFLite, ONNX Runtime)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfkit.errors import TfkitError  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    "load_backbone": "tfkit.backbone", "Backbone": "tfkit.backbone",
    "load_splits": "tfkit.data",
    "WordPieceTokenizer": "tfkit.preprocess", "make_dataset": "tfkit.preprocess",
    "Classifier": "tfkit.classifier", "build_classifier": "tfkit.classifier", "MacroF1": "tfkit.classifier",
    "TrainConfig": "tfkit.train", "train": "tfkit.train", "make_optimizer": "tfkit.loop",
    "configure_devices": "tfkit.devices", "make_strategy": "tfkit.devices", "place": "tfkit.devices",
    "fit_model": "tfkit.loop", "Schedule": "tfkit.loop",
    "Distiller": "tfkit.distill", "DistillConfig": "tfkit.distill",
    "FORMATS": "tfkit.formats", "ExportError": "tfkit.export", "VerificationError": "tfkit.verify",
}


def __getattr__(name):
    """Public API, imported on first use so `import tfkit` (and the CLI's --help) stays fast."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfkit' has no attribute {name!r}")


__all__ = ["TfkitError", *_LAZY]
