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
    add_bench_arguments(parser)
    parser.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    run_bench(args.export_dir, args, out=args.out, teacher=args.teacher, student=args.student, data=args.data,
              teacher_export=args.teacher_export)
    return 0


def run_bench(export_dir, args: argparse.Namespace, **kwargs) -> dict:
    """Runs the benchmark with the shared flags and prints its Markdown."""
    from tfkit.bench import bench, parse_ints
    from tfkit.bench_report import markdown
    from tfkit.export import parse_formats

    parse_ints(args.threads, "--threads"), parse_ints(args.lengths, "--lengths")
    result = bench(export_dir, threads=args.threads, lengths=args.lengths, budget_s=args.budget, iterations=args.iterations,
                   teacher_formats=parse_formats(args.teacher_formats), **kwargs)
    print(markdown(result))
    print(f"wrote {result['out']}/bench.json, bench.md, bench.png")
    return result
