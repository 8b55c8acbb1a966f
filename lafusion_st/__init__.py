"""lafusion: layer-aware embedding fusion of decoder LLMs as sentence-transformers embedders.

The public names are imported on first use (PEP 562): ``import lafusion_st.data`` or the ``lafusion``
command's parser then cost no torch import, while ``from lafusion_st import build_fused_model`` works as
usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lafusion_st.lazy import lazy_exports
from lafusion_st.modes import FUSION_MODES, POOLING_MODES

if TYPE_CHECKING:
    from lafusion_st.builders import build_fused_model
    from lafusion_st.classifier import FusedClassifier
    from lafusion_st.errors import LafusionError
    from lafusion_st.heads import HadamardResidualHead, LogisticHead, MLPHead, SumResidualHead
    from lafusion_st.model import FusedSentenceTransformer
    from lafusion_st.modules import LayerSelect, MultiModelFuse, TruncatedTransformer
    from lafusion_st.registry import resolve_model
    from lafusion_st.spec import EmbedderSpec, RunSettings, ScanSettings

__version__ = "0.1.0"

_LAZY = {
    "FusedClassifier": "lafusion_st.classifier",
    "HadamardResidualHead": "lafusion_st.heads",
    "LogisticHead": "lafusion_st.heads",
    "MLPHead": "lafusion_st.heads",
    "SumResidualHead": "lafusion_st.heads",
    "FusedSentenceTransformer": "lafusion_st.model",
    "LayerSelect": "lafusion_st.modules",
    "MultiModelFuse": "lafusion_st.modules",
    "TruncatedTransformer": "lafusion_st.modules",
    "build_fused_model": "lafusion_st.builders",
    "EmbedderSpec": "lafusion_st.spec",
    "RunSettings": "lafusion_st.spec",
    "ScanSettings": "lafusion_st.spec",
    "LafusionError": "lafusion_st.errors",
    "resolve_model": "lafusion_st.registry",
}

__all__ = [
    "FUSION_MODES",
    "POOLING_MODES",
    "EmbedderSpec",
    "FusedClassifier",
    "LafusionError",
    "RunSettings",
    "ScanSettings",
    "FusedSentenceTransformer",
    "HadamardResidualHead",
    "LayerSelect",
    "LogisticHead",
    "MLPHead",
    "MultiModelFuse",
    "SumResidualHead",
    "TruncatedTransformer",
    "build_fused_model",
    "resolve_model",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
