"""bench.md and bench.png from the data `tfkit.bench.bench` returns."""

from __future__ import annotations

from pathlib import Path


def _x(value: float | None) -> str:
    return f"{value:.1f}x" if value is not None else ""


def _label(row: dict) -> str:
    return f"{row['network']} {row['file']}"


def header(result: dict) -> list[str]:
    """Machine, libraries, settings and the same-run matmul peaks, as Markdown lines."""
    m, s = result["machine"], result["settings"]
    flags = " ".join(f for f, present in m["flags"].items() if present) or "none of " + ", ".join(m["flags"])
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    lines = [f"**Machine**: {m['cpu']}, {m['cores']} cores, flags: {flags}; load average {m['load_average_start']:.1f} "
             f"at start, {m.get('load_average_end', float('nan')):.1f} at end (other processes share these cores).",
             f"**Libraries**: Python {m['python']}, {libs}.",
             f"**Settings**: batch 1 at natural length over {_texts(result)} test texts, {s['warmup']} warm-up calls, then "
             + (f"{s['iterations']} calls" if s["iterations"] else f"{s['budget_s']:g} s") + " per row; throughput at batch "
             f"{s['batch_size']}, length-sorted, padded per batch (median of {s['throughput_passes']} pass(es) after 3 warm-up batches); every row in "
             "a fresh process (its peak RSS after the latency loop); ratios against the teacher's Keras model at the same threads."]
    for t, peak in result["peak"].items():
        if "error" in peak:
            lines.append(f"**Matmul peak** ({t} thread(s)): not measured: {peak['error']}")
            continue
        parts = [f"{shape} fp32 {max(v['numpy_fp32'], v['onnxruntime_fp32']):.0f} GFLOP/s, int8 {v['onnxruntime_int8']:.0f} GOP/s"
                 for shape, v in peak.items()]
        lines.append(f"**Matmul peak** ({t} thread(s), numpy/ONNX Runtime, this run): " + "; ".join(parts) + ".")
    return lines


def _texts(result: dict) -> int:
    return max(n["test_texts"] for n in result["networks"].values())


def table(result: dict) -> list[str]:
    """The main table: one line per row and thread count."""
    lines = ["| model | file | runtime | threads | MB | load ms | 1st ms | p50 ms | p90 | p99 | max | texts/s @32 "
             "| RSS MB | accuracy | macro-F1 | agreement | vs teacher Keras | vs teacher same format | smaller |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["error"]:
            lines.append(f"| {r['network']} | {r['file']} | {r['runtime']} | {r['threads']} | {r['size_bytes'] / 1e6:.1f} "
                         f"| not measured: {r['error'][:120]} |" + " |" * 13)
            continue
        lat = r["latency_ms"]
        agreement = f"{100 * r['agreement']:.2f}%" if r["agreement"] is not None else ""
        lines.append(
            f"| {r['network']} | {r['file']} | {r['runtime']} {r['runtime_version'] or ''} | {r['threads']} "
            f"| {r['size_bytes'] / 1e6:.1f} | {r['load_ms']:.0f} | {r['first_inference_ms']:.1f} | {lat['p50']:.2f} "
            f"| {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['max']:.2f} | {r['throughput']['texts_per_s']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {agreement} "
            f"| {_x(r['speedup_vs_teacher_keras'])} | {_x(r['speedup_vs_teacher_same_format'])} "
            f"| {_x(r['smaller_than_teacher_keras'])} |")
    return lines


def length_table(result: dict) -> list[str]:
    """Batch-1 p50 at fixed lengths for id-level rows, with GFLOP/s and the share of the matmul peak at the longest."""
    rows = [r for r in result["rows"] if not r["error"] and r.get("fixed_length_ms")]
    if not rows:
        return []
    lengths = sorted({int(n) for r in rows for n in r["fixed_length_ms"]})
    longest, shortest = str(lengths[-1]), str(lengths[0])
    lines = ["| model | file | threads | " + " | ".join(f"{n} tokens ms" for n in lengths)
             + f" | {shortest} vs {longest} | GFLOP/s @{longest} | of matmul peak @{longest} |",
             "|---|---|---|" + "---|" * (len(lengths) + 3)]
    for r in rows:
        fixed, eff = r["fixed_length_ms"], r["efficiency"].get(longest, {})
        cells = [f"{fixed[str(n)]['p50']:.2f}" if str(n) in fixed else "" for n in lengths]
        ratio = fixed[longest]["p50"] / fixed[shortest]["p50"] if longest in fixed and shortest in fixed else None
        share = f"{100 * eff['of_peak']:.0f}% ({'int8' if r['precision'] == 'int8' else 'fp32'})" if eff.get("of_peak") else ""
        lines.append(f"| {r['network']} | {r['file']} | {r['threads']} | " + " | ".join(cells)
                     + f" | {_x(ratio)} | {eff.get('gflops', 0):.1f} | {share} |")
    return lines


def markdown(result: dict) -> str:
    return "\n".join([*header(result), "", *table(result), "", *length_table(result)]).rstrip()


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher)."""
    return [i for i, (lat, acc) in enumerate(points)
            if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for l2, a2 in points)]


def plot(result: dict, path: Path) -> None:
    """Left: test accuracy vs p50 latency (log), Pareto front marked; right: latency vs sequence length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in result["rows"] if not r["error"]]
    fewest = min((r["threads"] for r in measured), default=1)
    rows = [r for r in measured if r["threads"] == fewest]  # one point per file
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    points = [(r["latency_ms"]["p50"], r["accuracy"]) for r in rows]
    front = set(pareto(points))
    for i, (r, (lat, acc)) in enumerate(zip(rows, points)):
        left.scatter(lat, acc, marker="o" if r["network"] == "student" else "s", s=70 if i in front else 30,
                     edgecolors="black" if i in front else "none", zorder=3)
        left.annotate(_label(r), (lat, acc), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if front:
        steps = sorted(points[i] for i in front)
        left.step([p[0] for p in steps], [p[1] for p in steps], "k--", where="post", linewidth=1,
                  label="Pareto front (outlined)")
        left.legend(loc="lower right", fontsize=8)
    left.set_xscale("log")
    left.set_xlabel("batch-1 latency p50, ms (log scale)")
    left.set_ylabel("test accuracy")
    left.set_title(f"accuracy vs latency, {fewest} thread(s) (squares: teacher, circles: student)")
    for i, r in enumerate(rows):
        fixed = r.get("fixed_length_ms") or {}
        if fixed:
            lengths = sorted(int(n) for n in fixed)
            right.plot(lengths, [fixed[str(n)]["p50"] for n in lengths], marker="o", label=_label(r), color=plt.cm.tab20(i % 20),
                       linestyle="--" if r["network"] == "teacher" else "-")
    right.set_xlabel("sequence length, tokens")
    right.set_ylabel(f"batch-1 latency p50, ms ({fewest} thread(s))")
    right.set_yscale("log")
    right.set_title("latency vs sequence length (id-level files)")
    if right.lines:
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
