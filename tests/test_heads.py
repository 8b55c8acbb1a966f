"""Classification heads on vectors: what they compute, determinism, early stopping, class weights, saving."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from lafusion_st.heads import (
    CONFIG_FILE,
    HEADS,
    WEIGHTS_FILE,
    HadamardResidualHead,
    LogisticHead,
    MLPHead,
    SumResidualHead,
    load_head,
    make_head,
)
from lafusion_st.heads.network import validation_indices
from lafusion_st.probe import ProbeConfig, fit_tuned_probe

SMALL = dict(hidden_sizes=(16, 8), dropout=(0.5, 0.3), max_epochs=30, patience=5)
"""The paper's architecture at toy width, so each fit takes about a second on a busy CPU."""


def blobs(n: int = 160, dims: tuple[int, int] = (12, 8), classes: int = 3, seed: int = 0):
    """Separable classes: each class shifts a few columns of both blocks."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(n, sum(dims))).astype(np.float32)
    for label in range(classes):
        X[y == label, label] += 3.0
        X[y == label, dims[0] + label] += 3.0
    return X * 50.0, y  # LLM-like scale: heads must standardise


def all_heads():
    return [LogisticHead(), MLPHead(**SMALL), HadamardResidualHead(**SMALL), SumResidualHead(**SMALL)]


@pytest.mark.parametrize("head", all_heads(), ids=lambda head: type(head).__name__)
def test_every_head_learns_and_round_trips(head, tmp_path):
    X, y = blobs()
    labels = np.array(["alpha", "beta", "gamma"])[y]
    head.fit(X, labels, member_dims=(12, 8))
    assert head.score(X, labels) > 0.9
    proba = head.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    loaded = load_head(head.save(tmp_path / "head"))
    assert type(loaded) is type(head) and loaded.get_params() == head.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(X), proba)
    assert list(loaded.predict(X)) == list(head.predict(X)) and isinstance(loaded.predict(X[:1])[0], str)


@pytest.mark.parametrize("labels", [np.array([3, 7, 9]), np.array([False, True, True]), np.array([1.0, 2.0, 4.0])])
def test_label_types_survive_saving(labels, tmp_path):
    X, y = blobs(classes=3)
    y = labels[y]
    head = LogisticHead(C=1.0).fit(X, y)
    loaded = load_head(head.save(tmp_path / "head"))
    assert loaded.classes_.dtype.kind == head.classes_.dtype.kind
    assert loaded.predict(X[:5]).tolist() == head.predict(X[:5]).tolist()
    assert type(loaded.predict(X[:1]).tolist()[0]) is type(y.tolist()[0])


def test_logistic_head_is_the_standardised_sklearn_probe():
    X, y = blobs(classes=3)
    head = LogisticHead(C=0.1).fit(X, y)
    scaler = StandardScaler().fit(X)
    reference = LogisticRegression(C=0.1, max_iter=300).fit(scaler.transform(X), y)
    np.testing.assert_allclose(head.predict_proba(X), reference.predict_proba(scaler.transform(X)), atol=1e-5)
    np.testing.assert_allclose(head.decision_function(X), reference.decision_function(scaler.transform(X)), atol=1e-4)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize(
    "params, config",
    [
        ({}, ProbeConfig()),
        (dict(Cs=(0.01, 0.3, 3.0), folds=4, seed=3), ProbeConfig(Cs=(0.01, 0.3, 3.0), inner_folds=4, seed=3)),
    ],
    ids=["defaults", "custom"],
)
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_logistic_head_is_the_tuned_probe_of_lafusion_run(classes, params, config, class_weight):
    """With C=None the head is fit_tuned_probe kept as arrays: same C, same labels, same probabilities."""
    X, y = blobs(n=150, classes=classes)
    X[:, 0] += np.random.default_rng(1).normal(size=len(X)) * 400  # a noisy column: regularisation matters
    X[: 3 * classes, 1] += 2000.0  # a few outliers: C moves the boundary
    keep = np.flatnonzero((y != 0) | (np.arange(len(y)) % 3 == 0))  # class 0 is the rare one
    X, labels = X[keep], np.array(["neg", "pos", "mid"])[y[keep]]
    held_out = blobs(n=90, classes=classes, seed=5)[0]
    probe, C = fit_tuned_probe(X, labels, config, class_weight=class_weight)
    head = LogisticHead(**params, class_weight=class_weight).fit(X, labels)
    assert head.C_ == C
    for data in (X, held_out):
        assert head.predict(data).tolist() == probe.predict(data).tolist()
        np.testing.assert_allclose(head.predict_proba(data), probe.predict_proba(data), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(head.coef_[-1], probe[-1].coef_[-1].astype(np.float32))
    if classes == 2:
        binary = head.decision_function(held_out)
        assert binary.shape == (len(held_out),) and np.array_equal(binary > 0, head.predict(held_out) == "pos")


def test_mlp_heads_are_deterministic_and_leave_the_global_rng_alone():
    X, y = blobs(n=90)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = HadamardResidualHead(**SMALL, seed=4).fit(X, y, member_dims=(12, 8))
    assert torch.rand(1) == before  # training drew from a forked RNG
    second = HadamardResidualHead(**SMALL, seed=4).fit(X, y, member_dims=(12, 8))
    for name, tensor in first.network_.state_dict().items():
        assert torch.equal(tensor, second.network_.state_dict()[name]), name
    other = HadamardResidualHead(**SMALL, seed=5).fit(X, y, member_dims=(12, 8))
    assert not torch.equal(other.network_.mlp[0].weight, first.network_.mlp[0].weight)


def test_early_stopping_keeps_the_best_validation_epoch_of_training_data():
    X, y = blobs(n=120)
    y = np.random.default_rng(2).permutation(y)  # labels without signal: the validation loss soon turns up
    head = MLPHead(**{**SMALL, "max_epochs": 60, "patience": 3}).fit(X, y)
    assert head.validation_size_ == 12  # 10% of each class (40 each) of the training data, nothing else
    assert head.best_epoch_ <= head.epochs_run_ <= head.best_epoch_ + 3
    assert head.epochs_run_ < 60  # stopped early once the validation loss rose


def test_validation_split_is_stratified_and_keeps_singletons_in_training():
    y = np.array([0] * 20 + [1] * 10 + [2])
    held_out = validation_indices(y, 0.2, seed=0)
    assert np.bincount(y[held_out], minlength=3).tolist() == [4, 2, 0]
    assert np.array_equal(held_out, validation_indices(y, 0.2, seed=0))
    assert len(validation_indices(np.array([0, 0, 1, 1, 1]), 0.1, seed=0)) == 1  # rounding gave none
    with pytest.raises(ValueError, match="single training example"):
        validation_indices(np.array([0, 1, 2]), 0.1, seed=0)
    with pytest.raises(ValueError, match="validation_fraction"):
        validation_indices(y, 0.9, seed=0)


def test_residual_terms_match_the_paper_definitions():
    X, y = blobs(n=60, dims=(12, 8))
    for head_class in (HadamardResidualHead, SumResidualHead):
        head = head_class(**SMALL).fit(X, y, member_dims=(12, 8))
        network = head.network_
        z = (torch.from_numpy(X[:5]) - network.mean) / network.scale
        x1, x2 = z[:, :12], z[:, 12:]
        unit = torch.nn.functional.normalize
        if head_class is HadamardResidualHead:
            assert network.project.weight.shape == (8, 12)  # the larger block, to the smaller dimension
            term = unit(network.project(x1)) * unit(x2)
        else:
            term = unit(network.project_1(x1)) + unit(network.project_2(x2))
        logits = network.mlp(torch.cat([x1, x2, term], dim=1))
        np.testing.assert_allclose(head.predict_proba(X[:5]), torch.softmax(logits, 1).detach().numpy(), atol=1e-6)


def test_residual_heads_need_two_blocks():
    X, y = blobs()
    with pytest.raises(ValueError, match="exactly two embedders"):
        SumResidualHead(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match="add up"):
        MLPHead(**SMALL).fit(X, y, member_dims=(5, 5))


def test_class_weight_raises_the_minority_recall():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = (X[:, 0] + 0.8 * rng.normal(size=300) > 1.6).astype(int)  # about 8% positives, overlapping
    plain = LogisticHead(C=1.0).fit(X, y)
    balanced = LogisticHead(C=1.0, class_weight="balanced").fit(X, y)
    recall = lambda head: (head.predict(X)[y == 1] == 1).mean()  # noqa: E731
    assert recall(balanced) > recall(plain) + 0.2
    weighted = MLPHead(**SMALL, class_weight={0: 1.0, 1: 10.0}).fit(X, y)
    assert recall(weighted) > recall(MLPHead(**SMALL).fit(X, y))
    with pytest.raises(ValueError, match="absent from the training labels"):
        LogisticHead(class_weight={0: 1.0, 5: 2.0}).fit(X, y)


def test_bad_input_is_named():
    X, y = blobs()
    with pytest.raises(ValueError, match="one class"):
        LogisticHead().fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        LogisticHead().fit(X, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        LogisticHead().fit(np.full_like(X, np.nan), y)
    head = LogisticHead(C=1.0).fit(X, y)
    with pytest.raises(ValueError, match="expecting 20 features"):
        head.predict(X[:, :5])
    with pytest.raises(ValueError, match="Unknown head 'svm'"):
        make_head("svm")
    with pytest.raises(TypeError, match="head must be one of"):
        make_head(LogisticRegression())
    assert sorted(HEADS) == ["hadamard", "logistic", "mlp", "sum"]


def test_damaged_or_mixed_head_folders_fail_clearly(tmp_path):
    X, y = blobs()
    folder = LogisticHead(C=1.0).fit(X, y).save(tmp_path / "head")
    config = json.loads((folder / CONFIG_FILE).read_text())

    def variant(name, change):
        target = shutil.copytree(folder, tmp_path / name)
        changed = json.loads(json.dumps(config))
        change(changed, target)
        (target / CONFIG_FILE).write_text(json.dumps(changed))
        return target

    def three_labels(c, _):
        c["classes"]["values"] = [0, 1, 2, 3]

    def foreign_class(c, _):
        c["class"] = "os.system"

    def tamper_weights(_, target):
        data = bytearray((target / WEIGHTS_FILE).read_bytes())
        data[-1] ^= 1
        (target / WEIGHTS_FILE).write_bytes(bytes(data))

    def other_width(c, _):
        c["n_features_in"] = 21
        c["member_dims"] = [21]

    with pytest.raises(ValueError, match="does not match"):
        load_head(variant("labels", three_labels))
    with pytest.raises(ValueError, match="loads only"):
        load_head(variant("class", foreign_class))
    with pytest.raises(ValueError, match="SHA-256"):
        load_head(variant("weights", tamper_weights))
    with pytest.raises(ValueError, match="does not match"):
        load_head(variant("width", other_width))
    with pytest.raises(ValueError, match="not all of the recorded type"):
        load_head(variant("types", lambda c, _: c["classes"].update(type="str")))
    with pytest.raises(FileNotFoundError):
        load_head(tmp_path / "nowhere")


@parametrize_with_checks([LogisticHead(C=1.0)])
def test_logistic_head_passes_scikit_learn_estimator_checks(estimator, check):
    """scikit-learn's own API checks. The MLP heads share every checked code path (``Head``) but train too
    long for the checks' tiny data and accuracy thresholds; the residual heads need two feature blocks."""
    check(estimator)
