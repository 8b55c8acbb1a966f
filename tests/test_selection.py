"""Probes, selection strategies, complementarity and the report, on constructed data with known answers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import hand_made_score
from lafusion_st.data import LabeledTexts
from lafusion_st.pipeline import run_task, small_classes_said_once
from lafusion_st.probe import (
    ProbeConfig,
    SmallClassWarning,
    cross_validate,
    fit_and_test,
    layer_scores,
    usable_folds,
)
from lafusion_st.report import plot_layer_curves, write_report
from lafusion_st.selection import (
    best_window,
    complementarity,
    complementarity_of,
    greedy_layers,
    greedy_models,
    noise_rule,
    search_layers,
    stability,
    top_k,
)
from lafusion_st.spec import RunSettings

N = 240
FAST = ProbeConfig(folds=4, max_iter=200, Cs=(0.01, 0.1, 1.0))


def _layers(signal_layers: dict[int, np.ndarray], num_layers: int = 6, hidden: int = 6, seed: int = 0) -> np.ndarray:
    """``[num_layers, N, hidden]`` noise, with ``signal_layers[l]`` written into column 0 of layer ``l``."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(num_layers, N, hidden)).astype(np.float32)
    for layer, signal in signal_layers.items():
        vectors[layer, :, 0] = signal
    return vectors


def _halves(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a``, ``b`` and labels ``a + b > 0`` with a margin: a probe needs both to be right every time
    (about 90% with one alone, 100% with both), so a gain of several points separates truth from fold noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=N), rng.normal(size=N)
    side = np.sign(a + b)
    return a + 0.5 * side, b + 0.5 * side, (side > 0).astype(int)


@pytest.fixture
def two_halves() -> tuple[np.ndarray, np.ndarray]:
    """Layer 1 carries ``a``, layer 3 carries ``b`` of :func:`_halves`; the other layers are noise."""
    a, b, labels = _halves(1)
    return _layers({1: a, 3: b}), labels


def test_probe_separates_separable_data_and_not_shuffled_labels() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(["neg", "pos", "neutral"], N // 3)
    centers = {"neg": -3.0, "pos": 3.0, "neutral": 0.0}
    features = np.stack([[centers[label], 0.0] for label in labels]) + rng.normal(scale=0.5, size=(N, 2))
    separable = cross_validate(features, labels, FAST)
    assert separable.score.accuracy_mean > 0.97 and separable.score.macro_f1_mean > 0.97
    assert separable.score.folds == 4 and separable.score.num_samples == N and separable.score.converged
    assert set(separable.predictions) <= set(labels) and (separable.predictions == labels).mean() > 0.97
    shuffled = cross_validate(features, rng.permutation(labels), FAST).score
    assert abs(shuffled.accuracy_mean - 1 / 3) < 0.1


def test_layer_scores_rank_the_informative_layers_first(two_halves) -> None:
    vectors, labels = two_halves
    scores = layer_scores(vectors, labels, FAST, show_progress_bar=False)
    assert len(scores) == len(vectors)
    ranked = sorted(range(len(scores)), key=lambda layer: -scores[layer].accuracy_mean)
    assert set(ranked[:2]) == {1, 3}
    assert all(scores[layer].accuracy_mean < 0.65 for layer in (0, 2, 4, 5))


def test_single_class_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"single class \['only'\]"):
        cross_validate(np.zeros((10, 2)), ["only"] * 10, FAST)
    with pytest.raises(ValueError, match="single class"):
        fit_and_test(np.zeros((10, 2)), [1] * 10, np.zeros((2, 2)), [1, 1])


def test_too_few_examples_for_the_folds_reduces_them_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="using 3-fold"):
        assert usable_folds([0, 0, 0, 1, 1, 1], folds=5) == 3
    features = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    with pytest.warns(UserWarning, match="using 3-fold"):
        assert cross_validate(features, [0, 0, 0, 1, 1, 1], ProbeConfig(folds=5)).score.folds == 3


