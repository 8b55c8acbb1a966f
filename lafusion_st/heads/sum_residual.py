"""SumResidualHead: the paper's sum-residual fusion of two embedders, then its MLP."""

from __future__ import annotations

from lafusion_st.heads.mlp import MLPHead


class SumResidualHead(MLPHead):
    """For two embedders' blocks ``x1``, ``x2``: both are projected to the smaller dimension (linear + L2
    norm), ``s = x1' + x2'``, and :class:`MLPHead`'s network classifies ``[x1, x2, s]``. Parameters as
    :class:`MLPHead`; fit needs ``member_dims`` with two entries."""

    RESIDUAL = "sum"
    REQUIRES_TWO_MEMBERS = True
