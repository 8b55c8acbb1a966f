"""SST-2, MR, R8 and R52 as MTEB classification tasks over the bundled data, in two protocols.

The four tasks read the files shipped in ``lafusion_st/datasets`` (no hub access) and are listed
explicitly in :data:`TASKS`; :func:`get_tasks` returns them, or MTEB's own classification tasks, by name.

Two protocols, both run by MTEB's own evaluator (``AbsTaskClassification``):

- ``standard``: MTEB's classification protocol unchanged (logistic regression, ``max_iter=100``, fitted
  on 8 training examples per label, 10 experiments with different draws, scores averaged), so numbers
  are comparable with the MTEB leaderboard's classification tasks.
- ``paper``: the protocol of the layer-fusion literature: one experiment whose probe is trained on the
  whole training split, every row in the split's own order (MTEB's undersampling, which shuffles the rows
  even when it keeps them all, is replaced: see :func:`train_on_every_row`). The probe is lafusion's tuned probe
  (:func:`lafusion_st.probe.tuned_probe`: standardised features, logistic regression whose C an inner CV
  on the training rows chooses): LLM hidden states have a few very large coordinates, an unscaled
  ``lbfgs`` fit on thousands of rows stops long before it converges, and a fixed C over-fits them.
  The task name carries a fingerprint of that classifier and of the row rule
  (``SST2Classification.paper-1a2b3c4d``), so results of another classifier, or of the former shuffled
  rows, are never taken from MTEB's cache.

Variants (the ``paper`` protocol, stratified subsamples for quick runs) are subclasses with their own
task name, so that MTEB's result cache keeps the result of each variant in its own file: MTEB reuses a
cached result by task name alone, so a subsampled run must never share a name with a full one.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from collections.abc import Sequence
from functools import cache
from typing import ClassVar

import mteb
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.multilabel_classification import AbsTaskMultilabelClassification
from mteb.abstasks.task_metadata import TaskMetadata
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline

from lafusion_st.data import LabeledTexts, load_bundled
from lafusion_st.modes import PROTOCOLS, Protocol
from lafusion_st.probe import ProbeConfig, converged, fit_tuned_probe, tuned_probe

__all__ = [
    "PROTOCOLS",
    "TASKS",
    "PaperProbe",
    "BundledClassificationTask",
    "MRClassification",
    "Protocol",
    "R52Classification",
    "R8Classification",
    "SST2Classification",
    "check_label_sets",
    "get_tasks",
    "task_variant",
]


class PaperProbe(ClassifierMixin, BaseEstimator):
    """The paper protocol's classifier: :func:`~lafusion_st.probe.fit_tuned_probe` as the estimator MTEB's
    evaluator fits and predicts with.

    It fits the same ``StandardScaler -> LogisticRegressionCV`` as :func:`~lafusion_st.probe.tuned_probe`
    (:meth:`unfitted`), through the fit cache (:mod:`lafusion_st.fit_cache`): given the split's own rows and
    the scan's own vectors it *is* the selection's test fit, and on full R52 it read that fit instead of
    spending minutes of one core per configuration refitting it.
    """

    def __init__(self, config: ProbeConfig = ProbeConfig()) -> None:
        self.config = config

    def fit(self, X: np.ndarray, y: Sequence) -> PaperProbe:
        """Fit on MTEB's training rows; warns, as the plain pipeline did, when the fit stops at ``max_iter``
        (:func:`fit_tuned_probe` fits quietly: a CV reports it in its scores instead)."""
        self.pipeline_, self.C_ = fit_tuned_probe(X, y, self.config)
        self.classes_ = self.pipeline_.classes_
        if not converged(self.pipeline_, self.config.max_iter):
            warnings.warn(
                f"lbfgs failed to converge after {self.config.max_iter} iterations at the chosen C = {self.C_:g}: "
                "the paper protocol's score is that of an unconverged probe.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline_.predict(X)

    def unfitted(self) -> Pipeline:
        """The pipeline it fits, unfitted: what its fingerprint and the task description name."""
        return tuned_probe(self.config)


PAPER_PROBE = PaperProbe()
"""The paper protocol's classifier (fitted by MTEB's evaluator for the protocol's one experiment)."""

