"""LayerSelect: pool chosen hidden layers and fuse them into one sentence embedding."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from lafusion_st._compat import Module
from lafusion_st.fusion import FUSION_MODES, FusionMode, fuse, fused_dimension
from lafusion_st.layers import resolve_layers
from lafusion_st.modules.config_io import load_module_config
from lafusion_st.modules.fusion_weights import init_fusion_weights, load_fusion_weights, save_fusion_weights
from lafusion_st.pooling import POOLING_MODES, PoolingMode, check_pooling_mode, pool

RENAMED_KEYS = {"num_hidden_layers": "source_num_layers"}
"""Config keys of earlier versions -> current names (read on load, never written)."""


class LayerSelect(Module):
    """Pool each selected hidden layer over the attention mask, then fuse the pooled vectors.

    Placed after a module that puts every hidden state in ``features["all_layer_embeddings"]`` (a
    :class:`~lafusion_st.modules.TruncatedTransformer`, or a ``Transformer`` loaded with
    ``config_kwargs={"output_hidden_states": True}``). It writes ``features["sentence_embedding"]``.

    Args:
        layers: Layers in ``hidden_states`` numbering (0 = embedding output, ``source_num_layers`` = last
            layer, negative from the end). Stored resolved and sorted.
        source_num_layers: Depth ``L`` of the *original* model (the name ``TruncatedTransformer`` uses too);
            needed to resolve negative indices and to check the range before any forward pass. Folders saved
            before this name was adopted store it as ``num_hidden_layers``, which :meth:`load` still reads.
        hidden_size: Width of each hidden state, so the output dimension is known up front.
        pooling: One of :attr:`POOLING_MODES`.
        fusion: One of :attr:`FUSION_MODES`; ``weighted`` uses ``layer_weights``.
        layer_weights: One weight per selected layer (in sorted layer order) for ``fusion="weighted"``;
            defaults to uniform weights. Kept as a trainable parameter and saved in safetensors.
    """

    POOLING_MODES = POOLING_MODES
    FUSION_MODES = FUSION_MODES
    config_keys: list[str] = ["layers", "source_num_layers", "hidden_size", "pooling", "fusion"]

    def __init__(
        self,
        layers: Sequence[int],
        source_num_layers: int,
        hidden_size: int,
        pooling: PoolingMode = "mean",
        fusion: FusionMode = "concat",
        layer_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.layers = resolve_layers(layers, source_num_layers)
        self.source_num_layers = int(source_num_layers)
        self.hidden_size = int(hidden_size)
        self.pooling = check_pooling_mode(pooling)
        self.embedding_dimension = fused_dimension([self.hidden_size] * len(self.layers), fusion)
        self.fusion = fusion
        self.layer_weights = init_fusion_weights(fusion, layer_weights, len(self.layers), "layer_weights")

    @property
    def deepest_layer(self) -> int:
        """Highest selected ``hidden_states`` index: the backbone needs no layer above it."""
        return self.layers[-1]

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        hidden_states = features.get("all_layer_embeddings")
        if hidden_states is None:
            raise ValueError(
                "LayerSelect needs every hidden state in features['all_layer_embeddings'], but the module before "
                "it did not provide them. Use lafusion_st.modules.TruncatedTransformer, or load the Transformer "
                "with config_kwargs={'output_hidden_states': True}."
            )
        if len(hidden_states) <= self.deepest_layer:
            raise ValueError(
                f"LayerSelect uses layer {self.deepest_layer}, but the backbone returned only "
                f"{len(hidden_states)} hidden states (layers 0..{len(hidden_states) - 1})."
            )
        selected = torch.stack([hidden_states[index] for index in self.layers])  # [K, B, T, H]
        pooled = pool(selected, features["attention_mask"], self.pooling)  # [K, B, H]
        features["sentence_embedding"] = fuse(list(pooled), self.fusion, self.layer_weights)
        return features

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    get_sentence_embedding_dimension = get_embedding_dimension

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        save_fusion_weights(self.layer_weights, "layer_weights", output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> LayerSelect:
        config = load_module_config(cls, model_name_or_path, subfolder, renamed=RENAMED_KEYS)
        folder = os.path.join(model_name_or_path, subfolder)
        return cls(**config, layer_weights=load_fusion_weights(config["fusion"], "layer_weights", folder))

    def __repr__(self) -> str:
        return f"LayerSelect({self.get_config_dict()})"
