"""ONNX graph edits for export: a tf2onnx gap, readable dimensions, int8 with a scale per token, the string-in front end.

The string-in model puts onnxruntime-extensions' `BertTokenizer` (vocabulary inside) in front
of the classifier. That op takes one string per call and neither pads nor batches, so an
ONNX `Loop` runs it once per text, pads each row to the max length and stacks the rows;
the batch is then cut to its longest row, as `WordPieceTokenizer.encode` does, so short
texts stay cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:  # the tokenizer is only read here; importing it would load TensorFlow
    from tfkit.preprocess import WordPieceTokenizer

CONTRIB = "ai.onnx.contrib"  # onnxruntime-extensions' op domain
ORT_CONTRIB = "com.microsoft"  # ONNX Runtime's own operators


def erfc_as_erf(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites Erfc(x) as 1 - Erf(x): exact GELU is erfc-based in TF, and tf2onnx 1.17 leaves Erfc unconverted.

    GELU's own erfc(-x / sqrt 2) becomes 1 + erf(x / sqrt 2), the form ONNX Runtime's session optimizer
    fuses into one Gelu kernel (it matches Div by sqrt 2, Erf, Add 1, then the Mul by 0.5 x).
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    consts = {i.name: i for i in model.graph.initializer}  # converted only where a scalar is checked
    nodes, one, sqrt2 = [], "tfkit_erfc_one", "tfkit_sqrt2"

    def gelu_input(node) -> str | None:
        """x if the Erfc's argument is -x / sqrt 2 as TF writes it (Mul of Neg(x) and 0.70710677), else None."""
        scaled = producer.get(node.input[0])
        if scaled is None or scaled.op_type != "Mul":
            return None
        for a, b in (scaled.input, reversed(scaled.input)):
            neg = producer.get(a)
            if neg is not None and neg.op_type == "Neg" and b in consts and np.prod(consts[b].dims) == 1 \
                    and np.isclose(float(numpy_helper.to_array(consts[b]).reshape(-1)[0]), 2 ** -0.5):
                return neg.input[0]
        return None

    for node in model.graph.node:
        if node.op_type == "Erfc" and node.domain in ("", "ai.onnx"):
            erf, x = node.output[0] + "_erf", gelu_input(node)
            if x is None:
                nodes += [helper.make_node("Erf", [node.input[0]], [erf], name=node.name + "_erf"),
                          helper.make_node("Sub", [one, erf], [node.output[0]], name=node.name)]
            else:
                nodes += [helper.make_node("Div", [x, sqrt2], [node.output[0] + "_scaled"], name=node.name + "_div"),
                          helper.make_node("Erf", [node.output[0] + "_scaled"], [erf], name=node.name + "_erf"),
                          helper.make_node("Add", [erf, one], [node.output[0]], name=node.name)]
        else:
            nodes.append(node)
    if len(nodes) != len(model.graph.node):
        model.graph.initializer.extend([numpy_helper.from_array(np.array(1, np.float32), one),
                                        numpy_helper.from_array(np.array(np.sqrt(2), np.float32), sqrt2)])
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        _prune(model)
    return model


def _prune(model: onnx.ModelProto) -> None:
    """Drops nodes whose outputs nothing uses, then unused initializers (ONNX Runtime warns about each at load)."""
    outputs = {o.name for o in model.graph.output}

    def inputs(nodes) -> set[str]:  # subgraphs (Loop, If bodies) may read outer names without listing them
        names = set()
        for node in nodes:
            names.update(node.input)
            for attribute in node.attribute:
                for graph in [attribute.g, *attribute.graphs]:
                    names |= inputs(graph.node)
        return names

    while True:
        used = outputs | inputs(model.graph.node)
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    for initializer in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(initializer)


