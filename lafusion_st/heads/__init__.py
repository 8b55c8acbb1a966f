"""Classification heads on embedding vectors: scikit-learn classifiers that save without pickle.

``HEADS`` maps the names ``FusedClassifier(head="...")`` accepts to the classes, and is the allow-list
:func:`load_head` re-creates saved heads from: a head folder can name a class, never import code.

Names are imported on first use (PEP 562), so ``lafusion_st.heads.labels`` (numpy only) serves the
torch-free ONNX classifier without importing torch or scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lafusion_st.lazy import lazy_exports

if TYPE_CHECKING:
    from lafusion_st.heads.base import CONFIG_FILE, WEIGHTS_FILE, Head
    from lafusion_st.heads.hadamard_residual import HadamardResidualHead
    from lafusion_st.heads.logistic import LogisticHead
    from lafusion_st.heads.mlp import MLPHead
    from lafusion_st.heads.registry import HEADS, load_head, make_head
    from lafusion_st.heads.sum_residual import SumResidualHead

_LAZY = {
    "CONFIG_FILE": "lafusion_st.heads.base",
    "WEIGHTS_FILE": "lafusion_st.heads.base",
    "Head": "lafusion_st.heads.base",
    "HadamardResidualHead": "lafusion_st.heads.hadamard_residual",
    "LogisticHead": "lafusion_st.heads.logistic",
    "MLPHead": "lafusion_st.heads.mlp",
    "SumResidualHead": "lafusion_st.heads.sum_residual",
    "HEADS": "lafusion_st.heads.registry",
    "load_head": "lafusion_st.heads.registry",
    "make_head": "lafusion_st.heads.registry",
}

__all__ = [
    "CONFIG_FILE",
    "HEADS",
    "WEIGHTS_FILE",
    "HadamardResidualHead",
    "Head",
    "LogisticHead",
    "MLPHead",
    "SumResidualHead",
    "load_head",
    "make_head",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
