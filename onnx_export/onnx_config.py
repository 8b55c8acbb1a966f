"""Optimum ``OnnxConfig`` + ``ModelPatcher`` for a single-model lafusion pipeline.

Why not Optimum's stock ``SentenceTransformersTransformerOnnxConfig``: it declares ``token_embeddings`` as
an output and its patcher drops ``all_layer_embeddings``, and it never feeds ``token_type_ids``. Ours
traces the whole pipeline (``TruncatedTransformer`` -> ``LayerSelect`` -> any later module) to a graph with
inputs ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` when the tokenizer emits them and the model
takes them) and the single output ``sentence_embedding``. ``position_ids`` are not an input: the
``TruncatedTransformer`` derives them from the mask inside the traced forward (a ``CumSum`` node), so
left padding stays correct for absolute-position models such as GPT-2.

Passed to Optimum through ``custom_onnx_configs={"model": ...}``; registering it in Optimum's global
registry would be silently ignored for an already known model type.
"""

from __future__ import annotations

from typing import Any

from optimum.exporters.onnx.config import TextEncoderOnnxConfig
from optimum.exporters.onnx.model_patcher import ModelPatcher
from optimum.utils import NormalizedTextConfig

INPUT_AXES = {0: "batch_size", 1: "sequence_length"}
OUTPUT_NAME = "sentence_embedding"


class FusedEmbedderPatcher(ModelPatcher):
    """Call the sentence-transformers pipeline with a features dict and keep only the sentence embedding."""

    def __init__(self, config: FusedEmbedderOnnxConfig, model: Any, model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(config, model, model_kwargs)

        # Named parameters, not **kwargs: Optimum orders the graph inputs by this signature.
        def patched_forward(input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> dict[str, Any]:
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return {OUTPUT_NAME: self.orig_forward(features)[OUTPUT_NAME]}

        self.patched_forward = patched_forward


class FusedEmbedderOnnxConfig(TextEncoderOnnxConfig):
    """Inputs ``input_ids``, ``attention_mask`` (+ ``token_type_ids``), output ``sentence_embedding``.

    Args:
        config: The backbone's (truncated) Hugging Face config, for dummy-input shapes and vocabulary size.
        with_token_type_ids: Whether the graph takes ``token_type_ids``.
        **kwargs: Passed to ``OnnxConfig`` (``task``, ``int_dtype``, ``float_dtype``, ...).
    """

    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    _MODEL_PATCHER = FusedEmbedderPatcher

    def __init__(self, config: Any, with_token_type_ids: bool = False, **kwargs: Any) -> None:
        super().__init__(config, task="feature-extraction", **kwargs)
        self.with_token_type_ids = with_token_type_ids

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.with_token_type_ids else [])
        return {name: dict(INPUT_AXES) for name in names}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {OUTPUT_NAME: {0: "batch_size"}}
