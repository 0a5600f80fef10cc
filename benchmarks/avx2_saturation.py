"""What AVX2 would do to tfkit's ONNX int8 file: ONNX Runtime's uint8 x int8 kernel without VNNI (vpmaddubsw) saturates each
sum of two adjacent products to int16; emulated here with ONNX's reference evaluator and a MatMulIntegerToFloat that saturates.

Label agreement with the float32 file, one test text at a time: ONNX Runtime on this machine, the reference evaluator
exact, and the reference evaluator with saturation; and the share of pair sums that saturated.

    python benchmarks/avx2_saturation.py models/student export/student --texts 1281
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="the model directory the export came from (for its test split)")
    parser.add_argument("export_dir", help="holds model.onnx and model_int8.onnx")
    parser.add_argument("--texts", type=int, default=300)
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    from tfkit.bench import Network

    state = {"saturate": False, "saturated": 0, "pairs": 0}

    class MatMulIntegerToFloat(OpRun):  # ONNX Runtime's operator, as tfkit's int8 file uses it
        op_domain = "com.microsoft"

        def _run(self, a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None):
            a32, b32 = a.astype(np.int32), b.astype(np.int32)
            if state["saturate"]:
                if a32.shape[-1] % 2:
                    a32, b32 = np.pad(a32, [(0, 0), (0, 1)]), np.pad(b32, [(0, 1), (0, 0)])
                pairs = a32[:, 0::2, None] * b32[None, 0::2] + a32[:, 1::2, None] * b32[None, 1::2]  # [M, K/2, N]
                clipped = np.clip(pairs, -32768, 32767)
                state["saturated"] += int((clipped != pairs).sum())
                state["pairs"] += pairs.size
                product = clipped.sum(1)
            else:
                product = a32 @ b32
            if a_zero_point is not None:
                product -= int(a_zero_point) * b.astype(np.int32).sum(0)
            if b_zero_point is not None and np.any(b_zero_point):
                raise NotImplementedError("tfkit's int8 weights are symmetric")
            if bias is not None:
                raise NotImplementedError("tfkit adds biases after the row scales")
            return ((product.astype(np.float32) * a_scale * b_scale).astype(np.float32),)

    export = Path(args.export_dir)
    with tempfile.TemporaryDirectory() as scratch:
        data = np.load(Network("model", Path(args.model_dir), None, Path(scratch), args.texts).inputs)
    ids, mask, lengths = data["token_ids"], data["padding_mask"], data["lengths"]
    float32 = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(export / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    reference = ReferenceEvaluator(onnx.load(export / "model_int8.onnx"), new_ops=[MatMulIntegerToFloat])
    labels = {name: [] for name in ("float32", "onnxruntime", "reference, exact", "reference, AVX2 saturation")}
    for i, n in enumerate(lengths):
        x = {"token_ids": ids[i:i + 1, :n], "padding_mask": mask[i:i + 1, :n]}
        labels["float32"].append(float32.run(["probabilities"], x)[0].argmax())
        labels["onnxruntime"].append(int8.run(["probabilities"], x)[0].argmax())
        for name, saturate in (("reference, exact", False), ("reference, AVX2 saturation", True)):
            state["saturate"] = saturate
            labels[name].append(reference.run(["probabilities"], x)[0].argmax())
    base = np.array(labels["float32"])
    for name, got in labels.items():
        print(f"{name}: label agreement with float32 {np.mean(np.array(got) == base):.2%} ({len(base)} texts)")
    print(f"pair sums saturated: {state['saturated']} of {state['pairs']} ({state['saturated'] / state['pairs']:.1e})")


if __name__ == "__main__":
    main()
