"""`tfkit train`: fine-tune the teacher."""

from __future__ import annotations

import argparse
import dataclasses

from tfkit import assets

HELP = {
    "data": f"CSV/TSV/JSONL file or a directory with one sub-folder per class (default: built-in {assets.DEFAULT_DATA})",
    "val": "validation file (default: 10%% of --data, stratified)",
    "test": "test file (default: 10%% of --data, stratified)",
    "pretrained": "HuggingFace BERT checkpoint directory (default: the bundled all-MiniLM-L6-v2)",
    "max_length": "tokens per text incl. [CLS]/[SEP] (default: covers 99%% of training texts, a multiple of 16)",
    "learning_rate": "peak learning rate (default: 5e-5, or 1e-3 with --freeze-backbone)",
    "devices": "split the CPU into N logical devices and train with MirroredStrategy (GPUs: all are used)",
    "precision": "auto = mixed_bfloat16 where the CPU has native bf16 (AVX-512 BF16/AMX) or a GPU, else float32",
    "freeze_backbone": "train only the classification head (feature extraction)",
    "bucket": "batch texts of similar length together (default on; --no-bucket pads every batch to --max-length)",
    "jit_compile": "compile train steps with XLA",
}


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, defaults taken from the dataclass."""
    from tfkit.train import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        flag, default = "--" + field.name.replace("_", "-"), field.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=HELP.get(field.name))
        else:
            kind = {"epochs": int, "batch_size": int, "max_length": int, "patience": int, "seed": int,
                    "devices": int, "learning_rate": float, "warmup_ratio": float, "weight_decay": float,
                    "dropout": float}.get(field.name, str)
            parser.add_argument(flag, type=kind, default=default, help=HELP.get(field.name))


def config_from_args(args: argparse.Namespace):
    from tfkit.train import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def train_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a BERT teacher on labelled text")
    add_training_arguments(parser)
    parser.add_argument("--out", default="models/teacher", help="model directory to write (default: %(default)s)")
    parser.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    from tfkit.train import train

    metrics = train(config_from_args(args), args.out)
    test = metrics["test"]
    print(f"{args.out}: test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, "
          f"{metrics['train_seconds']:.0f} s training ({metrics['examples_per_second']:.1f} examples/s)")
    return 0
