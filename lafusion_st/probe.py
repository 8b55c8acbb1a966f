"""Linear probes: how well a vector separates a task's classes, measured by cross-validation on train only.

Why a linear probe: the embedder's consumer is a linear classifier (MTEB and the paper fit logistic
regression on the vectors), so the score of a layer is the accuracy such a classifier reaches on it. Features
are standardised first: hidden states of different layers differ in scale by orders of magnitude.

Two probes, one job each (:data:`PROBES`):

* ``"tuned"``, the probe of every reported and every deciding number (test rows, final choices,
  complementarity, the MTEB paper protocol): ``StandardScaler -> LogisticRegression`` whose ``C`` is chosen
  from ``ProbeConfig.Cs`` by an inner stratified CV on the data it is fit on (sklearn's
  ``LogisticRegressionCV``: a warm-started path over ``Cs`` per inner fold, the ``C`` with the best mean
  inner accuracy, ties to the stronger regularisation, refit on all of it). A fixed ``C=1`` over-fits the
  576-1000 coordinates of an LLM layer and understated SST-2 accuracies by 2-8 points. Inside an outer CV
  each outer fold tunes ``C`` on its own training part, so held-out texts never choose ``C`` (nested CV).
* ``"ranking"``, for scoring many candidates (every layer, greedy rounds): the same standardised logistic
  regression fit along a short warm-started path of ``C`` (``ProbeConfig.ranking_Cs``, tolerance 1e-3) in each outer
  fold, scored at the ``C`` with the best mean held-out accuracy. Choosing ``C`` on the folds that score it
  makes the number slightly optimistic (a maximum over two values), equally so for every candidate, so
  it ranks candidates without being reported as a result; small ``C`` converge in a few L-BFGS
  iterations, which makes it cheaper than the former fixed ``C=1`` probe. ``eval/bench_probe.py``
  measures its cost and how well its layer ranking agrees with the tuned probe's.

Cross-validation uses ``StratifiedKFold`` on the training split only, with the same folds for every
candidate scored on the same labels (so per-fold differences are paired); the test split is touched
solely by :func:`fit_and_test`, for the final number of an already chosen configuration, and by
:func:`fit_and_test_every_C`, for a ceiling that is reported and never chooses.

Folds and rare classes (documented, tested behaviour):

* fewer than two classes: ``ValueError`` naming the class;
* fewer texts than folds, or no class with as many members as there are folds: the folds are reduced to
  the largest class count (at least 2), with a warning; a training split where every class has a single
  member cannot be cross-validated (``ValueError``);
* a class with fewer members than folds (R52 has a class with one training text): kept, with a warning
  naming it. Such a class is missing from some folds' test parts, and a class with a single member is
  absent from training in the fold that tests it, so that one text always counts as an error: an honest,
  slightly pessimistic score rather than a dropped class. The inner CV of the tuned probe follows the same
  rule, silently.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import sklearn
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from lafusion_st.fit_cache import cached_fit
from lafusion_st.stats import Interval, accuracy_interval

Metric = Literal["accuracy", "macro_f1"]
METRICS: tuple[Metric, ...] = ("accuracy", "macro_f1")
Probe = Literal["tuned", "ranking"]
PROBES: tuple[Probe, ...] = ("tuned", "ranking")
ClassWeight = str | dict | None
"""scikit-learn's ``class_weight``: ``None``, ``"balanced"`` or ``{label: weight}``."""

