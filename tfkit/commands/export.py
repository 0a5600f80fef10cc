"""`tfkit export`: TFLite and ONNX files of a model directory, each verified by its runtime."""

from __future__ import annotations

import argparse


from tfkit.formats import DEFAULT_FORMATS, FORMATS


def export_command_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export to TFLite and ONNX, verified against the Keras model")
    parser.add_argument("model_dir", help="a tfkit model directory, e.g. models/teacher")
    parser.add_argument("--out", help="output directory (default: export/<model dir name>)")
    parser.add_argument("--formats", metavar="LIST",
                        help=f"comma-separated formats, or all (default: {', '.join(DEFAULT_FORMATS)}; "
                             f"also: {', '.join(k for k in FORMATS if k not in DEFAULT_FORMATS)})")
    parser.set_defaults(func=export_command, check=check_export, tensorflow=True)


def check_export(args: argparse.Namespace) -> None:
    """An unknown format, a missing model or an unsafe --out fails before TensorFlow starts."""
    from tfkit.artifacts import check_model_dir, check_output
    from tfkit.formats import default_out, parse_formats

    parse_formats(args.formats)
    check_model_dir(args.model_dir)
    check_output(args.out or default_out(args.model_dir), "export", inputs=(args.model_dir,))


def export_command(args: argparse.Namespace) -> int:
    run_export(args.model_dir, args.out, args.formats)
    return 0


def run_export(model_dir, out, formats) -> dict:
    """Exports and prints the summary table, also when some formats failed (then re-raises)."""
    from tfkit.export import ExportError, export

    try:
        manifest = export(model_dir, out, formats)
    except ExportError as e:
        print(summary(e.manifest))
        raise
    print(summary(manifest))
    return manifest


def summary(manifest: dict) -> str:
    """One row per format: file, size, parity against Keras, batch-1 latency; failures last."""
    rows = [("format", "file", "MB", "max|dp|", "agree", "accuracy", "ms/text", "status")]
    for key, a in manifest["artifacts"].items():
        rows.append((key, a["file"], f"{manifest['files'][a['file']]['size'] / 1e6:.1f}", f"{a['max_abs_diff']:.1e}",
                     f"{100 * a['label_agreement']:.2f}%", f"{a['accuracy']:.4f}", f"{a['latency_ms']['batch1_natural']:.2f}", "ok"))
    rows += [(key, "-", "-", "-", "-", "-", "-", "FAILED") for key in manifest["failed"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for a in manifest["artifacts"].values():
        if a.get("tokenization_agreement", 1.0) < 1.0:
            tokenizer = {"mediapipe": "MediaPipe's BertTokenizer"}.get(a["runtime"], "onnxruntime-extensions")
            lines.append(f"{a['file']}: its tokenizer ({tokenizer}) split {100 * (1 - a['tokenization_agreement']):.2f}% "
                         f"of test texts differently from tf-text, e.g. {a['tokenization_mismatches'][0][:60]!r}; "
                         "max|dp| is over the rest")
    v = manifest["verification"]
    lines.append(f"verified on {v['texts']} test texts against the float32 Keras model "
                 f"(accuracy {v['keras_accuracy']:.4f}, macro-F1 {v['keras_macro_f1']:.4f})")
    return "\n".join(lines)
