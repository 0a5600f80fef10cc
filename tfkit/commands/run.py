"""`tfkit run`: the main job on the defaults: train the teacher."""

from __future__ import annotations

import argparse

from tfkit.commands.train import add_training_arguments, config_from_args


def run_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("run", help="the whole pipeline: train the teacher (then distill, export)")
    add_training_arguments(parser)
    parser.add_argument("--models", default="models", help="where model directories go (default: %(default)s)")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from tfkit.train import train

    teacher_dir = f"{args.models}/teacher"
    metrics = train(config_from_args(args), teacher_dir)
    print(f"teacher: {teacher_dir}: test accuracy {metrics['test']['accuracy']:.4f}, "
          f"macro-F1 {metrics['test']['macro_f1']:.4f}, {metrics['train_seconds']:.0f} s training")
    return 0
