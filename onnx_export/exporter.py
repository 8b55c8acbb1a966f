"""Export a lafusion embedder to a self-describing ONNX folder through Hugging Face Optimum.

Route. Optimum exports a sentence-transformers pipeline whose first module is a ``Transformer``, and
refuses any other first module. A single-model embedder (``TruncatedTransformer`` -> ``LayerSelect``)
qualifies: it is traced whole, with :class:`~onnx_export.onnx_config.FusedEmbedderOnnxConfig`, into one
graph holding only the kept layers plus pooling and fusion. A multi-model embedder starts with
``MultiModelFuse``, which Optimum refuses; rather than fight that, each member (itself a
Transformer-first embedder with its own tokenizer) is exported as above under ``members/<name>/``, and
the cross-model fusion becomes a tiny ``fusion.onnx`` (:mod:`onnx_export.fusion_graph`). One graph per
member keeps every member's own tokenizer, padding side and sequence length, and lets each be checked on
its own; ONNX Runtime alone still produces the final vector.

We call Optimum's ``onnx_export_from_model`` (what ``main_export`` runs after loading the model) because
we need the loaded model anyway: for the manifest, for splitting members, and for the parity check.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optimum.exporters.onnx import onnx_export_from_model
from optimum.exporters.tasks import TasksManager
from sentence_transformers import SentenceTransformer
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from lafusion_st.files import file_sha256
from lafusion_st.model import FusedSentenceTransformer
from lafusion_st.modules import LayerSelect, MultiModelFuse, TruncatedTransformer
from lafusion_st.modules.truncated_transformer import float32_forward
from lafusion_st.spec import read_spec_file
from onnx_export import manifest as manifest_io
from onnx_export.classifier_export import classifier_parts, export_head
from onnx_export.encoder import ORTFusedEncoder
from onnx_export.errors import UnsupportedArchitectureError
from onnx_export.fusion_graph import build_fusion_graph
from onnx_export.onnx_config import FusedEmbedderOnnxConfig
from onnx_export.tolerances import DEFAULT_ATOL, DEFAULT_RTOL
from onnx_export.validation import VALIDATION_TEXTS, compare_with_pytorch, summarise, validate_export
from onnx_export.variants import (
    graph_files,
    graph_inputs,
    optimize_graph,
    save_graph,
    variant_file,
    write_fp16,
    write_int8,
)

logger = logging.getLogger(__name__)

FUSION_FILE = "fusion.onnx"
VERSIONED_DISTRIBUTIONS = (
    "lafusion", "torch", "transformers", "sentence-transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime-gpu",
    "onnxruntime", "tokenizers",
)  # fmt: skip


def export(
    model_or_path: SentenceTransformer | str | Path,
    out_dir: str | Path,
    *,
    dtypes: Sequence[str] = ("fp32",),
    optimize: bool = False,
    opset: int | None = None,
    validate: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    allow_unknown_architecture: bool = False,
) -> Path:
    """Export a fused embedder so that ONNX Runtime alone yields its vectors.

    Example::

        model = build_fused_model("smollm2-135m", layers=[12, 16])
        export(model, "smollm2-l12-16-onnx", dtypes=("fp32", "fp16", "int8"))
        ORTFusedEncoder("smollm2-l12-16-onnx").encode(["a great movie"])

    Args:
        model_or_path: A ``SentenceTransformer`` built by lafusion (on CPU), or the folder it was saved to; or a
            fitted ``FusedClassifier`` or its saved folder, whose head then becomes ``head/head.onnx`` (served
            by :class:`~onnx_export.ORTFusedClassifier`, see :mod:`onnx_export.classifier_export`).
        out_dir: New or empty folder to write to.
        dtypes: Graph variants to write: ``fp32`` (always, the reference), ``fp16``, ``int8`` (dynamic).
        optimize: Apply ONNX Runtime's offline transformer fusions to the fp32 graph (the other variants
            are derived from it). Validated like the plain graph.
        opset: ONNX opset; default Optimum's for text encoders.
        validate: Check ORT against PyTorch (fp32 within tolerance on every grid of
            :data:`onnx_export.validation.GRIDS` and on ``encode``; the other variants measured) and record
            the figures in the manifest.
        atol: Absolute tolerance for fp32 (see :mod:`onnx_export.validation`).
        rtol: Relative tolerance for fp32, for LLM coordinates far above 1 where float32 itself is coarser.
        allow_unknown_architecture: Trace a backbone architecture Optimum has no ONNX config for; the
            parity check is then the only guard, so it cannot be switched off together with this.

    Returns:
        ``out_dir``, holding ``lafusion_onnx.json`` (see :mod:`onnx_export.manifest`), the graphs and the
        tokenizer files. Graphs over 2 GB keep their weights in an ``.onnx_data`` file beside them.

    Raises:
        UnsupportedArchitectureError: The backbone's architecture is unknown to Optimum (see
            ``allow_unknown_architecture``).
        ParityError: fp32 ONNX Runtime output differs from PyTorch beyond tolerance; the manifest is
            then removed, so the folder cannot be served by mistake.
    """
    dtypes = _check_dtypes(dtypes)
    if allow_unknown_architecture and not validate:
        raise ValueError(
            "allow_unknown_architecture=True needs validate=True: parity is the only check of such a trace."
        )
    classifier = classifier_parts(model_or_path)
    head = None
    if classifier is not None:
        model_or_path, head = classifier
    model = _load(model_or_path)
    with float32_forward(model):  # ONNX export always starts from float32, whatever the embedder's dtype
        spec = _spec(model_or_path, model)
        return _export_loaded(
            model, spec, head, out_dir, dtypes, optimize, opset, validate, atol, rtol, allow_unknown_architecture
        )


def _export_loaded(
    model: SentenceTransformer,
    spec: dict[str, Any] | None,
    head: Any,
    out_dir: str | Path,
    dtypes: list[str],
    optimize: bool,
    opset: int | None,
    validate: bool,
    atol: float,
    rtol: float,
    allow_unknown_architecture: bool,
) -> Path:
    members, model_fusion = _split_members(model)
    for _, member in members:
        _check_architecture(member[0], allow_unknown_architecture)
    out_dir = _prepare_out_dir(out_dir)

    member_specs = []
    for name, member in members:
        folder = out_dir if len(members) == 1 else out_dir / "members" / name
        member_specs.append(_export_member(name, member, out_dir, folder, dtypes, optimize, opset))
    resolved_opset = opset if opset is not None else FusedEmbedderOnnxConfig.DEFAULT_ONNX_OPSET
    fusion_spec = None
    if model_fusion is not None:
        mode, weights = model_fusion
        dimensions = [spec["embedding_dimension"] for spec in member_specs]
        save_graph(build_fusion_graph(dimensions, mode, weights, resolved_opset), out_dir / FUSION_FILE)
        fusion_spec = {"mode": mode, "file": FUSION_FILE, "files": manifest_io.file_records(out_dir, [FUSION_FILE])}
    manifest = {
        "embedding_dimension": model.get_embedding_dimension(),
        "opset": resolved_opset,
        "dtypes": list(dtypes),
        "model_fusion": fusion_spec,
        "members": member_specs,
        "variants": {dtype: {"optimized": optimize} for dtype in dtypes},
        "versions": _versions(),
        "spec": spec,
    }
    manifest_io.write_manifest(out_dir, manifest)
    if validate:
        _validate(model, out_dir, manifest, atol, rtol)
    if head is not None:
        export_head(head, model, out_dir, resolved_opset, validate)
    return out_dir


# ----------------------------------------------------------------------------------------- checks
def _check_dtypes(dtypes: Sequence[str]) -> list[str]:
    unknown = [dtype for dtype in dtypes if dtype not in manifest_io.DTYPES]
    if unknown:
        raise ValueError(f"Unknown dtype(s) {unknown}; choose from {list(manifest_io.DTYPES)}.")
    return ["fp32", *sorted({dtype for dtype in dtypes if dtype != "fp32"}, key=manifest_io.DTYPES.index)]


def _load(model_or_path: SentenceTransformer | str | Path) -> SentenceTransformer:
    if isinstance(model_or_path, SentenceTransformer):
        model = model_or_path
    else:
        path = Path(model_or_path)
        if not (path / "modules.json").is_file():
            raise FileNotFoundError(f"{path} is not a saved sentence-transformers folder (no modules.json).")
        model = FusedSentenceTransformer(str(path), device="cpu", local_files_only=True)
    if model.device.type != "cpu":
        raise ValueError(f"Export traces on CPU; the model is on {model.device}. Call model.to('cpu') first.")
    return model.eval()


def _spec(model_or_path: SentenceTransformer | str | Path, model: SentenceTransformer) -> dict[str, Any] | None:
    """The exported embedder's spec: carried by a built model, or recorded in a saved folder."""
    spec = getattr(model, "spec", None)
    if spec is None and not isinstance(model_or_path, SentenceTransformer):
        spec = read_spec_file(model_or_path)
    return spec.to_dict() if spec is not None else None


