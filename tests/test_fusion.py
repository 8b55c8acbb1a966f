"""Fusion operators and their dimension rules."""

from __future__ import annotations

import pytest
import torch

from lafusion_st.fusion import FUSION_MODES, fuse, fused_dimension

A = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
B = torch.tensor([[10.0, 20.0], [30.0, 40.0]])


def test_concat_mean_sum_weighted_values() -> None:
    torch.testing.assert_close(fuse([A, B], "concat"), torch.tensor([[1.0, 2.0, 10.0, 20.0], [3.0, 4.0, 30.0, 40.0]]))
    torch.testing.assert_close(fuse([A, B], "mean"), (A + B) / 2)
    torch.testing.assert_close(fuse([A, B], "sum"), A + B)
    torch.testing.assert_close(fuse([A, B], "weighted", torch.tensor([0.25, 2.0])), 0.25 * A + 2.0 * B)


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_fused_dimension_agrees_with_fuse(mode: str) -> None:
    weights = torch.tensor([0.5, 0.5]) if mode == "weighted" else None
    assert fuse([A, B], mode, weights).shape[-1] == fused_dimension([2, 2], mode)


@pytest.mark.parametrize("mode", ["mean", "sum", "weighted"])
def test_elementwise_fusion_rejects_different_dimensions(mode: str) -> None:
    with pytest.raises(ValueError, match=r"dimensions differ: \[576, 640\]"):
        fused_dimension([576, 640], mode)


def test_concat_accepts_different_dimensions() -> None:
    assert fused_dimension([576, 640, 384], "concat") == 1600


def test_unknown_fusion_mode_and_weight_misuse() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        fused_dimension([2], "attention")
    with pytest.raises(ValueError, match="exactly when mode is 'weighted'"):
        fuse([A, B], "mean", torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="Expected 2 fusion weights"):
        fuse([A, B], "weighted", torch.tensor([1.0, 1.0, 1.0]))