C_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Candidate ``C`` of the tuned probe. On SmolLM2 layers of SST-2 (1000 texts, 5 x 31 nested fits) its inner
CV chose 1e-2 or 1e-1 in all but one fit (1.0 once, 10 never), so the grid ends at the former default 1.0."""

RANKING_C_GRID: tuple[float, ...] = (1e-2, 1e-1)
"""The ranking probe's path: where the tuned probe's choices fall."""

RANKING_TOL = 1e-3
"""L-BFGS tolerance of the ranking probe: it moves a CV accuracy by a few tenths of a point at most, which
ranks candidates the same, for about a third less time."""


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the probes and of their cross-validation.

    Attributes:
        folds: Folds of the outer ``StratifiedKFold`` that scores a feature set (reduced for tiny data, see
            the module docstring).
        seed: Seed of the fold shuffling (outer and inner); the same seed gives the same folds for the same
            labels, so scores of different layers and models are paired fold by fold.
        max_iter: L-BFGS iteration cap of the tuned probe. A fit that hits the cap is recorded in
            ``ProbeScore.converged`` rather than warned about.
        tol: L-BFGS tolerance of the tuned probe; sklearn's default 1e-4 (the ranking probe uses :data:`RANKING_TOL`).
        Cs: Candidate inverse L2 strengths of the tuned probe, searched by its inner CV.
        inner_folds: Folds of the tuned probe's inner CV. 3 rather than 5: the choice of C is flat near its
            optimum and each inner fold costs one path over ``Cs``.
        ranking_Cs: The ranking probe's warm-started path of ``C``.
        n_jobs: Worker processes: one feature set each when many are scored (layers, selection
            candidates), else one outer fold each in :func:`cross_validate`. Each fit itself runs
            single-threaded (see :func:`score_many` for why), so the results do not depend on it. On a busy
            2-core machine 2 workers were slower than 1, hence the default 1; on an idle one, 2 processes
            ran four tuned fits on full R52 1.8x faster.
    """

    folds: int = 5
    seed: int = 0
    max_iter: int = 300
    tol: float = 1e-4
    Cs: tuple[float, ...] = C_GRID
    inner_folds: int = 3
    ranking_Cs: tuple[float, ...] = RANKING_C_GRID
    n_jobs: int = 1

    def __post_init__(self) -> None:
        for name in ("folds", "inner_folds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}.")
        if self.max_iter < 1 or self.tol <= 0:
            raise ValueError(f"max_iter and tol must be positive, got {self.max_iter!r}, {self.tol!r}.")
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs == 0:
            raise ValueError(f"n_jobs must be a process count (or as in joblib, -1: every core), got {self.n_jobs!r}.")
        for name in ("Cs", "ranking_Cs"):
            grid = tuple(getattr(self, name))
            if not grid or any(not value > 0 for value in grid):
                raise ValueError(f"{name} must be a non-empty sequence of positive numbers, got {grid!r}.")
            object.__setattr__(self, name, tuple(sorted(float(value) for value in grid)))


