"""measure_cost: it reports the encoder it measured, and its peak memory sees what encoding allocated."""

from __future__ import annotations

import mmap

import numpy as np
import torch
from costs import measure_cost, peak_rss_mib, reset_peak_rss, rss_mib

SPIKE_MIB = 64


def touch_fresh_memory(mib: int) -> None:
    """Map ``mib`` MiB of new anonymous pages, write to each, unmap: resident for a moment whatever memory the
    allocator already holds (a big process would otherwise serve a numpy array from pages it kept)."""
    block = mmap.mmap(-1, mib * 2**20)
    for offset in range(0, mib * 2**20, mmap.PAGESIZE):
        block[offset] = 1
    block.close()


class SpikyEncoder(torch.nn.Module):
    """A linear map over character counts that touches 64 MiB of fresh memory per call."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(26, 8)

    def encode(self, texts, batch_size: int = 32, convert_to_numpy: bool = True) -> np.ndarray:
        touch_fresh_memory(SPIKE_MIB)
        counts = torch.tensor([[text.count(chr(97 + i)) for i in range(26)] for text in texts], dtype=torch.float32)
        with torch.no_grad():
            return self.linear(counts).numpy()


def test_measure_cost_reports_the_encoder_and_its_memory_spike() -> None:
    encoder = SpikyEncoder()
    cost = measure_cost(encoder, ["the movie was good"] * 20, batch_size=4)
    assert cost.embedding_dimension == 8
    assert cost.n_parameters == 26 * 8 + 8
    assert cost.sentences_per_second > 0
    assert cost.peak_rss_mb >= cost.rss_before_mb + SPIKE_MIB - 4
    assert (cost.n_texts, cost.batch_size, cost.repeats) == (20, 4, 3)


def test_the_peak_resets_to_the_current_memory() -> None:
    touch_fresh_memory(SPIKE_MIB)
    assert peak_rss_mib() >= rss_mib() + SPIKE_MIB - 4
    reset_peak_rss()
    assert peak_rss_mib() < rss_mib() + 4
