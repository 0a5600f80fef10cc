"""`tfkit train`: fine-tune the teacher."""

from __future__ import annotations

import argparse

from tfkit import assets
from tfkit.commands import add_config_arguments, config_from_args
from tfkit.config import TrainConfig

HELP = {
    "data": f"CSV/TSV/JSONL file or a directory with one sub-folder per class (default: built-in {assets.DEFAULT_DATA})",
    "val": "validation file (default: 10%% of --data, stratified)",
    "test": "test file (default: 10%% of --data, stratified)",
    "text_column": "text column of CSV/TSV/JSONL data (default: %(default)s)",
    "label_column": "label column of CSV/TSV/JSONL data (default: %(default)s)",
    "encoding": "text encoding of the data files, e.g. latin-1 or cp1252 (default: %(default)s; a byte-order mark is fine)",
    "pretrained": "HuggingFace BERT checkpoint directory (default: the bundled all-MiniLM-L6-v2)",
    "epochs": "maximum epochs; early stopping on validation macro-F1 may stop sooner (default: from the data's size: "
              "at least 600 batches' worth of texts, 2 to 20 epochs)",
    "max_length": "tokens per text incl. [CLS]/[SEP] (default: covers 99%% of training texts, a multiple of 16)",
    "truncation": "what a text longer than --max-length keeps: its first word pieces (head), or a quarter from its start "
                  "and the rest from its end (head+tail); auto (default): head+tail when over 1%% of training texts are cut",
    "learning_rate": "peak learning rate in (0, 1] (default: 5e-5, or 1e-3 with --freeze-backbone)",
    "warmup_ratio": "share of the steps spent warming up, in [0, 1) (default: %(default)s)",
    "weight_decay": "AdamW weight decay in [0, 1) (default: %(default)s)",
    "dropout": "dropout rate in [0, 1) (default: %(default)s)",
    "patience": "epochs without a better validation macro-F1 before stopping (default: 1 for 2 epochs, else epochs / 4, at least 2)",
    "class_weight": "auto (default: balanced when the largest class has 3x the smallest's examples), none, or balanced",
    "tfidf_baseline": "also fit a TF-IDF + logistic regression baseline on the same split and report it (default: on)",
    "devices": "split the CPU into N logical devices and train with MirroredStrategy (GPUs: all are used)",
    "strategy": "auto (default: multiworker when TF_CONFIG names several workers, mirrored with --devices N, else single), "
                "single, mirrored, or multiworker (MultiWorkerMirroredStrategy over the TF_CONFIG cluster)",
    "checkpoint_every": "also save a training checkpoint every N optimizer steps (default: at each epoch's end); "
                        "the same command resumes an interrupted run",
    "precision": "auto (default: the faster of float32 and mixed_bfloat16 in a short probe on this machine, cached; "
                 "bf16 is tried only on AVX-512 BF16/AMX CPUs or a GPU), float32, or mixed_bfloat16",
    "freeze_backbone": "train only the classification head (feature extraction)",
    "bucket": "batch texts of similar length together (default on; --no-bucket pads every batch to --max-length)",
    "jit": "XLA-compile the train step: auto (default: measured in the same probe), on, or off",
}


def training_config(args: argparse.Namespace) -> TrainConfig:
    return config_from_args(args, TrainConfig)


def training_inputs(config: TrainConfig) -> tuple:
    """The paths a training run reads (an output may not be or contain one)."""
    return config.data, config.val, config.test, config.pretrained


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainConfig, HELP)


def train_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a BERT teacher on labelled text")
    add_training_arguments(parser)
    parser.add_argument("--out", default="models/teacher", help="model directory to write (default: %(default)s)")
    parser.set_defaults(func=train_command, check=check_train, tensorflow=True)


def check_training(config: TrainConfig) -> None:
    """Settings, data paths and the checkpoint, before TensorFlow starts (the data's contents are read later)."""
    from pathlib import Path

    from tfkit.data import data_format
    from tfkit.errors import TfkitError

    config.validate()
    for flag, path in (("--data", config.data), ("--val", config.val), ("--test", config.test)):
        if path and path != assets.DEFAULT_DATA:
            if not Path(path).exists():
                raise TfkitError(f"{flag}: data not found: {path}")
            data_format(Path(path))
    checkpoint = assets.check_checkpoint(config.pretrained or assets.default_teacher_dir())
    limit = checkpoint.get("max_position_embeddings")
    if config.max_length and limit and config.max_length > limit:
        raise TfkitError(f"--max-length {config.max_length} exceeds the model's limit of {limit}")


def check_train(args: argparse.Namespace) -> None:
    from tfkit.artifacts import check_output

    config = training_config(args)
    check_training(config)
    check_output(args.out, "model", inputs=training_inputs(config))
    check_resumable(args.out, config)


def check_resumable(out: str, config: TrainConfig) -> bool:
    """Checkpoints beside `out` must be this run's (then True: they are resumed) or absent."""
    from tfkit.resume import check_resume, run_settings

    return check_resume(out, run_settings(config, {"data": config.data, "val": config.val, "test": config.test}))


def train_command(args: argparse.Namespace) -> int:
    from tfkit.train import train

    metrics = train(training_config(args), args.out)
    if metrics is not None:  # None: a worker other than the chief, which writes the model
        print(summary(args.out, metrics))
    return 0


def summary(path: str, metrics: dict) -> str:
    test = metrics["test"]
    line = (f"{path}: test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, "
            f"{metrics['train_seconds']:.0f} s training ({metrics['examples_per_second']:.1f} examples/s)")
    if "tfidf_baseline" in metrics:
        base = metrics["tfidf_baseline"]["test"]
        verdict = "beaten" if test["macro_f1"] > base["macro_f1"] else "NOT beaten"
        line += f"; TF-IDF baseline {base['accuracy']:.4f} / {base['macro_f1']:.4f} ({verdict})"
    return line
