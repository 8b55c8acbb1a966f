"""Linear probes: how well a vector separates a task's classes, measured by cross-validation on train only.

Why a linear probe: the embedder's consumer is a linear classifier (MTEB and the paper fit logistic
regression on the vectors), so the score of a layer is the accuracy such a classifier reaches on it. The
probe is ``StandardScaler -> LogisticRegression``; scaling matters because hidden states of different
layers differ in scale by orders of magnitude, and it lets L-BFGS converge in few iterations.

Cross-validation uses ``StratifiedKFold`` on the training split only; the test split is touched solely
by :func:`fit_and_test`, for the final number of an already chosen configuration.

Folds and rare classes (documented, tested behaviour):

* fewer than two classes: ``ValueError`` naming the class;
* fewer texts than folds, or no class with as many members as there are folds: the folds are reduced to
  the largest class count (at least 2), with a warning; a training split where every class has a single
  member cannot be cross-validated (``ValueError``);
* a class with fewer members than folds (R52 has a class with one training text): kept, with a warning
  naming it. Such a class is missing from some folds' test parts, and a class with a single member is
  absent from training in the fold that tests it, so that one text always counts as an error: an honest,
  slightly pessimistic score rather than a dropped class.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

Metric = Literal["accuracy", "macro_f1"]
METRICS: tuple[Metric, ...] = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the probe and of its cross-validation.

    Attributes:
        folds: Folds of ``StratifiedKFold`` (reduced for tiny data, see the module docstring).
        seed: Seed of the fold shuffling; the same seed gives the same folds for the same labels, so scores
            of different layers and models are paired.
        max_iter: L-BFGS iteration cap. Measured on SmolLM2 mean-pooled layers (SST-2, 2000 texts; R52,
            1500 texts, 52 classes): with ``tol=1e-4`` every fit converged within 300 iterations and 1000
            changed no score, while 100 left middle layers unconverged. A fit that hits the cap is recorded
            in ``ProbeScore.converged`` rather than warned about.
        tol: L-BFGS tolerance; sklearn's default 1e-4. 1e-3 halves the time but moved CV accuracies by up
            to 0.5 points, as much as the greedy selection threshold, so it is not the default.
        C: Inverse L2 regularisation strength of the logistic regression.
        n_jobs: Worker processes when many feature sets are scored (layers, selection candidates); each
            fit itself runs single-threaded (see :func:`score_many` for why). On a busy 2-core machine 2
            workers were slower than 1 (R52: 126 s vs 97 s for 31 layers), hence the default 1.
    """

    folds: int = 5
    seed: int = 0
    max_iter: int = 300
    tol: float = 1e-4
    C: float = 1.0
    n_jobs: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise ValueError(f"folds must be an integer >= 2, got {self.folds!r}.")
        if self.max_iter < 1 or self.tol <= 0 or self.C <= 0:
            raise ValueError(f"max_iter, tol and C must be positive, got {self.max_iter!r}, {self.tol!r}, {self.C!r}.")


@dataclass(frozen=True)
class ProbeScore:
    """Cross-validated quality of one feature set (mean and standard deviation over folds)."""

    accuracy_mean: float
    accuracy_std: float
    macro_f1_mean: float
    macro_f1_std: float
    folds: int
    num_samples: int
    num_features: int
    converged: bool

    def mean(self, metric: Metric) -> float:
        """The mean of ``metric`` (``accuracy`` or ``macro_f1``)."""
        return getattr(self, f"{check_metric(metric)}_mean")

    def std(self, metric: Metric) -> float:
        return getattr(self, f"{check_metric(metric)}_std")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CrossValidation:
    """A :class:`ProbeScore` with the out-of-fold predictions it came from (for error-overlap analyses)."""

    score: ProbeScore
    predictions: np.ndarray


@dataclass(frozen=True)
class TestScore:
    """Accuracy and macro-F1 on the test split of a probe trained on the full training split."""

    accuracy: float
    macro_f1: float
    num_train: int
    num_test: int
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_metric(metric: str) -> Metric:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; choose one of {list(METRICS)}.")
    return metric  # type: ignore[return-value]


def make_probe(config: ProbeConfig = ProbeConfig()) -> Pipeline:
    """``StandardScaler -> LogisticRegression`` (lbfgs, multinomial for several classes)."""
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(C=config.C, max_iter=config.max_iter, tol=config.tol)),
        ]
    )


