"""`tfkit run`: the main job: train the teacher, distill the default student, export it verified."""

from __future__ import annotations

import argparse
from pathlib import Path

from tfkit.commands import distill as distill_command
from tfkit.commands import export as export_command
from tfkit.commands import train as train_command


def run_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("run", help="the whole pipeline: train the teacher, distill a student, export it")
    train_command.add_training_arguments(parser)
    parser.add_argument("--student", default="from-teacher", help=distill_command.HELP["student"])
    parser.add_argument("--distill-epochs", type=int, default=None, help="student epochs (default: distill's default)")
    parser.add_argument("--models", default="models", help="where model directories go (default: %(default)s)")
    parser.add_argument("--export", default="export", help="where exported files go (default: %(default)s)")
    parser.add_argument("--formats", metavar="LIST", help="formats to export (default: all)")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from tfkit.distill import DistillConfig, distill
    from tfkit.export import export, parse_formats
    from tfkit.train import train

    parse_formats(args.formats)  # a typo fails now, not after an hour of training
    teacher_dir, student_dir = Path(args.models) / "teacher", Path(args.models) / "student"
    print(train_command.summary(str(teacher_dir), train(train_command.training_config(args), teacher_dir)))
    extra = {"epochs": args.distill_epochs} if args.distill_epochs else {}
    config = DistillConfig(teacher=str(teacher_dir), student=args.student, seed=args.seed, devices=args.devices, **extra)
    print(distill_command.summary(str(student_dir), distill(config, student_dir)))
    export_command.run_export(student_dir, Path(args.export) / "student", args.formats)
    return 0
