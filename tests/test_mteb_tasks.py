"""MTEB tasks over the bundled data, both protocols, and the evaluation entry point."""

from __future__ import annotations

import gzip
import hashlib
import json
import warnings
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from mteb.abstasks.multilabel_classification import AbsTaskMultilabelClassification
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.results import TaskResult
from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_info, threadpool_limits

from lafusion_st import build_fused_model, evaluation
from lafusion_st.data import LabeledTexts, load_bundled
from lafusion_st.evaluation import (
    CachedEncoder,
    ResultsFolderError,
    evaluate_encoder,
    make_model_meta,
    per_text_correctness,
)
from lafusion_st.mteb_tasks import (
    PAPER_PROBE,
    PROTOCOLS,
    TASKS,
    BundledClassificationTask,
    SST2Classification,
    classifier_fingerprint,
    get_tasks,
    task_variant,
)
from lafusion_st.probe import ProbeConfig, fit_and_test, tuned_probe
from lafusion_st.spec import EmbedderSpec

EXPECTED_SIZES = {"sst2": (67349, 872, 2), "mr": (7108, 3554, 2), "r8": (5485, 2189, 8), "r52": (6532, 2568, 52)}
DIMENSION = 16


class HashingEncoder:
    """A fast deterministic bag-of-words encoder that records every text it is asked to embed."""

    def __init__(self, corrupt: str | None = None) -> None:
        self.seen: list[str] = []
        self.blas_threads: set[int] = set()  # NumPy/SciPy BLAS threads while MTEB runs
        self.corrupt = corrupt

    def encode(self, sentences, batch_size=32, show_progress_bar=False, convert_to_numpy=True):
        self.seen.extend(sentences)
        self.blas_threads.update(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        vectors = np.zeros((len(sentences), DIMENSION), dtype=np.float32)
        for row, text in enumerate(sentences):
            for word in text.split():
                vectors[row, zlib.crc32(word.encode()) % DIMENSION] += 1.0
        if self.corrupt == "nan":
            vectors[-1, 0] = np.nan
        elif self.corrupt == "wide":
            vectors = np.hstack([vectors, vectors])
        elif self.corrupt == "short":
            vectors = vectors[:-1]
        return vectors


def hashing_meta(encoder: HashingEncoder, name: str = "test/hashing"):
    return make_model_meta(encoder, name, revision="r1", n_parameters=0, framework=["NumPy"], embed_dim=DIMENSION)


def result_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


class MismatchedLabels(BundledClassificationTask):
    metadata = SST2Classification.metadata.model_copy(update={"name": "MismatchedLabelsClassification"})

    def load_splits(self) -> tuple[LabeledTexts, LabeledTexts]:
        return LabeledTexts(["good", "bad", "fine"], [0, 1, 1]), LabeledTexts(["great", "awful"], [0, 2])


@pytest.mark.parametrize("name", list(TASKS))
def test_bundled_task_loads_by_name_with_the_bundled_labels(name: str) -> None:
    (task,) = get_tasks([name])
    assert get_tasks([task.metadata.name])[0].metadata.name == task.metadata.name
    task.load_data()
    n_train, n_test, n_classes = EXPECTED_SIZES[name]
    assert (len(task.dataset["train"]), len(task.dataset["test"])) == (n_train, n_test)
    names = task.dataset["train"].features["label"].names
    assert len(names) == n_classes
    for split in ("train", "test"):
        original = load_bundled(name, split)
        assert task.dataset[split]["text"] == original.texts
        assert [names[i] for i in task.dataset[split]["label"]] == [str(label) for label in original.labels]


def test_get_tasks_returns_the_four_bundled_tasks_in_order() -> None:
    assert [type(task) for task in get_tasks()] == list(TASKS.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", list(TASKS))
def test_task_metadata_validates_and_names_the_bundled_files(name: str, protocol: str) -> None:
    (task,) = get_tasks([name], protocol=protocol)
    metadata = TaskMetadata.model_validate(task.metadata.model_dump())
    metadata._validate_metadata()
    assert metadata.is_filled()
    digests = []
    for split in ("train", "test"):
        with (resources.files("lafusion_st") / "datasets" / f"{name}_{split}.jsonl.gz").open("rb") as fh:
            digests.append(hashlib.sha256(gzip.decompress(fh.read())).hexdigest()[:12])
    assert metadata.revision == "-".join(digests)


def test_variants_have_distinct_names_and_settings() -> None:
    variants = {
        (protocol, sample): task_variant(SST2Classification, protocol, *sample)
        for protocol in PROTOCOLS
        for sample in ((None, None), (200, 100))
    }
    assert len({cls.metadata.name for cls in variants.values()}) == 4
    assert variants["standard", (None, None)] is SST2Classification
    assert task_variant(SST2Classification, "paper", 200, 100) is variants["paper", (200, 100)]
    standard, paper = variants["standard", (200, 100)], variants["paper", (200, 100)]
    assert (standard.n_experiments, standard.samples_per_label) == (10, 8)
    assert paper.n_experiments == 1 and paper.samples_per_label >= EXPECTED_SIZES["sst2"][0]
    assert paper.metadata.revision != SST2Classification.metadata.revision


def test_subsample_is_stratified_and_keeps_every_label() -> None:
    (task,) = get_tasks(["r52"], max_train=300, max_test=100, seed=1)
    task.load_data()
    assert (len(task.dataset["train"]), len(task.dataset["test"])) == (300, 100)
    for split in ("train", "test"):
        assert len(set(task.dataset[split]["label"])) == 52


def test_paper_protocol_refuses_tasks_that_draw_rows_their_own_way() -> None:
    """train_on_every_row replaces single-label classification's row sampling only: a multilabel task or one with
    its own sampling would silently keep its own draw under a name that says every row."""
    multilabel = type("ToyMultilabel", (AbsTaskMultilabelClassification,), {"metadata": SST2Classification.metadata})
    own_draw = type("ToyOwnDraw", (SST2Classification,), {"_undersample_data": lambda self, data, n, idxs=None: None})
    for task_class in (multilabel, own_draw):
        with pytest.raises(ValueError, match="draws its training rows its own way"):
            task_variant(task_class, "paper")
    assert task_variant(multilabel, "standard") is multilabel


class CrossValidatedToy(BundledClassificationTask):
    """A task with one split, which MTEB scores by k-fold cross-validation (its other path to the row sampling)."""

    metadata = SST2Classification.metadata.model_copy(
        update={"name": "CrossValidatedToyClassification", "eval_splits": ["train"]}
    )
    is_cross_validation = True
    n_splits = 3

    def load_splits(self) -> tuple[LabeledTexts, LabeledTexts]:
        """60 random four-word texts, labels a noisy function of two hashed dimensions: a small, noisy task
        whose tuned-probe scores depend on the order of the training rows (checked in the test)."""
        rng = np.random.default_rng(3)
        texts = [" ".join(f"w{i}" for i in rng.integers(0, 30, size=4)) for _ in range(60)]
        vectors = HashingEncoder().encode(texts)
        labels = (vectors[:, 0] + vectors[:, 1] + rng.normal(0, 1, len(texts)) > 0.8).astype(int).tolist()
        both = LabeledTexts(texts, labels)
        return both, both  # the test split is not read: MTEB cross-validates the one evaluated split


def test_paper_protocol_on_mteb_cross_validation_fits_every_row_of_each_fold_in_order(tmp_path: Path) -> None:
    """MTEB's cross-validation path also draws each fold's training rows with ``_undersample_data``: under the
    paper protocol every fold's score is the tuned probe's test fit on all of that fold's rows, in order."""
    paper = task_variant(CrossValidatedToy, "paper")()
    encoder = HashingEncoder()
    evaluate_encoder(encoder, [paper], tmp_path, meta=hashing_meta(encoder))
    paper.load_data()
    rows = paper.dataset["train"]
    vectors, labels = HashingEncoder().encode(list(rows["text"])), np.asarray(rows["label"])
    splitter = KFold(n_splits=CrossValidatedToy.n_splits, shuffle=True, random_state=paper.seed)

    def fold_scores(order: slice) -> list[float]:
        return [
            fit_and_test(vectors[fit[order]], labels[fit[order]], vectors[held_out], labels[held_out]).accuracy
            for fit, held_out in splitter.split(vectors)
        ]

    expected = fold_scores(slice(None))
    written = TaskResult.from_disk(next(tmp_path.rglob(f"{paper.metadata.name}.json")))
    assert [e["accuracy"] for e in written.scores["train"][0]["scores_per_experiment"]] == expected
    assert fold_scores(slice(None, None, -1)) != expected  # this task would show another row order


def test_remembered_rows_come_back_as_remembered_even_for_repeated_texts() -> None:
    """A split's rows as a scan gave them (a repeated text's rows may differ in the last digits, which moved the
    tuned probe's C on full R52) come back unchanged when exactly that split is asked for, even after another
    split that shares a text; any other request gets one vector per text."""
    encoder = HashingEncoder()
    cached = CachedEncoder(encoder)
    train_texts, test_texts = ["a b", "c d", "a b"], ["c d", "e f"]
    train = np.array([[1, 0], [0, 1], [1, 1e-6]], dtype=np.float32)  # "a b" twice, 1e-6 apart
    test = np.array([[0, 1 + 1e-6], [2, 2]], dtype=np.float32)  # "c d" again, 1e-6 from its training row
    cached.remember(train_texts, train)
    cached.remember(test_texts, test)
    np.testing.assert_array_equal(cached.encode(train_texts), train)
    np.testing.assert_array_equal(cached.encode(test_texts), test)
    np.testing.assert_array_equal(cached.encode(["c d", "a b"]), np.stack([test[0], train[2]]))  # last remembered
    cached.encode(train_texts)[0, 0] = 7.0  # a caller's change to what it got back stays its own
    kept = train.copy()
    train[0, 0] = 8.0  # as does a change to the array it gave
    np.testing.assert_array_equal(cached.encode(train_texts), kept)
    assert encoder.seen == [] and len(cached) == 3


def test_protocols_train_on_the_expected_rows_and_each_text_is_encoded_once(tmp_path: Path) -> None:
    encoder = HashingEncoder()
    standard = get_tasks(["mr"], max_train=200, max_test=40)
    paper = get_tasks(["mr"], protocol="paper", max_train=200, max_test=40)
    evaluate_encoder(CachedEncoder(encoder), standard + paper, tmp_path, meta=hashing_meta(encoder))
    paper[0].load_data()
    train, test = paper[0].dataset["train"]["text"], paper[0].dataset["test"]["text"]
    assert len(encoder.seen) == len(set(encoder.seen)), "a text was embedded twice"
    assert set(encoder.seen) == set(train) | set(test)  # the paper protocol uses every training row
    # MTEB's protocol alone: 8 rows per label in each of 10 experiments, so at most 160 of the 200.
    alone = HashingEncoder()
    evaluate_encoder(alone, get_tasks(["mr"], max_train=200, max_test=40), tmp_path / "alone", meta=hashing_meta(alone))
    assert 16 <= len(set(alone.seen) & set(train)) <= 160


def test_fused_model_writes_mteb_results_with_its_model_meta(tiny_models: dict[str, str], tmp_path: Path) -> None:
    model = build_fused_model(tiny_models["llama"], layers=[2, 4])
    name = EmbedderSpec("tiny-llama", [2, 4]).name
    tasks = get_tasks(["sst2"], max_train=40, max_test=20) + get_tasks(
        ["sst2"], protocol="paper", max_train=40, max_test=20
    )
    result = evaluate_encoder(model, tasks, tmp_path, name=name, batch_size=8, prediction_folder=tmp_path / "p")
    meta = json.loads(next(tmp_path.rglob("model_meta.json")).read_text())
    assert meta["name"] == "lafusion/tiny-llama__L2-4__mean__concat"
    assert meta["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert meta["embed_dim"] == 2 * 32
    assert meta["framework"] == ["Sentence Transformers", "PyTorch"]
    assert len(meta["revision"]) == 16
    for task in tasks:
        path = (
            tmp_path
            / "results"
            / "lafusion__tiny-llama__L2-4__mean__concat"
            / meta["revision"]
            / f"{task.metadata.name}.json"
        )
        written = TaskResult.from_disk(path)
        experiments = written.scores["test"][0]["scores_per_experiment"]
        assert len(experiments) == task.n_experiments
        assert written.get_score() == pytest.approx(np.mean([experiment["accuracy"] for experiment in experiments]))
    assert sorted(r.task_name for r in result.task_results) == sorted(t.metadata.name for t in tasks)
    # the paper protocol's score is lafusion's own test fit (the selection's): the tuned probe on every training
    # row in the split's order, so the same inner folds and C
    paper = tasks[1]
    paper.load_data()
    train, test = paper.dataset["train"], paper.dataset["test"]
    _, _, order = paper._undersample_data(train, 0)
    assert order == list(range(len(train)))
    names = train.features["label"].names
    tested = fit_and_test(
        model.encode(list(train["text"])),
        [names[label] for label in train["label"]],
        model.encode(list(test["text"])),
        [names[label] for label in test["label"]],
        ProbeConfig(),
    )
    expected = tested.accuracy
    assert TaskResult.from_disk(next(tmp_path.rglob(f"{paper.metadata.name}.json"))).get_score() == expected
    # the per-text predictions MTEB wrote give the same accuracy, hence the interval of the reported score
    correct = per_text_correctness(paper, tmp_path / "p")
    assert correct.shape == (len(test),) and correct.mean() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="10 experiments"):
        per_text_correctness(tasks[0], tmp_path / "p")


def test_mteb_runs_with_one_blas_thread_and_gives_the_callers_back(tmp_path: Path) -> None:
    """MTEB's classifier fits are 3x faster with one BLAS thread on full R52; the caller's setting returns."""
    encoder = HashingEncoder()
    with threadpool_limits(limits=2, user_api="blas"):
        evaluate_encoder(encoder, get_tasks(["mr"], max_train=20, max_test=10), tmp_path, meta=hashing_meta(encoder))
        after = {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    assert encoder.blas_threads == {1} and after == {2}


class IllConditionedEncoder(HashingEncoder):
    """Dense vectors whose columns span six orders of magnitude: MTEB's unscaled ``LogisticRegression(max_iter=100)``
    stops before converging on them, as it does on LLM features."""

    SCALES = np.logspace(-3, 3, DIMENSION)

    def encode(self, sentences, batch_size=32, show_progress_bar=False, convert_to_numpy=True):
        self.seen.extend(sentences)
        rows = [np.random.default_rng(zlib.crc32(text.encode())).normal(size=DIMENSION) for text in sentences]
        return (np.stack(rows) * self.SCALES).astype(np.float32)


def test_the_standard_protocols_unconverged_fits_are_not_warned_once_per_fit(tmp_path: Path) -> None:
    """57 nine-line warnings buried one full SST-2 MTEB step's progress lines; in worker processes a caller's
    filter did not apply, so evaluate_encoder filters them itself."""
    encoder = IllConditionedEncoder()
    texts = load_bundled("mr", "train").texts[:16]
    with pytest.warns(ConvergenceWarning):  # the premise: the protocol's fit stops at max_iter on such vectors
        LogisticRegression(max_iter=100).fit(encoder.encode(texts), [0, 1] * 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_encoder(encoder, get_tasks(["mr"], max_train=200, max_test=40), tmp_path, meta=hashing_meta(encoder))
    assert [w for w in caught if issubclass(w.category, ConvergenceWarning)] == []
    assert next(tmp_path.rglob("MRClassification*.json")).is_file()  # evaluated all the same


class TunedProbeStoppedEncoder(HashingEncoder):
    """Warns as a tuned probe does when it stops at its own iteration cap (300), from inside the evaluation."""

    def encode(self, sentences, **kwargs):
        warnings.warn("lbfgs failed to converge after 300 iteration(s) (status=1):", ConvergenceWarning, stacklevel=1)
        return super().encode(sentences, **kwargs)


def test_only_the_standard_protocols_iteration_cap_is_filtered(tmp_path: Path) -> None:
    encoder = TunedProbeStoppedEncoder()
    with pytest.warns(ConvergenceWarning, match="after 300 iteration"):
        evaluate_encoder(encoder, get_tasks(["mr"], max_train=20, max_test=10), tmp_path, meta=hashing_meta(encoder))


def test_mtebs_precision_of_a_never_predicted_class_is_not_warned_once_per_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On R52 (52 topics, a few of them rare) MTEB's macro precision met a class no fit predicted 52 times in one
    full MTEB step, each a two-line warning between the progress lines; it counts as 0, as documented."""
    encoder = HashingEncoder()
    tasks = get_tasks(["r52"], max_train=120, max_test=60)

    def warned(folder: Path) -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            evaluate_encoder(encoder, tasks, folder, meta=hashing_meta(encoder))
        return [w for w in caught if issubclass(w.category, UndefinedMetricWarning)]

    monkeypatch.setattr(evaluation, "NEVER_PREDICTED", "a message sklearn never writes")
    assert warned(tmp_path / "unfiltered")  # the premise: this task meets it
    monkeypatch.undo()
    assert warned(tmp_path / "filtered") == []
    assert next((tmp_path / "filtered").rglob("R52Classification*.json")).is_file()


def test_label_set_mismatch_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    encoder = HashingEncoder()
    with pytest.raises(ValueError, match=r"only in train: \[1\]; only in test: \[2\]"):
        evaluate_encoder(encoder, [MismatchedLabels()], tmp_path, meta=hashing_meta(encoder))
    assert encoder.seen == [] and result_files(tmp_path) == []


def test_results_folder_under_a_regular_file_fails_before_encoding(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    encoder = HashingEncoder()
    with pytest.raises(ResultsFolderError, match="not_a_folder"):
        evaluate_encoder(
            encoder, get_tasks(["mr"], max_train=20, max_test=10), blocker / "results", meta=hashing_meta(encoder)
        )
    assert encoder.seen == []


def test_read_only_results_folder_fails_before_encoding() -> None:
    """An existing folder nobody may create files in, root included (chmod would not stop root): /proc/self."""
    folder = Path("/proc/self")
    encoder = HashingEncoder()
    with pytest.raises(ResultsFolderError, match="Cannot write results to /proc/self"):
        evaluate_encoder(encoder, get_tasks(["mr"], max_train=20, max_test=10), folder, meta=hashing_meta(encoder))
    assert encoder.seen == []


@pytest.mark.parametrize(
    ("corrupt", "message"), [("nan", "NaN or infinite"), ("wide", r"shape \(\d+, 32\)"), ("short", "shape")]
)
def test_bad_embeddings_are_clear_errors_and_write_nothing(tmp_path: Path, corrupt: str, message: str) -> None:
    encoder = HashingEncoder(corrupt)
    with pytest.raises(ValueError, match=message):
        evaluate_encoder(encoder, get_tasks(["mr"], max_train=20, max_test=10), tmp_path, meta=hashing_meta(encoder))
    assert result_files(tmp_path) == []


def test_get_tasks_rejects_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="Unknown task 'sst3'.*'sst2'"):
        get_tasks(["sst3"])
    with pytest.raises(ValueError, match="Unknown protocol 'leaderboard'"):
        get_tasks(["sst2"], protocol="leaderboard")
    with pytest.raises(ValueError, match="bundled tasks"):
        get_tasks(["Banking77Classification"], max_train=100)
    with pytest.raises(ValueError, match="only classification"):
        get_tasks(["STS12"])
    with pytest.raises(ValueError, match="max_test must be a positive"):
        get_tasks(["sst2"], max_test=0)


def test_mteb_builtin_classification_task_resolves_in_both_protocols() -> None:
    standard, paper = get_tasks(["Banking77Classification"]) + get_tasks(["Banking77Classification"], protocol="paper")
    assert paper.metadata.name == f"Banking77Classification.paper-{classifier_fingerprint(PAPER_PROBE)}"
    assert paper.n_experiments == 1
    assert paper.metadata.dataset == standard.metadata.dataset  # still loads the same hub revision


def test_model_meta_of_a_non_torch_encoder_needs_what_cannot_be_read() -> None:
    with pytest.raises(ValueError, match="revision, n_parameters, framework"):
        make_model_meta(HashingEncoder(), "test/hashing")
    with pytest.raises(ValueError, match="organisation/model"):
        make_model_meta(HashingEncoder(), "hashing", revision="r", n_parameters=0, framework=["NumPy"])
    assert hashing_meta(HashingEncoder()).embed_dim == DIMENSION


def test_paper_task_names_change_with_the_classifier() -> None:
    """Results of another probe must never be read from MTEB's cache: the name fingerprints the classifier."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    former = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    prints = {
        classifier_fingerprint(probe)
        for probe in (PAPER_PROBE, tuned_probe(ProbeConfig(Cs=(0.1, 1.0))), tuned_probe(ProbeConfig(seed=1)), former)
    }
    assert len(prints) == 4 and classifier_fingerprint(tuned_probe()) == classifier_fingerprint(PAPER_PROBE)
    (paper,) = get_tasks(["sst2"], protocol="paper")
    assert paper.metadata.name == f"SST2Classification.paper-{classifier_fingerprint(PAPER_PROBE)}"
    assert paper.evaluator_model is PAPER_PROBE