def _prepare_out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; export into a new or empty folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _split_members(
    model: SentenceTransformer,
) -> tuple[list[tuple[str, SentenceTransformer]], tuple[str, list[float] | None] | None]:
    """``[(name, single-model embedder)]`` and, for several, the cross-model ``(fusion, weights)``."""
    first = model[0]
    if isinstance(first, MultiModelFuse):
        if len(model) > 1:
            raise ValueError(
                f"Modules after MultiModelFuse ({[type(module).__name__ for module in list(model)[1:]]}) cannot be "
                "exported: the fusion graph is the last step."
            )
        weights = first.model_weights.detach().cpu().tolist() if first.model_weights is not None else None
        return list(zip(first.member_names, first.members, strict=True)), (first.fusion, weights)
    if isinstance(first, TruncatedTransformer):
        return [(Path(first.auto_model.config._name_or_path or "model").name, model)], None
    raise ValueError(
        f"The first module is {type(first).__name__}; onnx_export exports embedders whose first module is a "
        "lafusion TruncatedTransformer (single model) or MultiModelFuse (several). Build the embedder with "
        "lafusion_st.build_fused_model(...)."
    )


def _check_architecture(backbone: TruncatedTransformer, allow_unknown: bool) -> None:
    model_type = backbone.auto_model.config.model_type
    try:
        TasksManager.get_supported_tasks_for_model_type(model_type, exporter="onnx", library_name="transformers")
    except KeyError:
        if allow_unknown:
            logger.warning(
                "Optimum has no ONNX config for %r; tracing it anyway, parity validation decides.", model_type
            )
            return
        raise UnsupportedArchitectureError(
            f"Optimum's ONNX exporter does not know the architecture {model_type!r} "
            f"({type(backbone.auto_model).__name__}). Routes: pass allow_unknown_architecture=True "
            "(`lafusion export --allow-unknown-architecture`) to trace it with lafusion's own ONNX config, "
            "which is then accepted only if it matches PyTorch on every parity grid; or choose a backbone of a "
            "supported architecture (llama, qwen2, gemma3_text, gpt2, bert, ...)."
        ) from None


