"""The whole method on one task: scan -> score layers -> select -> build -> test, as one call.

Why one module: ``lafusion run`` and scripts need the same sequence, and the rules that make it honest
live here once: poolings, layers, fusions and models are chosen by cross-validation on the *training*
split (candidates ranked by the ranking probe, final choices and every reported CV number by the tuned
probe, a more complex choice taken only under the noise rule of :mod:`lafusion_st.selection`); the test
split is only used, at the end, to report the accuracy of configurations already chosen, each with its
95% interval, and the paired tests of the comparisons the table invites.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from joblib import delayed
from tqdm.auto import tqdm

from lafusion_st.coarse_to_fine import CoarseScan, describe, scan_task_coarse_to_fine
from lafusion_st.data import LabeledTexts, check_classification_data
from lafusion_st.probe import (
    ProbeConfig,
    ProbeScore,
    SmallClassWarning,
    TestScore,
    cross_validate_together,
    fit_and_test,
    run_in_order,
    usable_folds,
)
from lafusion_st.report import plot_layer_curves, write_report
from lafusion_st.scan import TaskScan, check_reproduces_scan, fused_from_scan, scan_task
from lafusion_st.selection import (
    LayerSearch,
    Stability,
    complementarity_of,
    greedy_models,
    search_layers,
    stability,
)
from lafusion_st.spec import EmbedderSpec, RunSettings
from lafusion_st.stats import PairedTest, holm, mcnemar

logger = logging.getLogger(__name__)

Scored = TypeVar("Scored")
"""What :func:`score_on_test`'s ``fit`` returns per configuration."""

LAST_LAYER, BEST_LAYER, FUSED_LAYERS = "last layer", "best layer", "fused layers"
ALL_MODELS, GREEDY_MODELS = "multi-model", "greedy models"
ROLES = (LAST_LAYER, BEST_LAYER, FUSED_LAYERS, ALL_MODELS, GREEDY_MODELS)
"""Row roles: per model (the first three) and across models (the last two). ``fused layers`` is the
automatic choice (pooling and layers), which may be a single layer or the last layer itself."""

COMPARISONS = ((FUSED_LAYERS, LAST_LAYER), (FUSED_LAYERS, BEST_LAYER))
"""Per model, the paired test-split comparisons a run reports: the choice against the last layer and
against the best single layer."""


@dataclass(frozen=True)
class Row:
    """One configuration of the result table.

    Attributes:
        role: One of :data:`ROLES`.
        spec: The configuration (models, resolved layers and pooling under the run's settings).
        cv: Its tuned-probe cross-validated score on the training split.
        test: Its test score (tuned probe, with C and interval), or ``None`` when no test split was given.
    """

    role: str
    spec: EmbedderSpec
    cv: ProbeScore
    test: TestScore | None = None

    @property
    def label(self) -> str:
        """The row's display label, e.g. ``smollm2-135m best layer [15]`` or ``greedy models a + b``."""
        layers = dict(zip(self.spec.models, (list(layers) for layers in self.spec.layers), strict=True))
        if self.role == GREEDY_MODELS:
            return f"{GREEDY_MODELS} " + " + ".join(self.spec.models)
        if self.role == ALL_MODELS:
            return f"{ALL_MODELS} " + " + ".join(f"{model} {layers[model]}" for model in self.spec.models)
        (model,) = self.spec.models
        return f"{model} {self.role} {layers[model]}"


@dataclass(frozen=True)
class Comparison:
    """A paired test-split comparison of two rows (McNemar), with its Holm-adjusted p-value in the run."""

    better: str
    worse: str
    test: PairedTest
    holm_p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.better, "b": self.worse, **self.test.to_dict(), "holm_p_value": self.holm_p_value}


@dataclass
class RunResult:
    """The result rows, keyed by ``(model, role)`` (``model`` is ``"a+b"`` for a row over several models), the
    chosen embedder's spec, each model's search, the paired comparisons, the scans, the files written, and
    each model's coarse stage (empty unless coarse-to-fine; a model whose last layer was not scanned in full
    then has no ``last layer`` row), and the wall time of each stage (``report.json``: ``stage_seconds``)."""

    rows: dict[tuple[str, str], Row]
    chosen: EmbedderSpec
    searches: dict[str, LayerSearch]
    comparisons: list[Comparison]
    stability: dict[str, Stability]
    report_path: Path
    plot_path: Path
    model_path: Path
    scans: TaskScan
    coarse: dict[str, CoarseScan]
    stage_seconds: dict[str, float]

    def layers(self, model: str) -> list[int]:
        """The layers the search chose for ``model`` (also for a model the model search dropped)."""
        return list(self.searches[model].layers)


