"""lafusion: layer-aware embedding fusion of decoder LLMs as sentence-transformers embedders."""

from __future__ import annotations

from lafusion_st.builders import build_fused_model
from lafusion_st.fusion import FUSION_MODES
from lafusion_st.model import FusedSentenceTransformer
from lafusion_st.modules import LayerSelect, MultiModelFuse, TruncatedTransformer
from lafusion_st.pooling import POOLING_MODES
from lafusion_st.registry import resolve_model

__version__ = "0.1.0"

__all__ = [
    "FUSION_MODES",
    "POOLING_MODES",
    "FusedSentenceTransformer",
    "LayerSelect",
    "MultiModelFuse",
    "TruncatedTransformer",
    "build_fused_model",
    "resolve_model",
]
