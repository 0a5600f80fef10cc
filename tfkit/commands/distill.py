"""`tfkit distill`: compress a teacher model directory into a small student."""

from __future__ import annotations

import argparse

from tfkit.commands import add_config_arguments, config_from_args
from tfkit.config import DistillConfig

HELP = {
    "teacher": "teacher model directory (default: %(default)s)",
    "student": "student preset: tiny (2x128), mini (4x256), small (4x512), from-teacher (default: teacher width, half its layers, copied)",
    "layers": "student layers (overrides the preset)", "hidden": "student width (overrides the preset)",
    "heads": "attention heads (overrides the preset)", "intermediate": "feed-forward width (overrides the preset)",
    "epochs": "maximum epochs; early stopping on validation macro-F1 may stop sooner (default: %(default)s)",
    "learning_rate": "peak learning rate in (0, 1] (default: %(default)s; narrow students want ~3e-4)",
    "warmup_ratio": "share of the steps spent warming up, in [0, 1) (default: %(default)s)",
    "weight_decay": "AdamW weight decay in [0, 1) (default: %(default)s)",
    "dropout": "dropout rate in [0, 1) (default: %(default)s)",
    "patience": "epochs without a better validation macro-F1 before stopping (default: %(default)s)",
    "encoding": "text encoding of --data, e.g. latin-1 (default: %(default)s)",
    "temperature": "softmax temperature of the soft targets, > 0 (default: %(default)s)",
    "alpha": "weight of the hard-label loss in [0, 1]; the soft loss gets 1 - alpha (default: %(default)s)",
    "trim_vocab": "keep only word pieces the training data uses, plus single characters and specials (default: on)",
    "vocab_min_count": "with --trim-vocab, keep only pieces the training data uses at least N times (default: %(default)s)",
    "hidden_loss": "weight of the hidden-state MSE between student and teacher layers; 0 = off (default). Runs the teacher every step",
    "augment": "teacher-labelled word-dropped copies of each training text to add; 0 = off (default: %(default)s)",
    "recompute_teacher": "run the teacher every step instead of caching its logits once",
    "baseline": "also train the same student on hard labels only, to measure what distillation adds (doubles the time; default: off)",
    "data": "distill on this data instead of the teacher's own (same columns; labels must match the teacher's)",
    "devices": "split the CPU into N logical devices and train with MirroredStrategy",
    "strategy": "auto (default), single, mirrored or multiworker, as for `tfkit train` (every worker needs the teacher)",
    "checkpoint_every": "also save a training checkpoint every N optimizer steps (default: at each epoch's end)",
    "precision": "the student's training precision: auto (default: measured, as for `tfkit train`), float32, or mixed_bfloat16",
    "jit": "XLA-compile the student's train step: auto (default: measured), on, or off",
}


def add_distill_arguments(parser: argparse.ArgumentParser, skip=()) -> None:
    add_config_arguments(parser, DistillConfig, HELP, skip)


def distill_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("distill", help="distill a teacher into a small, fast student")
    add_distill_arguments(parser)
    parser.add_argument("--out", default="models/student", help="model directory to write (default: %(default)s)")
    parser.set_defaults(func=distill_command, check=check_distill, tensorflow=True)


def check_distill(args: argparse.Namespace) -> None:
    from tfkit.artifacts import check_model_dir, check_output

    config = config_from_args(args, DistillConfig)
    config.validate()
    check_model_dir(config.teacher)
    check_output(args.out, "model", inputs=(config.teacher, config.data))
    check_resumable(args.out, config)


def check_resumable(out: str, config: DistillConfig) -> bool:
    """Checkpoints beside `out` must be this run's (then True: they are resumed) or absent."""
    from tfkit.resume import check_resume, run_settings

    return check_resume(out, run_settings(config, {"teacher": config.teacher, "data": config.data}))


def distill_command(args: argparse.Namespace) -> int:
    from tfkit.distill import distill

    metrics = distill(config_from_args(args, DistillConfig), args.out)
    if metrics is not None:  # None: a worker other than the chief, which writes the model
        print(summary(args.out, metrics))
    return 0


def summary(path: str, m: dict) -> str:
    line = (f"{path}: test accuracy {m['test']['accuracy']:.4f} (teacher {m['teacher']['test']['accuracy']:.4f}, "
            f"{100 * m['accuracy_retained']:.1f}% retained), {m['compression']:.1f}x fewer parameters")
    if "hard_label_baseline" in m:
        line += f"; hard-label baseline {m['hard_label_baseline']['test']['accuracy']:.4f}"
    return line
