"""`tfkit train`: fine-tune the teacher."""

from __future__ import annotations

import argparse

from tfkit import assets
from tfkit.commands import add_config_arguments, config_from_args

HELP = {
    "data": f"CSV/TSV/JSONL file or a directory with one sub-folder per class (default: built-in {assets.DEFAULT_DATA})",
    "val": "validation file (default: 10%% of --data, stratified)",
    "test": "test file (default: 10%% of --data, stratified)",
    "text_column": "text column of CSV/TSV/JSONL data (default: %(default)s)",
    "label_column": "label column of CSV/TSV/JSONL data (default: %(default)s)",
    "pretrained": "HuggingFace BERT checkpoint directory (default: the bundled all-MiniLM-L6-v2)",
    "epochs": "maximum epochs; early stopping on validation macro-F1 may stop sooner (default: %(default)s)",
    "max_length": "tokens per text incl. [CLS]/[SEP] (default: covers 99%% of training texts, a multiple of 16)",
    "learning_rate": "peak learning rate (default: 5e-5, or 1e-3 with --freeze-backbone)",
    "devices": "split the CPU into N logical devices and train with MirroredStrategy (GPUs: all are used)",
    "precision": "auto (default) = mixed_bfloat16 on AMX CPUs or a GPU, where it is faster; float32 elsewhere",
    "freeze_backbone": "train only the classification head (feature extraction)",
    "bucket": "batch texts of similar length together (default on; --no-bucket pads every batch to --max-length)",
    "jit_compile": "compile train steps with XLA",
}


def training_config(args: argparse.Namespace):
    from tfkit.train import TrainConfig

    return config_from_args(args, TrainConfig)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    from tfkit.train import TrainConfig

    add_config_arguments(parser, TrainConfig, HELP)


def train_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a BERT teacher on labelled text")
    add_training_arguments(parser)
    parser.add_argument("--out", default="models/teacher", help="model directory to write (default: %(default)s)")
    parser.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    from tfkit.train import train

    metrics = train(training_config(args), args.out)
    print(summary(args.out, metrics))
    return 0


def summary(path: str, metrics: dict) -> str:
    test = metrics["test"]
    return (f"{path}: test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, "
            f"{metrics['train_seconds']:.0f} s training ({metrics['examples_per_second']:.1f} examples/s)")