PAPER_ROWS = "every training row, in the split's order"
"""What the paper protocol's probe is trained on; part of its task names' :func:`classifier_fingerprint`."""


def classifier_fingerprint(estimator: BaseEstimator, rows: str = PAPER_ROWS) -> str:
    """Eight hex digits that change whenever the classifier, any of its settings (a hash of its scikit-learn
    ``repr``, which lists every non-default parameter, nested ones included) or the rows it is trained on
    change (``rows``: the paper protocol's rule; before it, the rows came in MTEB's shuffled order).

    A :class:`PaperProbe` is described by the pipeline it fits: serving fits from a cache does not change the
    classifier, so it keeps the task names, and MTEB's stored results, of the plain pipeline."""
    described = estimator.unfitted() if isinstance(estimator, PaperProbe) else estimator
    return hashlib.sha256(f"{described!r} on {rows}".encode()).hexdigest()[:8]


def train_on_every_row(
    self: AbsTaskClassification, dataset: Dataset, experiment_num: int, idxs: list[int] | None = None
) -> tuple[Dataset, list[int], list[int]]:
    """The paper protocol's replacement of MTEB's ``_undersample_data``: every training row, in the split's order.

    Why: MTEB's undersampling shuffles the rows (``RandomState(task seed)``) even when its bound keeps them
    all, and the tuned probe's inner CV splits rows in the order it gets them, so the same configuration on
    the same texts got another ``C`` and another test accuracy here than in ``lafusion run`` and
    ``eval/selection_runs.py`` (on full R52, 94.0 against 94.3 for Gemma3's chosen layers; ``eval/probe_order.py``
    measures the spread). In the split's order, given the scan's own vectors (``CachedEncoder.remember``), the
    paper protocol's fit is exactly the selection's test fit. ``experiment_num`` and ``idxs`` (MTEB's previous
    shuffle) are ignored: there is one experiment, and no shuffle to continue.
    """
    rows = list(range(len(dataset)))
    return dataset, rows, rows


_REUTERS_CITATION = r"""
@phdthesis{cardoso2007improving,
  author = {Cardoso-Cachopo, Ana},
  school = {Instituto Superior T{\'e}cnico, Universidade T{\'e}cnica de Lisboa},
  title = {Improving Methods for Single-label Text Categorization},
  year = {2007},
}

@inproceedings{yao2019graph,
  author = {Yao, Liang and Mao, Chengsheng and Luo, Yuan},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  pages = {7370--7377},
  title = {Graph Convolutional Networks for Text Classification},
  volume = {33},
  year = {2019},
}
"""


def check_label_sets(train: LabeledTexts, test: LabeledTexts, task_name: str) -> None:
    """Require the same labels in both splits.

    Why strict equality: a test label never seen in training cannot be predicted, and a training label
    absent from the test split changes the label set that macro scores average over; in these
    benchmarks either means a broken split, not a property of the task.

    Raises:
        ValueError: Naming the labels found in only one of the splits.
    """
    train_labels, test_labels = set(train.labels), set(test.labels)
    if train_labels != test_labels:
        only_train = sorted(train_labels - test_labels, key=repr)
        only_test = sorted(test_labels - train_labels, key=repr)
        raise ValueError(
            f"Task {task_name}: the train and test splits have different label sets "
            f"(only in train: {only_train}; only in test: {only_test})."
        )


