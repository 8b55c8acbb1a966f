"""The small ONNX graph that fuses member vectors of a multi-model embedder.

Why a graph and not numpy in the encoder: the fusion (and its weights, for ``weighted``) then lives in the
exported folder as ONNX, so any ONNX Runtime client, not only our Python encoder, gets the final vector
from the files alone. Inputs ``member_<i>`` ``[batch_size, d_i]``, output ``sentence_embedding``; the
operators mirror :func:`lafusion_st.fusion.fuse`.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

from lafusion_st.fusion import fused_dimension

OUTPUT_NAME = "sentence_embedding"


def build_fusion_graph(
    dimensions: Sequence[int], mode: str, weights: Sequence[float] | None, opset: int
) -> onnx.ModelProto:
    """A graph fusing ``len(dimensions)`` float32 vectors with ``mode``.

    Args:
        dimensions: Size of each member's vector, in member order.
        mode: ``concat``, ``mean``, ``sum`` or ``weighted`` (``sum_i weights[i] * member_i``).
        weights: One weight per member for ``weighted``; ``None`` otherwise.
        opset: ONNX opset, the same as the member graphs'.
    """
    output_dimension = fused_dimension(dimensions, mode)
    if (weights is not None) != (mode == "weighted"):
        raise ValueError("weights must be given exactly when mode is 'weighted'.")
    names = [f"member_{index}" for index in range(len(dimensions))]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch_size", dimension])
        for name, dimension in zip(names, dimensions, strict=True)
    ]
    output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch_size", output_dimension])
    initializers = []
    if mode == "concat":
        nodes = [helper.make_node("Concat", names, [OUTPUT_NAME], axis=-1)]
    elif mode == "mean":
        nodes = [helper.make_node("Mean", names, [OUTPUT_NAME])]
    elif mode == "sum":
        nodes = [helper.make_node("Sum", names, [OUTPUT_NAME])]
    else:
        initializers = [
            helper.make_tensor(f"weight_{index}", TensorProto.FLOAT, [], [float(weight)])
            for index, weight in enumerate(weights)
        ]
        nodes = [
            helper.make_node("Mul", [name, f"weight_{index}"], [f"weighted_{index}"])
            for index, name in enumerate(names)
        ]
        nodes.append(helper.make_node("Sum", [f"weighted_{index}" for index in range(len(names))], [OUTPUT_NAME]))
    graph = helper.make_graph(nodes, f"lafusion_{mode}_fusion", inputs, [output], initializer=initializers)
    opset_imports = [helper.make_opsetid("", opset)]
    # The oldest IR version that carries this opset, not onnx's newest: older ONNX Runtimes refuse newer IR.
    ir_version = helper.find_min_ir_version_for(opset_imports)
    model = helper.make_model(graph, opset_imports=opset_imports, producer_name="lafusion", ir_version=ir_version)
    onnx.checker.check_model(model)
    return model