@dataclass(frozen=True)
class ProbeScore:
    """Cross-validated quality of one feature set: mean and standard deviation over folds, and every fold's
    value (for paired comparisons of candidates scored on the same folds).

    Attributes:
        probe: Which probe scored it (``tuned`` or ``ranking``).
        regularisation_folds: The ``C`` of each outer fold: chosen on the fold's training part by the tuned
            probe; for the ranking probe, the one ``C`` of its path with the best mean held-out accuracy.
    """

    accuracy_mean: float
    accuracy_std: float
    macro_f1_mean: float
    macro_f1_std: float
    folds: int
    num_samples: int
    num_features: int
    converged: bool
    probe: Probe
    accuracy_folds: tuple[float, ...]
    macro_f1_folds: tuple[float, ...]
    regularisation_folds: tuple[float, ...]

    def mean(self, metric: Metric) -> float:
        """The mean of ``metric`` (``accuracy`` or ``macro_f1``)."""
        return getattr(self, f"{check_metric(metric)}_mean")

    def std(self, metric: Metric) -> float:
        return getattr(self, f"{check_metric(metric)}_std")

    def per_fold(self, metric: Metric) -> np.ndarray:
        """``metric`` in each outer fold, in fold order."""
        return np.asarray(getattr(self, f"{check_metric(metric)}_folds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeScore:
        """The score :meth:`to_dict` wrote (e.g. a report's ``cv`` entry) back, to reuse a finished run's choices."""
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


@dataclass(frozen=True)
class CrossValidation:
    """A :class:`ProbeScore` with the out-of-fold predictions it came from (for error-overlap analyses)."""

    score: ProbeScore
    predictions: np.ndarray


@dataclass(frozen=True)
class TestScore:
    """Test-split quality of the tuned probe trained on the full training split.

    Attributes:
        C: The ``C`` its inner CV chose on the training split (:func:`fit_and_test_every_C`: the path's ``C``).
        accuracy_interval: 95% percentile-bootstrap interval of ``accuracy`` over test texts.
        correct: Per test text, whether the probe got it right (for paired tests; not in ``to_dict``).
    """

    accuracy: float
    macro_f1: float
    num_train: int
    num_test: int
    converged: bool
    C: float
    accuracy_interval: Interval
    correct: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        fields = {name: value for name, value in vars(self).items() if name not in ("correct", "accuracy_interval")}
        return {**fields, "accuracy_interval": self.accuracy_interval.to_dict()}


def check_metric(metric: str) -> Metric:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; choose one of {list(METRICS)}.")
    return metric  # type: ignore[return-value]


def check_probe(probe: str) -> Probe:
    if probe not in PROBES:
        raise ValueError(f"Unknown probe {probe!r}; choose one of {list(PROBES)}.")
    return probe  # type: ignore[return-value]


def tuned_probe(
    config: ProbeConfig = ProbeConfig(), inner_folds: int | None = None, class_weight: ClassWeight = None
) -> Pipeline:
    """An unfitted tuned probe: ``StandardScaler -> LogisticRegressionCV`` (C from ``config.Cs`` by a
    shuffled stratified ``inner_folds``-fold CV of accuracy on the data ``fit`` gets, then refit on all of it).

    This is a plain scikit-learn estimator, so MTEB's evaluator (which clones its ``evaluator_model``) and
    user code can fit it directly; :func:`fit_tuned_probe` adds the fold checks and one-thread fitting.

    Args:
        config: Probe settings.
        inner_folds: Inner folds (default ``config.inner_folds``); :func:`fit_tuned_probe` lowers it for
            tiny classes.
        class_weight: ``None``, ``"balanced"`` or ``{label: weight}``, as in scikit-learn (weights the loss
            of the inner CV's fits and of the refit alike).
    """
    return Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "classify",
                LogisticRegressionCV(
                    Cs=list(config.Cs),
                    cv=StratifiedKFold(inner_folds or config.inner_folds, shuffle=True, random_state=config.seed),
                    scoring="accuracy",
                    l1_ratios=(0.0,),
                    class_weight=class_weight,
                    max_iter=config.max_iter,
                    tol=config.tol,
                    use_legacy_attributes=False,
                ),
            ),
        ]
    )


def fit_tuned_probe(
    features: np.ndarray, labels: Sequence, config: ProbeConfig = ProbeConfig(), *, class_weight: ClassWeight = None
) -> tuple[Pipeline, float]:
    """Fit the tuned probe on ``features`` and ``labels`` (training data only) and return it with its ``C``.

    :class:`lafusion_st.LogisticHead` (``C=None``) is this fit, kept as a classifier; ``class_weight`` is
    passed on to :func:`tuned_probe`. Served from, and kept in, the fit cache (:mod:`lafusion_st.fit_cache`):
    the same features, labels and settings are fit once.

    Returns:
        The fitted ``Pipeline[StandardScaler, LogisticRegressionCV]`` (``LogisticRegressionCV`` is a
        ``LogisticRegression`` refit at the chosen ``C``: ``predict``, ``predict_proba``, ``coef_`` as usual)
        and the chosen ``C``.

    Raises:
        ValueError: Fewer than two classes, mismatched shapes or non-finite features.
    """
    features, labels = _as_arrays(features, labels)
    probe, _ = _fit(features, labels, config, class_weight, cached=True)
    return probe, float(probe[-1].C_)


class SmallClassWarning(UserWarning):
    """Classes too small for the folds (:func:`usable_folds`). Its own category so that a long run
    (:func:`~lafusion_st.pipeline.run_task`) can say it once rather than at every cross-validation."""


