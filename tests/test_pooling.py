"""Pooling against hand-computed values, for left and right padding."""

from __future__ import annotations

import pytest
import torch

from lafusion_st.pooling import POOLING_MODES, check_pooling_mode, pool

# Two texts: row 0 has 3 real tokens, row 1 has 1. Token states are distinct small integers.
REAL = [torch.tensor([[1.0, 10.0], [2.0, -20.0], [6.0, 30.0]]), torch.tensor([[4.0, -4.0]])]
EXPECTED = {
    "mean": torch.tensor([[3.0, 20.0 / 3.0], [4.0, -4.0]]),
    "last": torch.tensor([[6.0, 30.0], [4.0, -4.0]]),
    "max": torch.tensor([[6.0, 30.0], [4.0, -4.0]]),
}


def padded_batch(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad with huge values so that any pad position leaking into a result is obvious."""
    length = max(len(row) for row in REAL)
    hidden = torch.full((2, length, 2), 1e6)
    mask = torch.zeros(2, length, dtype=torch.long)
    for index, row in enumerate(REAL):
        span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        hidden[index, span] = row
        mask[index, span] = 1
    return hidden, mask


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_matches_hand_computed_values(mode: str, side: str) -> None:
    hidden, mask = padded_batch(side)
    torch.testing.assert_close(pool(hidden, mask, mode), EXPECTED[mode])


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_keeps_leading_layer_dimension(mode: str) -> None:
    hidden, mask = padded_batch("left")
    stacked = torch.stack([hidden, 2 * hidden])
    pooled = pool(stacked, mask, mode)
    assert pooled.shape == (2, 2, 2)
    torch.testing.assert_close(pooled[1], 2 * EXPECTED[mode])


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_row_without_tokens_pools_to_zeros_even_with_nan_pads(mode: str) -> None:
    hidden = torch.full((1, 3, 2), float("nan"))
    assert torch.equal(pool(hidden, torch.zeros(1, 3), mode), torch.zeros(1, 2))


def test_unknown_pooling_mode_lists_choices() -> None:
    with pytest.raises(ValueError, match="'mean', 'last', 'max'"):
        check_pooling_mode("cls")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_states_pool_in_float32(dtype) -> None:
    """Item 9: 300 fp16 states of 60000 summed in fp16 overflow to inf; pooled in float32 the mean is exact."""
    hidden = torch.full((1, 300, 2), 60000.0, dtype=dtype)
    mask = torch.ones(1, 300, dtype=torch.long)
    for mode in POOLING_MODES:
        pooled = pool(hidden, mask, mode)
        assert pooled.dtype == torch.float32
        torch.testing.assert_close(pooled, hidden[:, 0].float(), rtol=0, atol=0)