def run_task(
    task: str,
    train: LabeledTexts,
    test: LabeledTexts | None,
    models: list[str],
    output_dir: str | Path,
    settings: RunSettings | None = None,
) -> RunResult:
    """Run the method on one task and write a report, a plot and the chosen fused embedder.

    For each model: :func:`~lafusion_st.selection.search_layers` over the candidate poolings (every layer
    ranked, greedy fusion from the last layer, pooling and final choice by the tuned probe under the noise
    rule); with several models, a greedy choice of models with their complementarity. The test split then
    scores the last layer, the best single layer, the chosen layers and the multi-model fusions, each with
    the tuned probe trained on the whole training split, and the paired comparisons of the chosen layers
    with the last and the best single layer (McNemar, Holm-adjusted over the run).

    Args:
        task: Task name for the report and the plot title.
        train: Training texts and labels (the only data any choice is made on).
        test: Test texts and labels, or ``None`` to select and build only (``lafusion select``).
        models: Model short names or folders.
        output_dir: Receives ``report.json``, ``layer_curves.png`` and ``model/`` (a ``FusedClassifier`` folder:
            the chosen SentenceTransformer embedder plus ``head/``, a ``LogisticHead`` fit on the training split).
        settings: Poolings, limits and selection settings.
    """
    settings = settings or RunSettings()
    check_classification_data(train, test)
    with small_classes_said_once(train.labels, settings.probe.folds):
        return _run_task(task, train, test, models, Path(output_dir), settings)


