"""The named choices lafusion accepts: pooling and fusion modes, evaluation protocols, the noise rule's margin.

Kept apart from the code that implements them, and free of heavy imports, so that the command line can
list the choices in its parser (and ``lafusion --help`` can answer) without importing torch or MTEB.
"""

from __future__ import annotations

from typing import Literal

PoolingMode = Literal["mean", "last", "max"]
POOLING_MODES: tuple[PoolingMode, ...] = ("mean", "last", "max")

FusionMode = Literal["concat", "mean", "sum", "weighted"]
FUSION_MODES: tuple[FusionMode, ...] = ("concat", "mean", "sum", "weighted")

Protocol = Literal["standard", "paper"]
PROTOCOLS: tuple[Protocol, ...] = ("standard", "paper")
"""``standard``: MTEB's classification protocol; ``paper``: the probe trained on the whole training split."""

BATCH_SIZE = 32
"""Texts per forward pass when scanning (:class:`~lafusion_st.spec.ScanSettings`) and when encoding (``lafusion
eval``, ``lafusion embed``, the classifiers, the ONNX encoder). Memory, not vectors: part of no name or key."""

STANDARD_ERRORS = 1.0
"""Default margin of the selection's noise rule: a more complex choice must gain more than this many standard
errors of the paired per-fold CV difference (see :mod:`lafusion_st.selection`)."""

Engine = Literal["local", "ray"]
ENGINES: tuple[Engine, ...] = ("local", "ray")
"""``local``: this process; ``ray``: a Ray Data actor pool (``pip install lafusion[ray]``), same vectors."""
DEFAULT_SHARD_ROWS = 4096
"""Texts per output shard of ``lafusion embed --input ... --output ...``: the resume unit (a dead run loses at most
one shard per worker)."""

Dtype = Literal["fp32", "bf16", "fp16"]
DTYPES: tuple[Dtype, ...] = ("fp32", "bf16", "fp16")
"""Compute precision of the backbone's forward pass; weights stay float32 in memory and on disk."""
