"""HadamardResidualHead: the paper's Hadamard-residual fusion of two embedders, then its MLP."""

from __future__ import annotations

from lafusion_st.heads.mlp import MLPHead


class HadamardResidualHead(MLPHead):
    """For two embedders' blocks ``x1``, ``x2``: the larger is projected to the smaller dimension (linear +
    L2 norm; the smaller is L2-normalised), ``h = x1' * x2'``, and :class:`MLPHead`'s network classifies
    ``[x1, x2, h]``. Parameters as :class:`MLPHead`; fit needs ``member_dims`` with two entries (which
    :class:`~lafusion_st.FusedClassifier` passes for a two-model embedder with concat fusion)."""

    RESIDUAL = "hadamard"
    REQUIRES_TWO_MEMBERS = True
