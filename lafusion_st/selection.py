"""Choosing layers and models from cached scans, by cross-validated linear probes on the training split.

Every strategy scores a candidate by the CV accuracy (or macro-F1) of the probe on the *concatenated*
vectors of the candidate's layers (or models): what ``LayerSelect(fusion="concat")`` and
``MultiModelFuse(fusion="concat")`` produce, the paper's default fusion. Concatenation is in ascending
layer order and, for models, in the order the caller lists them, as the fused embedder lays them out.

Each strategy returns a :class:`Selection`: what was chosen, its CV score, and the evidence (every
candidate scored, in order, with whether it was taken), all JSON-serialisable with ``to_dict()``.
Nothing here sees test data: pass the ``train`` side of a :class:`~lafusion_st.scan.TaskScan`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from lafusion_st.probe import (
    Metric,
    ProbeConfig,
    ProbeScore,
    check_labels,
    check_metric,
    cross_validate,
    layer_scores,
    score_many,
)


@dataclass(frozen=True)
class Step:
    """One scored candidate: the layers (or models) it fuses, its CV score, whether the strategy took it."""

    candidate: list
    score: ProbeScore
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": list(self.candidate), "score": self.score.to_dict(), "accepted": self.accepted}


@dataclass(frozen=True)
class Selection:
    """The outcome of a selection strategy.

    Attributes:
        strategy: ``top_k``, ``best_window``, ``greedy_layers`` or ``greedy_models``.
        chosen: Layer indices (ascending) for layer strategies; model names for ``greedy_models``.
        score: CV score of the probe on the concatenated vectors of ``chosen``.
        metric: The metric the strategy maximised (``accuracy`` or ``macro_f1``).
        steps: Every candidate scored, in the order it was scored.
        params: The strategy's settings (k, width, threshold, ...), for the report.
    """

    strategy: str
    chosen: list
    score: ProbeScore
    metric: str
    steps: list[Step] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "chosen": list(self.chosen),
            "score": self.score.to_dict(),
            "metric": self.metric,
            "params": dict(self.params),
            "steps": [step.to_dict() for step in self.steps],
        }


@dataclass(frozen=True)
class PairComplementarity:
    """How two models' best probes err, on the same out-of-fold predictions of the training split.

    Attributes:
        both_wrong: Share of texts both get wrong (low = complementary).
        disagreement: Share of texts exactly one of them gets right.
        yules_q: Yule's Q of their correctness, from -1 (they err on different texts) over 0 (independent) to
            1 (they err on the same texts); ``None`` when undefined (a model with no errors, for instance).
        a_errors_fixed_by_b: Of the texts ``model_a`` gets wrong, the share ``model_b`` gets right.
        b_errors_fixed_by_a: The same the other way round.
        oracle_accuracy: Share of texts at least one gets right: a ceiling for fusing the two.
    """

    model_a: str
    model_b: str
    both_wrong: float
    disagreement: float
    yules_q: float | None
    a_errors_fixed_by_b: float | None
    b_errors_fixed_by_a: float | None
    oracle_accuracy: float


@dataclass(frozen=True)
class Complementarity:
    """Out-of-fold accuracy of each model's probe and the error overlap of every pair."""

    accuracy: dict[str, float]
    pairs: list[PairComplementarity]
    folds: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": dict(self.accuracy),
            "folds": self.folds,
            "pairs": [vars(pair).copy() for pair in self.pairs],
        }