def test_rare_classes_are_kept_with_a_warning_naming_them() -> None:
    labels = ["a"] * 20 + ["b"] * 20 + ["tiny"] * 2 + ["single"]
    with pytest.warns(UserWarning, match=r"2 class\(es\) .*'single' \(1\), 'tiny' \(2\)"):
        assert usable_folds(labels, folds=5) == 5


def test_a_run_names_the_rare_classes_once(tiny_models, good_or_not, tmp_path, scan_cache_dir) -> None:
    """On full R52 (9 classes under 5 training texts) run_task said the same two lines at each of its 20
    cross-validations; it says them once, and a lone call of usable_folds still says them."""
    train = LabeledTexts([*good_or_not.texts, "rare one", "rare two"], [*good_or_not.labels, 2, 2])
    settings = RunSettings(poolings=("mean",), probe=FAST, max_layers=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_task("good", train, None, [tiny_models["llama"]], tmp_path / "run", settings)
    said = [str(w.message) for w in caught if issubclass(w.category, SmallClassWarning)]
    assert len(said) == 1 and said[0].startswith("1 class(es) have fewer than 4 training examples: 2 (2).")
    with pytest.warns(SmallClassWarning):  # outside a run, each call still says it
        usable_folds(train.labels, FAST.folds)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with small_classes_said_once(train.labels, FAST.folds):  # says it on entering
            usable_folds(train.labels, FAST.folds)  # the same words: not again
            usable_folds(train.labels[:-1], FAST.folds)  # other words (a class of 1), as a coarse sample's may be
    assert [str(w.message).split(".")[0] for w in said] == [
        "1 class(es) have fewer than 4 training examples: 2 (2)",
        "1 class(es) have fewer than 4 training examples: 2 (1)",
    ]


def test_all_singleton_classes_cannot_be_cross_validated() -> None:
    with pytest.raises(ValueError, match="single training example"):
        usable_folds(["a", "b", "c"], folds=5)


def test_bad_probe_settings_and_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        ProbeConfig(folds=1)
    with pytest.raises(ValueError, match="feature rows but"):
        cross_validate(np.zeros((4, 2)), [0, 1, 0], FAST)
    with pytest.raises(ValueError, match="NaN"):
        cross_validate(np.full((8, 2), np.nan), [0, 1] * 4, FAST)


def test_fit_and_test_trains_on_train_and_scores_on_test(two_halves) -> None:
    vectors, labels = two_halves
    both = np.concatenate([vectors[1], vectors[3]], axis=1)
    result = fit_and_test(both[:180], labels[:180], both[180:], labels[180:], FAST)
    assert result.accuracy > 0.9 and result.num_train == 180 and result.num_test == 60
    noise = fit_and_test(vectors[0][:180], labels[:180], vectors[0][180:], labels[180:], FAST)
    assert noise.accuracy < 0.75


def test_greedy_layers_adds_the_complement_then_stops(two_halves) -> None:
    vectors, labels = two_halves
    selection = greedy_layers(vectors, labels, max_layers=4, config=FAST, show_progress_bar=False)
    assert selection.chosen == [1, 3]
    assert selection.score.accuracy_mean > 0.9
    last_round = [step for step in selection.steps if len(step.candidate) == 3]
    assert len(last_round) == 4 and not any(step.accepted for step in last_round)
    # the stopping rule, checked against the evidence it recorded: from the last layer to one half, then both
    assert [(d.kind, d.accepted) for d in selection.decisions] == [
        ("layer", True),
        ("added layer", True),
        ("added layer", False),
    ]
    refused = selection.kept_simpler[0]
    assert refused.incumbent == [1, 3] and refused.gain <= refused.standard_error
    best_third = max(last_round, key=lambda step: step.score.accuracy_mean)
    assert refused.challenger == best_third.candidate


def test_greedy_layers_keeps_the_last_layer_when_no_gain_is_out_of_the_noise(two_halves) -> None:
    vectors, labels = two_halves
    selection = greedy_layers(vectors, labels, standard_errors=1000.0, config=FAST, show_progress_bar=False)
    assert selection.chosen == [5]
    # another layer and then an added layer were both refused, though one half of the signal gains 30 points
    assert [(d.kind, d.incumbent, d.accepted) for d in selection.decisions] == [
        ("layer", [5], False),
        ("added layer", [5], False),
    ]
    assert selection.decisions[0].challenger[0] in (1, 3) and selection.decisions[0].gain > 0.2
    assert selection.kept_simpler == selection.decisions
    assert json.loads(json.dumps(selection.to_dict()))["decisions"][0]["accepted"] is False


def test_greedy_layers_respects_candidates_and_max_layers(two_halves) -> None:
    vectors, labels = two_halves
    without_layer_1 = greedy_layers(vectors, labels, candidates=[0, 3, 5], config=FAST, show_progress_bar=False)
    assert without_layer_1.chosen == [3]
    assert all(set(step.candidate) <= {0, 3, 5} for step in without_layer_1.steps)
    capped = greedy_layers(vectors, labels, standard_errors=0.0, max_layers=1, config=FAST, show_progress_bar=False)
    assert len(capped.chosen) == 1 and all(len(step.candidate) == 1 for step in capped.steps)
    with pytest.raises(ValueError, match="candidates"):
        greedy_layers(vectors, labels, candidates=[9], config=FAST, show_progress_bar=False)


def test_top_k_takes_the_best_single_layers_and_scores_their_concatenation(two_halves) -> None:
    vectors, labels = two_halves
    scores = layer_scores(vectors, labels, FAST, show_progress_bar=False)
    selection = top_k(vectors, labels, scores, k=2, config=FAST)
    assert selection.chosen == [1, 3]
    assert selection.score.accuracy_mean > max(scores[1].accuracy_mean, scores[3].accuracy_mean) + 0.04
    assert selection.score.num_features == 2 * vectors.shape[2]
    with pytest.raises(ValueError, match=r"k must be an integer in 1\.\.6"):
        top_k(vectors, labels, scores, k=7)


def test_best_window_finds_the_adjacent_informative_layers() -> None:
    a, b, labels = _halves(2)
    vectors = _layers({2: a, 3: b})
    selection = best_window(vectors, labels, max_width=3, config=FAST, show_progress_bar=False)
    assert selection.chosen == [2, 3]
    assert len(selection.steps) == 6 + 5 + 4 and sum(step.accepted for step in selection.steps) == 1
    fixed = best_window(vectors, labels, width=3, config=FAST, show_progress_bar=False)
    assert fixed.chosen in ([1, 2, 3], [2, 3, 4]) and len(fixed.steps) == 4


def test_greedy_models_and_complementarity_on_complementary_models(two_halves) -> None:
    vectors, labels = two_halves
    features = {"model_a": vectors[1], "model_b": vectors[3], "noise": vectors[0]}
    selection = greedy_models(features, labels, config=FAST, show_progress_bar=False)
    assert sorted(selection.chosen) == ["model_a", "model_b"]
    assert selection.chosen == ["model_a", "model_b"]  # in the caller's order, as build_fused_model needs them

    report = complementarity(
        {"model_a": vectors[1], "model_b": vectors[3], "copy_of_a": vectors[1].copy()}, labels, FAST
    )
    pairs = {(pair.model_a, pair.model_b): pair for pair in report.pairs}
    same = pairs[("model_a", "copy_of_a")]
    assert same.disagreement == 0 and same.yules_q == 1 and same.a_errors_fixed_by_b == 0
    different = pairs[("model_a", "model_b")]
    assert different.yules_q < same.yules_q and different.a_errors_fixed_by_b > 0.3
    assert different.oracle_accuracy > max(report.accuracy["model_a"], report.accuracy["model_b"])
    assert different.oracle_accuracy == pytest.approx(1 - different.both_wrong)
    json.dumps(report.to_dict())
    with pytest.raises(ValueError, match="at least 2"):
        complementarity({"model_a": vectors[1]}, labels, FAST)


def test_report_and_plot_are_written(two_halves, tmp_path) -> None:
    vectors, labels = two_halves
    scores = layer_scores(vectors, labels, FAST, show_progress_bar=False)
    selection = greedy_layers(vectors, labels, scores, config=FAST, show_progress_bar=False)
    test = fit_and_test(vectors[1][:180], labels[:180], vectors[1][180:], labels[180:], FAST)
    written = write_report(
        tmp_path / "out" / "report.json",
        task="toy",
        layer_scores={"model": scores},
        selections={"model/greedy_layers": selection},
        test_scores={"model/greedy_layers": test},
        probe_config=FAST,
        settings={"pooling": "mean"},
    )
    loaded = json.loads((tmp_path / "out" / "report.json").read_text())
    assert loaded == written
    assert loaded["models"]["model"]["best_layer"] in (1, 3) and loaded["models"]["model"]["last_layer"] == 5
    assert loaded["selections"]["model/greedy_layers"]["chosen"] == [1, 3]
    assert loaded["probe"]["folds"] == 4 and loaded["complementarity"] is None

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no backend or GUI warnings
        png = plot_layer_curves(
            tmp_path / "curves.png", {"model": scores, "other": scores[:4]}, {"model": selection.chosen}, task="toy"
        )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(ValueError, match="Nothing to plot"):
        plot_layer_curves(tmp_path / "empty.png", {}, task="toy")


def test_noise_rule_by_hand() -> None:
    incumbent = hand_made_score([0.80, 0.82, 0.78, 0.81, 0.79])
    # paired gains 0.01, 0.03, -0.01, 0.02, 0.00: mean 0.01, sd 0.0158, standard error 0.00707
    noisy = hand_made_score([0.81, 0.85, 0.77, 0.83, 0.79])
    decision = noise_rule(noisy, incumbent, kind="layer", names=([30], [17]))
    assert decision.gain == pytest.approx(0.01) and decision.standard_error == pytest.approx(np.sqrt(2.5e-4 / 5))
    assert decision.accepted and (decision.incumbent, decision.challenger) == ([30], [17])
    assert not noise_rule(noisy, incumbent, kind="layer", names=([30], [17]), standard_errors=2.0).accepted
    # a small gain in every fold is no noise; a bigger mean gain carried by one fold is
    steady = hand_made_score([0.802, 0.822, 0.782, 0.812, 0.792])
    assert noise_rule(steady, incumbent, kind="layer", names=("a", "b")).accepted
    one_fold = hand_made_score([0.80, 0.82, 0.78, 0.81, 0.89])
    lucky = noise_rule(one_fold, incumbent, kind="layer", names=("a", "b"))
    assert lucky.gain == pytest.approx(0.02) and not lucky.accepted
    # equal scores never replace the simpler choice, even with a margin of 0
    assert not noise_rule(incumbent, incumbent, kind="layer", names=("a", "b"), standard_errors=0.0).accepted
    with pytest.raises(ValueError, match="same folds"):
        noise_rule(hand_made_score([0.8, 0.8, 0.8]), incumbent, kind="layer", names=("a", "b"))
    with pytest.raises(ValueError, match="same folds"):
        noise_rule(hand_made_score([0.8] * 5, probe="tuned"), incumbent, kind="layer", names=("a", "b"))


def test_a_noisy_copy_of_the_last_layer_that_wins_by_fold_noise_does_not_replace_it() -> None:
    """The trap of naive CV: a layer carrying the last layer's signal plus jitter (so no better) wins on the
    fold means by a few texts, and would be chosen without the rule."""
    rng = np.random.default_rng(1)
    signal = rng.normal(size=N)
    labels = (signal + rng.normal(scale=0.6, size=N) > 0).astype(int)
    vectors = _layers({5: signal, 2: signal + rng.normal(scale=0.15, size=N)}, seed=1)
    scores = layer_scores(vectors, labels, FAST, show_progress_bar=False)
    assert max(range(6), key=lambda layer: scores[layer].accuracy_mean) == 2  # what naive CV would take
    naive = greedy_layers(vectors, labels, scores, max_layers=1, standard_errors=0.0, config=FAST)
    assert naive.chosen == [2]
    selection = greedy_layers(vectors, labels, scores, max_layers=1, config=FAST, show_progress_bar=False)
    assert selection.chosen == [5]
    refused = selection.kept_simpler[0]
    assert (refused.kind, refused.incumbent, refused.challenger) == ("layer", [5], [2])
    assert 0 < refused.gain < refused.standard_error


def test_search_layers_takes_the_pooling_that_earns_it_and_keeps_the_default_otherwise() -> None:
    a, b, labels = _halves(6)
    weak = _layers({5: a})  # "mean": the last layer carries half the signal
    strong = _layers({2: a, 3: b}, seed=1)  # "last": two middle layers carry all of it
    search = search_layers({"mean": weak, "last": strong}, labels, candidates=3, config=FAST, show_progress_bar=False)
    assert (search.pooling, search.layers) == ("last", [2, 3])
    assert [(d.kind, d.accepted) for d in search.decisions] == [("pooling", True), ("against last layer", True)]
    assert search.score.probe == "tuned" and search.last_layer.probe == "tuned"
    assert search.score.accuracy_mean > search.last_layer.accuracy_mean + 0.1
    assert set(search.curves) == {"mean", "last"} and search.curves["last"][2].probe == "ranking"
    assert search.best_single["mean"][0] == 5 and search.best_single["last"][0] in (2, 3)
    assert json.loads(json.dumps(search.to_dict()))["decisions"][0]["challenger"] in ("last [2]", "last [3]")
    assert [d.kind for d in search.selection.decisions][:2] == ["layer", "added layer"]

    same = search_layers({"mean": weak, "max": weak.copy()}, labels, candidates=3, config=FAST, show_progress_bar=False)
    assert (same.pooling, same.layers) == ("mean", [5])
    assert [(d.kind, d.accepted) for d in same.decisions] == [("pooling", False)]
    assert same.kept_simpler[-1].kind == "pooling" and same.score == same.last_layer
    with pytest.raises(ValueError, match="same layers"):
        search_layers({"mean": weak, "last": weak[:4]}, labels, config=FAST)


def test_search_keeps_its_choices_cv_predictions_which_complementarity_reuses() -> None:
    """run_task compares the models' errors from each search's own out-of-fold predictions (on full R52, three
    tuned 5-fold CVs saved): they are the tuned CV of the chosen layers, and give complementarity's report."""
    a, b, labels = _halves(6)
    weak, strong = _layers({5: a}), _layers({2: a, 3: b}, seed=1)
    searches = {
        name: search_layers({"mean": vectors}, labels, candidates=3, config=FAST, show_progress_bar=False)
        for name, vectors in (("weak", weak), ("strong", strong))
    }
    features = {
        name: np.concatenate([vectors[layer] for layer in searches[name].layers], axis=1)
        for name, vectors in (("weak", weak), ("strong", strong))
    }
    assert searches["strong"].layers == [2, 3] and searches["weak"].layers == [5]
    assert searches["weak"] == searches["weak"] and "predictions" not in repr(searches["weak"])
    for name, search in searches.items():
        cv = cross_validate(features[name], labels, FAST)
        np.testing.assert_array_equal(search.predictions, cv.predictions)
        assert search.score == cv.score
    folds = usable_folds(labels, FAST.folds)
    reused = complementarity_of({name: search.predictions for name, search in searches.items()}, labels, folds)
    assert reused.to_dict() == complementarity(features, labels, FAST).to_dict()
    assert reused.accuracy["strong"] > reused.accuracy["weak"] + 0.1
    with pytest.raises(ValueError, match="at least 2"):
        complementarity_of({"weak": searches["weak"].predictions}, labels, folds)


def test_stability_counts_the_choice_of_each_fold_seed(two_halves) -> None:
    vectors, labels = two_halves
    kept = vectors[[0, 1, 3, 5]]  # the two halves (now layers 1 and 2), noise, and the noisy last layer
    result = stability({"mean": kept}, labels, [0, 1], candidates=2, max_layers=2, config=FAST, show_progress_bar=False)
    assert result.seeds == [0, 1] and result.choices == [("mean", [1, 2])] * 2
    assert result.layer_counts == {1: 2, 2: 2} and result.pooling_counts == {"mean": 2}
    assert json.loads(json.dumps(result.to_dict()))["layer_counts"] == {"1": 2, "2": 2}
    with pytest.raises(ValueError, match="at least one seed"):
        stability({"mean": vectors}, labels, [])
