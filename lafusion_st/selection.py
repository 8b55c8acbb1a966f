"""Choosing layers and models from cached scans, by cross-validated linear probes on the training split.

Every strategy scores a candidate by the CV accuracy (or macro-F1) of the probe on the *concatenated*
vectors of the candidate's layers (or models): what ``LayerSelect(fusion="concat")`` and
``MultiModelFuse(fusion="concat")`` produce, the paper's default fusion. Concatenation is in ascending
layer order and, for models, in the order the caller lists them, as the fused embedder lays them out.

Each strategy returns a :class:`Selection`: what was chosen, its CV score, and the evidence (every
candidate scored, in order, with whether it was taken), all JSON-serialisable with ``to_dict()``.
Nothing here sees test data: pass the ``train`` side of a :class:`~lafusion_st.scan.TaskScan`.

**The noise rule.** A more complex choice (another layer than the last, an added layer, an added model,
another pooling, a wider window) replaces the current simpler one only when it wins by more than the
fold-to-fold noise of the comparison: with ``d_f`` the challenger's score minus the incumbent's in outer
fold ``f`` (both scored on the same folds), the challenger is taken when ``mean(d) > 0`` and
``mean(d) > standard_errors * sd(d) / sqrt(folds)`` (a one-standard-error rule by default). Paired
differences cancel what the folds share (a hard fold is hard for both), so the rule is far sharper than
comparing two means with their own spreads, yet it no longer rewards a win of a text or two. Every
application is recorded as a :class:`Decision`, so a report shows each time the simpler choice was kept.
The last layer, everybody's default, is always scored and is the incumbent the first layer choice must beat.

Candidates are scored with the ranking probe of :mod:`lafusion_st.probe` (many of them); the final
comparisons of :func:`search_layers` (one choice per pooling, against each other and against the last
layer) use the tuned probe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lafusion_st.modes import STANDARD_ERRORS
from lafusion_st.probe import (
    CrossValidation,
    Metric,
    ProbeConfig,
    ProbeScore,
    check_metric,
    cross_validate,
    cross_validate_together,
    layer_scores,
    score_many,
    usable_folds,
)


@dataclass(frozen=True)
class Decision:
    """One application of the noise rule: did ``challenger`` replace ``incumbent``?

    Attributes:
        kind: What was at stake: ``layer`` (another layer than the last), ``added layer``, ``added model``,
            ``width`` (a wider window) or ``pooling``.
        incumbent: The current, simpler choice (layers, models or a pooling).
        challenger: The best more complex choice.
        gain: Mean over folds of the challenger's score minus the incumbent's.
        standard_error: Standard error of that mean (``sd / sqrt(folds)`` of the paired differences).
        accepted: Whether the challenger won (``gain > 0`` and ``gain > standard_errors * standard_error``).
    """

    kind: str
    incumbent: Any
    challenger: Any
    gain: float
    standard_error: float
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_rule(
    challenger: ProbeScore,
    incumbent: ProbeScore,
    *,
    kind: str,
    names: tuple[Any, Any],
    metric: Metric = "accuracy",
    standard_errors: float = STANDARD_ERRORS,
) -> Decision:
    """Apply the noise rule of the module docstring to two scores computed on the same folds.

    Args:
        challenger: Score of the more complex choice.
        incumbent: Score of the current, simpler choice.
        kind: What is at stake, recorded in the :class:`Decision`.
        names: ``(incumbent, challenger)`` as the report should name them.
        metric: The metric compared.
        standard_errors: How many standard errors the gain must exceed (0: any positive gain wins).

    Raises:
        ValueError: Scores from different probes or fold counts (not paired), or a negative
            ``standard_errors``.
    """
    if standard_errors < 0:
        raise ValueError(f"standard_errors must be >= 0, got {standard_errors!r}.")
    if challenger.probe != incumbent.probe or challenger.folds != incumbent.folds:
        raise ValueError(
            f"The noise rule compares scores of one probe on the same folds; got {challenger.probe} on "
            f"{challenger.folds} folds and {incumbent.probe} on {incumbent.folds} folds."
        )
    differences = challenger.per_fold(metric) - incumbent.per_fold(metric)
    gain = float(differences.mean())
    standard_error = float(differences.std(ddof=1) / np.sqrt(len(differences)))
    accepted = gain > 0 and gain > standard_errors * standard_error
    incumbent_name, challenger_name = names
    return Decision(kind, incumbent_name, challenger_name, gain, standard_error, accepted)


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
        params: The strategy's settings (k, width, standard_errors, ...), for the report.
        decisions: Every application of the noise rule, in order (``kept_simpler`` lists the refusals).
    """

    strategy: str
    chosen: list
    score: ProbeScore
    metric: str
    steps: list[Step] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)

    @property
    def kept_simpler(self) -> list[Decision]:
        """The decisions where the simpler choice was kept."""
        return [decision for decision in self.decisions if not decision.accepted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "chosen": list(self.chosen),
            "score": self.score.to_dict(),
            "metric": self.metric,
            "params": dict(self.params),
            "decisions": [decision.to_dict() for decision in self.decisions],
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
        config: Probe settings for scoring the concatenation (with the probe that scored ``scores``).
    """
    _check_scores(vectors, scores)
    _check_count("k", k, len(scores))
    ranking = sorted(range(len(scores)), key=lambda layer: (-scores[layer].mean(metric), layer))
    chosen = sorted(ranking[:k])
    fused = scores[chosen[0]] if k == 1 else _cv(_concat_layers(vectors, chosen), labels, config, scores[0].probe)
    steps = [Step([layer], scores[layer], True) for layer in ranking[:k]]
    return Selection("top_k", chosen, fused, check_metric(metric), steps, {"k": k})


def best_window(
    vectors: np.ndarray,
    labels: Sequence,
    scores: Sequence[ProbeScore] | None = None,
    *,
    width: int | None = None,
    max_width: int = 4,
    standard_errors: float = STANDARD_ERRORS,
    metric: Metric = "accuracy",
    config: ProbeConfig = ProbeConfig(),
    show_progress_bar: bool = True,
) -> Selection:
    """The best run of adjacent layers, scored by CV of their concatenation (ranking probe).

    With ``width``, the best window of exactly that many layers. Without, every width from 1 to
    ``max_width`` is scored and the choice grows under the noise rule: the best single layer must beat the
    last layer, and going from narrow to wide, the best window of a width must beat the current choice
    (otherwise noise would favour wide windows, whose extra columns let the probe fit fold noise). Ties go
    to the lower window. Windows of one layer reuse ``scores`` (ranking-probe scores on the same folds).
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
    best, decisions = [num_layers - 1] if width is None else None, []
    for w in widths:
        best_of_width = max(
            (window for window in windows if len(window) == w), key=lambda window: (value(window), -window[0])
        )
        if best is None:
            best = best_of_width
        elif best_of_width != best:
            decision = noise_rule(
                known[tuple(best_of_width)],
                known[tuple(best)],
                kind="layer" if w == 1 else "width",
                names=(best, best_of_width),
                metric=metric,
                standard_errors=standard_errors,
            )
            decisions.append(decision)
            best = best_of_width if decision.accepted else best
    steps = [Step(window, known[tuple(window)], window == best) for window in windows]
    params = {
        "width": width,
        "max_width": None if width is not None else max_width,
        "standard_errors": standard_errors,
    }
    return Selection("best_window", best, known[tuple(best)], check_metric(metric), steps, params, decisions)


def greedy_layers(
    vectors: np.ndarray,
    labels: Sequence,
    scores: Sequence[ProbeScore] | None = None,
    *,
    standard_errors: float = STANDARD_ERRORS,
    max_layers: int = 4,
    candidates: Sequence[int] | None = None,
    start: int | None = None,
    metric: Metric = "accuracy",
    config: ProbeConfig = ProbeConfig(),
    show_progress_bar: bool = True,
) -> Selection:
    """Greedy forward selection of layers under the noise rule (ranking probe).

    Starts from the last layer (or ``start``); the best single candidate replaces it if it passes the noise rule. Each
    round then scores every remaining candidate added to the current set and keeps the best, as long as it
    passes the noise rule against the current set and the set has fewer than ``max_layers`` layers.

    Args:
        vectors: ``[L + 1, N, H]`` training vectors.
        labels: Training labels.
        scores: Single-layer ranking-probe scores (computed if ``None``).
        standard_errors: The noise rule's margin, in standard errors of the paired per-fold gain.
        max_layers: Upper bound on the selection size.
        candidates: Layers that may be chosen besides the last, which is always the starting point (default
            all). Each round costs one CV per candidate, so restricting them (e.g. to the top 8 single
            layers) bounds the cost on many-class tasks.
        start: The incumbent instead of the last layer of ``vectors``: the sample's best layer when a
            coarse-to-fine scan stopped before the model's last layer (see :mod:`lafusion_st.coarse_to_fine`).
        metric: What is maximised.
        config: Probe settings.
        show_progress_bar: One bar per round.
    """
    if scores is None:
        scores = layer_scores(vectors, labels, config, show_progress_bar=show_progress_bar)
    _check_scores(vectors, scores)
    last = vectors.shape[0] - 1
    pool = sorted({int(layer) for layer in (range(vectors.shape[0]) if candidates is None else candidates)})
    if not pool or not all(0 <= layer <= last for layer in pool):
        raise ValueError(f"candidates must be non-empty layer indices in 0..{last}, got {candidates!r}.")
    start = last if start is None else _check_layer("start", start, last)
    singles = {layer: scores[layer] for layer in sorted({*pool, start})}
    chosen, score, steps, decisions = _greedy(
        singles,
        lambda keys: _concat_layers(vectors, sorted(keys)),
        labels,
        start=start,
        max_size=max_layers,
        standard_errors=standard_errors,
        metric=metric,
        config=config,
        kinds=("layer", "added layer"),
        order=sorted,
        show_progress_bar=show_progress_bar,
    )
    params = {
        "standard_errors": standard_errors,
        "max_layers": max_layers,
        "candidates": pool if candidates is not None else None,
    }
    return Selection("greedy_layers", sorted(chosen), score, check_metric(metric), steps, params, decisions)


def greedy_models(
    features: Mapping[str, np.ndarray],
    labels: Sequence,
    *,
    standard_errors: float = STANDARD_ERRORS,
    max_models: int | None = None,
    metric: Metric = "accuracy",
    config: ProbeConfig = ProbeConfig(),
    show_progress_bar: bool = True,
) -> Selection:
    """Greedy forward selection of models for multi-model fusion, under the noise rule (ranking probe).

    Starts from the best single model; another model is added while the best addition passes the noise rule.

    Args:
        features: ``model -> [N, D]`` training vectors, each model's best configuration (e.g.
            ``scan.train[m][pooling].concat(selection.chosen)``); all on the same texts in the same order.
        labels: Training labels.
        standard_errors: The noise rule's margin.
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
    chosen, score, steps, decisions = _greedy(
        singles,
        lambda keys: np.concatenate([features[name] for name in in_given_order(keys)], axis=1),
        labels,
        start=max(names, key=lambda name: (singles[name].mean(metric), -names.index(name))),
        max_size=max_models,
        standard_errors=standard_errors,
        metric=metric,
        config=config,
        kinds=("model", "added model"),
        order=in_given_order,
        show_progress_bar=show_progress_bar,
    )
    params = {"standard_errors": standard_errors, "max_models": max_models}
    return Selection("greedy_models", in_given_order(chosen), score, check_metric(metric), steps, params, decisions)


GREEDY_CANDIDATES = 8
""":func:`search_layers` lets greedy selection add only the best single layers: each round costs one CV per
candidate."""


@dataclass(frozen=True)
class LayerSearch:
    """One model's choice of pooling and layers, with the evidence behind it.

    Attributes:
        pooling: The chosen pooling.
        layers: The chosen layers (ascending).
        score: Tuned-probe CV score of the choice.
        last_layer: Tuned-probe CV score of the incumbent under the first (default) pooling: the baseline. The
            incumbent is the last layer, unless a coarse-to-fine scan stopped before it (see ``incumbent``).
        curves: ``pooling -> ranking-probe CV score of every layer``.
        best_single: ``pooling -> (its best single layer by the ranking probe, that layer's tuned-probe score)``.
        selection: The greedy layer selection under the chosen pooling (ranking probe, with its decisions).
        decisions: The tuned probe's decisions: each further pooling against the current one, then the
            choice against the incumbent.
        incumbent: The layer every choice had to beat: the last layer of the vectors searched, or the layer
            the caller named (:func:`search_layers`' ``incumbent``).
        predictions: The choice's out-of-fold predictions by the tuned probe (the CV behind ``score``), kept
            for :func:`complementarity_of`: comparing models' errors then costs no further fit.
    """

    pooling: str
    layers: list[int]
    score: ProbeScore
    last_layer: ProbeScore
    curves: dict[str, list[ProbeScore]]
    best_single: dict[str, tuple[int, ProbeScore]]
    selection: Selection
    decisions: list[Decision]
    incumbent: int
    predictions: np.ndarray = field(compare=False, repr=False)  # one label per training text: no ==, no dump

    @property
    def kept_simpler(self) -> list[Decision]:
        """Every decision of the search (poolings, greedy rounds, final) that kept the simpler choice."""
        return [decision for decision in [*self.selection.decisions, *self.decisions] if not decision.accepted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": "search_layers",
            "chosen": list(self.layers),
            "pooling": self.pooling,
            "score": self.score.to_dict(),
            "last_layer": self.last_layer.to_dict(),
            "incumbent": self.incumbent,
            "best_single": {
                pooling: {"layer": layer, "score": score.to_dict()}
                for pooling, (layer, score) in self.best_single.items()
            },
            "decisions": [decision.to_dict() for decision in self.decisions],
            "selection": self.selection.to_dict(),
        }


def search_layers(
    vectors: Mapping[str, np.ndarray],
    labels: Sequence,
    *,
    max_layers: int = 4,
    candidates: int = GREEDY_CANDIDATES,
    standard_errors: float = STANDARD_ERRORS,
    incumbent: int | None = None,
    metric: Metric = "accuracy",
    config: ProbeConfig = ProbeConfig(),
    show_progress_bar: bool = True,
) -> LayerSearch:
    """Choose one model's pooling and layers: the search of ``lafusion select`` and ``lafusion run``.

    1. Per pooling, the ranking probe scores every layer.
    2. Pooling: the tuned probe scores each pooling's best single layer on the same folds; the first pooling
       is the incumbent and another replaces it only under the noise rule.
    3. Layers: under the chosen pooling, :func:`greedy_layers` grows a choice from the last layer among the
       ``candidates`` best single layers (ranking probe, noise rule).
    4. The tuned probe scores the choice, which must pass the noise rule against the last layer under the
       first pooling (the plain default embedder), or the last layer is kept.

    ``incumbent`` replaces the last layer in steps 3 and 4. Why: a coarse-to-fine scan that stopped before the
    model's last layer has no full-data vectors of it; the sample already refused it under the noise rule, so
    the sample's best layer takes its place as what every choice must beat.

    Greedy fusion runs under the chosen pooling only: the poolings are compared on what each does best
    alone, which costs one layer curve per pooling instead of one greedy search each.

    Args:
        vectors: ``pooling -> [L + 1, N, H]`` training vectors of one model; the first pooling is the default.
        labels: Training labels.
        max_layers: Upper bound on the number of fused layers.
        candidates: How many of the best single layers greedy selection may add (all, if the model has fewer).
        standard_errors: The noise rule's margin.
        incumbent: The layer (under the first pooling) every choice must beat; default the last layer of
            ``vectors``.
        metric: What is maximised.
        config: Probe settings (both probes).
        show_progress_bar: Progress bars of the ranking probe's layer scores and of the tuned CVs.

    Raises:
        ValueError: No pooling, or poolings whose layer counts differ.
    """
    poolings = list(vectors)
    if not poolings:
        raise ValueError("Give the training vectors of at least one pooling.")
    depths = {pooling: np.shape(block)[0] for pooling, block in vectors.items()}
    if len(set(depths.values())) != 1:
        raise ValueError(f"Every pooling must have the same layers; got layer counts {depths}.")
    last = depths[poolings[0]] - 1
    start = last if incumbent is None else _check_layer("incumbent", incumbent, last)
    _check_count("candidates", candidates, 10**9)  # more than the model has layers: all of them
    labels = np.asarray(labels)
    folds = usable_folds(labels, config.folds)
    tuned: dict[tuple[str, tuple[int, ...]], CrossValidation] = {}

    def tuned_cvs(*wanted: tuple[str, list[int]]) -> list[ProbeScore]:
        """Tuned-probe CVs of ``(pooling, layers)``: those not scored yet, all at once (both processes busy)."""
        keys = [(pooling, tuple(layers)) for pooling, layers in wanted]
        new = [key for key in dict.fromkeys(keys) if key not in tuned]
        blocks = [_concat_layers(vectors[pooling], list(layers)) for pooling, layers in new]
        validations = cross_validate_together(
            blocks,
            labels,
            config,
            folds=folds,
            show_progress_bar=show_progress_bar and bool(new),
            description=f"tuned CV of {len(new)} candidate(s)",
        )
        tuned.update(zip(new, validations, strict=True))
        return [tuned[key].score for key in keys]

    def rule(challenger: ProbeScore, incumbent: ProbeScore, kind: str, names: tuple[str, str]) -> Decision:
        return noise_rule(challenger, incumbent, kind=kind, names=names, metric=metric, standard_errors=standard_errors)

    curves = {
        pooling: layer_scores(vectors[pooling], labels, config, show_progress_bar=show_progress_bar)
        for pooling in poolings
    }
    ranked = {
        pooling: sorted(range(last + 1), key=lambda layer: (-curve[layer].mean(metric), layer))
        for pooling, curve in curves.items()
    }
    singles = tuned_cvs(*((pooling, ranked[pooling][:1]) for pooling in poolings))
    best_single = {pooling: (ranked[pooling][0], score) for pooling, score in zip(poolings, singles, strict=True)}
    pooling, decisions = poolings[0], []
    for challenger in poolings[1:]:
        (layer, score), (incumbent_layer, incumbent_score) = best_single[challenger], best_single[pooling]
        decisions.append(
            rule(score, incumbent_score, "pooling", (f"{pooling} [{incumbent_layer}]", f"{challenger} [{layer}]"))
        )
        pooling = challenger if decisions[-1].accepted else pooling

    selection = greedy_layers(
        vectors[pooling],
        labels,
        curves[pooling],
        standard_errors=standard_errors,
        max_layers=max_layers,
        candidates=ranked[pooling][:candidates],
        start=start,
        metric=metric,
        config=config,
        show_progress_bar=show_progress_bar,
    )
    layers = selection.chosen
    score, last_score = tuned_cvs((pooling, layers), (poolings[0], [start]))
    if (pooling, layers) != (poolings[0], [start]):
        names = (f"{poolings[0]} {[start]}", f"{pooling} {layers}")
        decisions.append(rule(score, last_score, "against last layer" if start == last else "against incumbent", names))
        if not decisions[-1].accepted:
            pooling, layers, score = poolings[0], [start], last_score
    chosen = tuned[(pooling, tuple(layers))]
    return LayerSearch(
        pooling, layers, score, last_score, curves, best_single, selection, decisions, start, chosen.predictions
    )


@dataclass(frozen=True)
class Stability:
    """How the search's choice moves when only the CV folds change (one :func:`search_layers` per seed).

    Attributes:
        seeds: The fold seeds tried.
        choices: ``(pooling, layers)`` chosen with each seed, in seed order.
        layer_counts: ``layer -> number of seeds whose choice contains it`` (any pooling).
        pooling_counts: ``pooling -> number of seeds that chose it``.
    """

    seeds: list[int]
    choices: list[tuple[str, list[int]]]
    layer_counts: dict[int, int]
    pooling_counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "choices": [{"pooling": pooling, "layers": list(layers)} for pooling, layers in self.choices],
            "layer_counts": {str(layer): count for layer, count in self.layer_counts.items()},
            "pooling_counts": dict(self.pooling_counts),
        }


def stability(
    vectors: Mapping[str, np.ndarray],
    labels: Sequence,
    seeds: Sequence[int],
    *,
    config: ProbeConfig = ProbeConfig(),
    show_progress_bar: bool = True,
    **search_arguments: Any,
) -> Stability:
    """Repeat :func:`search_layers` with the fold seed set to each of ``seeds`` and count what it chose.

    A layer chosen under every seed is a finding; one chosen under one seed of three is a fold accident.

    Args:
        vectors: As in :func:`search_layers`.
        labels: Training labels.
        seeds: Fold seeds (``config.seed`` is replaced by each).
        config: Probe settings other than the seed.
        show_progress_bar: One bar over the seeds (each search's own bars would repeat per seed).
        **search_arguments: Further arguments of :func:`search_layers`.
    """
    if not seeds:
        raise ValueError("Give at least one seed.")
    choices = []
    for seed in tqdm(seeds, desc="search under each fold seed", unit="seed", disable=not show_progress_bar):
        search = search_layers(
            vectors, labels, config=replace(config, seed=int(seed)), show_progress_bar=False, **search_arguments
        )
        choices.append((search.pooling, list(search.layers)))
    layer_counts = Counter(layer for _, layers in choices for layer in layers)
    pooling_counts = Counter(pooling for pooling, _ in choices)
    return Stability([int(seed) for seed in seeds], choices, dict(sorted(layer_counts.items())), dict(pooling_counts))


def complementarity(
    features: Mapping[str, np.ndarray], labels: Sequence, config: ProbeConfig = ProbeConfig()
) -> Complementarity:
    """Error overlap of the models' probes, from out-of-fold predictions on the same folds.

    Args:
        features: ``model -> [N, D]`` training vectors (each model's best configuration).
        labels: Training labels.
        config: Probe settings; the same seed gives every model the same folds.
    """
    _check_models(features)
    labels = np.asarray(labels)
    folds = usable_folds(labels, config.folds)
    validations = cross_validate_together(list(features.values()), labels, config, folds=folds)
    predictions = {name: validation.predictions for name, validation in zip(features, validations, strict=True)}
    return complementarity_of(predictions, labels, folds)


def complementarity_of(predictions: Mapping[str, np.ndarray], labels: Sequence, folds: int) -> Complementarity:
    """Error overlap of the models' out-of-fold predictions, made by the tuned probe on the same ``folds``
    folds (those of :func:`complementarity`, or each model's :attr:`LayerSearch.predictions`)."""
    _check_models(predictions)
    labels = np.asarray(labels)
    correct = {name: np.asarray(predicted) == labels for name, predicted in predictions.items()}
    pairs = [_pair(a, b, correct[a], correct[b]) for a, b in combinations(correct, 2)]
    return Complementarity({name: float(right.mean()) for name, right in correct.items()}, pairs, folds)


def _check_models(per_model: Mapping[str, Any]) -> None:
    if len(per_model) < 2:
        raise ValueError(f"Complementarity compares models: give at least 2, got {list(per_model)}.")


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
    *,
    start: Hashable,
    max_size: int,
    standard_errors: float,
    metric: Metric,
    config: ProbeConfig,
    kinds: tuple[str, str],
    order: Callable[[list], list],
    show_progress_bar: bool,
) -> tuple[list, ProbeScore, list[Step], list[Decision]]:
    """Forward selection over named blocks under the noise rule, shared by layers and models.

    ``start`` (one of ``singles``) is the incumbent; the best single block challenges it (decision of kind
    ``kinds[0]``), then each round's best addition challenges the current set (``kinds[1]``). Ties go to
    the earlier candidate.
    """
    check_metric(metric)
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"The largest selection size must be a positive integer, got {max_size!r}.")
    keys = list(singles)
    rule = lambda challenger, incumbent, kind, names: noise_rule(  # noqa: E731
        challenger, incumbent, kind=kind, names=names, metric=metric, standard_errors=standard_errors
    )
    best = max(keys, key=lambda key: (singles[key].mean(metric), -keys.index(key)))
    chosen, score, decisions = [start], singles[start], []
    if best != start:
        decisions.append(rule(singles[best], singles[start], kinds[0], ([start], [best])))
        if decisions[-1].accepted:
            chosen, score = [best], singles[best]
    steps = [Step([key], singles[key], key == chosen[0]) for key in keys]
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
        decisions.append(rule(trial_scores[best], score, kinds[1], (order(chosen), trials[best])))
        accepted = decisions[-1].accepted
        steps += [
            Step(trial, trial_score, accepted and index == best)
            for index, (trial, trial_score) in enumerate(zip(trials, trial_scores, strict=True))
        ]
        if not accepted:
            break
        chosen, score = trials[best], trial_scores[best]
    return chosen, score, steps, decisions


def _cv(features: np.ndarray, labels: Sequence, config: ProbeConfig, probe: str) -> ProbeScore:
    return cross_validate(features, labels, config, probe=probe).score  # type: ignore[arg-type]


def _concat_layers(vectors: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    return np.concatenate([vectors[layer] for layer in layers], axis=1)


def _check_scores(vectors: np.ndarray, scores: Sequence[ProbeScore]) -> None:
    if np.ndim(vectors) != 3:
        raise ValueError(f"vectors must be [layers, texts, hidden], got shape {np.shape(vectors)}.")
    if len(scores) != vectors.shape[0]:
        raise ValueError(f"Got {len(scores)} layer scores for {vectors.shape[0]} layers.")


def _check_layer(name: str, layer: int, last: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= last:
        raise ValueError(f"{name} must be a layer index in 0..{last}, got {layer!r}.")
    return int(layer)


def _check_count(name: str, value: int, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{name} must be an integer in 1..{limit}, got {value!r}.")