def usable_folds(labels: Sequence, folds: int) -> int:
    """The number of stratified folds ``labels`` allow, at most ``folds``; warns about what it changes.

    See the module docstring for the rules. The warnings are :class:`SmallClassWarning` (a ``UserWarning``) naming
    the classes concerned.

    Raises:
        ValueError: Fewer than two classes, or every class has a single member.
    """
    counts = _class_counts(labels)
    largest = max(counts.values())
    if largest < 2:
        raise ValueError(
            f"Every one of the {len(counts)} classes has a single training example; cross-validation needs "
            "at least one class with 2 or more."
        )
    if largest < folds:
        warnings.warn(
            f"No class has {folds} training examples (the largest has {largest}): using {largest}-fold "
            "cross-validation instead.",
            SmallClassWarning,
            stacklevel=3,
        )
        folds = largest
    rare = sorted((label for label, count in counts.items() if count < folds), key=repr)
    if rare:
        shown = ", ".join(f"{label!r} ({counts[label]})" for label in rare[:10]) + (", ..." if len(rare) > 10 else "")
        warnings.warn(
            f"{len(rare)} class(es) have fewer than {folds} training examples: {shown}. They are missing from "
            "some folds, and a class with one example is always wrong in the fold that tests it.",
            SmallClassWarning,
            stacklevel=3,
        )
    return folds


