"""Uncertainty of test accuracies and of paired comparisons, from per-text correctness.

Why these three: a test split of a few hundred texts moves by a point per handful of texts, so every
reported accuracy carries a 95% interval, and every "A is better than B" claim on the same texts carries a
paired test, corrected for the number of claims made in one table.

* :func:`accuracy_interval`: the percentile bootstrap over test texts, computed exactly. Resampling ``n``
  texts with replacement makes the number of correct ones ``Binomial(n, accuracy)``, so the bootstrap
  distribution of the accuracy is known in closed form and its percentiles need no random draws (the
  same interval a resampling bootstrap approaches as its resamples grow).
* :func:`mcnemar`: McNemar's exact test on the texts exactly one of two classifiers gets right (the
  discordant pairs); under "equally good" each such text is a fair coin.
* :func:`holm`: Holm's step-down adjustment of a family of p-values (controls the family-wise error rate
  without assuming independence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binom, binomtest


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval of an accuracy."""

    low: float
    high: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test of two classifiers on the same texts.

    Attributes:
        difference: Accuracy of ``a`` minus accuracy of ``b``.
        only_a: Texts only ``a`` gets right.
        only_b: Texts only ``b`` gets right.
        p_value: Two-sided exact p-value (1.0 when no text is discordant).
    """

    difference: float
    only_a: int
    only_b: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy_interval(correct: Sequence[bool] | np.ndarray, confidence: float = 0.95) -> Interval:
    """The percentile-bootstrap interval of the accuracy of per-text correctness ``correct``.

    Args:
        correct: One boolean per test text: was it classified right.
        confidence: Coverage of the interval, in (0, 1).

    Raises:
        ValueError: No texts, or a confidence outside (0, 1).
    """
    correct = _as_correctness(correct, "correct")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    n = len(correct)
    accuracy = float(correct.mean())
    tail = (1 - confidence) / 2
    low, high = binom.ppf([tail, 1 - tail], n, accuracy) / n
    return Interval(float(low), float(high), confidence)


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> PairedTest:
    """McNemar's exact test: are ``a`` and ``b`` (per-text correctness on the same texts) equally accurate?

    Raises:
        ValueError: Empty inputs or inputs of different lengths.
    """
    correct_a = _as_correctness(correct_a, "correct_a")
    correct_b = _as_correctness(correct_b, "correct_b")
    if len(correct_a) != len(correct_b):
        raise ValueError(f"Paired tests need the same texts: got {len(correct_a)} and {len(correct_b)} results.")
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    p_value = binomtest(min(only_a, only_b), discordant, 0.5).pvalue if discordant else 1.0
    return PairedTest(float(correct_a.mean() - correct_b.mean()), only_a, only_b, float(p_value))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: compare each with the family's level (e.g. 0.05).

    The ``i``-th smallest p-value is multiplied by ``m - i`` (``i`` from 0, ``m`` values), the results made
    non-decreasing in that order and capped at 1.

    Raises:
        ValueError: A p-value outside [0, 1].
    """
    values = np.asarray(p_values, dtype=float)
    if values.size and not ((values >= 0) & (values <= 1)).all():
        raise ValueError(f"p-values must lie in [0, 1], got {list(p_values)}.")
    order = np.argsort(values, kind="stable")
    scaled = values[order] * (len(values) - np.arange(len(values)))
    adjusted = np.empty_like(values)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def _as_correctness(values: Sequence[bool] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of booleans, got shape {array.shape}.")
    if array.dtype != bool:
        raise TypeError(f"{name} must hold booleans (was each text classified right), got dtype {array.dtype}.")
    return array
