"""The tuned probe (C by inner CV on training data only) and the ranking probe, on constructed data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from lafusion_st.probe import (
    ProbeConfig,
    cross_validate,
    cross_validate_together,
    fit_and_test,
    fit_and_test_every_C,
    fit_tuned_probe,
    score_many,
    stratified_splits,
)

CONFIG = ProbeConfig(folds=4, max_iter=500)


def _spread_signal(rows: int, columns: int, seed: int, strength: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Every column weakly informative (shifted by ``strength`` towards its class), as in an LLM layer where
    no coordinate alone separates the classes: an unregularised probe fits the noise of each column."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=rows)
    return rng.normal(size=(rows, columns)) + strength * (2 * labels - 1)[:, None], labels


def test_tuned_probe_takes_the_C_with_the_best_mean_inner_accuracy() -> None:
    features, labels = _spread_signal(150, 60, seed=0)
    probe, chosen = fit_tuned_probe(features, labels, CONFIG)
    assert isinstance(probe, Pipeline) and isinstance(probe[0], StandardScaler)
    assert isinstance(probe[-1], LogisticRegression) and chosen in CONFIG.Cs
    # by hand: the standardised training data, the inner folds, one plain fit per C and fold
    scaled = StandardScaler().fit_transform(features)
    inner = StratifiedKFold(CONFIG.inner_folds, shuffle=True, random_state=CONFIG.seed)
    means = []
    for C in CONFIG.Cs:
        accuracies = []
        for train, test in inner.split(scaled, labels):
            fitted = LogisticRegression(C=C, max_iter=CONFIG.max_iter).fit(scaled[train], labels[train])
            accuracies.append(accuracy_score(labels[test], fitted.predict(scaled[test])))
        means.append(np.mean(accuracies))
    assert chosen == CONFIG.Cs[int(np.argmax(means))]  # ties to the smaller C, the first maximum
    assert chosen <= 1e-2  # 60 noisy columns for 150 texts: strong regularisation wins


def test_tuned_probe_beats_a_fixed_large_C_on_held_out_data() -> None:
    features, labels = _spread_signal(300, 100, seed=2)
    tuned = fit_and_test(features[:150], labels[:150], features[150:], labels[150:], CONFIG)
    fixed = Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression(C=10.0, max_iter=500))])
    fixed_accuracy = fixed.fit(features[:150], labels[:150]).score(features[150:], labels[150:])
    assert tuned.accuracy > fixed_accuracy + 0.05
    assert tuned.C <= 1e-2 and tuned.num_train == 150 and tuned.num_test == 150
    assert tuned.accuracy == pytest.approx(tuned.correct.mean()) and tuned.correct.shape == (150,)
    assert tuned.accuracy_interval.low < tuned.accuracy < tuned.accuracy_interval.high
    assert "correct" not in tuned.to_dict() and tuned.to_dict()["accuracy_interval"]["confidence"] == 0.95


def test_every_C_scores_the_probes_model_at_each_C_of_its_grid_on_test() -> None:
    """The oracle's fit: one warm-started path over ``Cs`` on the whole training split equals, C by C, a plain
    standardised logistic regression fit from scratch at that C (converged tightly, both reach the same optimum)."""
    features, labels = _spread_signal(300, 40, seed=3)
    tight = ProbeConfig(tol=1e-10, max_iter=10_000)
    scores = fit_and_test_every_C(features[:200], labels[:200], features[200:], labels[200:], tight)
    assert [score.C for score in scores] == list(tight.Cs)
    for score in scores:
        cold = Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression(C=score.C, tol=1e-10))])
        predicted = cold.fit(features[:200], labels[:200]).predict(features[200:])
        np.testing.assert_array_equal(score.correct, predicted == labels[200:])
        assert score.accuracy == pytest.approx(score.correct.mean()) and score.converged
    assert len({score.accuracy for score in scores}) > 1  # the grid matters: the ceiling is a choice over C
    with pytest.raises(ValueError, match="features per text"):
        fit_and_test_every_C(features[:200], labels[:200], features[200:, :5], labels[200:])


def test_cross_validating_sets_together_gives_each_set_its_own_cv(capsys) -> None:
    """Two sets' folds in one pool of 2 processes: each result is that set's own :func:`cross_validate`; the
    progress bar, when asked for, counts every set's fold fits."""
    strong, labels = _spread_signal(120, 20, seed=4, strength=0.5)
    weak = _spread_signal(120, 20, seed=5, strength=0.05)[0]
    together = cross_validate_together(
        [strong, weak], labels, ProbeConfig(folds=4, n_jobs=2), show_progress_bar=True, description="two sets"
    )
    assert "two sets: 100%|██████████| 8/8 " in capsys.readouterr().err
    for features, result in zip((strong, weak), together, strict=True):
        alone = cross_validate(features, labels, ProbeConfig(folds=4))
        assert result.score == alone.score
        np.testing.assert_array_equal(result.predictions, alone.predictions)
    assert together[0].score.accuracy_mean > together[1].score.accuracy_mean + 0.2  # not one set's result twice
    assert cross_validate_together([], labels, CONFIG) == []


