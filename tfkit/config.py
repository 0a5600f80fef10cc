"""The settings of every training run, as dataclasses that import nothing heavy.

The command line builds its flags from these (so `tfkit --help` starts without TensorFlow),
and `validate()` checks every value before any work starts: a mistyped flag is one line and
exit 2, never an hour of training followed by a traceback. The resolved config is saved in
each model directory's config.json.
"""

from __future__ import annotations

import codecs
import dataclasses
import math

from tfkit import assets
from tfkit.cluster import STRATEGIES
from tfkit.errors import TfkitError
from tfkit.wordpiece import TRUNCATIONS

PRECISIONS = ("auto", "float32", "mixed_bfloat16")
JITS = ("auto", "on", "off")  # XLA `jit_compile` of the train step; auto = decided by `tfkit.probe`
CLASS_WEIGHTS = ("auto", "none", "balanced")
STUDENT_PRESETS = {
    "tiny": dict(num_layers=2, hidden_dim=128, num_heads=2, intermediate_dim=512),
    "mini": dict(num_layers=4, hidden_dim=256, num_heads=4, intermediate_dim=1024),
    "small": dict(num_layers=4, hidden_dim=512, num_heads=8, intermediate_dim=2048),
    "from-teacher": dict(),  # teacher width, half its layers (rounded up), copied from the teacher
}
MAX_SEED = 2**32 - 1


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_at_least(config, names: tuple[str, ...], low: int) -> None:
    """Each named integer setting is at least `low`."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < low:
            raise TfkitError(f"{_flag(name)} must be at least {low} (got {value})")


def check_range(config, name: str, low: float, high: float, low_open: bool = False, high_open: bool = True) -> None:
    """A float setting lies in the interval; the message shows it in interval notation."""
    value = getattr(config, name)
    if value is None:
        return
    inside = math.isfinite(value) and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not inside:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise TfkitError(f"{_flag(name)} must be in {interval} (got {value:g})")


def check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise TfkitError(f"unknown --encoding '{encoding}' (e.g. utf-8, latin-1, cp1252)") from None


def check_common(config) -> None:
    """The settings teacher and student training share."""
    check_at_least(config, ("epochs", "batch_size", "devices"), 1)
    check_at_least(config, ("patience", "seed"), 0)
    if config.seed > MAX_SEED:
        raise TfkitError(f"--seed must be at most {MAX_SEED} (got {config.seed})")
    check_range(config, "learning_rate", 0, 1, low_open=True, high_open=False)
    check_range(config, "warmup_ratio", 0, 1)
    check_range(config, "weight_decay", 0, 1)
    check_range(config, "dropout", 0, 1)
    if config.batch_size % config.devices:
        raise TfkitError(f"--batch-size {config.batch_size} must be divisible by --devices {config.devices}")
    check_encoding(config.encoding)
    check_at_least(config, ("checkpoint_every",), 1)
    if config.strategy not in STRATEGIES:
        raise TfkitError(f"unknown --strategy '{config.strategy}' (choose from {', '.join(STRATEGIES)})")
    if config.precision not in PRECISIONS:
        raise TfkitError(f"unknown --precision '{config.precision}' (choose from {', '.join(PRECISIONS)})")
    if config.jit not in JITS:
        raise TfkitError(f"unknown --jit '{config.jit}' (choose from {', '.join(JITS)})")
    if config.probe is not None and not isinstance(config.probe, dict):
        raise TfkitError(f"probe must be the speed probe's record (an object), got {type(config.probe).__name__}")


def recorded() -> dataclasses.Field:
    """A field tfkit fills in and saves in config.json (the speed probe's record), not a command-line flag."""
    return dataclasses.field(default=None, metadata={"flag": False})


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a teacher training run; saved (resolved) in the model's config.json."""

    data: str = assets.DEFAULT_DATA
    val: str | None = None
    test: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"
    pretrained: str | None = None  # a HF BERT checkpoint dir; None = the default teacher
    epochs: int | None = None  # None = from the data's size (`tfkit.train.training_length`)
    batch_size: int = 32
    max_length: int | None = None  # None = chosen from the training texts' token lengths
    truncation: str = "auto"  # auto | head | head+tail (`tfkit.preprocess.choose_truncation`)
    learning_rate: float | None = None  # None = 5e-5 fine-tuning, 1e-3 with a frozen backbone
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    patience: int | None = None  # None = from the number of epochs
    class_weight: str = "auto"  # auto | none | balanced
    tfidf_baseline: bool = True
    seed: int = 0
    freeze_backbone: bool = False
    devices: int = 1
    strategy: str = "auto"  # auto | single | mirrored | multiworker (`tfkit.cluster.resolve_strategy`)
    checkpoint_every: int | None = None  # optimizer steps between training checkpoints; None = each epoch
    precision: str = "auto"  # auto | float32 | mixed_bfloat16; auto = measured (`tfkit.probe`)
    bucket: bool = True
    jit: str = "auto"  # auto | on | off
    probe: dict | None = recorded()  # how precision and jit were chosen: the probe's figures

    def validate(self) -> None:
        """Fails on any setting that is out of range, whatever the data (checked before any work)."""
        check_common(self)
        if self.max_length is not None and self.max_length < 8:
            raise TfkitError(f"--max-length must be at least 8 (got {self.max_length})")
        if self.truncation not in ("auto", *TRUNCATIONS):
            raise TfkitError(f"unknown --truncation '{self.truncation}' (choose from auto, {', '.join(TRUNCATIONS)})")
        if self.class_weight not in CLASS_WEIGHTS:
            raise TfkitError(f"unknown --class-weight '{self.class_weight}' (choose from {', '.join(CLASS_WEIGHTS)})")
        if self.text_column == self.label_column:
            raise TfkitError(f"--text-column and --label-column are both '{self.text_column}'; they must differ")


@dataclasses.dataclass
class DistillConfig:
    """Every setting of a distillation run; saved in the student's config.json."""

    teacher: str = "models/teacher"
    student: str = "from-teacher"
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    intermediate: int | None = None
    temperature: float = 3.0
    alpha: float = 0.5
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    patience: int = 2
    trim_vocab: bool = True
    vocab_min_count: int = 1  # with trim_vocab: keep pieces used at least this often
    hidden_loss: float = 0.0  # weight of the hidden-state MSE; 0 = off
    augment: int = 0  # teacher-labelled word-dropped copies of each training text
    recompute_teacher: bool = False
    baseline: bool = False  # also train the same student on hard labels (a benchmark question, off in `tfkit run`)
    data: str | None = None  # None = the teacher's own data and split
    encoding: str = "utf-8"  # of --data
    seed: int = 0
    devices: int = 1
    strategy: str = "auto"
    checkpoint_every: int | None = None
    precision: str = "auto"  # of the student's training, chosen like the teacher's
    jit: str = "auto"
    probe: dict | None = recorded()

    def validate(self) -> None:
        """Fails on settings that are wrong whatever the teacher (checked before any work)."""
        check_distill_args(self.temperature, self.alpha, self.hidden_loss, self.augment)
        check_common(self)
        check_at_least(self, ("vocab_min_count", "layers", "hidden", "heads", "intermediate"), 1)
        if self.student not in STUDENT_PRESETS:
            raise TfkitError(f"unknown student preset '{self.student}' (choose from {', '.join(STUDENT_PRESETS)})")
        if self.student == "from-teacher":
            given = [_flag(n) for n in ("hidden", "heads", "intermediate") if getattr(self, n) is not None]
            if given:
                raise TfkitError(f"{'/'.join(given)} cannot change a from-teacher student (it copies the teacher's layers); "
                                 "pick --student tiny, mini or small to set its shape")
        elif self.hidden is not None and self.heads is not None and self.hidden % self.heads:
            raise TfkitError(f"--hidden {self.hidden} must be divisible by --heads {self.heads}")


def check_distill_args(temperature: float, alpha: float, hidden_loss: float = 0.0, augment: int = 0) -> None:
    """The distillation loss' own settings (also checked by `Distiller`)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise TfkitError(f"--temperature must be positive (got {temperature})")
    if not 0 <= alpha <= 1:
        raise TfkitError(f"--alpha must be in [0, 1] (got {alpha})")
    if not (hidden_loss >= 0 and math.isfinite(hidden_loss)):
        raise TfkitError(f"--hidden-loss must be 0 (off) or positive (got {hidden_loss})")
    if augment < 0:
        raise TfkitError(f"--augment must be 0 (off) or a positive number of copies (got {augment})")
