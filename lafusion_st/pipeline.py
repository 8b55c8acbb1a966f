"""The whole method on one task: scan -> score layers -> select -> build -> test, as one call.

Why one module: ``lafusion run`` and scripts need the same sequence, and the rule that makes it honest
lives here once: layers, fusions and models are chosen by cross-validation on the *training* split; the
test split is only used, at the end, to report the accuracy of configurations already chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lafusion_st.data import LabeledTexts, check_classification_data
from lafusion_st.probe import ProbeConfig, ProbeScore, TestScore, fit_and_test, layer_scores
from lafusion_st.report import plot_layer_curves, write_report
from lafusion_st.scan import TaskScan, fused_from_scan, scan_task
from lafusion_st.selection import Selection, complementarity, greedy_layers, greedy_models
from lafusion_st.spec import EmbedderSpec, RunSettings

logger = logging.getLogger(__name__)

GREEDY_CANDIDATES = 8
"""Greedy layer selection considers the best single layers only: each round costs one CV per candidate."""


LAST_LAYER, BEST_LAYER, FUSED_LAYERS = "last layer", "best layer", "fused layers"
ALL_MODELS, GREEDY_MODELS = "multi-model", "greedy models"
ROLES = (LAST_LAYER, BEST_LAYER, FUSED_LAYERS, ALL_MODELS, GREEDY_MODELS)
"""Row roles: per model (the first three) and across models (the last two)."""

CHECK_ATOL, CHECK_RTOL = 1e-4, 1e-4
"""Element-wise tolerance (``atol + rtol * |x|``) of the built embedder against the scan it was chosen on:
only batch composition separates the two."""


@dataclass(frozen=True)
class Row:
    """One configuration of the result table.

    Attributes:
        role: One of :data:`ROLES`.
        spec: The configuration (models and resolved layers under the run's settings).
        cv: Its cross-validated score on the training split (what chose it).
        test: Its test score, or ``None`` when no test split was given.
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


@dataclass
class RunResult:
    """The result rows, keyed by ``(model, role)`` (``model`` is ``"a+b"`` for a row over several models), the
    chosen embedder's spec, the scans, and the files written."""

    rows: dict[tuple[str, str], Row]
    chosen: EmbedderSpec
    report_path: Path
    plot_path: Path
    model_path: Path
    scans: TaskScan

    def layers(self, model: str) -> list[int]:
        """The layers the greedy fusion chose for ``model`` (also for a model the model search dropped)."""
        return list(self.rows[(model, FUSED_LAYERS)].spec.layers[0])


def run_task(
    task: str,
    train: LabeledTexts,
    test: LabeledTexts | None,
    models: list[str],
    output_dir: str | Path,
    settings: RunSettings | None = None,
) -> RunResult:
    """Run the method on one task and write a report, a plot and the chosen fused embedder.

    For each model: the CV score of every layer, the best single layer, and a greedy fusion of layers; with
    several models, a greedy choice of models with their complementarity. The test split then scores the
    last layer, the best layer, the fused layers and the multi-model fusion, each probe trained on the
    whole training split.

    Args:
        task: Task name for the report and the plot title.
        train: Training texts and labels (the only data any choice is made on).
        test: Test texts and labels, or ``None`` to select and build only (``lafusion select``).
        models: Model short names or folders.
        output_dir: Receives ``report.json``, ``layer_curves.png`` and ``model/`` (a ``FusedClassifier`` folder:
            the chosen SentenceTransformer embedder plus ``head/``, a ``LogisticHead`` fit on the training split).
        settings: Pooling, limits and selection settings.
    """
    settings = settings or RunSettings()
    check_classification_data(train, test)
    output_dir = Path(output_dir)
    scan = settings.scan
    scans = scan_task(
        models,
        train.texts,
        test.texts if test is not None else None,
        poolings=scan.poolings,
        max_seq_length=scan.max_seq_length,
        batch_size=scan.batch_size,
        dtype=scan.dtype,
    )
    train_vectors = {model: scans.train[model][settings.pooling] for model in models}

    rows: dict[tuple[str, str], Row] = {}

    def add_row(role: str, spec: EmbedderSpec, cv: ProbeScore) -> None:
        tested = score_fusion_on_test(scans, spec, train, test, settings.probe) if test is not None else None
        rows[("+".join(spec.models), role)] = Row(role, spec, cv, tested)

    curves: dict[str, list[ProbeScore]] = {}
    selections: dict[str, Selection] = {}
    for model in models:
        vectors = train_vectors[model].vectors
        curves[model] = layer_scores(vectors, train.labels, settings.probe)
        best = max(range(len(curves[model])), key=lambda layer: (curves[model][layer].accuracy_mean, -layer))
        candidates = sorted(range(len(curves[model])), key=lambda layer: -curves[model][layer].accuracy_mean)[
            :GREEDY_CANDIDATES
        ]
        selections[model] = greedy_layers(
            vectors,
            train.labels,
            curves[model],
            threshold=settings.threshold,
            max_layers=settings.max_layers,
            candidates=candidates,
            config=settings.probe,
        )
        last = len(curves[model]) - 1
        for role, layers, score in (
            (LAST_LAYER, [last], curves[model][last]),
            (BEST_LAYER, [best], curves[model][best]),
            (FUSED_LAYERS, selections[model].chosen, selections[model].score),
        ):
            add_row(role, settings.spec([model], [layers]), score)

    chosen_models = list(models)
    model_complementarity = None
    if len(models) > 1:
        features = {model: train_vectors[model].concat(selections[model].chosen) for model in models}
        selections["models"] = greedy_models(
            features, train.labels, threshold=settings.threshold, config=settings.probe
        )
        model_complementarity = complementarity(features, train.labels, settings.probe)
        chosen_models = list(selections["models"].chosen)
        add_row(
            ALL_MODELS,
            settings.spec(models, [selections[m].chosen for m in models]),
            _cv_of_all(selections["models"], models),
        )
        if len(chosen_models) < len(models):
            add_row(
                GREEDY_MODELS,
                settings.spec(chosen_models, [selections[m].chosen for m in chosen_models]),
                selections["models"].score,
            )

    chosen = settings.spec(chosen_models, [selections[m].chosen for m in chosen_models])
    model_path = output_dir / "model"
    embedder = chosen.build()
    _check_embedder_matches_scan(
        embedder, scans.test if test is not None else scans.train, chosen, test if test is not None else train
    )
    save_classifier(embedder, fused_from_scan(scans.train, chosen), train, settings.probe.seed, model_path)
    plot_path = plot_layer_curves(
        output_dir / "layer_curves.png", curves, {m: selections[m].chosen for m in models}, task=task
    )
    report_path = output_dir / "report.json"
    write_report(
        report_path,
        task=task,
        layer_scores=curves,
        selections=selections,
        complementarity=model_complementarity,
        test_scores={row.label: row.test for row in rows.values() if row.test is not None},
        probe_config=settings.probe,
        settings={
            "pooling": settings.pooling,
            "max_seq_length": settings.max_seq_length,
            "num_train": len(train),
            "num_test": len(test) if test is not None else 0,
            "models": models,
            "chosen_models": chosen_models,
            "chosen": chosen.to_dict(),
            "model_path": str(model_path),
        },
    )
    return RunResult(rows, chosen, report_path, Path(plot_path), model_path, scans)


def save_classifier(embedder: Any, train_features: np.ndarray, train: LabeledTexts, seed: int, path: Path) -> None:
    """Save the chosen embedder with a ``LogisticHead`` fit on its training vectors (read from the scan, which
    the embedder was just checked to reproduce) as a ``FusedClassifier`` folder: ``lafusion predict`` and
    ``lafusion export`` take it as it is, and ``SentenceTransformer(path)`` still loads the embedder."""
    from lafusion_st.classifier import FusedClassifier
    from lafusion_st.embedding_cache import member_dims
    from lafusion_st.heads import LogisticHead

    head = LogisticHead(seed=seed).fit(train_features, train.labels, member_dims=member_dims(embedder))
    FusedClassifier.from_parts(embedder, head).save(path)


def format_table(result: RunResult) -> str:
    """The result table as Markdown: CV accuracy on train (what chose it) and, when tested, test accuracy / macro-F1."""
    lines = ["| configuration | CV acc. (train) | test acc. | test macro-F1 |", "|---|---|---|---|"]
    for row in result.rows.values():
        tested = f"{row.test.accuracy:.4f} | {row.test.macro_f1:.4f}" if row.test is not None else "- | -"
        lines.append(f"| {row.label} | {row.cv.accuracy_mean:.4f} ± {row.cv.accuracy_std:.4f} | {tested} |")
    return "\n".join(lines)


def score_fusion_on_test(
    scans: TaskScan, spec: EmbedderSpec, train: LabeledTexts, test: LabeledTexts, probe: ProbeConfig
) -> TestScore:
    """Test score of the embedder ``spec`` (concatenated layers and models, as built) from a scan.

    The probe is fit on the whole training split and scored on the test split, so call this only for
    configurations already chosen on training data.
    """
    return fit_and_test(
        fused_from_scan(scans.train, spec), train.labels, fused_from_scan(scans.test, spec), test.labels, probe
    )


def _cv_of_all(selection: Selection, models: list[str]) -> ProbeScore:
    """CV score of fusing every model, from the greedy search's steps (scored there when it was tried)."""
    for step in selection.steps:
        if sorted(step.candidate) == sorted(models):
            return step.score
    return selection.score


def _check_embedder_matches_scan(embedder: Any, scanned: dict, spec: EmbedderSpec, data: LabeledTexts) -> None:
    """The saved embedder must reproduce the scanned vectors the numbers were computed from, element-wise
    within ``CHECK_ATOL + CHECK_RTOL * |scanned|``."""
    sample = data.texts[:8]
    expected = fused_from_scan(scanned, spec)[: len(sample)]
    difference = np.abs(embedder.encode(sample) - expected)
    excess = difference - (CHECK_ATOL + CHECK_RTOL * np.abs(expected))
    if (excess > 0).any():
        raise RuntimeError(
            f"The built embedder differs from the scanned vectors by up to {difference.max():.3g} (max abs), beyond "
            f"atol={CHECK_ATOL:g} + rtol={CHECK_RTOL:g} * |scanned value|."
        )
    logger.info("Built embedder reproduces the scanned vectors (max abs diff %.2g).", difference.max())