def stratified_splits(labels: Sequence, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(train_index, test_index)`` pairs of a shuffled ``StratifiedKFold``: the folds every candidate
    scored on these labels shares. ``folds`` should come from :func:`usable_folds`."""
    labels = np.asarray(labels)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros((len(labels), 1)), labels))


def cross_validate(
    features: np.ndarray,
    labels: Sequence,
    config: ProbeConfig = ProbeConfig(),
    *,
    probe: Probe = "tuned",
    folds: int | None = None,
    splits: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> CrossValidation:
    """Stratified k-fold CV of a probe on ``features`` (``[N, D]``, training split only).

    Each outer fold fits the probe on its training part alone (for the tuned probe, including the inner CV
    that chooses ``C``) and predicts its held-out part.

    Args:
        features: One row per training text.
        labels: One label per row (ints or strings).
        config: Probe and CV settings.
        probe: ``"tuned"`` (default) or ``"ranking"``.
        folds: The fold count already returned by :func:`usable_folds` (skips the check and its warnings,
            for callers that score many feature sets on the same labels); default: check here.
        splits: Explicit ``(train_index, test_index)`` pairs (default: :func:`stratified_splits` with
            ``config.seed``).
    """
    return cross_validate_together([features], labels, config, probe=probe, folds=folds, splits=splits)[0]


def cross_validate_together(
    feature_sets: Sequence[np.ndarray],
    labels: Sequence,
    config: ProbeConfig = ProbeConfig(),
    *,
    probe: Probe = "tuned",
    folds: int | None = None,
    splits: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    show_progress_bar: bool = False,
    description: str = "tuned CV",
) -> list[CrossValidation]:
    """:func:`cross_validate` of each feature set, on the same folds, with the folds of every set in one pool
    of ``config.n_jobs`` processes; the same fits, so the same results as one call per set.

    Why together: the folds are independent single-threaded fits (a tuned 5-fold CV on full R52 is minutes
    of one core per fold), and one CV's 5 folds on 2 processes leave one idle while the last fold runs; the
    folds of two CVs keep both busy. For many candidates, :func:`score_many` parallelises over sets instead.

    ``show_progress_bar``: a bar named ``description`` over the fold fits; off by default, as :func:`score_many`'s
    worker processes want. Minutes-long CVs should show one: on full R52 the tuned CVs of the model fusions and
    the saved head's fit were 18 minutes that printed nothing.
    """
    check_probe(probe)
    checked = [_as_arrays(features, labels)[0] for features in feature_sets]
    labels = np.asarray(labels)
    if splits is None:
        folds = folds if folds is not None else usable_folds(labels, config.folds)
        splits = stratified_splits(labels, folds, config.seed)
    # per set and fold, (C, held-out predictions, converged) for each C: the tuned probe's own C, or the
    # ranking path. Unchanged by the process count: each fit is single-threaded.
    jobs = (
        delayed(_fold_predictions)(features[train_index], labels[train_index], features[test_index], config, probe)
        for features in checked
        for train_index, test_index in splits
    )
    count = len(splits)
    per_fold = run_in_order(
        jobs, config.n_jobs, total=len(checked) * count, description=description, show_progress_bar=show_progress_bar
    )
    return [
        _summarised(per_fold[index * count : (index + 1) * count], labels, splits, features.shape[1], probe)
        for index, features in enumerate(checked)
    ]


def _summarised(
    per_fold: list[list[tuple[float, np.ndarray, bool]]],
    labels: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    num_features: int,
    probe: Probe,
) -> CrossValidation:
    """One feature set's :class:`CrossValidation` from its folds' ``(C, predictions, converged)`` paths."""
    path_accuracy = np.array(
        [
            [np.mean(predicted == labels[test]) for _, predicted, _ in fold]
            for fold, (_, test) in zip(per_fold, splits, strict=True)
        ]
    )
    pick = int(np.argmax(path_accuracy.mean(axis=0)))  # ranking: best mean over folds, ties to the smaller C
    predictions = np.empty_like(labels)
    for fold, (_, test_index) in zip(per_fold, splits, strict=True):
        predictions[test_index] = fold[pick][1]
    accuracies = [float(value) for value in path_accuracy[:, pick]]
    f1s = [
        float(f1_score(labels[test_index], predictions[test_index], average="macro", zero_division=0))
        for _, test_index in splits
    ]
    score = ProbeScore(
        accuracy_mean=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        macro_f1_mean=float(np.mean(f1s)),
        macro_f1_std=float(np.std(f1s)),
        folds=len(splits),
        num_samples=len(labels),
        num_features=num_features,
        converged=all(fold[pick][2] for fold in per_fold),
        probe=probe,
        accuracy_folds=tuple(accuracies),
        macro_f1_folds=tuple(f1s),
        regularisation_folds=tuple(float(fold[pick][0]) for fold in per_fold),
    )
    return CrossValidation(score, predictions)


def score_many(
    feature_sets: Iterable[np.ndarray],
    labels: Sequence,
    config: ProbeConfig = ProbeConfig(),
    *,
    probe: Probe = "ranking",
    total: int | None = None,
    description: str = "probe",
    show_progress_bar: bool = True,
) -> list[ProbeScore]:
    """CV scores of several feature sets on the same labels and folds, in order (ranking probe by default:
    this is the many-candidates path).

    Each fit runs with one BLAS thread: on these small matrices (a few thousand rows, hundreds of columns)
    multi-threaded BLAS spends its time synchronising, and we measured a 5-fold CV of one SmolLM2 layer on
    2000 SST-2 texts at 10.5 s with 2 threads and 0.95 s with one. Parallelism, when wanted, comes from
    ``config.n_jobs`` worker processes, one feature set each.
    """
    check_probe(probe)
    labels = np.asarray(labels)
    splits = stratified_splits(labels, usable_folds(labels, config.folds), config.seed)
    in_worker = replace(config, n_jobs=1)  # the workers are the parallelism: their folds run one after another
    jobs = (delayed(_cv_score)(features, labels, in_worker, probe, splits) for features in feature_sets)
    return run_in_order(
        jobs, config.n_jobs, total=total, description=description, unit="set", show_progress_bar=show_progress_bar
    )


def run_in_order(
    jobs: Iterable,
    n_jobs: int,
    *,
    total: int | None,
    description: str,
    unit: str = "fit",
    show_progress_bar: bool = True,
) -> list:
    """The results of joblib ``delayed`` ``jobs`` on ``n_jobs`` processes, in submission order, behind a progress
    bar that moves as each result arrives: the one parallel loop of the probes' fits (CV folds, candidate sets,
    test fits)."""
    results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    return list(tqdm(results, total=total, desc=description, unit=unit, disable=not show_progress_bar))


def layer_scores(
    vectors: np.ndarray,
    labels: Sequence,
    config: ProbeConfig = ProbeConfig(),
    *,
    probe: Probe = "ranking",
    show_progress_bar: bool = True,
) -> list[ProbeScore]:
    """CV score of every layer: ``result[l]`` scores ``vectors[l]`` (``vectors`` is ``[L + 1, N, H]``, as in
    :class:`~lafusion_st.scan.LayerVectors`; pass the training split only)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 3:
        raise ValueError(f"vectors must be [layers, texts, hidden], got shape {vectors.shape}.")
    return score_many(
        iter(vectors),
        labels,
        config,
        probe=probe,
        total=len(vectors),
        description="probe layers",
        show_progress_bar=show_progress_bar,
    )


