"""What an embedder costs at inference time: throughput and peak memory, for the eval scripts' tables.

One peak-memory method for every script here: the kernel's own high-water mark of this process's resident
memory (Linux ``VmHWM`` in ``/proc/self/status``), reset before a measurement by writing ``5`` to
``/proc/self/clear_refs``. Why: the kernel sees every allocation (torch's tensors, ONNX Runtime's arenas,
Python) and misses no spike, unlike a sampling thread; tracemalloc sees only Python's allocations, and
``getrusage``'s ``ru_maxrss`` cannot be reset and survives ``execve``. Linux only, like the benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started or since :func:`reset_peak_rss`, in MiB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024  # kB


def rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024  # kB


def reset_peak_rss() -> None:
    """Restart the peak at the current resident memory (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


@dataclass(frozen=True)
class EncoderCost:
    """What one configuration costs at inference time, measured on a fixed list of texts.

    Attributes:
        embedding_dimension: Width of the vectors.
        n_parameters: Parameters of the torch module (``None`` for a non-torch encoder).
        peak_rss_mb: Peak resident memory of the whole process while encoding, in MiB: weights,
            activations, and the Python/torch runtime. Measure in a fresh process per configuration for a
            figure that belongs to that configuration alone.
        rss_before_mb: Resident memory just before encoding (the difference is the encoding's own peak).
        sentences_per_second: Texts encoded per second in the fastest of ``repeats`` passes, after one
            warm-up batch (the fastest pass is the one least disturbed by other processes).
        n_texts: Number of texts timed.
        batch_size: Batch size used.
        repeats: Number of timed passes.
    """

    embedding_dimension: int
    n_parameters: int | None
    peak_rss_mb: float
    rss_before_mb: float
    sentences_per_second: float
    n_texts: int
    batch_size: int
    repeats: int


def measure_cost(encoder: Any, texts: Sequence[str], batch_size: int = 32, repeats: int = 3) -> EncoderCost:
    """Time ``encoder.encode(texts)`` and take the process's peak resident memory while it runs.

    Args:
        encoder: Anything with SentenceTransformer's ``encode`` (its own, no cache).
        texts: The texts to time; the first ``batch_size`` are encoded once before, as a warm-up.
        batch_size: Encoding batch size.
        repeats: Timed passes over ``texts``; the fastest counts.
    """
    if not texts or repeats < 1:
        raise ValueError(
            f"measure_cost needs at least one text and one repeat, got {len(texts)} texts and {repeats} repeats."
        )
    texts = list(texts)
    encoder.encode(texts[:batch_size], batch_size=batch_size, convert_to_numpy=True)
    reset_peak_rss()
    rss_before = rss_mib()
    elapsed = []
    for _ in range(repeats):
        start = time.perf_counter()
        vectors = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        elapsed.append(time.perf_counter() - start)
    parameters = getattr(encoder, "parameters", None)
    return EncoderCost(
        embedding_dimension=int(np.asarray(vectors).shape[1]),
        n_parameters=sum(p.numel() for p in parameters()) if callable(parameters) else None,
        peak_rss_mb=round(peak_rss_mib(), 1),
        rss_before_mb=round(rss_before, 1),
        sentences_per_second=round(len(texts) / min(elapsed), 2),
        n_texts=len(texts),
        batch_size=batch_size,
        repeats=repeats,
    )
