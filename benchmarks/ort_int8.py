"""Which ONNX Runtime int8: quantization variants of one float32 export, timed back to back.

tfkit's int8 (`onnx_graph.quantize_int8`: every projection int8, activations with a scale per token)
against the export's `model.onnx` quantized by `onnxruntime.quantization.quantize_dynamic`
(int8 weights, uint8 activations with one scale per tensor, quantized at run time) after
`onnx_graph.gemm_as_matmul`, with tfkit's former set of float32 projections (`risky_projections`)
and the sets around it, and per-tensor weight scales; with `--fusions`, the float32 and tfkit's int8 file after ONNX Runtime's
transformer optimizer (`optimize_model`, model type `bert_tf`); with `--static`, also `quantize_static` (QDQ, per-channel int8 weights,
uint8 activations with scales calibrated on 320 validation texts: min-max, the 99.99th percentile,
entropy). Reports label agreement with float32 on the test texts, in the gate's
length-sorted batches of 32 (it needs 99%) and one text at a time,
accuracy, size, and batch-1 p50 latency at natural length and at 128 tokens, one thread,
interleaved in short rounds with `tfkit.timing.measure` (25 texts and 4 calls at 128 tokens per variant a round, so
every variant sees the same seconds of a noisy host; the speed-ups are medians of each round's own ratio).

    python benchmarks/ort_int8.py models/teacher export/teacher/model.onnx --out benchmarks/results/ort_int8_teacher
    python benchmarks/ort_int8.py models/student export/student/model.onnx --static --out benchmarks/results/ort_int8_static
    python benchmarks/ort_int8.py models/student export/student/model.onnx --also "earlier=old/model_int8.onnx" --rounds 5
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

TFKIT = "int8 with a scale per token, nothing float32 (tfkit)"  # the export's own int8 (`onnx_graph.quantize_int8`)

def risky_projections(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """tfkit's float32 set under per-tensor scales: MatMul name -> (input, e.g. `transformer_layer_0 feedforward_output`).

    Every layer's feed-forward and attention outputs, and the first layer's feed-forward input.

    tf2onnx names a Tensordot's MatMul by its Keras scope; an EinsumDense's Gemm only by a counter,
    so its scope is read from the node that feeds it (through Reshape/Transpose/Unsqueeze).
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        scope, source = node.name, node
        for _ in range(4):
            if "/" in scope:
                break
            source = producer.get(source.input[0])
            if source is None or source.op_type not in ("Reshape", "Transpose", "Unsqueeze", "Squeeze"):
                break
            scope = source.name
        parts = scope.split("/")
        layer = next((p.removesuffix("_1") for p in parts if p.startswith("transformer_layer")), None)
        if layer and node.name == scope and any(p.startswith("feedforward_output") for p in parts):
            found[node.name] = (node.input[0], f"{layer} feedforward_output")
        elif layer == "transformer_layer_0" and node.name == scope and any(p.startswith("feedforward_intermediate") for p in parts):
            found[node.name] = (node.input[0], f"{layer} feedforward_intermediate")
        elif layer and node.name != scope and any(p.startswith("self_attention_layer") and "norm" not in p for p in parts):
            found[node.name] = (node.input[0], f"{layer} attention_output")
    return found


def static_variants(model, scratch: Path, calibration: list[dict], max_length: int) -> dict:
    """name -> statically quantized (QDQ) ModelProto, activation scales from `calibration` (batches of model inputs)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from tfkit import onnx_graph

    class Reader(CalibrationDataReader):
        def __init__(self, fixed: bool):  # histograms (percentile, entropy) need one shape: pad to max_length
            pad = lambda v: np.pad(v, [[0, 0], [0, max_length - v.shape[1]]]) if fixed else v
            self.batches = iter([{k: pad(v) for k, v in b.items()} for b in calibration])

        def get_next(self):
            return next(self.batches, None)

    m = onnx_graph.gemm_as_matmul(onnx.ModelProto.FromString(model.SerializeToString()))
    source = scratch / "static_in.onnx"
    onnx.save(m, source)
    tfkit_set = list(risky_projections(m))

    def quantize(name, method, exclude=(), **extra):
        target = scratch / f"static_{name}.onnx"
        logging.disable(logging.WARNING)
        quantize_static(source, target, Reader(method != CalibrationMethod.MinMax), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, nodes_to_exclude=list(exclude), calibrate_method=method,
                        extra_options=extra)
        return onnx.load(target)

    return {"static QDQ, min-max, everything int8": quantize("minmax", CalibrationMethod.MinMax),
            "static QDQ, min-max, tfkit's float32 set": quantize("minmax-tfkit", CalibrationMethod.MinMax, tfkit_set),
            "static QDQ, 99.99th percentile, everything int8": quantize("pct", CalibrationMethod.Percentile, CalibPercentile=99.99),
            "static QDQ, entropy, everything int8": quantize("entropy", CalibrationMethod.Entropy)}


def fusion_variants(float32, int8, scratch: Path, heads: int, hidden: int) -> dict:
    """name -> the float32 file and tfkit's int8 file after `onnxruntime.transformers.optimizer` (BERT fusions)."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    def fused(m, name):
        source = scratch / f"fusions_{name}.onnx"
        onnx.save(m, source)
        logging.disable(logging.WARNING)  # "model producer not matched": tf2onnx, not PyTorch
        optimized = optimize_model(str(source), model_type="bert_tf", num_heads=heads, hidden_size=hidden, opt_level=0)
        print(name, "fusions:", {k: v for k, v in optimized.get_fused_operator_statistics().items() if v})
        return optimized.model

    return {"fp32 + ORT transformer optimizer": fused(float32, "fp32"),
            "int8 with a scale per token + ORT transformer optimizer": fused(int8, "int8")}