def fit_and_test(
    train_features: np.ndarray,
    train_labels: Sequence,
    test_features: np.ndarray,
    test_labels: Sequence,
    config: ProbeConfig = ProbeConfig(),
) -> TestScore:
    """Train the tuned probe on the full training split and score it on the test split: the final report
    number for a configuration chosen by cross-validation. Test labels unseen in training count as errors.
    The fit goes through the fit cache, as :func:`fit_tuned_probe`'s does."""
    train_features, train_labels = _as_arrays(train_features, train_labels)
    test_features, test_labels = _as_arrays(test_features, test_labels)
    _check_widths(train_features, test_features)
    probe, converged = _fit(train_features, train_labels, config, cached=True)
    return _test_score(probe.predict(test_features), test_labels, len(train_labels), converged, float(probe[-1].C_))


def fit_and_test_every_C(
    train_features: np.ndarray,
    train_labels: Sequence,
    test_features: np.ndarray,
    test_labels: Sequence,
    config: ProbeConfig = ProbeConfig(),
) -> list[TestScore]:
    """The tuned probe's model at every ``C`` of ``config.Cs`` instead of the one its inner CV picks: standardised
    logistic regression fit on the full training split along a warm-started path (the tuned probe's ``tol``
    and ``max_iter``), scored on the test split at each ``C``, in ``config.Cs`` order.

    Only for a ceiling, never for a choice: the best of these scores picks ``C`` on test. Why it exists: the
    oracle of ``eval/selection_runs.py`` scores every layer of every model on test, and one path over ``Cs``
    costs about a third of an inner-CV fit (20.6 s vs 70.7 s for a SmolLM2 layer on full R52), so the
    ceiling also covers ``C`` for a third of the time.
    """
    train_features, train_labels = _as_arrays(train_features, train_labels)
    test_features, test_labels = _as_arrays(test_features, test_labels)
    _check_widths(train_features, test_features)
    path = _path_predictions(train_features, train_labels, test_features, config.Cs, config.tol, config.max_iter)
    return [_test_score(predicted, test_labels, len(train_labels), converged, C) for C, predicted, converged in path]


def _class_counts(labels: Sequence) -> Counter:
    """Members per class; ``ValueError`` for fewer than two classes (no classifier can be trained)."""
    counts = Counter(np.asarray(labels).tolist())
    if len(counts) < 2:
        raise ValueError(f"The training labels have a single class {list(counts)}; a probe needs at least 2 classes.")
    return counts


def _cv_score(
    features: np.ndarray,
    labels: np.ndarray,
    config: ProbeConfig,
    probe: Probe,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
) -> ProbeScore:
    return cross_validate(features, labels, config, probe=probe, splits=splits).score


def _fold_predictions(
    train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, config: ProbeConfig, probe: Probe
) -> list[tuple[float, np.ndarray, bool]]:
    """``(C, predictions of test_features, converged)``: one entry for the tuned probe (its inner CV's C), one
    per ``config.ranking_Cs`` for the ranking probe (one warm-started logistic regression along the path)."""
    if probe == "tuned":
        fitted, converged = _fit(train_features, train_labels, config)
        return [(float(fitted[-1].C_), fitted.predict(test_features), converged)]
    return _path_predictions(
        train_features, train_labels, test_features, config.ranking_Cs, RANKING_TOL, config.max_iter
    )