class BundledClassificationTask(AbsTaskClassification):
    """A classification task whose splits come from local :class:`~lafusion_st.data.LabeledTexts`.

    ``load_data`` is overridden (as MTEB's own tasks with custom sources do) to build the
    ``DatasetDict`` from local files instead of ``datasets.load_dataset``. Labels are mapped to
    ``0..k-1`` in the sorted order of the training labels, one mapping for both splits, and kept
    as ``ClassLabel`` names so that results stay readable (``earn``, ``acq``, ...).

    Attributes:
        bundled_name: Name of the bundled dataset (see :data:`lafusion_st.data.BUNDLED_DATASETS`).
        max_train: Size of a stratified subsample of the training split (``None``: all of it).
        max_test: Size of a stratified subsample of the test split (``None``: all of it).
        subsample_seed: Seed of both subsamples.
    """

    bundled_name: ClassVar[str]
    max_train: ClassVar[int | None] = None
    max_test: ClassVar[int | None] = None
    subsample_seed: ClassVar[int] = 0

    def load_splits(self) -> tuple[LabeledTexts, LabeledTexts]:
        """The full ``(train, test)`` splits, before any subsampling."""
        return load_bundled(self.bundled_name, "train"), load_bundled(self.bundled_name, "test")

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        if self.data_loaded:
            return
        train, test = self.load_splits()
        check_label_sets(train, test, self.metadata.name)
        if self.max_train is not None:
            train = train.subsample(self.max_train, self.subsample_seed)
        if self.max_test is not None:
            test = test.subsample(self.max_test, self.subsample_seed)
        classes = train.classes
        label_ids = {label: index for index, label in enumerate(classes)}
        features = Features({"text": Value("string"), "label": ClassLabel(names=[str(c) for c in classes])})
        self.dataset = DatasetDict(
            {
                split: Dataset.from_dict(
                    {"text": data.texts, "label": [label_ids[label] for label in data.labels]}, features=features
                )
                for split, data in (("train", train), ("test", test))
            }
        )
        self.dataset_transform(num_proc=num_proc)
        self.data_loaded = True


class SST2Classification(BundledClassificationTask):
    bundled_name = "sst2"
    metadata = TaskMetadata(
        name="SST2Classification",
        description=(
            "Binary sentiment (negative/positive) of movie-review text from the Stanford Sentiment Treebank, GLUE "
            "SST-2. Train: GLUE's training split (67,349 phrases and sentences); test: GLUE's labelled dev split "
            "(872 sentences), since GLUE's test labels are hidden (as in LLMEmbed). Bundled with lafusion and "
            "loaded offline."
        ),
        reference="https://nlp.stanford.edu/sentiment/",
        dataset={"path": "lafusion_st/datasets/sst2", "revision": "f839cd7e8460-6de504ad9e12"},
        type="Classification",
        category="t2c",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="accuracy",
        date=("2004-01-01", "2013-12-31"),
        domains=["Reviews", "Written"],
        task_subtypes=["Sentiment/Hate speech"],
        license="not specified",
        annotations_creators="human-annotated",
        dialect=[],
        sample_creation="found",
        bibtex_citation=r"""
@inproceedings{socher2013recursive,
  address = {Seattle, Washington, USA},
  author = {Socher, Richard and Perelygin, Alex and Wu, Jean and Chuang, Jason and Manning, Christopher D.
            and Ng, Andrew and Potts, Christopher},
  booktitle = {Proceedings of the 2013 Conference on Empirical Methods in Natural Language Processing},
  pages = {1631--1642},
  publisher = {Association for Computational Linguistics},
  title = {Recursive Deep Models for Semantic Compositionality Over a Sentiment Treebank},
  url = {https://aclanthology.org/D13-1170},
  year = {2013},
}

@inproceedings{wang2019glue,
  author = {Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle = {International Conference on Learning Representations},
  title = {{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  year = {2019},
}
""",
    )


class MRClassification(BundledClassificationTask):
    bundled_name = "mr"
    metadata = TaskMetadata(
        name="MRClassification",
        description=(
            "Binary sentiment (negative/positive) of single-sentence movie-review snippets from Rotten Tomatoes "
            "(Pang and Lee's sentence polarity dataset v1.0), in the TextGCN train/test split (7,108 / 3,554). "
            "Bundled with lafusion and loaded offline."
        ),
        reference="https://www.cs.cornell.edu/people/pabo/movie-review-data/",
        dataset={"path": "lafusion_st/datasets/mr", "revision": "c3eb00abdb2a-57df1ef9e273"},
        type="Classification",
        category="t2c",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="accuracy",
        date=("2002-01-01", "2005-12-31"),
        domains=["Reviews", "Written"],
        task_subtypes=["Sentiment/Hate speech"],
        license="not specified",
        annotations_creators="derived",
        dialect=[],
        sample_creation="found",
        bibtex_citation=r"""
@inproceedings{pang2005seeing,
  address = {Ann Arbor, Michigan},
  author = {Pang, Bo and Lee, Lillian},
  booktitle = {Proceedings of the 43rd Annual Meeting of the Association for Computational Linguistics},
  pages = {115--124},
  publisher = {Association for Computational Linguistics},
  title = {Seeing Stars: Exploiting Class Relationships for Sentiment Categorization with Respect to Rating Scales},
  url = {https://aclanthology.org/P05-1015},
  year = {2005},
}
""",
    )


