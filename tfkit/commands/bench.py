"""`tfkit bench`: every exported file, the Keras models and the teacher's own files, measured side by side."""

from __future__ import annotations

import argparse


def add_bench_arguments(parser: argparse.ArgumentParser, threads: str = "1,2", budget: float = 2.0,
                        teacher_formats: str | None = None) -> None:
    """The measurement flags, shared with `tfkit run` (which ends with a cheaper benchmark)."""
    from tfkit.bench import TEACHER_FORMATS  # numpy only at import

    parser.add_argument("--threads", default=threads, metavar="LIST",
                        help="thread counts, each applied to every runtime in a fresh process (default: %(default)s)")
    parser.add_argument("--lengths", default="16,64,128", metavar="LIST",
                        help="fixed sequence lengths for id-level files (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=budget, metavar="SECONDS",
                        help="batch-1 timing per row and thread count, after warm-up (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=None, help="a fixed number of timed calls per row instead of --budget")
    parser.add_argument("--teacher-formats", default=teacher_formats or ",".join(TEACHER_FORMATS), metavar="LIST",
                        help="teacher files to build and compare with (default: %(default)s)")


def bench_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmark every exported file against the teacher on this CPU")
    parser.add_argument("export_dir", help="a verified export directory, e.g. export/student")
    parser.add_argument("--teacher", help="teacher model directory (default: the one the student was distilled from)")
    parser.add_argument("--student", help="the exported model's directory (default: the source named in manifest.json)")
    parser.add_argument("--data", help="measure accuracy on this file's test split instead of the model's own")
    parser.add_argument("--out", help="where bench.json, bench.md and bench.png go (default: bench/<export dir name>)")
    parser.add_argument("--teacher-export", metavar="DIR",
                        help="build the teacher's files here and reuse them next time (default: a temporary directory)")
    parser.add_argument("--encoding", default="utf-8", help="text encoding of --data (default: %(default)s)")
    add_bench_arguments(parser)
    parser.set_defaults(func=bench_command, check=check_bench, tensorflow=True)


def check_bench_settings(args: argparse.Namespace) -> None:
    """The measurement flags (shared with `tfkit run`), before TensorFlow starts."""
    from tfkit.bench import parse_ints
    from tfkit.errors import TfkitError
    from tfkit.formats import parse_formats

    parse_ints(args.threads, "--threads"), parse_ints(args.lengths, "--lengths")
    parse_formats(args.teacher_formats)
    if not args.budget > 0 or (args.iterations is not None and args.iterations < 1):
        raise TfkitError("--budget must be positive and --iterations at least 1")


def check_bench(args: argparse.Namespace) -> None:
    """Flags, the export directory and --out, before TensorFlow starts."""
    from pathlib import Path

    from tfkit.artifacts import check_model_dir, check_output
    from tfkit.bench import default_out, read_export
    from tfkit.config import check_encoding

    check_bench_settings(args)
    check_encoding(args.encoding)
    read_export(args.export_dir)
    for flag, path in (("--teacher", args.teacher), ("--student", args.student)):
        if path:
            check_model_dir(path)
    if args.data and not Path(args.data).exists():
        from tfkit.errors import TfkitError

        raise TfkitError(f"--data: data not found: {args.data}")
    inputs = (args.export_dir, args.teacher, args.student, args.data)
    check_output(args.out or default_out(args.export_dir), "bench", inputs=inputs)
    if args.teacher_export:
        check_output(args.teacher_export, "export", inputs=inputs, flag="--teacher-export")


def bench_command(args: argparse.Namespace) -> int:
    run_bench(args.export_dir, args, out=args.out, teacher=args.teacher, student=args.student, data=args.data,
              encoding=args.encoding, teacher_export=args.teacher_export)
    return 0


def run_bench(export_dir, args: argparse.Namespace, **kwargs) -> dict:
    """Runs the benchmark with the shared flags and prints its Markdown."""
    from tfkit.bench import bench
    from tfkit.bench_report import markdown
    from tfkit.formats import parse_formats

    result = bench(export_dir, threads=args.threads, lengths=args.lengths, budget_s=args.budget, iterations=args.iterations,
                   teacher_formats=parse_formats(args.teacher_formats), **kwargs)
    print(markdown(result))
    print(f"wrote {result['out']}/bench.json, bench.md, bench.png")
    return result
