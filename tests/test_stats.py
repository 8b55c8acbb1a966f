"""Intervals, paired tests and the Holm correction against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from lafusion_st.stats import accuracy_interval, holm, mcnemar


def test_accuracy_interval_is_the_binomial_bootstrap_percentile_interval() -> None:
    # 8 of 10 right: the bootstrap count of right texts is Binomial(10, 0.8), whose 2.5% and 97.5% points
    # are 5 and 10 (P(X <= 4) = 0.0064 < 0.025 <= P(X <= 5) = 0.0328; P(X <= 9) = 0.8926 < 0.975).
    interval = accuracy_interval(np.array([True] * 8 + [False] * 2))
    assert (interval.low, interval.high, interval.confidence) == (0.5, 1.0, 0.95)
    # every text right: no resample can contain an error
    perfect = accuracy_interval(np.ones(50, dtype=bool))
    assert (perfect.low, perfect.high) == (1.0, 1.0)


def test_accuracy_interval_matches_a_resampling_bootstrap() -> None:
    rng = np.random.default_rng(0)
    correct = rng.random(400) < 0.83
    draws = rng.integers(0, len(correct), size=(20000, len(correct)))
    resampled = np.percentile(correct[draws].mean(axis=1), [2.5, 97.5])
    interval = accuracy_interval(correct)
    assert interval.low == pytest.approx(resampled[0], abs=1 / len(correct) + 1e-9)
    assert interval.high == pytest.approx(resampled[1], abs=1 / len(correct) + 1e-9)
    assert interval.low < correct.mean() < interval.high


def test_mcnemar_exact_p_values_by_hand() -> None:
    a = np.array([True] * 10 + [False] * 2 + [True] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 5)
    test = mcnemar(a, b)
    # 10 texts only a gets right, 2 only b: p = 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * 79 / 4096
    assert (test.only_a, test.only_b) == (10, 2)
    assert test.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert test.difference == pytest.approx(8 / 17)
    assert mcnemar(b, a).p_value == pytest.approx(test.p_value) and mcnemar(b, a).difference < 0
    # identical predictions: nothing discordant, no evidence either way
    same = mcnemar(a, a)
    assert (same.only_a, same.only_b, same.p_value, same.difference) == (0, 0, 1.0, 0.0)
    # 1 vs 0 discordant texts: p = 1 (a fair coin's single toss says nothing)
    assert mcnemar(np.array([True, True]), np.array([False, True])).p_value == 1.0


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, max(1 * 0.04, 0.06) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        accuracy_interval(np.array([], dtype=bool))
    with pytest.raises(TypeError, match="booleans"):
        accuracy_interval(np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="confidence"):
        accuracy_interval(np.array([True, False]), confidence=1.5)
    with pytest.raises(ValueError, match="same texts: got 2 and 3"):
        mcnemar(np.array([True, False]), np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])