@contextmanager
def small_classes_said_once(labels: Sequence, folds: int) -> Iterator[None]:
    """Say now what the class sizes of ``labels`` do to the folds (:func:`usable_folds`' warnings), and not again
    inside the block: every cross-validation of a run repeats them (20 times, 40 lines, in full R52's selection
    step). Only those words are silenced: a different one, e.g. about a coarse-to-fine sample's smaller classes,
    still shows."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", SmallClassWarning)
        usable_folds(labels, folds)
    for warning in said:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    with warnings.catch_warnings():
        for warning in said:
            warnings.filterwarnings("ignore", message=re.escape(str(warning.message)), category=SmallClassWarning)
        yield


def _run_task(
    task: str,
    train: LabeledTexts,
    test: LabeledTexts | None,
    models: list[str],
    output_dir: Path,
    settings: RunSettings,
) -> RunResult:
    """:func:`run_task` once its data are checked."""
    lap = StageClock()
    scan = settings.scan
    scanner_settings = scan.scanner_arguments
    test_texts = test.texts if test is not None else None
    coarse: dict[str, CoarseScan] = {}
    if scan.coarse_to_fine:
        scans, coarse = scan_task_coarse_to_fine(
            models,
            train,
            test_texts,
            scan.poolings,
            sample_size=scan.coarse_sample_size,
            standard_errors=settings.standard_errors,
            config=settings.probe,
            **scanner_settings,
        )
        for line in map(describe, coarse.values()):
            logger.info(line)
    else:
        scans = scan_task(models, train.texts, test_texts, poolings=scan.poolings, **scanner_settings)
    lap("scan")
    incumbents = {model: coarse[model].incumbent if model in coarse else None for model in models}
    labels = np.asarray(train.labels)
    rows: dict[tuple[str, str], Row] = {}

    def add_row(role: str, spec: EmbedderSpec, cv: ProbeScore) -> None:
        rows[("+".join(spec.models), role)] = Row(role, spec, cv)

    searches: dict[str, LayerSearch] = {}
    chosen_specs: dict[str, EmbedderSpec] = {}
    for model in models:
        vectors = {pooling: scans.train[model][pooling].vectors for pooling in settings.poolings}
        search = searches[model] = search_layers(
            vectors,
            labels,
            max_layers=settings.max_layers,
            standard_errors=settings.standard_errors,
            incumbent=incumbents[model],
            config=settings.probe,
        )
        best, best_score = search.best_single[search.pooling]
        chosen_specs[model] = settings.spec([model], [search.layers], [search.pooling])
        if incumbents[model] is None:  # else the last layer was not scanned in full: no row rather than a guess
            add_row(LAST_LAYER, settings.spec([model], [[search.incumbent]], [settings.poolings[0]]), search.last_layer)
        add_row(BEST_LAYER, settings.spec([model], [[best]], [search.pooling]), best_score)
        add_row(FUSED_LAYERS, chosen_specs[model], search.score)
    lap("layer search")

    chosen_models = list(models)
    model_complementarity, model_selection = None, None
    if len(models) > 1:
        features = {model: fused_from_scan(scans.train, chosen_specs[model]) for model in models}
        model_selection = greedy_models(
            features, labels, standard_errors=settings.standard_errors, config=settings.probe
        )
        # the searches' own CV predictions of each choice: no further fit. Every search drew the same folds
        # (usable_folds of these labels, the probe's seed), so any one search's fold count is theirs.
        model_complementarity = complementarity_of(
            {model: searches[model].predictions for model in models}, labels, searches[models[0]].score.folds
        )
        chosen_models = list(model_selection.chosen)
        fused_models = {ALL_MODELS: joined_spec(chosen_specs, models)}
        if len(chosen_models) < len(models):
            fused_models[GREEDY_MODELS] = joined_spec(chosen_specs, chosen_models)
        blocks = [fused_from_scan(scans.train, spec) for spec in fused_models.values()]
        together = cross_validate_together(  # both CVs' folds keep both cores busy
            blocks,
            labels,
            settings.probe,
            show_progress_bar=True,
            description=f"tuned CV of the {len(blocks)} model fusion(s)",
        )
        for (role, spec), cv in zip(fused_models.items(), together, strict=True):
            add_row(role, spec, cv.score)
        lap("model search")

    if test is not None:  # every choice is made: now the test split, each configuration fitted once
        tested = score_on_test([row.spec for row in rows.values()], scans, train, test, settings.probe)
        rows = {key: replace(row, test=tested[row.spec]) for key, row in rows.items()}
        lap("test fits")
    comparisons = compare_rows(rows, models) if test is not None else []
    stable = {
        model: stability(
            {pooling: scans.train[model][pooling].vectors for pooling in settings.poolings},
            labels,
            [settings.probe.seed + offset for offset in range(settings.seeds)],
            max_layers=settings.max_layers,
            standard_errors=settings.standard_errors,
            incumbent=incumbents[model],
            config=settings.probe,
        )
        for model in models
        if settings.seeds > 1
    }
    if stable:
        lap("fold seeds")

    chosen = joined_spec(chosen_specs, chosen_models)
    model_path = output_dir / "model"
    embedder = chosen.build()
    _check_embedder_matches_scan(
        embedder, scans.test if test is not None else scans.train, chosen, test if test is not None else train
    )
    save_classifier(embedder, fused_from_scan(scans.train, chosen), train, settings.probe.seed, model_path)
    lap("build and save")
    plot_path = plot_layer_curves(
        output_dir / "layer_curves.png",
        {f"{model} ({search.pooling})": search.curves[search.pooling] for model, search in searches.items()},
        {f"{model} ({search.pooling})": search.layers for model, search in searches.items()},
        task=task,
        num_hidden_layers={
            f"{model} ({search.pooling})": coarse[model].source_num_layers
            for model, search in searches.items()
            if model in coarse
        },
    )
    report_path = output_dir / "report.json"
    write_report(
        report_path,
        task=task,
        layer_scores={model: search.curves[search.pooling] for model, search in searches.items()},
        num_hidden_layers={model: stage.source_num_layers for model, stage in coarse.items()},
        selections={**searches, **({"models": model_selection} if model_selection is not None else {})},
        complementarity=model_complementarity,
        test_scores={row.label: row.test for row in rows.values() if row.test is not None},
        probe_config=settings.probe,
        settings={
            "poolings": list(settings.poolings),
            "max_seq_length": settings.max_seq_length,
            "standard_errors": settings.standard_errors,
            "num_train": len(train),
            "num_test": len(test) if test is not None else 0,
            "train_sha256": train.fingerprint(),
            "max_layers": settings.max_layers,
            "seeds": settings.seeds,
            "models": models,
            "chosen_models": chosen_models,
            "chosen": chosen.to_dict(),
            # Relative to the report's own folder, so a run folder can be moved or committed as a whole.
            "model_path": str(model_path.relative_to(output_dir)),
            "coarse_to_fine": {model: stage.to_dict() for model, stage in coarse.items()} if coarse else None,
        },
        extra={
            "kept_simpler": {
                model: [decision.to_dict() for decision in search.kept_simpler] for model, search in searches.items()
            }
            | (
                {"models": [decision.to_dict() for decision in model_selection.kept_simpler]}
                if model_selection is not None
                else {}
            ),
            "chosen_C": {row.label: row.test.C for row in rows.values() if row.test is not None},
            "cv": {row.label: row.cv.to_dict() for row in rows.values()},
            "comparisons": [comparison.to_dict() for comparison in comparisons],
            "stability": {model: result.to_dict() for model, result in stable.items()},
            "stage_seconds": lap.seconds,
        },
    )
    return RunResult(
        rows,
        chosen,
        searches,
        comparisons,
        stable,
        report_path,
        Path(plot_path),
        model_path,
        scans,
        coarse,
        lap.seconds,
    )


class StageClock:
    """Wall time per stage of a run: calling it with a stage's name closes that stage. Why: on full R52 a run is
    hours, and where they went (scans, layer search, model search, test fits) is what decides what to speed up;
    before, it had to be read off log timestamps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._start, 1)
        self._start = now