def _path_predictions(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    Cs: Sequence[float],
    tol: float,
    max_iter: int,
) -> list[tuple[float, np.ndarray, bool]]:
    """``(C, predictions of test_features, converged)`` for each of ``Cs`` (ascending): one standardised
    logistic regression, warm-started from the previous ``C``'s solution (small ``C`` converge in a few steps)."""
    scaler = StandardScaler().fit(train_features)
    train_features, test_features = scaler.transform(train_features), scaler.transform(test_features)
    classifier = LogisticRegression(warm_start=True, max_iter=max_iter, tol=tol)
    path = []
    with _one_thread_quietly():
        for C in Cs:
            classifier.set_params(C=C).fit(train_features, train_labels)
            converged = bool(np.all(classifier.n_iter_ < max_iter))
            path.append((C, classifier.predict(test_features), converged))
    return path


def _test_score(predicted: np.ndarray, test_labels: np.ndarray, num_train: int, converged: bool, C: float) -> TestScore:
    correct = np.asarray(predicted == test_labels, dtype=bool)
    return TestScore(
        accuracy=float(correct.mean()),
        macro_f1=float(f1_score(test_labels, predicted, average="macro", zero_division=0)),
        num_train=num_train,
        num_test=len(test_labels),
        converged=converged,
        C=C,
        accuracy_interval=accuracy_interval(correct),
        correct=correct,
    )


def _check_widths(train_features: np.ndarray, test_features: np.ndarray) -> None:
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"Train has {train_features.shape[1]} features per text, test {test_features.shape[1]}.")


@contextmanager
def _one_thread_quietly() -> Iterator[None]:
    """One BLAS thread (see :func:`score_many`); a fit stopped by ``max_iter`` is reported through
    ``converged`` flags rather than one warning per fit, inner folds missing a rare class are expected, and
    scikit-learn skips its finiteness checks (:func:`_as_arrays` checked the features once)."""
    with warnings.catch_warnings(), threadpool_limits(limits=1), sklearn.config_context(assume_finite=True):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        yield


def _fit(
    features: np.ndarray,
    labels: np.ndarray,
    config: ProbeConfig,
    class_weight: ClassWeight = None,
    *,
    cached: bool = False,
) -> tuple[Pipeline, bool]:
    """Fit the tuned probe (inner folds lowered to what the classes allow); also whether its fit converged.

    ``cached``: serve and keep the fit in :mod:`lafusion_st.fit_cache`. For fits on a whole training split,
    which several steps repeat (test score, MTEB paper protocol, saved head); not for a CV's fold fits,
    which nothing repeats and whose thousands of entries would only fill the disk.
    """
    counts = _class_counts(labels)
    inner_folds = max(2, min(config.inner_folds, max(counts.values())))
    estimator = tuned_probe(config, inner_folds=inner_folds, class_weight=class_weight)
    if cached:  # the cache keys C-ordered bytes: fit exactly those (another layout moves the last bits)
        features = np.ascontiguousarray(features)

    def fit(unfitted: Pipeline) -> Pipeline:
        with _one_thread_quietly():
            return unfitted.fit(features, labels)

    fitted = cached_fit(estimator, features, labels, fit) if cached else fit(estimator)
    return fitted, converged(fitted, config.max_iter)


def converged(fitted: Pipeline, max_iter: int) -> bool:
    """Whether a fitted tuned probe's inner-CV fits at its chosen ``C`` stopped before ``max_iter`` (scikit-learn
    keeps no iteration count of the refit)."""
    classifier = fitted[-1]
    at_chosen = classifier.n_iter_[..., np.flatnonzero(classifier.Cs_ == classifier.C_)]
    return bool(np.all(at_chosen < max_iter))


def _as_arrays(features: np.ndarray, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"features must be [texts, dimensions], got shape {features.shape}.")
    if features.shape[0] != len(labels):
        raise ValueError(f"Got {features.shape[0]} feature rows but {len(labels)} labels.")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values.")
    return features, labels