class R8Classification(BundledClassificationTask):
    bundled_name = "r8"
    metadata = TaskMetadata(
        name="R8Classification",
        description=(
            "Topic of Reuters-21578 newswire articles, the 8 most frequent single-label categories (R8, "
            "Cardoso-Cachopo's all-terms version: lower case, letters only), train/test 5,485 / 2,189 as in "
            "TextGCN. Bundled with lafusion and loaded offline."
        ),
        reference="https://ana.cachopo.org/datasets-for-single-label-text-categorization",
        dataset={"path": "lafusion_st/datasets/r8", "revision": "50101575ba6e-a0686b11272d"},
        type="Classification",
        category="t2c",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="accuracy",
        date=("1987-01-01", "1987-12-31"),
        domains=["News", "Financial", "Written"],
        task_subtypes=["Topic classification"],
        license="https://www.daviddlewis.com/resources/testcollections/reuters21578/readme.txt",
        annotations_creators="expert-annotated",
        dialect=[],
        sample_creation="found",
        bibtex_citation=_REUTERS_CITATION,
    )


class R52Classification(BundledClassificationTask):
    bundled_name = "r52"
    metadata = TaskMetadata(
        name="R52Classification",
        description=(
            "Topic of Reuters-21578 newswire articles, 52 single-label categories (R52, Cardoso-Cachopo's "
            "all-terms version), train/test 6,532 / 2,568 as in TextGCN; heavily imbalanced, several categories "
            "have fewer than 5 training articles. Bundled with lafusion and loaded offline."
        ),
        reference="https://ana.cachopo.org/datasets-for-single-label-text-categorization",
        dataset={"path": "lafusion_st/datasets/r52", "revision": "2fde845d0e4e-6232a845901c"},
        type="Classification",
        category="t2c",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="accuracy",
        date=("1987-01-01", "1987-12-31"),
        domains=["News", "Financial", "Written"],
        task_subtypes=["Topic classification"],
        license="https://www.daviddlewis.com/resources/testcollections/reuters21578/readme.txt",
        annotations_creators="expert-annotated",
        dialect=[],
        sample_creation="found",
        bibtex_citation=_REUTERS_CITATION,
    )


TASKS: dict[str, type[BundledClassificationTask]] = {
    "sst2": SST2Classification,
    "mr": MRClassification,
    "r8": R8Classification,
    "r52": R52Classification,
}
"""The bundled tasks by dataset name, in the order of the paper's tables."""