# ----------------------------------------------------------------------------------------- export
def _export_member(
    name: str,
    member: SentenceTransformer,
    root: Path,
    folder: Path,
    dtypes: list[str],
    optimize: bool,
    opset: int | None,
) -> dict[str, Any]:
    backbone: TruncatedTransformer = member[0]
    tokenizer = backbone.tokenizer
    with_token_type_ids = backbone.takes_token_type_ids and "token_type_ids" in tokenizer.model_input_names
    onnx_config = FusedEmbedderOnnxConfig(backbone.auto_model.config, with_token_type_ids=with_token_type_ids)
    # Optimum infers the library from the class's module: hand it a plain SentenceTransformer over the same
    # modules (a lafusion subclass would not be recognised).
    view = SentenceTransformer(modules=list(member), device="cpu")
    onnx_export_from_model(
        view, folder, task="feature-extraction", opset=opset, do_validation=False,
        custom_onnx_configs={"model": onnx_config},
    )  # fmt: skip
    tokenizer.save_pretrained(folder)  # the live tokenizer (pad token set by TruncatedTransformer), not the source's
    fp32_path = folder / variant_file("fp32")
    inputs = graph_inputs(fp32_path)
    if optimize:
        optimize_graph(fp32_path, "bert" if _is_bidirectional(backbone) else "gpt2")
    if "fp16" in dtypes:
        features = member.preprocess(list(VALIDATION_TEXTS))
        write_fp16(fp32_path, folder / variant_file("fp16"), {name: features[name].numpy() for name in inputs})
    if "int8" in dtypes:
        write_int8(fp32_path, folder / variant_file("int8"))

    layer_select = next((module for module in member if isinstance(module, LayerSelect)), None)
    config = backbone.auto_model.config
    return {
        "name": name,
        "folder": folder.relative_to(root).as_posix(),
        "architecture": type(backbone.auto_model).__name__,
        "model_type": config.model_type,
        "num_layers": backbone.num_layers,
        "source_num_layers": backbone.source_num_layers,
        "layers": layer_select.layers if layer_select else None,
        "pooling": layer_select.pooling if layer_select else None,
        "fusion": layer_select.fusion if layer_select else None,
        "modules": [
            {"class": f"{type(module).__module__}.{type(module).__name__}", "config": _module_config(module)}
            for module in member
        ],
        "embedding_dimension": member.get_embedding_dimension(),
        "num_parameters": sum(parameter.numel() for parameter in member.parameters()),
        "inputs": inputs,
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": file_sha256(folder / "tokenizer.json"),
            "max_seq_length": member.max_seq_length,
            "padding_side": tokenizer.padding_side,
            "truncation_side": tokenizer.truncation_side,
            "pad_token": tokenizer.pad_token,
            "pad_token_id": tokenizer.pad_token_id,
            "pad_token_type_id": tokenizer.pad_token_type_id,
            "empty_text_substitute": backbone._empty_text_substitute,
        },
        "graphs": {
            dtype: {
                "file": variant_file(dtype),
                "files": manifest_io.file_records(folder, graph_files(folder / variant_file(dtype))),
            }
            for dtype in dtypes
        },
    }