def name_dimensions(model: onnx.ModelProto) -> None:
    """Names the dynamic input/output dimensions `batch` and `sequence` (tf2onnx writes unk__123)."""
    for value in [*model.graph.input, *model.graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", "sequence")):
            if not dim.HasField("dim_value"):
                dim.dim_param = name


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def gemm_as_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites Gemm with a constant weight as MatMul (+ Add of the bias), in place.

    tf2onnx writes keras-hub's attention projections (EinsumDense) as Gemm, and `quantize_int8` (like ONNX
    Runtime's dynamic quantization) rewrites MatMul: without this, 4 of a layer's 6 weight matmuls stay float32.
    """
    weights = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        has_bias = len(node.input) > 2 and bool(node.input[2])
        plain = attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and (not has_bias or attrs.get("beta", 1.0) == 1.0)
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or node.input[1] not in weights or not plain:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            weight = node.input[1] + "_transposed"
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(weights[node.input[1]]).T.copy(), weight))
        bias = node.input[2] if has_bias else None
        product = node.output[0] + "_matmul" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name + "_MatMul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=node.name + "_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    unused = [i for i in model.graph.initializer if i.name not in used and i.name + "_transposed" in used]
    for initializer in unused:  # the weights that were transposed
        model.graph.initializer.remove(initializer)
    return model


def fold_constants(model: onnx.ModelProto) -> int:
    """Evaluates nodes whose inputs are all constants (ONNX's reference evaluator) into initializers, in place; returns how many.

    tf2onnx leaves each attention output projection's weight as a Reshape of a [1, 1, hidden,
    heads, head_dim] constant to a shape computed by Shape/Gather/ReduceProd/Concat, and ONNX
    Runtime's own constant folding leaves it too: the Gemm then has no constant weight, so it
    neither becomes a MatMul nor gets int8 weights, and four shape nodes run per layer.
    """
    from onnx.reference import ReferenceEvaluator

    known = {i.name: i for i in model.graph.initializer}
    folded, kept = 0, []
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if node.domain not in ("", "ai.onnx") or node.attribute and any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute) \
                or not inputs or not all(name in known for name in inputs) or node.op_type in ("RandomNormal", "RandomUniform"):
            kept.append(node)
            continue
        single = helper.make_graph([node], "fold", [helper.make_tensor_value_info(n, known[n].data_type, None) for n in inputs],
                                   [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output])
        evaluator = ReferenceEvaluator(helper.make_model(single, opset_imports=model.opset_import))
        values = evaluator.run(None, {n: numpy_helper.to_array(known[n]) for n in inputs})
        for name, value in zip(node.output, values):
            known[name] = numpy_helper.from_array(np.asarray(value), name)
            model.graph.initializer.append(known[name])
        folded += 1
    del model.graph.node[:]
    model.graph.node.extend(kept)
    _prune(model)
    return folded


class _NoMatch(Exception):
    """A subgraph is not the pattern a rewrite looks for; it is left as it is."""


def fuse_layer_norms(model: onnx.ModelProto) -> int:
    """Replaces tf2onnx's 12-node LayerNorm with one ONNX LayerNormalization, in place; returns how many.

    tf2onnx writes Keras' LayerNormalization as moments (two GlobalAveragePool), rsqrt, scale and
    shift; neither ONNX Runtime's session optimizer nor its transformer optimizer recognise that
    form, and each node is a kernel launch on a [batch, length, hidden] tensor.
    """
    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for value in graph.output:  # a graph output is a use the fused node would lose
        consumers.setdefault(value.name, []).append(helper.make_node("GraphOutput", [value.name], []))

    def follow(name: str, op: str, count: int = 1) -> list:
        users = [n for n in consumers.get(name, []) if n.op_type == op]
        if len(users) != count or len(consumers.get(name, [])) != count:
            raise _NoMatch
        return users

    def other(node, known: str) -> str:
        rest = [i for i in node.input if i != known]
        if len(rest) != 1 or rest[0] not in consts:
            raise _NoMatch
        return rest[0]

    replaced, drop, fused = {}, set(), 0
    # On the backbone's [batch, length, hidden] states GlobalAveragePool averages the last axis only,
    # which is what LayerNormalization(axis=-1) normalizes.
    for mean in [n for n in graph.node if n.op_type == "GlobalAveragePool"]:
        try:
            x, m = mean.input[0], mean.output[0]
            users = consumers.get(m, [])
            negs, subs = [n for n in users if n.op_type == "Neg"], [n for n in users if n.op_type == "Sub" and list(n.input) == [x, m]]
            if len(users) != 2 or len(negs) != 1 or len(subs) != 1:
                raise _NoMatch
            (square,) = follow(subs[0].output[0], "Mul", 2)[:1]
            if list(square.input) != [subs[0].output[0]] * 2:
                raise _NoMatch
            (variance,) = follow(square.output[0], "GlobalAveragePool")
            (plus_eps,) = follow(variance.output[0], "Add")
            (root,) = follow(plus_eps.output[0], "Sqrt")
            (inverse,) = follow(root.output[0], "Reciprocal")
            (scale,) = follow(inverse.output[0], "Mul")
            by_input = {next(i for i in n.input if i != scale.output[0]): n for n in follow(scale.output[0], "Mul", 2)}
            if set(by_input) != {x, negs[0].output[0]}:
                raise _NoMatch
            (shift,) = follow(by_input[negs[0].output[0]].output[0], "Add")
            (out,) = follow(shift.output[0], "Add")
            if set(out.input) != {by_input[x].output[0], shift.output[0]} or len(follow(negs[0].output[0], "Mul")) != 1:
                raise _NoMatch
            gamma, beta, eps = other(scale, inverse.output[0]), other(shift, by_input[negs[0].output[0]].output[0]), other(plus_eps, variance.output[0])
        except _NoMatch:
            continue
        epsilon = float(numpy_helper.to_array(consts[eps]).reshape(-1)[0])
        flat = []
        for name in (gamma, beta):  # LayerNormalization wants [hidden]; tf2onnx stores them as [1, 1, hidden] or [hidden]
            value = numpy_helper.to_array(consts[name]).reshape(-1)
            flat.append(name + "_flat")
            graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), flat[-1]))
        replaced[id(out)] = helper.make_node("LayerNormalization", [x, *flat], [out.output[0]], name=mean.name + "_LayerNormalization",
                                              axis=-1, epsilon=epsilon)
        drop |= {id(n) for n in (mean, negs[0], subs[0], square, variance, plus_eps, root, inverse, scale, *by_input.values(), shift)}
        fused += 1
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(nodes)
    _prune(model)
    return fused


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every weight MatMul in int8: int8 weights per output channel, activations quantized at run time with one scale per token.

    ONNX Runtime's dynamic quantization (`quantize_dynamic`) takes one activation scale per tensor, so
    the outlier-prone projections (the feed-forward output after GELU, the attention output) had to
    stay float32 to pass the gate, a batch's texts shared a scale (a text's label could change with its
    batch), and int8 was only ~1.4x float32. A scale per token (per row of the MatMul's input, as
    LiteRT's dynamic-range kernels do) keeps each token's outliers to itself: on a default student,
    everything int8 agreed with float32 on 99.61% of test texts at 2.4x float32's speed (the former
    file, with 7 of 20 projections float32: 99.53% at 1.4x), and a text scores the same alone and in
    any batch; numbers: benchmarks/README.md "A scale per token".
    Each input is quantized once (ReduceMax of |x| per row, QuantizeLinear per axis to uint8 around
    zero point 128; an attention layer's Q, K and V share theirs); each projection is ONNX Runtime's
    `MatMulIntegerToFloat` (uint8 x int8 on VNNI/AMX where the CPU has them, the column scales applied
    as it writes the result; its `a_scale` is a scalar, so 1) and one Mul by the row scales: 3-8%
    faster than MatMulInteger, Cast and two Muls, as at batch 1 the node count costs as much as the matmuls.
    keras-hub's attention projections (EinsumDense) reach ONNX as Gemm; they are rewritten as MatMul first.
    """
    model = gemm_as_matmul(_copy(model))
    inferred = onnx.shape_inference.infer_shapes(model)
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.graph.value_info, *inferred.graph.input]
            if v.type.tensor_type.HasField("shape")}
    weights = {i.name: i for i in model.graph.initializer}

    def quantizable(node) -> bool:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        return weight is not None and len(weight.dims) == 2 and rank.get(node.input[0]) == 2

    readers: dict[str, list] = {}  # input -> the projections reading it, in graph order
    for node in model.graph.node:
        if quantizable(node):
            readers.setdefault(node.input[0], []).append(node)
    if not readers:
        raise ValueError("no MatMul with a constant 2-D weight and a 2-D input to quantize")
    nodes = []
    for node in model.graph.node:
        if not quantizable(node):
            nodes.append(node)
        elif readers[node.input[0]][0] is node:  # its input's first projection: all of them, here
            nodes += _int8_projections(model, node.input[0], readers[node.input[0]], weights)
    shared = {"int8_axes_1": np.array([1], np.int64), "int8_inv127": np.array(1 / 127, np.float32),
              "int8_tiny": np.array(1e-30, np.float32), "int8_zero_point": np.array(128, np.uint8),
              "int8_one": np.array(1, np.float32)}
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in shared.items())
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == ORT_CONTRIB for o in model.opset_import):
        model.opset_import.append(helper.make_operatorsetid(ORT_CONTRIB, 1))
    _prune(model)
    return model


