"""The ONNX graph of a fitted classification head: embedding in, class probabilities out.

Built from the head's saved arrays (the same ``head.safetensors`` names), not traced, so the graph is
exactly the documented computation and needs no torch to describe: standardise
(``(x - mean) / scale``), for the residual heads add the fusion term of the two embedders' blocks, then
the linear layers with ReLU between them (dropout is the identity at inference), then softmax.
``LpNormalization`` stands for ``torch.nn.functional.normalize``; they differ only for an all-zero
projected vector, where torch divides by 1e-12 instead of 0.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "sentence_embedding"
OUTPUT_NAME = "probabilities"
_MLP_WEIGHT = re.compile(r"^mlp\.(\d+)\.weight$")


def build_head_graph(head: Any, opset: int) -> onnx.ModelProto:
    """A graph computing ``head.predict_proba`` for ``[batch_size, n_features_in_]`` float32 embeddings.

    Args:
        head: A fitted ``LogisticHead``, ``MLPHead``, ``HadamardResidualHead`` or ``SumResidualHead``.
        opset: ONNX opset (at least 13), normally the one of the embedder's graphs.
    """
    tensors = {name: np.asarray(array, dtype=np.float32) for name, array in head._tensors().items()}
    width, classes = int(head.n_features_in_), len(head.classes_)
    nodes: list[onnx.NodeProto] = []
    initializers = [numpy_helper.from_array(array, name) for name, array in tensors.items()]

    def constant(name: str, values: list[int]) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def gemm(source: str, prefix: str, output: str) -> str:
        nodes.append(helper.make_node("Gemm", [source, f"{prefix}weight", f"{prefix}bias"], [output], transB=1))
        return output

    nodes.append(helper.make_node("Sub", [INPUT_NAME, "mean"], ["centred"]))
    nodes.append(helper.make_node("Div", ["centred", "scale"], ["standardised"]))
    if "coef" in tensors:  # LogisticHead
        nodes.append(helper.make_node("Gemm", ["standardised", "coef", "intercept"], ["logits"], transB=1))
    else:
        hidden = "standardised"
        residual = getattr(head, "RESIDUAL", None)
        if residual is not None:
            d1, d2 = head.member_dims_
            axes, step = constant("axes", [1]), constant("step", [1])
            nodes.append(
                helper.make_node("Slice", [hidden, constant("s1", [0]), constant("e1", [d1]), axes, step], ["x1"])
            )
            nodes.append(
                helper.make_node("Slice", [hidden, constant("s2", [d1]), constant("e2", [d1 + d2]), axes, step], ["x2"])
            )
            if residual == "hadamard":
                a, b = (gemm("x1", "project.", "p1"), "x2") if d1 > d2 else ("x1", gemm("x2", "project.", "p2"))
                combine = "Mul"
            else:
                a, b = gemm("x1", "project_1.", "p1"), gemm("x2", "project_2.", "p2")
                combine = "Add"
            nodes.append(helper.make_node("LpNormalization", [a], ["u1"], axis=1, p=2))
            nodes.append(helper.make_node("LpNormalization", [b], ["u2"], axis=1, p=2))
            nodes.append(helper.make_node(combine, ["u1", "u2"], ["term"]))
            nodes.append(helper.make_node("Concat", [hidden, "term"], ["with_term"], axis=1))
            hidden = "with_term"
        layers = sorted(int(match.group(1)) for name in tensors if (match := _MLP_WEIGHT.match(name)))
        for position, index in enumerate(layers):
            output = "logits" if position == len(layers) - 1 else f"linear_{index}"
            gemm(hidden, f"mlp.{index}.", output)
            if output != "logits":
                nodes.append(helper.make_node("Relu", [output], [f"relu_{index}"]))
                hidden = f"relu_{index}"
    nodes.append(helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1))
    graph = helper.make_graph(
        nodes,
        f"lafusion_{type(head).__name__}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch_size", width])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch_size", classes])],
        initializer=initializers,
    )
    opset_imports = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opset_imports,
        producer_name="lafusion",
        ir_version=helper.find_min_ir_version_for(opset_imports),
    )
    onnx.checker.check_model(model)
    return model
