"""Parity of an exported folder with the PyTorch embedder it came from, on several input grids.

Why several grids: a traced graph can be right for the shapes it was traced with and wrong elsewhere
(padding frozen into the mask, positions computed from the sequence instead of the mask). Each graph
grid feeds *the same token ids* to PyTorch and ONNX Runtime (batch 1, which has no padding to place,
batch 7 with right and left padding, and 16, more than there are validation texts, left-padded), so a
difference is the graph's fault; the ``encode`` grid then compares ``ORTFusedEncoder.encode`` with
``SentenceTransformer.encode`` end to end, which adds the torch-free tokenizer (empty and whitespace-only texts
included) and a text longer than ``max_seq_length``, so truncation is compared too (only there: a full-length
row in every grid made a real model's validation several times slower).

Tolerance is ``numpy.allclose``'s ``|ort - torch| <= atol + rtol * |torch|``, element-wise. Why a relative
term: LLM hidden states have a few "massive activation" coordinates (SmolLM2's pooled vectors reach 2.5e4,
where one float32 step is 2e-3), so a purely absolute 1e-4 would ask for more than float32 resolution;
PyTorch itself moves such coordinates by 2.4e-4 when the same text is batched differently. The default
``rtol=1e-5`` is about 100 float32 steps; every other coordinate is still held to ``atol``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from lafusion_st.modules import MultiModelFuse
from onnx_export.encoder import ORTFusedEncoder
from onnx_export.errors import ParityError
from onnx_export.tolerances import DEFAULT_ATOL, DEFAULT_RTOL

VALIDATION_TEXTS: tuple[str, ...] = (
    "The movie was a delight from start to finish.",
    "Stocks fell sharply on Monday after the bank raised interest rates again.",
    "fun",
    "",
    "I hated this boring film, and the plot made no sense at all; the actors looked as lost as I was.",
    "Oil prices rose.",
    "Wheat and grain exports to Europe were up ten percent in the third quarter, the ministry said.",
    " \t ",
)
GRIDS: tuple[tuple[int, str], ...] = ((1, "right"), (7, "right"), (7, "left"), (16, "left"))
"""``(batch_size, padding_side)`` pairs. No ``(1, "left")``: one text has no padding, so its inputs equal
``(1, "right")``'s token for token."""


@dataclass(frozen=True)
class GridResult:
    """How far ONNX Runtime is from PyTorch on one grid.

    Attributes:
        grid: ``batch=7 padding=left`` or ``encode``.
        max_abs_diff: Largest absolute difference over all vectors and coordinates.
        min_cosine: Smallest cosine similarity between matching vectors.
        max_abs_reference: Largest absolute PyTorch coordinate (the scale ``max_abs_diff`` compares to).
        within_tolerance: Every coordinate satisfies ``|diff| <= atol + rtol * |reference|``.
    """

    grid: str
    max_abs_diff: float
    min_cosine: float
    max_abs_reference: float
    within_tolerance: bool


def compare_with_pytorch(
    model: SentenceTransformer,
    encoder: ORTFusedEncoder,
    texts: Sequence[str] = VALIDATION_TEXTS,
    grids: Sequence[tuple[int, str]] = GRIDS,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> list[GridResult]:
    """Measure ONNX Runtime against PyTorch on each ``(batch_size, padding_side)`` grid and on ``encode``.

    Batches cycle through ``texts``; the ``encode`` grid adds a text longer than the model's ``max_seq_length``.
    """
    measure = functools.partial(_measure, atol=atol, rtol=rtol)
    results = []
    for batch_size, padding_side in grids:
        batch = [texts[index % len(texts)] for index in range(batch_size)]
        with _padding_side(model, padding_side):
            features = model.preprocess(batch)
        with torch.inference_mode():
            reference = model(dict(features))["sentence_embedding"].float().cpu().numpy()
        observed = encoder.run(_member_inputs(model, encoder, features))
        results.append(measure(f"batch={batch_size} padding={padding_side}", reference, observed))
    texts = [*texts, " ".join(["the movie was fun"] * (model.max_seq_length or 1))]
    reference = model.encode(texts, batch_size=4, convert_to_numpy=True)
    results.append(measure("encode", reference, encoder.encode(texts, batch_size=4)))
    return results


def validate_export(
    model: SentenceTransformer,
    encoder: ORTFusedEncoder,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    texts: Sequence[str] = VALIDATION_TEXTS,
) -> list[GridResult]:
    """Check every grid of :func:`compare_with_pytorch` is within tolerance; return the results.

    Raises:
        ParityError: On the first grid out of tolerance, with its max abs diff.
    """
    results = compare_with_pytorch(model, encoder, texts, atol=atol, rtol=rtol)
    for result in results:
        if not result.within_tolerance:
            raise ParityError(result.max_abs_diff, atol, rtol, result.grid)
    return results


def summarise(results: Sequence[GridResult]) -> dict[str, Any]:
    """Worst case over grids, as stored in the manifest's ``variants`` entry (a manifest exists only if fp32
    passed, so the pass/fail flag is left out; for fp16/int8 it would judge them by fp32's tolerance)."""
    return {
        "max_abs_diff": max(result.max_abs_diff for result in results),
        "min_cosine": min(result.min_cosine for result in results),
        "max_abs_reference": max(result.max_abs_reference for result in results),
        "grids": [
            {key: value for key, value in asdict(result).items() if key != "within_tolerance"} for result in results
        ],
    }


def _measure(grid: str, reference: np.ndarray, observed: np.ndarray, atol: float, rtol: float) -> GridResult:
    reference, observed = reference.astype(np.float64), observed.astype(np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(observed, axis=1)
    cosine = (reference * observed).sum(axis=1) / np.maximum(norms, 1e-30)
    return GridResult(
        grid=grid,
        max_abs_diff=float(np.abs(reference - observed).max()),
        min_cosine=float(cosine.min()),
        max_abs_reference=float(np.abs(reference).max()),
        within_tolerance=bool(np.allclose(observed, reference, atol=atol, rtol=rtol)),  # False on NaN
    )


def _tokenizers(model: SentenceTransformer) -> list[Any]:
    first = model[0]
    return [member.tokenizer for member in first.members] if isinstance(first, MultiModelFuse) else [model.tokenizer]


@contextmanager
def _padding_side(model: SentenceTransformer, side: str) -> Iterator[None]:
    tokenizers = _tokenizers(model)
    saved = [tokenizer.padding_side for tokenizer in tokenizers]
    for tokenizer in tokenizers:
        tokenizer.padding_side = side
    try:
        yield
    finally:
        for tokenizer, original in zip(tokenizers, saved, strict=True):
            tokenizer.padding_side = original


def _member_inputs(
    model: SentenceTransformer, encoder: ORTFusedEncoder, features: dict[str, Any]
) -> list[dict[str, np.ndarray]]:
    """The PyTorch features, split per member (``MultiModelFuse`` prefixes them ``<index>.``) as int64 arrays."""
    multi = isinstance(model[0], MultiModelFuse)
    return [
        {
            name: features[f"{index}.{name}" if multi else name].cpu().numpy().astype(np.int64)
            for name in member.tokenizer.inputs
        }
        for index, member in enumerate(encoder.members)
    ]
