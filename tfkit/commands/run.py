"""`tfkit run`: the main job: train the teacher, distill the default student, export it verified, benchmark it."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from tfkit.commands import bench as bench_command
from tfkit.commands import distill as distill_command
from tfkit.commands import export as export_command
from tfkit.commands import train as train_command
from tfkit.config import DistillConfig, TrainConfig
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
    parser.set_defaults(func=run_command, check=check_run, tensorflow=True)


def outputs(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The teacher's and the student's model directories and the student's export directory."""
    return Path(args.models) / "teacher", Path(args.models) / "student", Path(args.export) / "student"


def bench_outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The teacher's own export (what the student's files are compared with) and the benchmark's directory."""
    return Path(args.export) / "teacher", Path(args.bench) / "student"


def training_config(args: argparse.Namespace) -> TrainConfig:
    """The teacher's settings; with `tflite-mediapipe` named, `--truncation auto` keeps the head (MediaPipe's tokenizer does)."""
    from tfkit.formats import named
    from tfkit.mediapipe_export import FORMAT, tokenizer_problem

    config = train_command.training_config(args)
    if FORMAT in (named(args.formats) or []):
        if config.truncation == "head+tail":
            raise TfkitError(f"--formats names {FORMAT}: {tokenizer_problem(True, 'head+tail')}")
        config = dataclasses.replace(config, truncation="head")
    return config


def distill_config(args: argparse.Namespace) -> DistillConfig:
    extra = {"epochs": args.distill_epochs} if args.distill_epochs is not None else {}
    return DistillConfig(teacher=str(outputs(args)[0]), student=args.student, seed=args.seed, devices=args.devices,
                         strategy=args.strategy, checkpoint_every=args.checkpoint_every,
                         precision=args.precision, jit=args.jit, **extra)  # the student's speed: chosen like the teacher's


def check_run(args: argparse.Namespace) -> None:
    """Every stage's settings and outputs, checked before the first one starts (not after an hour of training)."""
    from tfkit.artifacts import check_output
    from tfkit.formats import parse_formats

    parse_formats(args.formats)
    bench_command.check_bench_settings(args)
    if args.distill_epochs is not None and args.distill_epochs < 1:
        raise TfkitError(f"--distill-epochs must be at least 1 (got {args.distill_epochs})")
    from tfkit.cluster import resolve_strategy

    config = training_config(args)
    train_command.check_training(config)
    if resolve_strategy(config.strategy, config.devices)[0] == "multiworker":
        raise TfkitError("tfkit run trains on one machine; on several, run `tfkit train` and then `tfkit distill` "
                         "on every worker (see examples/multiworker/)")
    distill_config(args).validate()
    teacher_dir, student_dir, export_dir = outputs(args)
    inputs = train_command.training_inputs(config)
    check_output(teacher_dir, "model", inputs=inputs, flag="--models")
    check_output(student_dir, "model", inputs=inputs, flag="--models")
    check_output(export_dir, "export", inputs=(*inputs, teacher_dir, student_dir), flag="--export")
    teacher_export, bench_dir = bench_outputs(args)
    check_output(teacher_export, "export", inputs=(*inputs, teacher_dir, student_dir), flag="--export")
    check_output(bench_dir, "bench", inputs=(*inputs, teacher_dir, student_dir, export_dir), flag="--bench")
    train_command.check_resumable(str(teacher_dir), config)


def student_resumes(args: argparse.Namespace) -> bool:
    """Whether an interrupted run of this command left a finished teacher and the student's checkpoints."""
    from tfkit.artifacts import artifact_kind

    teacher_dir, student_dir, _ = outputs(args)
    return artifact_kind(teacher_dir) == "model" and distill_command.check_resumable(str(student_dir), distill_config(args))


def run_command(args: argparse.Namespace) -> int:
    from tfkit.distill import distill
    from tfkit.train import train

    teacher_dir, student_dir, export_dir = outputs(args)
    minutes, start = {}, time.perf_counter()
    if student_resumes(args):
        print(f"{teacher_dir}: trained by the interrupted run; resuming the student's training")
    else:
        print(train_command.summary(str(teacher_dir), train(training_config(args), teacher_dir)))
    minutes["teacher"], start = (time.perf_counter() - start) / 60, time.perf_counter()
    print(distill_command.summary(str(student_dir), distill(distill_config(args), student_dir)))
    minutes["student"], start = (time.perf_counter() - start) / 60, time.perf_counter()
    export_command.run_export(student_dir, export_dir, args.formats)
    minutes["export"], start = (time.perf_counter() - start) / 60, time.perf_counter()
    teacher_export, bench_dir = bench_outputs(args)
    bench_command.run_bench(export_dir, args, out=bench_dir, teacher=teacher_dir, student=student_dir,
                            teacher_export=teacher_export, throughput_passes=1)
    minutes["bench"] = (time.perf_counter() - start) / 60
    print("wall time: " + ", ".join(f"{stage} {m:.1f} min" for stage, m in minutes.items()) + f"; total {sum(minutes.values()):.1f} min")
    return 0
