"""`tfkit run`: the main job: train the teacher, then distill the default student."""

from __future__ import annotations

import argparse
from pathlib import Path

from tfkit.commands import distill as distill_command
from tfkit.commands import train as train_command


def run_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("run", help="the whole pipeline: train the teacher, distill a student")
    train_command.add_training_arguments(parser)
    parser.add_argument("--student", default="from-teacher", help=distill_command.HELP["student"])
    parser.add_argument("--distill-epochs", type=int, default=None, help="student epochs (default: distill's default)")
    parser.add_argument("--models", default="models", help="where model directories go (default: %(default)s)")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from tfkit.distill import DistillConfig, distill
    from tfkit.train import train

    teacher_dir, student_dir = Path(args.models) / "teacher", Path(args.models) / "student"
    print(train_command.summary(str(teacher_dir), train(train_command.training_config(args), teacher_dir)))
    extra = {"epochs": args.distill_epochs} if args.distill_epochs else {}
    config = DistillConfig(teacher=str(teacher_dir), student=args.student, seed=args.seed, devices=args.devices, **extra)
    print(distill_command.summary(str(student_dir), distill(config, student_dir)))
    return 0
