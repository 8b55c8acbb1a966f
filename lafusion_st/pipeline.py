"""The whole method on one task: scan -> score layers -> select -> build -> test, as one call.

Why one module: ``lafusion run`` and scripts need the same sequence, and the rule that makes it honest
lives here once: layers, fusions and models are chosen by cross-validation on the *training* split; the
test split is only used, at the end, to report the accuracy of configurations already chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lafusion_st.builders import build_fused_model
from lafusion_st.data import LabeledTexts, check_classification_data
from lafusion_st.pooling import PoolingMode
from lafusion_st.probe import ProbeConfig, ProbeScore, TestScore, fit_and_test, layer_scores
from lafusion_st.report import plot_layer_curves, write_report
from lafusion_st.scan import TaskScan, scan_task
from lafusion_st.selection import Selection, complementarity, greedy_layers, greedy_models

logger = logging.getLogger(__name__)

GREEDY_CANDIDATES = 8
"""Greedy layer selection considers the best single layers only: each round costs one CV per candidate."""


@dataclass
class RunSettings:
    """What ``run_task`` does; the defaults are those of ``lafusion run``."""

    pooling: PoolingMode = "mean"
    max_seq_length: int = 256
    batch_size: int = 32
    threshold: float = 0.002
    max_layers: int = 4
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass
class RunResult:
    """Rows of the result table (``name -> test score``), the chosen layers, the scans, and the files written."""

    rows: dict[str, TestScore]
    cv: dict[str, ProbeScore]
    chosen_layers: dict[str, list[int]]
    chosen_models: list[str]
    report_path: Path
    plot_path: Path
    model_path: Path
    scans: TaskScan


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
        output_dir: Receives ``report.json``, ``layer_curves.png`` and ``model/`` (a SentenceTransformer).
        settings: Pooling, limits and selection settings.
    """
    settings = settings or RunSettings()
    check_classification_data(train, test)
    output_dir = Path(output_dir)
    scans = scan_task(
        models,
        train.texts,
        test.texts if test is not None else None,
        poolings=[settings.pooling],
        max_seq_length=settings.max_seq_length,
        batch_size=settings.batch_size,
    )
    train_vectors = {model: scans.train[model][settings.pooling] for model in models}

    rows: dict[str, TestScore] = {}
    cv: dict[str, ProbeScore] = {}
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
        for label, layers, score in (
            ("last layer", [last], curves[model][last]),
            ("best layer", [best], curves[model][best]),
            ("fused layers", selections[model].chosen, selections[model].score),
        ):
            name = f"{model} {label} {layers}"
            cv[name] = score
            if test is not None:
                rows[name] = _test(scans, model, settings.pooling, layers, train, test, settings.probe)

    chosen_models = list(models)
    model_complementarity = None
    if len(models) > 1:
        features = {model: train_vectors[model].concat(selections[model].chosen) for model in models}
        selections["models"] = greedy_models(
            features, train.labels, threshold=settings.threshold, config=settings.probe
        )
        model_complementarity = complementarity(features, train.labels, settings.probe)
        chosen_models = list(selections["models"].chosen)
        name = "multi-model " + " + ".join(f"{model} {selections[model].chosen}" for model in models)
        cv[name] = _cv_of_all(selections["models"], models)
        if test is not None:
            rows[name] = score_fusion_on_test(
                scans, models, settings.pooling, {m: selections[m].chosen for m in models}, train, test, settings.probe
            )
        if len(chosen_models) < len(models):
            name = "greedy models " + " + ".join(chosen_models)
            cv[name] = selections["models"].score
            if test is not None:
                rows[name] = score_fusion_on_test(
                    scans,
                    chosen_models,
                    settings.pooling,
                    {m: selections[m].chosen for m in chosen_models},
                    train,
                    test,
                    settings.probe,
                )

    model_path = output_dir / "model"
    embedder = build_fused_model(
        chosen_models,
        layers=[selections[m].chosen for m in chosen_models],
        pooling=settings.pooling,
        max_seq_length=settings.max_seq_length,
    )
    _check_embedder_matches_scan(
        embedder,
        scans.test if test is not None else scans.train,
        chosen_models,
        settings.pooling,
        {m: selections[m].chosen for m in chosen_models},
        test if test is not None else train,
    )
    embedder.save(str(model_path))
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
        test_scores=rows,
        probe_config=settings.probe,
        settings={
            "pooling": settings.pooling,
            "max_seq_length": settings.max_seq_length,
            "num_train": len(train),
            "num_test": len(test) if test is not None else 0,
            "models": models,
            "chosen_models": chosen_models,
            "model_path": str(model_path),
        },
    )
    return RunResult(
        rows,
        cv,
        {m: selections[m].chosen for m in models},
        chosen_models,
        report_path,
        Path(plot_path),
        model_path,
        scans,
    )


def format_table(result: RunResult) -> str:
    """The result table as Markdown: CV accuracy on train (what chose it) and, when tested, test accuracy / macro-F1."""
    lines = ["| configuration | CV acc. (train) | test acc. | test macro-F1 |", "|---|---|---|---|"]
    for name, cv in result.cv.items():
        score = result.rows.get(name)
        tested = f"{score.accuracy:.4f} | {score.macro_f1:.4f}" if score is not None else "- | -"
        lines.append(f"| {name} | {cv.accuracy_mean:.4f} ± {cv.accuracy_std:.4f} | {tested} |")
    return "\n".join(lines)


def _test(
    scans: TaskScan,
    model: str,
    pooling: str,
    layers: list[int],
    train: LabeledTexts,
    test: LabeledTexts,
    probe: ProbeConfig,
) -> TestScore:
    return score_fusion_on_test(scans, [model], pooling, {model: layers}, train, test, probe)


def score_fusion_on_test(
    scans: TaskScan,
    models: list[str],
    pooling: str,
    layers: dict[str, list[int]],
    train: LabeledTexts,
    test: LabeledTexts,
    probe: ProbeConfig,
) -> TestScore:
    """Test score of fusing ``layers`` of ``models`` (concatenated, the fused embedder's layout) from a scan.

    The probe is fit on the whole training split and scored on the test split, so call this only for
    configurations already chosen on training data.
    """
    train_features = np.concatenate([scans.train[m][pooling].concat(layers[m]) for m in models], axis=1)
    test_features = np.concatenate([scans.test[m][pooling].concat(layers[m]) for m in models], axis=1)
    return fit_and_test(train_features, train.labels, test_features, test.labels, probe)


def _cv_of_all(selection: Selection, models: list[str]) -> ProbeScore:
    """CV score of fusing every model, from the greedy search's steps (scored there when it was tried)."""
    for step in selection.steps:
        if sorted(step.candidate) == sorted(models):
            return step.score
    return selection.score


def _check_embedder_matches_scan(
    embedder: Any, scanned: dict, models: list[str], pooling: str, layers: dict[str, list[int]], data: LabeledTexts
) -> None:
    """The saved embedder must reproduce the scanned vectors the numbers were computed from."""
    sample = data.texts[:8]
    expected = np.concatenate([scanned[m][pooling].concat(layers[m])[: len(sample)] for m in models], axis=1)
    difference = float(np.abs(embedder.encode(sample) - expected).max())
    if difference > 1e-4 * max(1.0, float(np.abs(expected).max())):
        raise RuntimeError(f"The built embedder differs from the scanned vectors by {difference:.3g}.")
    logger.info("Built embedder reproduces the scanned vectors (max abs diff %.2g).", difference)
