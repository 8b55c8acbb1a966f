"""The fit cache: a tuned probe fit on a whole training split is fit once, whichever step asks for it.

A hit must be the fit that would have been computed (every learned attribute, bit for bit), a change of any
input must refit, and a broken or tampered entry must be refit, never served.
"""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import Pipeline

from lafusion_st import fit_cache as fit_cache_module
from lafusion_st.fit_cache import (
    SWITCH_ENV,
    FitCacheWarning,
    cached_fit,
    default_fit_cache_dir,
    fit_events,
    sidecar_checksum,
)
from lafusion_st.heads import LogisticHead
from lafusion_st.mteb_tasks import SST2Classification, task_variant
from lafusion_st.probe import ProbeConfig, fit_and_test, fit_tuned_probe, tuned_probe


@pytest.fixture
def fit_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fit cache on, in a folder of this test's own."""
    monkeypatch.setenv("LAFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(SWITCH_ENV, "on")
    return default_fit_cache_dir()


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def noisy_task(rows: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Four string classes, 24 float32 features, labels a noisy linear function: C matters."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows + 80, 24)).astype(np.float32)
    scores = features[:, :4] * [3, 2, 1, 0.5] + rng.normal(0, 1.5, (rows + 80, 4))
    labels = np.array(["acq", "crude", "earn", "trade"])[np.argmax(scores, axis=1)]
    return features[:rows], labels[:rows], features[rows:], labels[rows:]


def learned(fitted: Pipeline) -> dict[str, object]:
    return {
        f"{name}.{attribute}": value
        for name, step in fitted.steps
        for attribute, value in vars(step).items()
        if attribute.endswith("_")
    }


def assert_same_fit(a: Pipeline, b: Pipeline) -> None:
    first, second = learned(a), learned(b)
    assert first.keys() == second.keys()
    for slot, value in first.items():
        other = second[slot]
        assert type(value) is type(other), slot
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype and np.array_equal(value, other), slot
        else:
            assert value == other, slot


def counting(calls: list[int], features: np.ndarray, labels: np.ndarray):
    """A ``fit`` for :func:`cached_fit` that counts its calls."""

    def fit(estimator: Pipeline) -> Pipeline:
        calls.append(1)
        return estimator.fit(features, labels)

    return fit


def test_a_hit_is_the_fit_itself_attribute_for_attribute(fit_cache: Path) -> None:
    train, labels, test, test_labels = noisy_task()
    fresh = tuned_probe().fit(train, labels)
    first, C = fit_tuned_probe(train, labels)  # stores
    second, again = fit_tuned_probe(train, labels)  # reads
    assert len(entries(fit_cache)) == 1
    assert_same_fit(fresh, first)
    assert_same_fit(fresh, second)
    assert C == again == fresh[-1].C_
    np.testing.assert_array_equal(second.predict(test), fresh.predict(test))
    np.testing.assert_array_equal(second.predict_proba(test), fresh.predict_proba(test))


def test_every_input_of_the_fit_is_part_of_its_key(fit_cache: Path) -> None:
    calls: list[int] = []
    train, labels, _, _ = noisy_task()
    cached_fit(tuned_probe(), train, labels, counting(calls, train, labels))
    cached_fit(tuned_probe(), train, labels, counting(calls, train, labels))
    assert len(calls) == 1
    changed = train.copy()
    changed[7, 3] = np.nextafter(changed[7, 3], np.float32(np.inf))  # one value, one float32 step
    variants = [
        (tuned_probe(), changed, labels),
        (tuned_probe(), train.astype(np.float64), labels),
        (tuned_probe(), train, np.roll(labels, 1)),
        (tuned_probe(ProbeConfig(Cs=(0.01, 1.0))), train, labels),
        (tuned_probe(ProbeConfig(seed=1)), train, labels),
        (tuned_probe(ProbeConfig(tol=1e-5)), train, labels),
        (tuned_probe(class_weight="balanced"), train, labels),
    ]
    for estimator, features, targets in variants:
        cached_fit(estimator, features, targets, counting(calls, features, targets))
    assert len(calls) == 1 + len(variants)
    assert len(entries(fit_cache)) == 1 + len(variants)


def test_class_names_or_their_codes_are_one_fit_and_the_head_reads_the_runs(fit_cache: Path) -> None:
    """LogisticHead fits on class indices, the run on the label strings: the same fit, stored once."""
    train, labels, test, test_labels = noisy_task()
    score = fit_and_test(train, labels, test, test_labels)
    assert len(entries(fit_cache)) == 1
    with fit_events() as events:
        head = LogisticHead().fit(train, labels)
    assert [event.cached for event in events] == [True] and len(entries(fit_cache)) == 1
    assert head.C_ == score.C
    np.testing.assert_array_equal(head.predict(test) == test_labels, score.correct)
    codes, _ = fit_tuned_probe(train, np.unique(labels, return_inverse=True)[1])
    np.testing.assert_array_equal(codes.classes_, np.arange(4))  # classes_ are the caller's, not the stored ones


def test_the_mteb_paper_protocol_reads_the_selections_test_fit(
    fit_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the same vectors in the split's order, MTEB's paper-protocol fit is a hit on the test fit's entry."""
    from test_mteb_tasks import HashingEncoder, hashing_meta

    from lafusion_st.evaluation import evaluate_encoder

    paper = task_variant(SST2Classification, "paper", 200, 100)()
    paper.load_data()
    train, test = paper.dataset["train"], paper.dataset["test"]
    encoder = HashingEncoder()
    score = fit_and_test(
        encoder.encode(list(train["text"])),
        np.asarray(train["label"]),
        encoder.encode(list(test["text"])),
        np.asarray(test["label"]),
    )
    assert len(entries(fit_cache)) == 1
    fits: list[int] = []
    real_fit = LogisticRegressionCV.fit
    monkeypatch.setattr(LogisticRegressionCV, "fit", lambda *a, **k: (fits.append(1), real_fit(*a, **k))[1])
    evaluate_encoder(encoder, [paper], tmp_path / "results", meta=hashing_meta(encoder))
    assert fits == [] and len(entries(fit_cache)) == 1  # read, not fit again
    written = json.loads(next((tmp_path / "results").rglob(f"{paper.metadata.name}.json")).read_text())
    assert written["scores"]["test"][0]["accuracy"] == pytest.approx(score.accuracy, abs=5e-7)  # MTEB's 6 digits


def test_a_broken_or_tampered_entry_is_refit_not_served(fit_cache: Path) -> None:
    train, labels, test, _ = noisy_task()
    fresh, _ = fit_tuned_probe(train, labels)
    (sidecar,) = entries(fit_cache)
    data = sidecar.with_suffix(".safetensors")
    stored = json.loads(sidecar.read_text())

    def refit_after(warning: str) -> None:
        with pytest.warns(FitCacheWarning, match=warning):
            refit, _ = fit_tuned_probe(train, labels)
        assert_same_fit(fresh, refit)
        np.testing.assert_array_equal(refit.predict(test), fresh.predict(test))
        assert len(entries(fit_cache)) == 1  # removed and stored again

    def rewrite(change, resign: bool = True) -> None:
        """An edit of the sidecar; ``resign``: a deliberate one that also recomputes its checksum."""
        document = json.loads(json.dumps(stored))
        change(document)
        if resign:
            document["sidecar_sha256"] = sidecar_checksum(document)
        sidecar.write_text(json.dumps(document))

    data.write_bytes(data.read_bytes()[:-8])  # truncated
    refit_after("fails its checksum")
    rewrite(lambda d: d["scalars"].update({"classify.C_": 1.0}), resign=False)  # another C, served as C_
    refit_after("the sidecar fails its checksum")
    rewrite(lambda d: (d["scalars"].update({"classify.fit": 1}), d["slots"].append("classify.fit")))
    refit_after("not a learned attribute")  # would replace the method
    rewrite(lambda d: d["scalars"].update({"classify.extra_": 1}))
    refit_after("not the ones it lists")
    rewrite(lambda d: d["scalars"].update({"classify.C_": {"dtype": "<U3", "value": "abc"}}))
    refit_after("scalar classify.C_")
    sidecar.write_text("{not json")
    refit_after("not valid JSON")


def test_off_switch_neither_reads_nor_writes(fit_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    train, labels, _, _ = noisy_task()
    fit = counting(calls, train, labels)
    cached_fit(tuned_probe(), train, labels, fit)
    monkeypatch.setenv(SWITCH_ENV, "off")
    cached_fit(tuned_probe(), train, labels, fit)
    cached_fit(tuned_probe(ProbeConfig(seed=3)), train, labels, fit)
    assert len(calls) == 3 and len(entries(fit_cache)) == 1


def test_cross_validation_folds_are_not_cached(fit_cache: Path) -> None:
    """Only whole-split fits are kept: a CV's fold fits are never repeated and would only fill the disk."""
    from lafusion_st.probe import cross_validate

    train, labels, _, _ = noisy_task()
    cross_validate(train, labels)
    assert entries(fit_cache) == []


def test_fit_events_tell_a_read_from_a_fit_and_carry_the_fits_own_cost(fit_cache: Path) -> None:
    train, labels, _, _ = noisy_task()
    with fit_events() as made:
        fit_tuned_probe(train, labels)
    with fit_events() as read:
        fit_tuned_probe(train, labels)
    fit_tuned_probe(train, labels)  # outside a block: recorded nowhere
    assert [event.cached for event in made + read] == [False, True]
    assert made[0].seconds > 0 and read[0].seconds == pytest.approx(made[0].seconds, abs=1e-3)  # to the ms
    assert read[0].cpu_seconds == pytest.approx(made[0].cpu_seconds, abs=1e-3)


def test_a_class_weight_keyed_by_label_keys_the_class_names_too(fit_cache: Path) -> None:
    """``{"b": 10}`` weighs the second class of ``a, b, c, d``, the first of ``b, c, d, e``: same codes, other fits."""
    train, codes, _, _ = noisy_task()
    first = np.array([{"acq": "a", "crude": "b", "earn": "c", "trade": "d"}[label] for label in codes])
    second = np.array([{"acq": "b", "crude": "c", "earn": "d", "trade": "e"}[label] for label in codes])
    calls: list[int] = []
    weight = {"b": 10.0, "c": 1.0}
    a = cached_fit(tuned_probe(class_weight=weight), train, first, counting(calls, train, first))
    b = cached_fit(tuned_probe(class_weight=weight), train, second, counting(calls, train, second))
    assert len(calls) == 2 and not np.array_equal(a[-1].coef_, b[-1].coef_)
    cached_fit(tuned_probe(), train, first, counting(calls, train, first))
    cached_fit(tuned_probe(), train, second, counting(calls, train, second))  # unweighted: names do not matter
    assert len(calls) == 3


def test_the_paper_protocol_still_says_when_its_fit_stops_at_max_iter(fit_cache: Path) -> None:
    """fit_tuned_probe fits quietly (a CV reports convergence in its scores); MTEB's fit must still warn."""
    from sklearn.exceptions import ConvergenceWarning

    from lafusion_st.mteb_tasks import PaperProbe

    train, labels, _, _ = noisy_task()
    with pytest.warns(ConvergenceWarning, match="after 2 iterations"):
        PaperProbe(ProbeConfig(max_iter=2)).fit(train, labels)
    with pytest.warns(ConvergenceWarning, match="after 2 iterations"):  # read from the cache: said again
        PaperProbe(ProbeConfig(max_iter=2)).fit(train, labels)


def test_a_fit_with_an_attribute_the_cache_cannot_restore_is_not_stored(
    fit_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A future scikit-learn may set a private or non-numeric attribute in fit: an entry without it would not be
    the fit, so nothing is stored (with a warning) and the fit is returned as made."""
    train, labels, _, _ = noisy_task()
    real_fit = LogisticRegressionCV.fit

    def fit_with_private_state(self, *args, **kwargs):
        fitted = real_fit(self, *args, **kwargs)
        fitted._solver_state = {"warm": True}
        return fitted

    monkeypatch.setattr(LogisticRegressionCV, "fit", fit_with_private_state)
    with pytest.warns(FitCacheWarning, match="_solver_state is not a public learned attribute"):
        fitted, _ = fit_tuned_probe(train, labels)
    assert fitted[-1]._solver_state == {"warm": True} and entries(fit_cache) == []


def test_a_cache_this_process_may_not_write_is_read_and_never_written(
    fit_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared read-only cache (a read-only mount: a plain ``OSError``): its fits are served, new ones are made
    and not stored, a corrupt one is refit and left in place, and the user is told once."""
    train, labels, test, _ = noisy_task()
    fresh, _ = fit_tuned_probe(train, labels)
    (sidecar,) = entries(fit_cache)

    def read_only_mount(lock_or_path, *args, **kwargs):  # filelock names the file, as the OS does
        raise OSError(errno.EROFS, "Read-only file system", str(getattr(lock_or_path, "lock_file", lock_or_path)))

    monkeypatch.setattr(fit_cache_module.FileLock, "acquire", read_only_mount)
    monkeypatch.setattr(Path, "unlink", read_only_mount)
    calls: list[int] = []
    with pytest.warns(FitCacheWarning, match="cannot be written .*Read-only file system.*reading it only") as said:
        served = cached_fit(tuned_probe(), train, labels, counting(calls, train, labels))
    assert calls == [] and len(said) == 1
    assert_same_fit(fresh, served)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # told once, though each entry's lock file has its own name
        cached_fit(tuned_probe(), train[:200], labels[:200], counting(calls, train[:200], labels[:200]))
    assert calls == [1] and entries(fit_cache) == [sidecar]  # fit, not stored
    sidecar.with_suffix(".safetensors").write_bytes(b"damaged")
    with pytest.warns(FitCacheWarning, match="fails its checksum"):
        refit = cached_fit(tuned_probe(), train, labels, counting(calls, train, labels))
    assert calls == [1, 1] and entries(fit_cache) == [sidecar]
    np.testing.assert_array_equal(refit.predict(test), fresh.predict(test))