@cache
def task_variant(
    task_class: type[AbsTaskClassification],
    protocol: Protocol = "standard",
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
) -> type[AbsTaskClassification]:
    """The class of ``task_class`` under a protocol and, for bundled tasks, on stratified subsamples.

    The variant is a subclass whose task name records what changed (``R8Classification.paper``,
    ``SST2Classification.train2000-test1000-seed0``), so MTEB files its results apart. Settings live on the
    class, not the instance, because MTEB drops instance-level metadata when it unloads a task's data.
    The same arguments return the same class.

    Args:
        task_class: A bundled task from :data:`TASKS` or any MTEB classification task class.
        protocol: ``"standard"`` (MTEB's) or ``"paper"`` (see the module docstring).
        max_train: Stratified subsample size of the training split (bundled tasks only).
        max_test: Stratified subsample size of the test split (bundled tasks only).
        seed: Seed of the subsamples.

    Raises:
        ValueError: For an unknown protocol, a non-positive size, or subsampling a task that is not bundled.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}.")
    for label, size in (("max_train", max_train), ("max_test", max_test)):
        if size is not None and size < 1:
            raise ValueError(f"{label} must be a positive number of examples, got {size}.")
    subsampled = max_train is not None or max_test is not None
    if subsampled and not issubclass(task_class, BundledClassificationTask):
        raise ValueError(
            f"max_train/max_test subsample the bundled tasks {list(TASKS)} only, not {task_class.metadata.name}."
        )
    if protocol == "paper" and (
        issubclass(task_class, AbsTaskMultilabelClassification)
        or task_class._undersample_data is not AbsTaskClassification._undersample_data
    ):  # their rows are drawn by other methods, which train_on_every_row would not replace
        raise ValueError(
            f"The paper protocol trains on every row of single-label classification tasks; {task_class.metadata.name} "
            "draws its training rows its own way."
        )
    if protocol == "standard" and not subsampled:
        return task_class

    suffixes, attributes, notes = [], {}, []
    if protocol == "paper":
        suffixes.append(f"paper-{classifier_fingerprint(PAPER_PROBE)}")
        attributes.update(
            n_experiments=1,
            samples_per_label=sys.maxsize,  # not read (train_on_every_row replaces the sampling); says "every row"
            evaluator_model=PAPER_PROBE,
            _undersample_data=train_on_every_row,
        )
        notes.append(
            "Paper protocol: one experiment, the probe (standardised features + logistic regression with C "
            f"chosen by an inner CV on the training rows: {' '.join(repr(PAPER_PROBE.unfitted()).split())}) trained on "
            f"{PAPER_ROWS}."
        )
    dataset = dict(
        task_class.metadata.dataset
    )  # MTEB's own tasks load by this revision: keep it unless the data changes
    if subsampled:
        sample = f"train{max_train or 'all'}-test{max_test or 'all'}-seed{seed}"
        suffixes.append(sample)
        dataset["revision"] = f"{dataset['revision']}+{sample}"
        attributes.update(max_train=max_train, max_test=max_test, subsample_seed=seed)
        notes.append(
            f"Stratified subsample (seed {seed}): at most {max_train or 'all'} training and "
            f"{max_test or 'all'} test examples, every label kept."
        )
    base = task_class.metadata
    suffix = ".".join(suffixes)
    attributes["metadata"] = base.model_copy(
        update={
            "name": f"{base.name}.{suffix}",
            "description": f"{base.description} {' '.join(notes)}",
            "dataset": dataset,
            "adapted_from": [base.name],
        }
    )
    class_name = task_class.__name__ + "".join(part.title().replace("-", "") for part in suffixes)
    return type(class_name, (task_class,), attributes)


def get_tasks(
    names: Sequence[str] | None = None,
    protocol: Protocol = "standard",
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
) -> list[AbsTaskClassification]:
    """Classification tasks by name, ready for ``mteb.evaluate``.

    Example::

        tasks = get_tasks(["sst2", "r8"], protocol="paper", max_train=2000, max_test=1000)

    Args:
        names: Bundled dataset names (``sst2``, ``mr``, ``r8``, ``r52``), their task names
            (``SST2Classification``), or names of MTEB's own classification tasks, which load through
            ``datasets`` and so run offline only when already in the local Hugging Face cache (set
            ``HF_HUB_OFFLINE=1``/``HF_DATASETS_OFFLINE=1``). ``None``: the four bundled tasks.
        protocol: ``"standard"`` or ``"paper"``.
        max_train: Stratified subsample of each bundled training split (``None``: all).
        max_test: Stratified subsample of each bundled test split (``None``: all).
        seed: Seed of the subsamples.

    Raises:
        ValueError: An unknown name (the bundled names are listed), a task that is not a classification
            task, or any invalid variant setting (see :func:`task_variant`).
    """
    bundled_by_task_name = {cls.metadata.name: cls for cls in TASKS.values()}
    tasks = []
    for name in list(TASKS) if names is None else names:
        task_class = TASKS.get(name) or bundled_by_task_name.get(name) or _mteb_task_class(name)
        tasks.append(task_variant(task_class, protocol, max_train, max_test, seed)())
    return tasks


def _mteb_task_class(name: str) -> type[AbsTaskClassification]:
    try:
        task = mteb.get_task(name)
    except KeyError:
        raise ValueError(
            f"Unknown task {name!r}: not one of the bundled tasks {list(TASKS)} "
            f"({[cls.metadata.name for cls in TASKS.values()]}) nor an MTEB task."
        ) from None
    if not isinstance(task, AbsTaskClassification):
        raise ValueError(f"{name!r} is an MTEB {task.metadata.type} task; only classification tasks are supported.")
    return type(task)