def compare_rows(rows: dict[tuple[str, str], Row], models: list[str]) -> list[Comparison]:
    """McNemar tests of :data:`COMPARISONS` per model (skipping identical configurations and rows a
    coarse-to-fine run has not got), Holm-adjusted together. Where two roles are one configuration (the last
    layer is also the best single layer), the test is made once: counted twice, it would inflate Holm's family."""
    pairs: list[tuple[Row, Row]] = []
    for model in models:
        for a, b in COMPARISONS:
            if (model, a) not in rows or (model, b) not in rows or rows[(model, a)].spec == rows[(model, b)].spec:
                continue
            pair = (rows[(model, a)], rows[(model, b)])
            if not any(pair[0].spec == kept[0].spec and pair[1].spec == kept[1].spec for kept in pairs):
                pairs.append(pair)
    tests = [mcnemar(a.test.correct, b.test.correct) for a, b in pairs]
    adjusted = holm([test.p_value for test in tests])
    return [Comparison(a.label, b.label, test, p) for (a, b), test, p in zip(pairs, tests, adjusted, strict=True)]


def save_classifier(embedder: Any, train_features: np.ndarray, train: LabeledTexts, seed: int, path: Path) -> None:
    """Save the chosen embedder with a ``LogisticHead`` fit on its training vectors (read from the scan, which
    the embedder was just checked to reproduce) as a ``FusedClassifier`` folder: ``lafusion predict`` and
    ``lafusion export`` take it as it is, and ``SentenceTransformer(path)`` still loads the embedder."""
    from lafusion_st.classifier import FusedClassifier
    from lafusion_st.embedding_cache import member_dims
    from lafusion_st.heads import LogisticHead

    with tqdm(total=1, desc="fit the saved classifier's head (tuned probe)", unit="fit") as progress:  # minutes on R52
        head = LogisticHead(seed=seed).fit(train_features, train.labels, member_dims=member_dims(embedder))
        progress.update()
    FusedClassifier.from_parts(embedder, head).save(path)