def test_inner_cv_never_sees_the_held_out_fold() -> None:
    """Shuffling the labels of one outer fold's held-out texts leaves that fold's C and predictions unchanged."""
    features, labels = _spread_signal(160, 30, seed=2)
    splits = stratified_splits(labels, 4, seed=0)
    before = cross_validate(features, labels, CONFIG, splits=splits)
    held_out = splits[0][1]
    shuffled = labels.copy()
    shuffled[held_out] = 1 - labels[held_out]  # every held-out label flipped: as different as labels get
    after = cross_validate(features, shuffled, CONFIG, splits=splits)
    assert after.score.regularisation_folds[0] == before.score.regularisation_folds[0]
    np.testing.assert_array_equal(after.predictions[held_out], before.predictions[held_out])
    assert after.score.accuracy_folds[0] == pytest.approx(1 - before.score.accuracy_folds[0])
    # the other folds train on the flipped texts, so their probes do change: the check above has teeth
    assert not np.array_equal(np.delete(after.predictions, held_out), np.delete(before.predictions, held_out))


def test_ranking_probe_scores_its_path_on_the_same_folds_at_one_C() -> None:
    features, labels = _spread_signal(160, 5, seed=3, strength=0.6)
    ranking = cross_validate(features, labels, CONFIG, probe="ranking").score
    tuned = cross_validate(features, labels, CONFIG).score
    assert ranking.probe == "ranking" and tuned.probe == "tuned" and ranking.folds == tuned.folds == 4
    assert len(set(ranking.regularisation_folds)) == 1 and ranking.regularisation_folds[0] in CONFIG.ranking_Cs
    assert all(C in CONFIG.Cs for C in tuned.regularisation_folds)
    assert ranking.accuracy_mean > 0.8 and tuned.accuracy_mean > 0.8
    assert ranking.accuracy_mean == pytest.approx(np.mean(ranking.accuracy_folds))


def test_worker_processes_change_the_speed_not_the_scores() -> None:
    """``n_jobs`` runs the tuned CV's folds (one feature set) or the feature sets (many) in processes, each
    fit single-threaded: the same predictions, C and scores as in one process."""
    features, labels = _spread_signal(160, 30, seed=4)
    alone = cross_validate(features, labels, CONFIG)
    parallel = cross_validate(features, labels, ProbeConfig(folds=4, max_iter=500, n_jobs=2))
    assert parallel.score == alone.score
    np.testing.assert_array_equal(parallel.predictions, alone.predictions)
    assert len(set(alone.score.accuracy_folds)) > 1  # folds that differ: each came back to its own place
    sets = [features, features[:, :10], features[:, 10:]]
    many = score_many(sets, labels, ProbeConfig(folds=4, max_iter=500, n_jobs=2), probe="tuned")
    assert many == [cross_validate(block, labels, CONFIG).score for block in sets]


def test_bad_probe_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="Cs must be a non-empty sequence of positive numbers"):
        ProbeConfig(Cs=(0.1, -1.0))
    with pytest.raises(ValueError, match="inner_folds must be an integer >= 2"):
        ProbeConfig(inner_folds=1)
    with pytest.raises(ValueError, match="n_jobs must be a process count"):
        ProbeConfig(n_jobs=0)
    assert ProbeConfig(Cs=(10, 0.1)).Cs == (0.1, 10.0)
    with pytest.raises(ValueError, match=r"Unknown probe 'svm'; choose one of \['tuned', 'ranking'\]"):
        cross_validate(np.zeros((8, 2)), [0, 1] * 4, CONFIG, probe="svm")
