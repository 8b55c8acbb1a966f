"""Mask-aware pooling of token states into one vector per text.

Why a module of its own: pooling is where research code most often goes silently wrong (averaging pad
positions, taking the last *position* instead of the last *real token* under left padding). Every mode
here reads only positions whose attention mask is 1, whatever the tokenizer's padding side, and a row
without any real token pools to the zero vector instead of NaN or a pad state.
"""

from __future__ import annotations

import torch

from lafusion_st.errors import InvalidArgumentError
from lafusion_st.modes import POOLING_MODES, PoolingMode


def check_pooling_mode(mode: str) -> PoolingMode:
    """Return ``mode`` if it is a known pooling mode, else raise a ``ValueError`` listing the choices."""
    if mode not in POOLING_MODES:
        raise InvalidArgumentError(f"Unknown pooling mode {mode!r}; choose one of {list(POOLING_MODES)}.")
    return mode  # type: ignore[return-value]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """Pool token states over the real (mask == 1) positions.

    Args:
        hidden: Token states, shape ``[..., batch, seq, hidden]`` (leading dims, e.g. layers, are kept).
        attention_mask: ``[batch, seq]``, 1 for real tokens, 0 for padding; either padding side.
        mode: ``"mean"`` (average of real tokens), ``"last"`` (state of the last real token, the natural
            summary of a causal LM) or ``"max"`` (element-wise max over real tokens).

    Returns:
        ``[..., batch, hidden]`` in float32 (float64 stays float64); rows whose mask is all zero give zeros.
        Why float32: a mean over hundreds of fp16 states sums past fp16's largest value (65504) and becomes
        ``inf``; the ONNX fp16 graphs keep their reductions in float32 for the same reason.
    """
    check_pooling_mode(mode)
    hidden = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
    mask = attention_mask.to(torch.bool)
    has_tokens = mask.any(dim=-1, keepdim=True)  # [batch, 1]
    token_mask = mask.unsqueeze(-1)  # [batch, seq, 1]
    zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
    if mode == "mean":
        # torch.where, not multiplication: a NaN in a pad position must not leak into the sum.
        summed = torch.where(token_mask, hidden, zero).sum(dim=-2)
        counts = mask.sum(dim=-1, keepdim=True).clamp(min=1).to(hidden.dtype)
        return summed / counts
    if mode == "max":
        lowest = torch.finfo(hidden.dtype).min
        pooled = torch.where(token_mask, hidden, torch.full((), lowest, dtype=hidden.dtype, device=hidden.device))
        return torch.where(has_tokens, pooled.amax(dim=-2), zero)
    # "last": the highest position holding a real token, correct for left and right padding.
    positions = torch.arange(mask.shape[-1], device=mask.device)
    last_index = torch.where(mask, positions, torch.zeros_like(positions)).amax(dim=-1)  # [batch]
    leading = (1,) * (hidden.dim() - 3)
    index = last_index.view(*leading, -1, 1, 1).expand(*hidden.shape[:-2], 1, hidden.shape[-1])
    gathered = hidden.gather(-2, index).squeeze(-2)
    return torch.where(has_tokens, gathered, zero)