def top_k(
    vectors: np.ndarray,
    labels: Sequence,
    scores: Sequence[ProbeScore],
    k: int,
    *,
    metric: Metric = "accuracy",
    config: ProbeConfig = ProbeConfig(),
) -> Selection:
    """The ``k`` layers with the best single-layer scores, and the CV score of their concatenation.

    Args:
        vectors: ``[L + 1, N, H]`` training vectors of one model and pooling.
        labels: Training labels.
        scores: Single-layer scores from :func:`~lafusion_st.probe.layer_scores` (``scores[l]`` for layer ``l``).
        k: Layers to keep, ``1 <= k <= L + 1``; ties go to the lower layer.
        metric: What "best" means.
        config: Probe settings for scoring the concatenation.
    """
    _check_scores(vectors, scores)
    _check_count("k", k, len(scores))
    ranking = sorted(range(len(scores)), key=lambda layer: (-scores[layer].mean(metric), layer))
    chosen = sorted(ranking[:k])
    fused = scores[chosen[0]] if k == 1 else _cv(_concat_layers(vectors, chosen), labels, config)
    steps = [Step([layer], scores[layer], True) for layer in ranking[:k]]
    return Selection("top_k", chosen, fused, check_metric(metric), steps, {"k": k})


def best_window(
    vectors: np.ndarray,
    labels: Sequence,
    scores: Sequence[ProbeScore] | None = None,
    *,
    width: int | None = None,
    max_width: int = 4,
    threshold: float = 0.002,
    metric: Metric = "accuracy",
    config: ProbeConfig = ProbeConfig(),
    show_progress_bar: bool = True,
) -> Selection:
    """The best run of adjacent layers, scored by CV of their concatenation.

    With ``width``, the best window of exactly that many layers. Without, every width from 1 to
    ``max_width`` is scored and a wider window must earn its extra layers as in :func:`greedy_layers`: going
    from narrow to wide, the best window of a width replaces the current choice only if it raises the CV
    ``metric`` by at least ``threshold`` (otherwise noise would favour wide windows, whose extra columns
    let the probe fit fold noise). Ties go to the lower window. Windows of one layer reuse ``scores``.
    Cost: ``sum over widths w of (L + 2 - w)`` cross-validations (118 for 31 layers and ``max_width=4``).
    """
    num_layers = vectors.shape[0]
    widths = [width] if width is not None else list(range(1, max_width + 1))
    for value in widths:
        _check_count("width", value, num_layers)
    if scores is not None:
        _check_scores(vectors, scores)
    windows = [list(range(start, start + w)) for w in widths for start in range(num_layers - w + 1)]
    known = {(layer,): scores[layer] for layer in range(num_layers)} if scores is not None else {}
    to_score = [window for window in windows if tuple(window) not in known]
    computed = score_many(
        (_concat_layers(vectors, window) for window in to_score),
        labels,
        config,
        total=len(to_score),
        description="probe windows",
        show_progress_bar=show_progress_bar,
    )
    known.update({tuple(window): score for window, score in zip(to_score, computed, strict=True)})
    value = lambda window: known[tuple(window)].mean(metric)  # noqa: E731
    best = None
    for w in widths:
        best_of_width = max(
            (window for window in windows if len(window) == w), key=lambda window: (value(window), -window[0])
        )
        if best is None or value(best_of_width) - value(best) >= threshold:
            best = best_of_width
    steps = [Step(window, known[tuple(window)], window == best) for window in windows]
    params = {"width": width, "max_width": None if width is not None else max_width, "threshold": threshold}
    return Selection("best_window", best, known[tuple(best)], check_metric(metric), steps, params)