def format_table(result: RunResult) -> str:
    """The result table as Markdown: tuned-probe CV accuracy on train (what chose it) and, when tested, test
    accuracy with its 95% interval, macro-F1 and the C the probe chose; then the paired comparisons and the
    chosen pooling of each model."""
    lines = [
        "| configuration | pooling | CV acc. (train) | test acc. [95% CI] | test macro-F1 | C |",
        "|---|---|---|---|---|---|",
    ]
    for row in result.rows.values():
        pooling = "/".join(dict.fromkeys(row.spec.pooling))
        if row.test is not None:
            low, high = row.test.accuracy_interval.low, row.test.accuracy_interval.high
            tested = f"{row.test.accuracy:.4f} [{low:.3f}, {high:.3f}] | {row.test.macro_f1:.4f} | {row.test.C:g}"
        else:
            tested = "- | - | -"
        lines.append(f"| {row.label} | {pooling} | {row.cv.accuracy_mean:.4f} ± {row.cv.accuracy_std:.4f} | {tested} |")
    lines.append("")
    for comparison in result.comparisons:
        test = comparison.test
        lines.append(
            f"{comparison.better} vs {comparison.worse}: {100 * test.difference:+.1f} points on test "
            f"({test.only_a} vs {test.only_b} texts right only there), McNemar p = {test.p_value:.3g}, "
            f"Holm p = {comparison.holm_p_value:.3g}"
        )
    for model, search in result.searches.items():
        lines.append(
            f"{model}: pooling {search.pooling}, layers {search.layers}; "
            f"simpler choice kept {len(search.kept_simpler)} time(s) (report.json: kept_simpler)"
        )
    lines += [describe(stage) for stage in result.coarse.values()]
    lines.append("wall time: " + ", ".join(f"{stage} {seconds:g} s" for stage, seconds in result.stage_seconds.items()))
    for model, stable in result.stability.items():
        counts = ", ".join(f"{layer}: {count}/{len(stable.seeds)}" for layer, count in stable.layer_counts.items())
        lines.append(
            f"{model}: layers chosen across fold seeds {stable.seeds}: {counts}; poolings {stable.pooling_counts}"
        )
    return "\n".join(lines)


def score_on_test(
    specs: list[EmbedderSpec],
    scans: TaskScan,
    train: LabeledTexts,
    test: LabeledTexts,
    probe: ProbeConfig,
    show_progress_bar: bool = True,
    fit: Callable[..., Scored] = fit_and_test,
    description: str = "test fits",
) -> dict[EmbedderSpec, Scored]:
    """Test score of each embedder in ``specs`` (concatenated layers and models, as built) from a scan.

    The tuned probe is fit on the whole training split and scored on the test split, so call this only for
    configurations already chosen on training data. Each distinct configuration is fitted once (two roles may
    be one configuration: a last layer that is also the best single layer), in ``probe.n_jobs`` worker
    processes: the fits are independent, single-threaded and unchanged by the worker count. Each one's features
    are cut from the scan in this process, so a worker receives one configuration's matrices rather than a
    pickle of every model's whole scan. ``fit`` is :func:`~lafusion_st.probe.fit_and_test` or, for a ceiling
    that also picks ``C`` on test, :func:`~lafusion_st.probe.fit_and_test_every_C`; ``description`` names the
    progress bar (a run that fits both says which is which).
    """
    unique = list(dict.fromkeys(specs))
    fits = (
        delayed(fit)(
            fused_from_scan(scans.train, spec), train.labels, fused_from_scan(scans.test, spec), test.labels, probe
        )
        for spec in unique
    )
    scores = run_in_order(
        fits, probe.n_jobs, total=len(unique), description=description, show_progress_bar=show_progress_bar
    )
    return dict(zip(unique, scores, strict=True))


def joined_spec(specs: dict[str, EmbedderSpec], models: list[str]) -> EmbedderSpec:
    """One spec fusing the single-model specs of ``models`` (their layers and poolings), in that order: the
    multi-model rows and the chosen embedder of :func:`run_task`, and whatever is rebuilt from its report."""
    first = specs[models[0]]
    return EmbedderSpec(
        tuple(models),
        tuple(specs[model].layers[0] for model in models),
        tuple(specs[model].pooling[0] for model in models),
        max_seq_length=first.max_seq_length,
        dtype=first.dtype,
    )


def _check_embedder_matches_scan(embedder: Any, scanned: dict, spec: EmbedderSpec, data: LabeledTexts) -> None:
    """The saved embedder must reproduce the scanned vectors the numbers were computed from (see
    :func:`lafusion_st.scan.check_reproduces_scan`)."""
    sample = data.texts[:8]
    worst = check_reproduces_scan(
        embedder.encode(sample), fused_from_scan(scanned, spec)[: len(sample)], "The built embedder"
    )
    logger.info("Built embedder reproduces the scanned vectors (worst difference %.2g of a vector's scale).", worst)
