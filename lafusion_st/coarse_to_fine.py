"""Coarse-to-fine scans: score every layer on a sample, then scan all texts only as deep as a layer that can win.

Why: a scan costs one forward pass through all ``L`` layers for every training text, and on most tasks the
best layers sit in the middle of the model. A stratified sample of the training texts already tells which
layers cannot win: those the sample's best layer beats under the noise rule of :mod:`lafusion_st.selection`
(the rule every other choice of lafusion obeys, applied here with the best as challenger). Every other layer
stays a candidate, and the full training split is scanned only up to the deepest candidate, with the same
truncated forward the built embedder uses: layers past it are never computed, which saves about
``(L - depth) / L`` of the full pass. The last layer is scanned in full only when it is itself a candidate.
The sample's own scan costs ``sample / N`` of a full one, so the forward work is about ``sample / N + depth / L``
of a full scan: it pays on large training splits (``N`` well above the sample) whose best layers are not deep.

What later steps see. The full-data scan holds layers ``0..depth`` (:attr:`LayerVectors.scanned_num_layers`)
and its cache entry is keyed on that depth, so it is never served as a full scan. Asking it for a deeper
layer, the last one included, raises (:meth:`LayerVectors.resolve`): nothing falls back to sample vectors.
When the last layer is not scanned in full, the layer search's incumbent (what every choice must beat) is
the default pooling's best sample layer among those scanned, and the last layer's defeat on the sample is
in the report as a decision with its gain and standard error; a run's table then has no last-layer row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lafusion_st.data import LabeledTexts
from lafusion_st.errors import InvalidArgumentError
from lafusion_st.modes import STANDARD_ERRORS, PoolingMode
from lafusion_st.probe import Metric, ProbeConfig, ProbeScore, check_metric, layer_scores
from lafusion_st.scan import TaskScan, make_scanner, scan_task
from lafusion_st.selection import Decision, noise_rule
from lafusion_st.spec import ScanSettings

COARSE_KIND = "coarse"
"""``Decision.kind`` of the sample's best layer against another layer (accepted: that layer is ruled out)."""


@dataclass(frozen=True)
class CoarseScan:
    """What the coarse stage found for one model, and how deep the full scan therefore went.

    Attributes:
        model: The model as the caller named it.
        sample_size: Training texts in the stratified sample.
        num_texts: Training texts in all.
        source_num_layers: Depth ``L`` of the model.
        curves: ``pooling -> ranking-probe CV score of every layer on the sample``.
        best: ``(pooling, layer)`` with the best sample score (ties: the first pooling, the lower layer).
        candidates: ``pooling -> layers`` the best does not beat under the noise rule (the best included).
        decisions: The best against every other ``(pooling, layer)``; ``accepted`` means ruled out.
        depth: Deepest layer scanned on all training texts: the deepest candidate, or ``L`` when the sample is
            the whole training split (the sample's scan is then the full scan).
        metric: The metric that chose ``best``.
    """

    model: str
    sample_size: int
    num_texts: int
    source_num_layers: int
    curves: dict[str, list[ProbeScore]]
    best: tuple[str, int]
    candidates: dict[str, list[int]]
    decisions: list[Decision]
    depth: int
    metric: Metric = "accuracy"

    @property
    def last_layer_scanned(self) -> bool:
        """Whether the full scan reached the model's last layer."""
        return self.depth == self.source_num_layers

    @property
    def incumbent(self) -> int | None:
        """The layer the full-data search must beat instead of the last one (``None``: the last layer, scanned
        in full): the first pooling's best sample layer among those scanned."""
        if self.last_layer_scanned:
            return None
        curve = next(iter(self.curves.values()))
        return max(range(self.depth + 1), key=lambda layer: (curve[layer].mean(self.metric), -layer))

    def to_dict(self) -> dict[str, Any]:
        pooling, layer = self.best
        return {
            "model": self.model,
            "sample_size": self.sample_size,
            "metric": self.metric,
            "num_texts": self.num_texts,
            "source_num_layers": self.source_num_layers,
            "depth_scanned": self.depth,
            "last_layer_scanned": self.last_layer_scanned,
            "incumbent": self.incumbent,
            "best": {"pooling": pooling, "layer": layer, "score": self.curves[pooling][layer].to_dict()},
            "candidates": {name: list(layers) for name, layers in self.candidates.items()},
            "sample_accuracy": {name: [score.accuracy_mean for score in curve] for name, curve in self.curves.items()},
            "decisions": [decision.to_dict() for decision in self.decisions],
        }


def coarse_candidates(
    curves: Mapping[str, Sequence[ProbeScore]],
    *,
    standard_errors: float = STANDARD_ERRORS,
    metric: Metric = "accuracy",
) -> tuple[tuple[str, int], dict[str, list[int]], list[Decision]]:
    """The layers that can still win: every ``(pooling, layer)`` the best one does not beat under the noise rule.

    Args:
        curves: ``pooling -> score of every layer``, all from one probe on the same folds (``layer_scores``).
        standard_errors: The noise rule's margin.
        metric: What "best" means.

    Returns:
        ``(best, candidates, decisions)`` as in :class:`CoarseScan`.
    """
    check_metric(metric)
    poolings = list(curves)
    entries = [(pooling, layer) for pooling in poolings for layer in range(len(curves[pooling]))]
    if not entries:
        raise ValueError("Give the layer scores of at least one pooling.")
    best = max(
        entries, key=lambda entry: (curves[entry[0]][entry[1]].mean(metric), -poolings.index(entry[0]), -entry[1])
    )
    decisions = {
        (pooling, layer): noise_rule(
            curves[best[0]][best[1]],
            curves[pooling][layer],
            kind=COARSE_KIND,
            names=(f"{pooling} [{layer}]", f"{best[0]} [{best[1]}]"),
            metric=metric,
            standard_errors=standard_errors,
        )
        for pooling, layer in entries
        if (pooling, layer) != best
    }
    candidates = {
        pooling: [
            layer
            for layer in range(len(curves[pooling]))
            if (pooling, layer) == best or not decisions[(pooling, layer)].accepted
        ]
        for pooling in poolings
    }
    return best, candidates, list(decisions.values())