def check_labels(labels: Sequence, folds: int) -> int:
    """Check ``labels`` for cross-validation and return the number of folds to use.

    See the module docstring for the rules. Warnings are ``UserWarning``s naming the classes concerned.

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
            UserWarning,
            stacklevel=3,
        )
        folds = largest
    rare = sorted((label for label, count in counts.items() if count < folds), key=repr)
    if rare:
        shown = ", ".join(f"{label!r} ({counts[label]})" for label in rare[:10]) + (", ..." if len(rare) > 10 else "")
        warnings.warn(
            f"{len(rare)} class(es) have fewer than {folds} training examples: {shown}. They are missing from "
            "some folds, and a class with one example is always wrong in the fold that tests it.",
            UserWarning,
            stacklevel=3,
        )
    return folds


def cross_validate(
    features: np.ndarray, labels: Sequence, config: ProbeConfig = ProbeConfig(), *, folds: int | None = None
) -> CrossValidation:
    """Stratified k-fold CV of the probe on ``features`` (``[N, D]``, training split only).

    Args:
        features: One row per training text.
        labels: One label per row (ints or strings).
        config: Probe and CV settings.
        folds: The fold count already returned by :func:`check_labels` (skips the check and its warnings,
            for callers that score many feature sets on the same labels); default: check here.
    """
    features, labels = _as_arrays(features, labels)
    folds = folds if folds is not None else check_labels(labels, config.folds)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    predictions = np.empty_like(labels)
    accuracies, f1s, converged = [], [], True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(features, labels))
    for train_index, test_index in splits:
        probe, fold_converged = _fit(features[train_index], labels[train_index], config)
        predicted = probe.predict(features[test_index])
        predictions[test_index] = predicted
        accuracies.append(accuracy_score(labels[test_index], predicted))
        f1s.append(f1_score(labels[test_index], predicted, average="macro", zero_division=0))
        converged &= fold_converged
    score = ProbeScore(
        accuracy_mean=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        macro_f1_mean=float(np.mean(f1s)),
        macro_f1_std=float(np.std(f1s)),
        folds=folds,
        num_samples=len(labels),
        num_features=features.shape[1],
        converged=converged,
    )
    return CrossValidation(score, predictions)


def score_many(
    feature_sets: Iterable[np.ndarray],
    labels: Sequence,
    config: ProbeConfig = ProbeConfig(),
    *,
    total: int | None = None,
    description: str = "probe",
    show_progress_bar: bool = True,
) -> list[ProbeScore]:
    """CV scores of several feature sets on the same labels and folds, in order.

    Each fit runs with one BLAS thread: on these small matrices (a few thousand rows, hundreds of columns)
    multi-threaded BLAS spends its time synchronising, and we measured a 5-fold CV of one SmolLM2 layer on
    2000 SST-2 texts at 10.5 s with 2 threads and 0.95 s with one. Parallelism, when wanted, comes from
    ``config.n_jobs`` worker processes, one feature set each.
    """
    labels = np.asarray(labels)
    folds = check_labels(labels, config.folds)
    jobs = (delayed(_cv_score)(features, labels, config, folds) for features in feature_sets)
    results = Parallel(n_jobs=config.n_jobs, return_as="generator")(jobs)
    return list(tqdm(results, total=total, desc=description, unit="set", disable=not show_progress_bar))


def layer_scores(
    vectors: np.ndarray, labels: Sequence, config: ProbeConfig = ProbeConfig(), *, show_progress_bar: bool = True
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
    """Train the probe on the full training split and score it on the test split: the final report number
    for a configuration chosen by cross-validation. Test labels unseen in training count as errors."""
    train_features, train_labels = _as_arrays(train_features, train_labels)
    test_features, test_labels = _as_arrays(test_features, test_labels)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"Train has {train_features.shape[1]} features per text, test {test_features.shape[1]}.")
    _class_counts(train_labels)
    probe, converged = _fit(train_features, train_labels, config)
    predicted = probe.predict(test_features)
    return TestScore(
        accuracy=float(accuracy_score(test_labels, predicted)),
        macro_f1=float(f1_score(test_labels, predicted, average="macro", zero_division=0)),
        num_train=len(train_labels),
        num_test=len(test_labels),
        converged=converged,
    )


def _class_counts(labels: Sequence) -> Counter:
    """Members per class; ``ValueError`` for fewer than two classes (no classifier can be trained)."""
    counts = Counter(np.asarray(labels).tolist())
    if len(counts) < 2:
        raise ValueError(f"The training labels have a single class {list(counts)}; a probe needs at least 2 classes.")
    return counts


def _cv_score(features: np.ndarray, labels: np.ndarray, config: ProbeConfig, folds: int) -> ProbeScore:
    return cross_validate(features, labels, config, folds=folds).score


def _fit(features: np.ndarray, labels: np.ndarray, config: ProbeConfig) -> tuple[Pipeline, bool]:
    """Fit a probe with one BLAS thread (see :func:`score_many`); a fit stopped by ``max_iter`` is reported
    through the returned flag rather than one warning per fit."""
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe = make_probe(config).fit(features, labels)
    return probe, bool(np.all(probe[-1].n_iter_ < config.max_iter))


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
