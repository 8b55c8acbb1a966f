"""From an :class:`~lafusion_st.spec.EmbedderSpec` (or model names + layers) to a ready fused embedder."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoConfig

from lafusion_st.fusion import FusionMode
from lafusion_st.layers import resolve_layers
from lafusion_st.model import FusedSentenceTransformer
from lafusion_st.modes import Dtype
from lafusion_st.modules import LayerSelect, MultiModelFuse, TruncatedTransformer
from lafusion_st.pooling import PoolingMode
from lafusion_st.registry import resolve_model
from lafusion_st.spec import EmbedderSpec


def build_fused_model(
    models: str | Sequence[str],
    layers: Sequence[int] | Sequence[Sequence[int]],
    pooling: PoolingMode | Sequence[PoolingMode] | None = None,
    fusion: FusionMode | None = None,
    model_fusion: FusionMode | None = None,
    max_seq_length: int | None = None,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    dtype: Dtype | None = None,
) -> FusedSentenceTransformer:
    """Build a fused ``SentenceTransformer`` from model names or paths and their layers.

    The friendly face of :func:`build`: the settings are those of :class:`~lafusion_st.spec.EmbedderSpec`,
    and one left out (``None``) takes the spec's default.

    Example::

        model = build_fused_model("smollm2-135m", layers=[12, 16, 20])
        model = build_fused_model(["smollm2-135m", "gemma3-270m"], layers=[[12, 16], [8, 10]])

    Args:
        models: One model or several; each a lafusion short name (``smollm2-135m``, ``gemma3-270m``,
            ``minilm-l6``), a local folder, or a hub id already in the local cache.
        layers: ``hidden_states`` indices (0 = embeddings, negative from the end). For several models:
            one list per model, or a single list used for every model.
        pooling: ``mean``, ``last`` or ``max``; for several models, one value or one per model.
        fusion: How each model's layers are fused (``concat``, ``mean``, ``sum``, ``weighted``).
        model_fusion: How the models' vectors are fused (several models only).
        max_seq_length: Token limit per text (longer texts are truncated, with one warning).
        dtype: Compute precision of every backbone (``fp32``, ``bf16``, ``fp16``); weights stay float32.
        device: Torch device; default as in ``SentenceTransformer``.
        cache_dir: Where short-named models are materialised (see :func:`lafusion_st.registry.resolve_model`).
    """
    settings = {
        "pooling": pooling,
        "fusion": fusion,
        "model_fusion": model_fusion,
        "max_seq_length": max_seq_length,
        "dtype": dtype,
    }
    spec = EmbedderSpec(models, layers, **{key: value for key, value in settings.items() if value is not None})
    return build(spec, device=device, cache_dir=cache_dir)


def build(
    spec: EmbedderSpec, device: str | None = None, cache_dir: str | Path | None = None
) -> FusedSentenceTransformer:
    """The embedder ``spec`` describes; it carries the spec with resolved layers as ``model.spec``.

    Each model is truncated after its deepest selected layer; several models are fused by
    :class:`~lafusion_st.modules.MultiModelFuse`. Saving the model records the spec in the folder.
    """
    paths = [resolve_model(model, cache_dir=cache_dir) for model in spec.models]
    members = []
    resolved_layers = []
    for path, layers, pooling in zip(paths, spec.layers, spec.pooling, strict=True):
        modules = build_member_modules(path, layers, pooling, spec.fusion, spec.max_seq_length, spec.dtype)
        resolved_layers.append(tuple(modules[1].layers))
        members.append(FusedSentenceTransformer(modules=modules, device=device))
    if len(members) == 1:
        embedder = members[0]
    else:
        member_names = [f"{index}_{Path(name).name}" for index, name in enumerate(spec.models)]
        embedder = FusedSentenceTransformer(
            modules=[MultiModelFuse(members, fusion=spec.model_fusion, member_names=member_names)], device=device
        )
    embedder.spec = dataclasses.replace(spec, layers=tuple(resolved_layers))
    return embedder


def build_member_modules(
    path: str,
    layers: Sequence[int],
    pooling: PoolingMode,
    fusion: FusionMode,
    max_seq_length: int,
    dtype: Dtype = "fp32",
) -> list:
    """``[TruncatedTransformer, LayerSelect]`` for one resolved model folder, truncated after its deepest
    selected layer."""
    depth, hidden_size = _depth_and_width(path)
    layer_select = LayerSelect(
        resolve_layers(layers, depth), source_num_layers=depth, hidden_size=hidden_size, pooling=pooling, fusion=fusion
    )
    backbone = TruncatedTransformer(
        path, num_layers=max(layer_select.deepest_layer, 1), max_seq_length=max_seq_length, dtype=dtype
    )
    return [backbone, layer_select]


def model_depth(model: str, cache_dir: str | Path | None = None) -> int:
    """Number of hidden layers of a model (short name, folder or cached hub id), read from its config."""
    return _depth_and_width(resolve_model(model, cache_dir=cache_dir))[0]


def _depth_and_width(path: str) -> tuple[int, int]:
    config = AutoConfig.from_pretrained(path)
    text_config = getattr(config, "text_config", None) or config
    return text_config.num_hidden_layers, text_config.hidden_size