def _int8_projections(model: onnx.ModelProto, x: str, projections: list, weights: dict) -> list:
    """The nodes computing every projection of `x` in int8 (see `quantize_int8`); adds their int8 weights to `model`."""
    q = f"{projections[0].name}/int8_"
    nodes = [helper.make_node("Abs", [x], [q + "abs"], name=q + "abs"),
             helper.make_node("ReduceMax", [q + "abs"], [q + "max"], name=q + "max", axes=[1], keepdims=0),
             helper.make_node("Max", [q + "max", "int8_tiny"], [q + "max_nonzero"], name=q + "max_nonzero"),
             helper.make_node("Mul", [q + "max_nonzero", "int8_inv127"], [q + "scale"], name=q + "scale"),  # [tokens]
             helper.make_node("Shape", [q + "scale"], [q + "tokens"], name=q + "tokens"),
             helper.make_node("Expand", ["int8_zero_point", q + "tokens"], [q + "zero_points"], name=q + "zero_points"),
             helper.make_node("QuantizeLinear", [x, q + "scale", q + "zero_points"], [q + "x"], name=q + "x", axis=0),
             helper.make_node("Unsqueeze", [q + "scale", "int8_axes_1"], [q + "row_scale"], name=q + "row_scale")]
    for node in projections:
        p = f"{node.name}/int8_"
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        w_scale = (np.maximum(np.abs(w).max(axis=0), 1e-30) / 127).astype(np.float32)
        model.graph.initializer.extend([numpy_helper.from_array(np.clip(np.round(w / w_scale), -127, 127).astype(np.int8), p + "weight"),
                                        numpy_helper.from_array(w_scale, p + "weight_scale")])
        nodes += [helper.make_node("MatMulIntegerToFloat", [q + "x", p + "weight", "int8_one", p + "weight_scale", "int8_zero_point"],
                                   [p + "columns_scaled"], name=p + "matmul", domain=ORT_CONTRIB),  # its a_scale is a scalar: 1
                  helper.make_node("Mul", [p + "columns_scaled", q + "row_scale"], [node.output[0]], name=node.name)]
    return nodes