def greedy_layers(
    vectors: np.ndarray,
    labels: Sequence,
    scores: Sequence[ProbeScore] | None = None,
    *,
    threshold: float = 0.002,
    max_layers: int = 4,
    candidates: Sequence[int] | None = None,
    metric: Metric = "accuracy",
    config: ProbeConfig = ProbeConfig(),
    show_progress_bar: bool = True,
) -> Selection:
    """Greedy forward selection of layers.

    Starts from the best single layer; each round scores every remaining candidate added to the current
    set and keeps the best, as long as it raises the CV ``metric`` by at least ``threshold`` (absolute, e.g.
    0.002 = 0.2 accuracy points) and the set has fewer than ``max_layers`` layers.

    Args:
        vectors: ``[L + 1, N, H]`` training vectors.
        labels: Training labels.
        scores: Single-layer scores (computed if ``None``).
        threshold: Smallest CV gain that justifies one more layer.
        max_layers: Upper bound on the selection size.
        candidates: Layers that may be chosen (default all). Each round costs one CV per candidate, so
            restricting them (e.g. to the top 10 single layers) bounds the cost on many-class tasks.
        metric: What is maximised.
        config: Probe settings.
        show_progress_bar: One bar per round.
    """
    if scores is None:
        scores = layer_scores(vectors, labels, config, show_progress_bar=show_progress_bar)
    _check_scores(vectors, scores)
    pool = sorted({int(layer) for layer in (range(vectors.shape[0]) if candidates is None else candidates)})
    if not pool or not all(0 <= layer < vectors.shape[0] for layer in pool):
        raise ValueError(
            f"candidates must be non-empty layer indices in 0..{vectors.shape[0] - 1}, got {candidates!r}."
        )
    singles = {layer: scores[layer] for layer in pool}
    chosen, score, steps = _greedy(
        singles,
        lambda keys: _concat_layers(vectors, sorted(keys)),
        labels,
        threshold,
        max_layers,
        metric,
        config,
        order=sorted,
        show_progress_bar=show_progress_bar,
    )
    params = {"threshold": threshold, "max_layers": max_layers, "candidates": pool if candidates is not None else None}
    return Selection("greedy_layers", sorted(chosen), score, check_metric(metric), steps, params)


def greedy_models(
    features: Mapping[str, np.ndarray],
    labels: Sequence,
    *,
    threshold: float = 0.002,
    max_models: int | None = None,
    metric: Metric = "accuracy",
    config: ProbeConfig = ProbeConfig(),
    show_progress_bar: bool = True,
) -> Selection:
    """Greedy forward selection of models for multi-model fusion.

    Args:
        features: ``model -> [N, D]`` training vectors, each model's best configuration (e.g.
            ``scan.train[m][pooling].concat(selection.chosen)``); all on the same texts in the same order.
        labels: Training labels.
        threshold: Smallest CV gain that justifies one more model.
        max_models: Upper bound (default: all).
        metric, config, show_progress_bar: As in :func:`greedy_layers`.

    Returns:
        A :class:`Selection` whose ``chosen`` lists model names in the order of ``features`` (the order
        to pass to ``build_fused_model``).
    """
    names = list(features)
    if not names:
        raise ValueError("Give at least one model's features.")
    rows = {name: np.asarray(block).shape[0] for name, block in features.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"All models must describe the same texts; got row counts {rows}.")
    max_models = len(names) if max_models is None else max_models
    singles = dict(
        zip(
            names,
            score_many(
                (features[name] for name in names),
                labels,
                config,
                total=len(names),
                description="probe models",
                show_progress_bar=show_progress_bar,
            ),
            strict=True,
        )
    )
    in_given_order = lambda keys: sorted(keys, key=names.index)  # noqa: E731
    chosen, score, steps = _greedy(
        singles,
        lambda keys: np.concatenate([features[name] for name in in_given_order(keys)], axis=1),
        labels,
        threshold,
        max_models,
        metric,
        config,
        order=in_given_order,
        show_progress_bar=show_progress_bar,
    )
    return Selection(
        "greedy_models",
        in_given_order(chosen),
        score,
        check_metric(metric),
        steps,
        {"threshold": threshold, "max_models": max_models},
    )


def complementarity(
    features: Mapping[str, np.ndarray], labels: Sequence, config: ProbeConfig = ProbeConfig()
) -> Complementarity:
    """Error overlap of the models' probes, from out-of-fold predictions on the same folds.

    Args:
        features: ``model -> [N, D]`` training vectors (each model's best configuration).
        labels: Training labels.
        config: Probe settings; the same seed gives every model the same folds.
    """
    if len(features) < 2:
        raise ValueError(f"Complementarity compares models: give at least 2, got {list(features)}.")
    labels = np.asarray(labels)
    folds = check_labels(labels, config.folds)
    correct = {
        name: cross_validate(block, labels, config, folds=folds).predictions == labels
        for name, block in features.items()
    }
    pairs = [_pair(a, b, correct[a], correct[b]) for a, b in combinations(correct, 2)]
    return Complementarity({name: float(right.mean()) for name, right in correct.items()}, pairs, folds)


