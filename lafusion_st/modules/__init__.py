"""sentence-transformers modules of lafusion (one class a file, as in ``sentence_transformers.models``)."""

from __future__ import annotations

from lafusion_st.modules.layer_select import LayerSelect
from lafusion_st.modules.multi_model_fuse import MultiModelFuse
from lafusion_st.modules.truncated_transformer import TruncatedTransformer

__all__ = ["LayerSelect", "MultiModelFuse", "TruncatedTransformer"]