def variants(model, scratch: Path) -> dict:
    """name -> quantized ModelProto (plus the float32 original)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tfkit import onnx_graph

    def quantize(name, float32=lambda labels: labels, per_channel=True):
        """The export's int8 recipe with another set of projections kept float32 (`float32` filters tfkit's set)."""
        m = onnx_graph.gemm_as_matmul(onnx.ModelProto.FromString(model.SerializeToString()))
        source, target = scratch / f"{name}_in.onnx", scratch / f"{name}.onnx"
        onnx.save(m, source)
        weights = {i.name for i in m.graph.initializer}
        ffn_in = {n.name: (n.input[0], f"{next(q.removesuffix('_1') for q in n.name.split('/') if q.startswith('transformer_layer'))} feedforward_intermediate") for n in m.graph.node
                  if n.op_type == "MatMul" and "feedforward_intermediate" in n.name and n.input[1] in weights}
        risky = {**risky_projections(m), **ffn_in}
        keep = [n for n, (_, label) in risky.items() if label in float32({label for _, label in risky.values()})]
        logging.disable(logging.WARNING)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=per_channel, op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=keep)
        return onnx.load(target)

    outputs = lambda labels: {x for x in labels if x.endswith("_output")}
    tfkit_set = lambda labels: outputs(labels) | {x for x in labels if x.startswith("transformer_layer_0") and x.endswith("intermediate")}
    return {"fp32": model,
            "int8, nothing float32": quantize("none", lambda labels: set()),
            "int8, FFN + attention outputs float32": quantize("outputs", outputs),
            "int8, outputs + layer 0 FFN input float32 (tfkit before)": quantize("tfkit", tfkit_set),
            "int8, tfkit's set, per-tensor weights": quantize("tensor", tfkit_set, per_channel=False),
            "int8, outputs + every FFN input float32": quantize("all_ffn", lambda labels: labels),
            TFKIT: onnx_graph.quantize_int8(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="the model directory the ONNX file was exported from (for its test split)")
    parser.add_argument("onnx", help="its float32 model.onnx")
    parser.add_argument("--static", action="store_true", help="also static (calibrated) QDQ variants")
    parser.add_argument("--fusions", action="store_true", help="also the float32 and tfkit int8 files after ORT's transformer optimizer")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=FILE",
                        help="also this ONNX file of the same network, e.g. an earlier export's model_int8.onnx (repeatable)")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved timing rounds (medians reported)")
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
        if args.static:
            import tensorflow as tf

            from tfkit.classifier import Classifier

            val = sorted(Classifier.load(args.model_dir).heldout()[0].texts[:320], key=len)
            calibration = [{k: v.numpy() for k, v in net.tokenizer.encode(tf.constant(val[s:s + 32])).items()}
                           for s in range(0, len(val), 32)]
            models |= static_variants(models["fp32"], scratch, calibration, net.tokenizer.max_length)
        if args.fusions:
            models |= fusion_variants(models["fp32"], models[TFKIT], scratch, net.arch["num_heads"], net.arch["hidden_dim"])
        models |= {name: onnx.load(file) for name, _, file in (also.partition("=") for also in args.also)}
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
    labels, single = {}, {}
    for name, s in sessions.items():
        p = np.zeros([len(lengths), len(net.config.labels)], np.float32)
        for idx, batch in batches:
            p[idx] = s.run(["probabilities"], batch)[0]
        labels[name] = p.argmax(1)
        single[name] = np.array([s.run(["probabilities"], x)[0].argmax(1)[0] for x in singles])
    results = {name: {"agreement": float(np.mean(labels[name] == labels["fp32"])),
                      "agreement_one_text": float(np.mean(single[name] == single["fp32"])),
                      "accuracy": float(np.mean(labels[name] == net.labels)),
                      "mb": len(models[name].SerializeToString()) / 1e6, "natural": [], "length128": []} for name in models}
    for s in sessions.values():
        measure(run(s), singles[:20] + fixed, iterations=21)
    for k in range(args.rounds):  # short and interleaved: every variant sees the same seconds of a noisy host
        texts = singles[25 * k % 300:][:25]
        for name, s in sessions.items():
            results[name]["natural"].append(measure(run(s), texts, warmup=1, iterations=len(texts)).median)
            results[name]["length128"].append(measure(run(s), fixed, warmup=1, iterations=4).median)
    base_rounds = {key: np.array(results["fp32"][key]) for key in ("natural", "length128")}
    for r in results.values():
        for key in ("natural", "length128"):
            r[f"{key}_vs_fp32"] = float(np.median(base_rounds[key] / np.array(r[key])))  # each round's own ratio
            r[f"{key}_rounds"], r[key] = r[key], float(np.median(r[key]))
    lines = ["| variant | agreement with fp32, batches of 32 (the gate) | one text at a time | accuracy | MB | p50 ms, natural | vs fp32 | p50 ms, 128 tokens | vs fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['agreement']:.2f}% | {100 * r['agreement_one_text']:.2f}% | {r['accuracy']:.4f} | {r['mb']:.1f} | {r['natural']:.2f} "
                     f"| {r['natural_vs_fp32']:.2f}x | {r['length128']:.2f} | {r['length128_vs_fp32']:.2f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
