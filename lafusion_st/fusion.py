"""Fusion operators that combine several vectors (layers of one model, or models) into one.

The output dimension is a pure function of the input dimensions and the mode, so modules can report
their embedding dimension before any forward pass and reject impossible combinations (``mean`` over
vectors of different sizes) at construction time rather than at the first batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lafusion_st.errors import InvalidArgumentError
from lafusion_st.modes import FUSION_MODES, FusionMode


def fused_dimension(dimensions: Sequence[int], mode: str) -> int:
    """Output size of fusing vectors of ``dimensions`` with ``mode``; raises ``ValueError`` if impossible.

    Args:
        dimensions: The size of each vector to fuse, in order.
        mode: One of :data:`FUSION_MODES`. ``concat`` accepts any sizes; ``mean``, ``sum`` and ``weighted``
            add vectors element-wise and so need equal sizes.
    """
    if mode not in FUSION_MODES:
        raise InvalidArgumentError(f"Unknown fusion mode {mode!r}; choose one of {list(FUSION_MODES)}.")
    if not dimensions:
        raise ValueError("Nothing to fuse: at least one vector is needed.")
    if mode == "concat":
        return int(sum(dimensions))
    if len(set(dimensions)) > 1:
        raise InvalidArgumentError(
            f"Fusion {mode!r} adds vectors element-wise, but their dimensions differ: {list(dimensions)}. "
            "Use fusion='concat', or fuse only vectors of equal size."
        )
    return int(dimensions[0])


def fuse(vectors: Sequence[torch.Tensor], mode: FusionMode, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Fuse ``[batch, d_i]`` vectors into one ``[batch, d]`` tensor.

    Args:
        vectors: Tensors to fuse, each ``[batch, d_i]``.
        mode: ``concat`` (paper default: keeps every feature for the linear probe), ``mean``, ``sum`` or
            ``weighted`` (``sum_i weights[i] * vectors[i]``; weights are used as given, not normalised).
        weights: One weight per vector; required for ``weighted`` and rejected otherwise.
    """
    fused_dimension([v.shape[-1] for v in vectors], mode)
    if (weights is not None) != (mode == "weighted"):
        raise ValueError("weights must be given exactly when mode is 'weighted'.")
    if mode == "concat":
        return torch.cat(list(vectors), dim=-1)
    stacked = torch.stack(list(vectors), dim=0)
    if mode == "mean":
        return stacked.mean(dim=0)
    if mode == "sum":
        return stacked.sum(dim=0)
    if weights.shape != (len(vectors),):
        raise ValueError(f"Expected {len(vectors)} fusion weights, got shape {tuple(weights.shape)}.")
    return torch.einsum("k,k...->...", weights.to(stacked.dtype), stacked)
