"""One call from model names + layers to a ready fused embedder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import AutoConfig

from lafusion_st.fusion import FusionMode
from lafusion_st.layers import resolve_layers
from lafusion_st.model import FusedSentenceTransformer
from lafusion_st.modules import LayerSelect, MultiModelFuse, TruncatedTransformer
from lafusion_st.pooling import PoolingMode
from lafusion_st.registry import resolve_model

DEFAULT_MAX_SEQ_LENGTH = 256


def build_fused_model(
    models: str | Sequence[str],
    layers: Sequence[int] | Sequence[Sequence[int]],
    pooling: PoolingMode | Sequence[PoolingMode] = "mean",
    fusion: FusionMode = "concat",
    model_fusion: FusionMode = "concat",
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    device: str | None = None,
    cache_dir: str | Path | None = None,
) -> FusedSentenceTransformer:
    """Build a fused ``SentenceTransformer`` from model names or paths and their layers.

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
        device: Torch device; default as in ``SentenceTransformer``.
        cache_dir: Where short-named models are materialised (see :func:`lafusion_st.registry.resolve_model`).
    """
    names = [models] if isinstance(models, str) else list(models)
    if not names:
        raise ValueError("Give at least one model.")
    per_model_layers = _per_model(
        layers, len(names), "layers", is_item=lambda value: all(isinstance(v, int) for v in value)
    )
    per_model_pooling = _per_model(pooling, len(names), "pooling", is_item=lambda value: isinstance(value, str))
    members = [
        FusedSentenceTransformer(
            modules=build_member_modules(name, member_layers, member_pooling, fusion, max_seq_length, cache_dir),
            device=device,
        )
        for name, member_layers, member_pooling in zip(names, per_model_layers, per_model_pooling, strict=True)
    ]
    if len(members) == 1:
        return members[0]
    member_names = [f"{index}_{Path(name).name}" for index, name in enumerate(names)]
    return FusedSentenceTransformer(
        modules=[MultiModelFuse(members, fusion=model_fusion, member_names=member_names)], device=device
    )


def build_member_modules(
    model: str,
    layers: Sequence[int],
    pooling: PoolingMode,
    fusion: FusionMode,
    max_seq_length: int,
    cache_dir: str | Path | None = None,
) -> list:
    """``[TruncatedTransformer, LayerSelect]`` for one model, truncated after its deepest selected layer."""
    path = resolve_model(model, cache_dir=cache_dir)
    config = AutoConfig.from_pretrained(path)
    text_config = getattr(config, "text_config", None) or config
    depth, hidden_size = text_config.num_hidden_layers, text_config.hidden_size
    layer_select = LayerSelect(
        resolve_layers(layers, depth), num_hidden_layers=depth, hidden_size=hidden_size, pooling=pooling, fusion=fusion
    )
    backbone = TruncatedTransformer(path, num_layers=max(layer_select.deepest_layer, 1), max_seq_length=max_seq_length)
    return [backbone, layer_select]


def _per_model(value, count: int, name: str, is_item) -> list:
    """Broadcast a single setting to every model, or check there is one per model."""
    if is_item(value):
        return [value] * count
    values = list(value)
    if len(values) != count or not all(is_item(item) for item in values):
        raise ValueError(
            f"{name} must be one setting for all {count} models or a list of {count} settings, got {value!r}."
        )
    return values
