"""Which ONNX Runtime int8: dynamic-quantization variants of one float32 export, timed back to back.

Each variant is the export's `model.onnx` quantized by `onnxruntime.quantization.quantize_dynamic`
(int8 weights, uint8 activations quantized at run time): today's tfkit default and the levers
around it (keras-hub's attention projections rewritten from Gemm to MatMul so they get quantized
too, the feed-forward output projections quantized or kept float32, per-channel or per-tensor
scales). Reports label agreement with float32 on the test texts (the export gate needs 99%),
accuracy, size, and batch-1 p50 latency at natural length and at 128 tokens, one thread,
interleaved over 3 rounds with `tfkit.timing.measure`.

    python benchmarks/ort_int8.py models/teacher export/teacher/model.onnx --out benchmarks/results/ort_int8_teacher
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np


def variants(model, scratch: Path) -> dict:
    """name -> quantized ModelProto (plus the float32 original)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tfkit import onnx_graph

    def quantize(name, gemm=True, keep_ffn_output=True, per_channel=True):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        if gemm:
            onnx_graph.gemm_as_matmul(m)
        source, target = scratch / f"{name}_in.onnx", scratch / f"{name}.onnx"
        onnx.save(m, source)
        keep = [n.name for n in m.graph.node if n.op_type == "MatMul" and "feedforward_output" in n.name] if keep_ffn_output else []
        logging.disable(logging.WARNING)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=per_channel, op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=keep)
        return onnx.load(target)

    return {"fp32": model,
            "int8, Gemm left float32 (tfkit before)": quantize("before", gemm=False),
            "int8, Gemm as MatMul (tfkit now)": quantize("now"),
            "int8, Gemm as MatMul, FFN output int8 too": quantize("all", keep_ffn_output=False),
            "int8, Gemm as MatMul, per-tensor": quantize("tensor", per_channel=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="the model directory the ONNX file was exported from (for its test split)")
    parser.add_argument("onnx", help="its float32 model.onnx")
    parser.add_argument("--out", default="benchmarks/results/ort_int8")
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort

    from tfkit.bench import Network
    from tfkit.timing import measure

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        net = Network("model", Path(args.model_dir), None, scratch, 2000)
        data = np.load(net.inputs)
        ids, mask, lengths = data["token_ids"], data["padding_mask"], data["lengths"]
        models = variants(onnx.load(args.onnx), scratch)
    singles = [{"token_ids": ids[i:i + 1, :n], "padding_mask": mask[i:i + 1, :n]} for i, n in enumerate(lengths)]
    fixed = [{"token_ids": np.full([1, 128], net.tokenizer.cls_id, np.int32), "padding_mask": np.ones([1, 128], np.int32)}]
    order = np.argsort(lengths, kind="stable")
    batches = [(idx, {"token_ids": ids[idx, :lengths[idx].max()], "padding_mask": mask[idx, :lengths[idx].max()]})
               for idx in (order[s:s + 32] for s in range(0, len(order), 32))]

    def session(model):
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    sessions = {name: session(m) for name, m in models.items()}
    run = lambda s: lambda x: s.run(["probabilities"], x)
    labels = {}
    for name, s in sessions.items():
        p = np.zeros([len(lengths), len(net.config.labels)], np.float32)
        for idx, batch in batches:
            p[idx] = s.run(["probabilities"], batch)[0]
        labels[name] = p.argmax(1)
    results = {name: {"agreement": float(np.mean(labels[name] == labels["fp32"])),
                      "accuracy": float(np.mean(labels[name] == net.labels)),
                      "mb": len(models[name].SerializeToString()) / 1e6, "natural": [], "length128": []} for name in models}
    for _ in range(3):  # interleaved, so every variant sees the same minutes of a shared machine
        for name, s in sessions.items():
            results[name]["natural"].append(measure(run(s), singles[:300], warmup=20, iterations=300).stats()["p50"])
            results[name]["length128"].append(measure(run(s), fixed, warmup=5, iterations=50).stats()["p50"])
    for r in results.values():
        r["natural"], r["length128"] = float(np.median(r["natural"])), float(np.median(r["length128"]))
    base = results["fp32"]
    lines = ["| variant | agreement with fp32 | accuracy | MB | p50 ms, natural | vs fp32 | p50 ms, 128 tokens | vs fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['agreement']:.2f}% | {r['accuracy']:.4f} | {r['mb']:.1f} | {r['natural']:.2f} "
                     f"| {base['natural'] / r['natural']:.2f}x | {r['length128']:.2f} | {base['length128'] / r['length128']:.2f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