def _is_bidirectional(backbone: TruncatedTransformer) -> bool:
    """BERT-like (has a masked-LM head in transformers): ORT's ``bert`` fusions; causal LMs get ``gpt2``'s."""
    return backbone.auto_model.config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _module_config(module: Any) -> dict[str, Any]:
    config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
    return {
        key: value
        for key, value in config.items()
        if isinstance(value, (str, int, float, bool, list, dict, type(None)))
    }


def _versions() -> dict[str, str]:
    versions = {}
    for distribution in VERSIONED_DISTRIBUTIONS:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


# ------------------------------------------------------------------------------------- validation
def _validate(model: SentenceTransformer, out_dir: Path, manifest: dict[str, Any], atol: float, rtol: float) -> None:
    """fp32 must be within tolerance on every grid; fp16/int8 are measured. Figures go into the manifest."""
    try:
        results = validate_export(model, ORTFusedEncoder(out_dir, provider="cpu", dtype="fp32"), atol, rtol)
    except Exception:
        (out_dir / manifest_io.MANIFEST_FILE).unlink()
        logger.error("Export to %s failed validation; its manifest was removed (files kept for inspection).", out_dir)
        raise
    manifest["variants"]["fp32"].update(summarise(results), atol=atol, rtol=rtol)
    for dtype in manifest["dtypes"][1:]:
        manifest["variants"][dtype].update(
            summarise(compare_with_pytorch(model, ORTFusedEncoder(out_dir, provider="cpu", dtype=dtype)))
        )
    manifest_io.write_manifest(out_dir, manifest)
