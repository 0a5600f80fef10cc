"""`tfkit run`: the main job: train the teacher, distill the default student, export it verified, benchmark it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tfkit.commands import bench as bench_command
from tfkit.commands import distill as distill_command
from tfkit.commands import export as export_command
from tfkit.commands import train as train_command
from tfkit.errors import TfkitError


def run_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("run", help="the whole pipeline: train the teacher, distill a student, export it, benchmark it")
    train_command.add_training_arguments(parser)
    parser.add_argument("--student", default="from-teacher", help=distill_command.HELP["student"])
    parser.add_argument("--distill-epochs", type=int, default=None, help="student epochs (default: distill's default)")
    parser.add_argument("--models", default="models", help="where model directories go (default: %(default)s)")
    parser.add_argument("--export", default="export", help="where exported files go (default: %(default)s)")
    parser.add_argument("--formats", metavar="LIST", help="formats to export, as for `tfkit export` (default: its default)")
    parser.add_argument("--bench", default="bench", help="where the benchmark goes (default: %(default)s)")
    # One thread, a short budget per row and the two teacher files the issue compares with: the
    # benchmark is the run's last stage, not its longest (`tfkit bench` afterwards measures more).
    bench_command.add_bench_arguments(parser, threads="1", budget=0.5, teacher_formats="tflite-int8,onnx")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from tfkit.bench import parse_ints
    from tfkit.distill import DistillConfig, distill
    from tfkit.export import parse_formats
    from tfkit.train import train

    parse_formats(args.formats)  # a typo fails now, not after an hour of training
    parse_formats(args.teacher_formats), parse_ints(args.threads, "--threads"), parse_ints(args.lengths, "--lengths")
    if args.distill_epochs is not None and args.distill_epochs < 1:
        raise TfkitError(f"--distill-epochs must be at least 1 (got {args.distill_epochs})")
    teacher_dir, student_dir = Path(args.models) / "teacher", Path(args.models) / "student"
    extra = {"epochs": args.distill_epochs} if args.distill_epochs is not None else {}
    config = DistillConfig(teacher=str(teacher_dir), student=args.student, seed=args.seed, devices=args.devices, **extra)
    config.validate()
    minutes, start = {}, time.perf_counter()
    print(train_command.summary(str(teacher_dir), train(train_command.training_config(args), teacher_dir)))
    minutes["teacher"], start = (time.perf_counter() - start) / 60, time.perf_counter()
    print(distill_command.summary(str(student_dir), distill(config, student_dir)))
    minutes["student"], start = (time.perf_counter() - start) / 60, time.perf_counter()
    export_command.run_export(student_dir, Path(args.export) / "student", args.formats)
    minutes["export"], start = (time.perf_counter() - start) / 60, time.perf_counter()
    bench_command.run_bench(Path(args.export) / "student", args, out=Path(args.bench) / "student", teacher=teacher_dir,
                            student=student_dir, teacher_export=Path(args.export) / "teacher", throughput_passes=1)
    minutes["bench"] = (time.perf_counter() - start) / 60
    print("wall time: " + ", ".join(f"{stage} {m:.1f} min" for stage, m in minutes.items()) + f"; total {sum(minutes.values()):.1f} min")
    return 0