def _pair(name_a: str, name_b: str, right_a: np.ndarray, right_b: np.ndarray) -> PairComplementarity:
    both_right = float(np.mean(right_a & right_b))
    both_wrong = float(np.mean(~right_a & ~right_b))
    only_a = float(np.mean(right_a & ~right_b))
    only_b = float(np.mean(~right_a & right_b))
    q_denominator = both_right * both_wrong + only_a * only_b
    errors_a, errors_b = float(np.mean(~right_a)), float(np.mean(~right_b))
    return PairComplementarity(
        model_a=name_a,
        model_b=name_b,
        both_wrong=both_wrong,
        disagreement=only_a + only_b,
        yules_q=(both_right * both_wrong - only_a * only_b) / q_denominator if q_denominator > 0 else None,
        a_errors_fixed_by_b=only_b / errors_a if errors_a > 0 else None,
        b_errors_fixed_by_a=only_a / errors_b if errors_b > 0 else None,
        oracle_accuracy=1.0 - both_wrong,
    )


def _greedy(
    singles: Mapping[Hashable, ProbeScore],
    fused_features: Callable[[list], np.ndarray],
    labels: Sequence,
    threshold: float,
    max_size: int,
    metric: Metric,
    config: ProbeConfig,
    *,
    order: Callable[[list], list],
    show_progress_bar: bool,
) -> tuple[list, ProbeScore, list[Step]]:
    """Forward selection over named blocks, shared by layers and models; ties go to the earlier candidate."""
    check_metric(metric)
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"The largest selection size must be a positive integer, got {max_size!r}.")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}.")
    keys = list(singles)
    first = max(keys, key=lambda key: (singles[key].mean(metric), -keys.index(key)))
    chosen, score = [first], singles[first]
    steps = [Step([key], singles[key], key == first) for key in keys]
    while len(chosen) < min(max_size, len(keys)):
        remaining = [key for key in keys if key not in chosen]
        trials = [order([*chosen, key]) for key in remaining]
        trial_scores = score_many(
            (fused_features(trial) for trial in trials),
            labels,
            config,
            total=len(trials),
            description=f"greedy round {len(chosen) + 1}",
            show_progress_bar=show_progress_bar,
        )
        best = max(range(len(trials)), key=lambda index: (trial_scores[index].mean(metric), -index))
        accepted = trial_scores[best].mean(metric) - score.mean(metric) >= threshold
        steps += [
            Step(trial, trial_score, accepted and index == best)
            for index, (trial, trial_score) in enumerate(zip(trials, trial_scores, strict=True))
        ]
        if not accepted:
            break
        chosen, score = order([*chosen, remaining[best]]), trial_scores[best]
    return chosen, score, steps


def _cv(features: np.ndarray, labels: Sequence, config: ProbeConfig) -> ProbeScore:
    return cross_validate(features, labels, config).score


def _concat_layers(vectors: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    return np.concatenate([vectors[layer] for layer in layers], axis=1)


def _check_scores(vectors: np.ndarray, scores: Sequence[ProbeScore]) -> None:
    if np.ndim(vectors) != 3:
        raise ValueError(f"vectors must be [layers, texts, hidden], got shape {np.shape(vectors)}.")
    if len(scores) != vectors.shape[0]:
        raise ValueError(f"Got {len(scores)} layer scores for {vectors.shape[0]} layers.")


def _check_count(name: str, value: int, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{name} must be an integer in 1..{limit}, got {value!r}.")