def coarse_scan(
    model: str,
    train: LabeledTexts,
    poolings: Sequence[PoolingMode] = ScanSettings.poolings,
    *,
    sample_size: int = ScanSettings.coarse_sample_size,
    standard_errors: float = STANDARD_ERRORS,
    config: ProbeConfig | None = None,
    metric: Metric = "accuracy",
    show_progress_bar: bool = True,
    **scanner_kwargs: Any,
) -> CoarseScan:
    """The coarse stage for one model: scan every layer of a stratified sample and keep the candidates.

    The sample is :meth:`LabeledTexts.subsample` with the probe's seed (every class kept), scanned as an
    ordinary cache entry; each pooling's layers are scored with the ranking probe.

    Args:
        model: Short name or folder.
        train: Training texts and labels.
        poolings: Poolings, all from one forward pass.
        sample_size: Texts in the sample (all, if there are fewer).
        standard_errors: The noise rule's margin.
        config: Probe settings (default :class:`ProbeConfig`).
        metric: What is maximised.
        show_progress_bar: Progress bars of the scan and the probes.
        **scanner_kwargs: Passed to :func:`~lafusion_st.scan.make_scanner`.

    Raises:
        InvalidArgumentError: ``sample_size`` is not a positive integer.
        ValueError: The sample cannot hold one text of every class.
    """
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
        raise InvalidArgumentError(f"sample_size must be a positive integer, got {sample_size!r}.")
    config = config or ProbeConfig()
    sample = train.subsample(sample_size, seed=config.seed)
    scanner = make_scanner(model, poolings, show_progress_bar=show_progress_bar, **scanner_kwargs)
    scanned = scanner.scan(sample.texts)
    curves = {
        pooling: layer_scores(vectors.vectors, sample.labels, config, show_progress_bar=show_progress_bar)
        for pooling, vectors in scanned.items()
    }
    best, candidates, decisions = coarse_candidates(curves, standard_errors=standard_errors, metric=metric)
    last = scanner.source_num_layers
    deepest = max(layer for layers in candidates.values() for layer in layers)
    # A truncated forward keeps at least one layer; a whole-split sample already is the full scan.
    depth = last if len(sample) == len(train) else max(deepest, 1)
    return CoarseScan(model, len(sample), len(train), last, curves, best, candidates, decisions, depth, metric)


def scan_task_coarse_to_fine(
    models: str | Sequence[str],
    train: LabeledTexts,
    test_texts: Sequence[str] | None = None,
    poolings: Sequence[PoolingMode] = ScanSettings.poolings,
    *,
    sample_size: int = ScanSettings.coarse_sample_size,
    standard_errors: float = STANDARD_ERRORS,
    config: ProbeConfig | None = None,
    metric: Metric = "accuracy",
    show_progress_bar: bool = True,
    **scanner_kwargs: Any,
) -> tuple[TaskScan, dict[str, CoarseScan]]:
    """:func:`~lafusion_st.scan.scan_task`, coarse-to-fine: each model's coarse stage, then its train (and test)
    texts scanned up to the coarse stage's depth.

    The test split is scanned to the same depth: a configuration the search can choose never needs more.

    Returns:
        The scans (truncated where the coarse stage allowed) and each model's :class:`CoarseScan`.
    """
    names = [models] if isinstance(models, str) else list(models)
    coarse = {
        model: coarse_scan(
            model,
            train,
            poolings,
            sample_size=sample_size,
            standard_errors=standard_errors,
            config=config,
            metric=metric,
            show_progress_bar=show_progress_bar,
            **scanner_kwargs,
        )
        for model in names
    }
    result = TaskScan(test={} if test_texts is not None else None)
    for model in names:
        scanned = scan_task(
            [model],
            train.texts,
            test_texts,
            poolings,
            num_layers=coarse[model].depth,
            show_progress_bar=show_progress_bar,
            **scanner_kwargs,
        )
        result.train.update(scanned.train)
        if test_texts is not None:
            result.test.update(scanned.test)
    return result, coarse


def describe(coarse: CoarseScan) -> str:
    """One line for a person: sample, candidates, depth scanned."""
    candidates = "; ".join(f"{pooling} {layers}" for pooling, layers in coarse.candidates.items())
    last = "scanned" if coarse.last_layer_scanned else "not scanned (lost on the sample)"
    return (
        f"{coarse.model}: coarse-to-fine on {coarse.sample_size} of {coarse.num_texts} training texts; candidates "
        f"{candidates}; scanned in full up to layer {coarse.depth} of {coarse.source_num_layers}; last layer {last}"
    )