def tokenizer_graph(tokenizer: WordPieceTokenizer, ir_version: int) -> onnx.ModelProto:
    """`texts` string [batch] -> int32 `token_ids`, `padding_mask` [batch, longest], as `tokenizer.encode` makes them."""
    from onnxruntime_extensions import gen_processing_models

    length, head = tokenizer.max_length, tokenizer.head
    single, _ = gen_processing_models("BertTokenizer", pre_kwargs={
        "vocab": "\n".join(tokenizer.vocab), "do_lower_case": int(tokenizer.lowercase),
        "strip_accents": int(tokenizer.lowercase), "max_length": -1})  # untruncated: cut below as `wordpiece.cut` does
    op = single.graph.node[0]
    # Three outputs, not four: with offset_mapping also requested, inside a Loop the ids of
    # non-ASCII texts came back as offsets (onnxruntime-extensions 0.15.2).
    bert = helper.make_node(op.op_type, ["text"], ["ids_all", "type_ids", "mask_all"], name="bert_tokenizer", domain=CONTRIB)
    bert.attribute.extend(op.attribute)
    const = lambda name, value: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.int64), name))
    # [CLS] and the first `head` pieces, then from max(1 + head, n - (length - 1 - head)) to the end ([SEP] included).
    keep = lambda name: [helper.make_node("Slice", [f"{name}_all", "zero", "head_end"], [f"{name}_head"]),
                         helper.make_node("Slice", [f"{name}_all", "tail_start", "end"], [f"{name}_tail"]),
                         helper.make_node("Concat", [f"{name}_head", f"{name}_tail"], [name], axis=0)]
    body = helper.make_graph(
        [const("zero", [0]), const("max_length", [length]), const("head_end", [1 + head]),
         const("tail_length", [length - 1 - head]), const("end", [np.iinfo(np.int64).max]),
         helper.make_node("Unsqueeze", ["i", "zero"], ["i_1d"]),
         helper.make_node("Gather", ["texts", "i_1d"], ["text"], axis=0),
         bert,
         helper.make_node("Shape", ["ids_all"], ["pieces"]),
         helper.make_node("Sub", ["pieces", "tail_length"], ["tail_from"]),
         helper.make_node("Max", ["tail_from", "head_end"], ["tail_start"]),
         *keep("ids"), *keep("mask"),
         helper.make_node("Shape", ["ids"], ["ids_length"]),
         helper.make_node("Sub", ["max_length", "ids_length"], ["pad_right"]),
         helper.make_node("Concat", ["zero", "pad_right"], ["pads"], axis=0),
         helper.make_node("Pad", ["ids", "pads", "pad_id"], ["ids_row"]),
         helper.make_node("Pad", ["mask", "pads"], ["mask_row"]),
         helper.make_node("Identity", ["keep_going"], ["keep_going_out"])],
        "tokenize_one_text",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("keep_going", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("keep_going_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("ids_row", TensorProto.INT64, [length]),
         helper.make_tensor_value_info("mask_row", TensorProto.INT64, [length])])
    graph = helper.make_graph(
        [const("pad_id", tokenizer.pad_id), const("start", [0]), const("axis", [1]),
         helper.make_node("Shape", ["texts"], ["batch_1d"]),
         helper.make_node("Squeeze", ["batch_1d"], ["batch"]),
         helper.make_node("Loop", ["batch", ""], ["ids_rows", "mask_rows"], body=body),
         helper.make_node("ReduceSum", ["mask_rows", "axis"], ["lengths"], keepdims=0),
         helper.make_node("ReduceMax", ["lengths"], ["longest"], keepdims=1),
         helper.make_node("Slice", ["ids_rows", "start", "longest", "axis"], ["ids_64"]),
         helper.make_node("Slice", ["mask_rows", "start", "longest", "axis"], ["mask_64"]),
         helper.make_node("Cast", ["ids_64"], ["token_ids"], to=TensorProto.INT32),
         helper.make_node("Cast", ["mask_64"], ["padding_mask"], to=TensorProto.INT32)],
        "tokenizer",
        [helper.make_tensor_value_info("texts", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", "sequence"]) for name in ("token_ids", "padding_mask")])
    opsets = [helper.make_operatorsetid("", 17), helper.make_operatorsetid(CONTRIB, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


def with_tokenizer(classifier: onnx.ModelProto, tokenizer: WordPieceTokenizer) -> onnx.ModelProto:
    """The classifier with the tokenizer graph merged in front: strings in, probabilities out."""
    front = tokenizer_graph(tokenizer, classifier.ir_version)
    return onnx.compose.merge_models(front, classifier, io_map=[("token_ids", "token_ids"), ("padding_mask", "padding_mask")])
