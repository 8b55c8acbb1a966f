"""Selection outputs a person reads: a JSON report and a plot of each model's layer-score curve.

The plot uses matplotlib's object API (``matplotlib.figure.Figure`` + ``savefig``), which needs no GUI
backend and changes no global state, so importing lafusion never switches the user's backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lafusion_st.files import write_text_atomic
from lafusion_st.probe import Metric, ProbeConfig, ProbeScore, TestScore, check_metric
from lafusion_st.selection import Complementarity, LayerSearch, Selection

REPORT_FORMAT = 1


def build_report(
    *,
    task: str,
    layer_scores: Mapping[str, Sequence[ProbeScore]],
    selections: Mapping[str, Selection | LayerSearch] | None = None,
    complementarity: Complementarity | None = None,
    test_scores: Mapping[str, TestScore] | None = None,
    probe_config: ProbeConfig | None = None,
    settings: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    num_hidden_layers: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The report as plain JSON types.

    Args:
        task: Task name, e.g. ``sst2``.
        layer_scores: ``model -> [score of layer 0, ..., score of layer L]`` (CV on the training split).
        selections: Named selections (anything with ``to_dict()``: a ``Selection``, a ``LayerSearch``), e.g.
            ``{"smollm2-135m": search, "models": selection}``.
        complementarity: Error overlap of the models' probes.
        test_scores: Named test-split results of chosen configurations (``fit_and_test``), the only place
            test data appears; e.g. ``{"smollm2-135m/last_layer": ..., "smollm2-135m/greedy_layers": ...}``.
        probe_config: The probe settings used for every score.
        settings: Anything else worth recording (poolings, max_seq_length, subsample sizes, timings, ...).
        extra: Further top-level sections, already JSON types (decisions, paired comparisons, ...).
        num_hidden_layers: ``model -> depth L`` of models whose scores stop before the last layer (a
            coarse-to-fine scan); their entry then says which layers were scored (``scored_layers``).
    """
    models = {}
    for model, scores in layer_scores.items():
        best = max(range(len(scores)), key=lambda layer: (scores[layer].accuracy_mean, -layer))
        depth = (num_hidden_layers or {}).get(model, len(scores) - 1)
        models[model] = {
            "num_hidden_layers": depth,
            "best_layer": best,
            "last_layer": depth,
            **({"scored_layers": len(scores) - 1} if depth != len(scores) - 1 else {}),
            "layers": [{"layer": layer, **score.to_dict()} for layer, score in enumerate(scores)],
        }
    report = {
        "format": REPORT_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": task,
        "probe": vars(probe_config).copy() if probe_config is not None else None,
        "settings": dict(settings or {}),
        "models": models,
        "selections": {name: selection.to_dict() for name, selection in (selections or {}).items()},
        "complementarity": complementarity.to_dict() if complementarity is not None else None,
        "test": {name: score.to_dict() for name, score in (test_scores or {}).items()},
        **dict(extra or {}),
    }
    return _finite(report)


def write_report(path: str | Path, **report_fields: Any) -> dict[str, Any]:
    """Write :func:`build_report` (same keyword arguments) as indented JSON, atomically; returns the dict."""
    report = build_report(**report_fields)
    save_report(path, report)
    return report


def save_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write a report dict (built here, possibly completed later, e.g. with test scores) atomically, as JSON."""
    write_text_atomic(path, json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def plot_layer_curves(
    path: str | Path,
    curves: Mapping[str, Sequence[ProbeScore]],
    chosen: Mapping[str, Sequence[int]] | None = None,
    *,
    task: str,
    metric: Metric = "accuracy",
    num_hidden_layers: Mapping[str, int] | None = None,
) -> Path:
    """A PNG with one CV-score curve per model over its layers.

    x is the layer index (0 = embedding output), y the CV ``metric`` with a band of one standard deviation
    over folds. Each model's last layer is ringed (the usual default choice), its chosen layers starred; a
    curve that stops before the last layer (``num_hidden_layers`` says the model is deeper) has no ring and
    says where it stops in its legend.

    Args:
        path: Output PNG file.
        curves: ``model -> per-layer scores``.
        chosen: ``model -> chosen layers`` to mark.
        task: Task name for the title.
        metric: ``accuracy`` or ``macro_f1``.
        num_hidden_layers: ``model -> depth L`` for curves that may stop before the last layer.
    """
    check_metric(metric)
    if not curves:
        raise ValueError("Nothing to plot: no layer curves given.")
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for index, (model, scores) in enumerate(curves.items()):
        color = f"C{index % 10}"
        layers = list(range(len(scores)))
        means = [score.mean(metric) for score in scores]
        stds = [score.std(metric) for score in scores]
        depth = (num_hidden_layers or {}).get(model, layers[-1])
        truncated = f" (scanned to layer {layers[-1]} of {depth})" if depth != layers[-1] else ""
        axes.plot(layers, means, color=color, marker=".", label=model + truncated)
        axes.fill_between(
            layers,
            [m - s for m, s in zip(means, stds, strict=True)],
            [m + s for m, s in zip(means, stds, strict=True)],
            color=color,
            alpha=0.2,
        )
        if not truncated:
            axes.scatter(
                [layers[-1]],
                [means[-1]],
                s=120,
                facecolors="none",
                edgecolors=color,
                linewidths=1.5,
                label="last layer (ringed)" if index == 0 else None,
                zorder=3,
            )
        picked = sorted((chosen or {}).get(model, []))
        if picked:
            axes.scatter(
                picked,
                [means[layer] for layer in picked],
                s=160,
                marker="*",
                color=color,
                edgecolors="black",
                linewidths=0.6,
                label=f"{model}: chosen {picked}",
                zorder=4,
            )
    axes.set_xlabel("layer (0 = embedding output)")
    axes.set_ylabel(f"CV {metric.replace('_', '-')} (train split)")
    axes.set_title(f"{task}: linear-probe {metric.replace('_', '-')} per layer")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _finite(value: Any) -> Any:
    """NaN/inf (e.g. a std over one fold) become ``null``: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
