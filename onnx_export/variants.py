"""Derived graphs of an exported member: ORT transformer fusions, fp16 weights, int8 dynamic quantisation.

Why offline, at export time: the serving machine may have only onnxruntime (no ``onnx`` package), and a
variant's deviation from PyTorch must be measured once, with PyTorch at hand, and recorded in the manifest.
Inputs and outputs stay int64 / float32 in every variant, so the tokenizer and the fusion graph are shared.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.onnx_model import OnnxModel
from onnxruntime.transformers.optimizer import optimize_model

# Protobuf cannot serialise a single message above 2 GB; bigger graphs keep their weights in a data file.
PROTOBUF_LIMIT = 2**31 - 1
FP16_MAX = 65504.0
# fp16 conversion keeps in fp32 every node that sees a value above FP16_MAX / FP16_HEADROOM on the
# calibration texts. Why data-driven: LLMs have "massive activations" in a few coordinates. In SmolLM2 the
# RMSNorm statistic mean(x^2) reaches 8e4 (above fp16's 65504): an all-fp16 graph turns it into inf, the
# norm into 0, and the embedding loses its largest coordinates (cosine 0.70 to PyTorch). The headroom
# covers texts whose activations exceed the calibration texts'.
FP16_HEADROOM = 4.0
MASK_SENTINEL = 1e30
# Always fp32 besides ORT's default block list: norm statistics and the pooling reductions (which sum over
# up to max_seq_length tokens).
FP32_OPS = ("Pow", "Sqrt", "ReduceMean", "ReduceSum", "ReduceMax", "CumSum")


def variant_file(dtype: str) -> str:
    """Graph file name of a variant: ``model.onnx`` for fp32, ``model_<dtype>.onnx`` otherwise."""
    return "model.onnx" if dtype == "fp32" else f"model_{dtype}.onnx"


def graph_files(path: str | Path) -> list[str]:
    """The graph file and every external-data file it references, relative to its folder."""
    graph = onnx.load(str(path), load_external_data=False).graph
    tensors = [
        *graph.initializer,
        *(attribute.t for node in graph.node for attribute in node.attribute if attribute.HasField("t")),
    ]
    locations = {
        entry.value
        for tensor in tensors
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [Path(path).name, *sorted(locations)]


def graph_inputs(path: str | Path) -> list[str]:
    """Input names of a graph as exported: the tracer drops inputs the model ignores (``token_type_ids`` of a
    decoder whose forward only swallows them in ``**kwargs``), so the graph, not the config, is the truth."""
    return [value.name for value in onnx.load(str(path), load_external_data=False).graph.input]


def save_graph(model: onnx.ModelProto, path: str | Path) -> None:
    """Save ``model``, with its weights in ``<file>_data`` when it is too big for one protobuf."""
    large = model.ByteSize() > PROTOBUF_LIMIT
    onnx.save_model(
        model, str(path), save_as_external_data=large, all_tensors_to_one_file=True, location=f"{Path(path).name}_data"
    )


def optimize_graph(path: str | Path, model_type: str) -> None:
    """Apply ONNX Runtime's offline transformer fusions (LayerNorm, Gelu, attention, ...) in place.

    Args:
        path: fp32 graph, rewritten.
        model_type: ``bert`` for encoders, ``gpt2`` for decoders: the fusion family ONNX Runtime tries.
            Patterns it does not recognise are left as they are, so the graph stays correct either way.
    """
    options = FusionOptions(model_type)
    # ORT's fused EmbedLayerNormalization computes positions 0..T-1 itself (ignoring the mask-derived position
    # ids) and its fused Attention turns the mask into lengths of a right-padded batch: both are wrong under
    # left padding (measured 3e-2 on a random BERT), so those two stay unfused.
    options.enable_embed_layer_norm = False
    options.enable_attention = False
    optimized = optimize_model(
        str(path), model_type=model_type, num_heads=0, hidden_size=0, optimization_options=options, opt_level=1
    )
    save_graph(optimized.model, path)


def write_fp16(source: str | Path, target: str | Path, calibration: dict[str, np.ndarray]) -> None:
    """fp16 weights and activations, except nodes that see large values on ``calibration`` inputs, the ops
    in :data:`FP32_OPS`, and the float32 graph inputs/outputs."""
    model = onnx.load(str(source))
    large = nodes_beyond(model, Path(source).parent, calibration, FP16_MAX / FP16_HEADROOM)
    # OnnxModel's conversion, not float16.convert_float_to_float16 alone: it also removes the fp32->fp16->fp32
    # Cast pairs the latter puts between two fp32-kept nodes, which would round large values through fp16.
    converted = OnnxModel(model)
    converted.convert_float_to_float16(
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
        node_block_list=large,
        max_finite_val=FP16_MAX,
    )
    _drop_duplicate_casts(converted.model.graph)
    save_graph(converted.model, target)


def _activation_magnitude(value: np.ndarray) -> float:
    """Largest finite float32 magnitude, ignoring attention-mask sentinels (float32 min, -inf): the converter
    clamps those to fp16's range, which still masks."""
    if value.dtype != np.float32:
        return 0.0
    magnitudes = np.abs(value[np.isfinite(value)])
    magnitudes = magnitudes[magnitudes < MASK_SENTINEL]
    return float(magnitudes.max()) if magnitudes.size else 0.0


def _drop_duplicate_casts(graph: onnx.GraphProto) -> None:
    """Work around ORT's fp16 converter (1.31): a tensor feeding two fp32-kept nodes gets two identical Cast
    nodes (same name, input, output), which ONNX Runtime refuses to load; keep the first of each."""
    seen: set[tuple[str, ...]] = set()
    duplicates = []
    for node in graph.node:
        if node.op_type == "Cast":
            key = (node.name, *node.input, *node.output, str(node.attribute))
            if key in seen:
                duplicates.append(node)
            seen.add(key)
    for node in duplicates:
        graph.node.remove(node)


def nodes_beyond(model: onnx.ModelProto, folder: Path, feeds: dict[str, np.ndarray], limit: float) -> list[str]:
    """Names of nodes with a float input or output whose largest magnitude exceeds ``limit`` on ``feeds``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph_outputs = {output.name for output in probe.graph.output}
    for node in probe.graph.node:
        probe.graph.output.extend(
            helper.make_empty_tensor_value_info(name) for name in node.output if name and name not in graph_outputs
        )
    names = [output.name for output in probe.graph.output]
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        save_graph(probe, Path(scratch, "probe.onnx"))
        values = dict(
            zip(
                names,
                ort.InferenceSession(str(Path(scratch, "probe.onnx")), providers=["CPUExecutionProvider"]).run(
                    names, feeds
                ),
                strict=True,
            )
        )
    magnitudes = {name: _activation_magnitude(value) for name, value in values.items() if isinstance(value, np.ndarray)}
    return [
        node.name
        for node in model.graph.node
        if any(magnitudes.get(name, 0.0) > limit for name in [*node.input, *node.output])
    ]


def write_int8(source: str | Path, target: str | Path) -> None:
    """Dynamic int8 quantisation of MatMul/Gemm weights (activations quantised per batch at run time)."""
    large = sum(Path(source).parent.joinpath(name).stat().st_size for name in graph_files(source)) > PROTOBUF_LIMIT
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, use_external_data_format=large)
