"""Cost and layer ranking of the probes: the ranking probe + noise-rule search against the former probe.

The promise (issue 11, item 1): every deciding number comes from the tuned probe (logistic regression with
C chosen by an inner CV), while scoring many candidates may use a faster probe if its layer ranking agrees
with the tuned probe's (Spearman >= 0.9) and the whole layer search costs at most 3x the former one.

On one model's cached training scan (scanned first if absent), in this one process and in this order:

* **old**: every layer's 5-fold CV with the former probe (``StandardScaler -> LogisticRegression(C=1)``),
  then the former greedy search (start from the best single layer, candidates the 8 best single layers, add
  a layer while it gains at least 0.002 CV accuracy, at most 4 layers);
* **new**: :func:`lafusion_st.selection.search_layers` on the same vectors and folds (ranking probe on
  every layer, greedy under the noise rule from the last layer, then the tuned probe's nested CV of the
  choice and of the last layer), with its ranking + greedy part timed on its own as well;
* **agreement**: the tuned probe's nested CV of every layer; Spearman correlation of the per-layer CV
  accuracies of the ranking probe (and of the former probe) with the tuned probe's.

Usage::

    python eval/bench_probe.py --task sst2 --max-train 1000
    python eval/bench_probe.py --task r8 --max-train 500
    python eval/bench_probe.py --task sst2 --max-train 5000 --no-agreement   # the budget figure alone

Wall times are of a shared machine: run it when the machine is otherwise idle for the ratio to mean much.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from lafusion_st.data import load_bundled
from lafusion_st.probe import ProbeConfig, layer_scores, stratified_splits, usable_folds
from lafusion_st.scan import scan_task
from lafusion_st.selection import GREEDY_CANDIDATES, greedy_layers, search_layers

OLD_THRESHOLD = 0.002
OLD_MAX_ITER = 300


def old_cv(features: np.ndarray, labels: np.ndarray, splits: list) -> float:
    """Mean CV accuracy of the former probe: standardised logistic regression at C=1, one BLAS thread."""
    accuracies = []
    with threadpool_limits(limits=1):
        for train, test in splits:
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=OLD_MAX_ITER))
            probe.fit(features[train], labels[train])
            accuracies.append(accuracy_score(labels[test], probe.predict(features[test])))
    return float(np.mean(accuracies))


def old_search(vectors: np.ndarray, labels: np.ndarray, splits: list) -> tuple[list[float], list[int]]:
    """The former layer scores and greedy search (see the module docstring)."""
    curve = [old_cv(layer, labels, splits) for layer in vectors]
    candidates = sorted(range(len(curve)), key=lambda layer: -curve[layer])[:GREEDY_CANDIDATES]
    chosen, score = [candidates[0]], curve[candidates[0]]
    while len(chosen) < 4:
        trials = [sorted([*chosen, layer]) for layer in candidates if layer not in chosen]
        scores = [
            old_cv(np.concatenate([vectors[layer] for layer in trial], axis=1), labels, splits) for trial in trials
        ]
        best = int(np.argmax(scores))
        if scores[best] - score < OLD_THRESHOLD:
            break
        chosen, score = trials[best], scores[best]
    return curve, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sst2", help="bundled dataset (default: sst2)")
    parser.add_argument("--max-train", type=int, default=1000, help="stratified training subsample (seed 0)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pooling", default="mean")
    parser.add_argument(
        "--no-agreement",
        action="store_true",
        help="time the searches only: skip the tuned probe on every layer (the slow part on large samples)",
    )
    args = parser.parse_args()

    train = load_bundled(args.task, "train").subsample(args.max_train, seed=0)
    vectors = scan_task([args.model], train.texts, None, poolings=[args.pooling]).train[args.model][args.pooling]
    vectors, labels = vectors.vectors, np.asarray(train.labels)
    config = ProbeConfig()
    splits = stratified_splits(labels, usable_folds(labels, config.folds), config.seed)
    print(f"{args.task}: {len(labels)} training texts, {args.model} {args.pooling}, {len(vectors)} layers", flush=True)

    start = time.perf_counter()
    old_curve, old_chosen = old_search(vectors, labels, splits)
    old_seconds = time.perf_counter() - start

    start = time.perf_counter()
    ranking = layer_scores(vectors, labels, config, show_progress_bar=False)
    best_first = sorted(range(len(ranking)), key=lambda layer: (-ranking[layer].accuracy_mean, layer))
    greedy = greedy_layers(
        vectors, labels, ranking, candidates=best_first[:GREEDY_CANDIDATES], config=config, show_progress_bar=False
    )
    ranking_seconds = time.perf_counter() - start

    start = time.perf_counter()
    search = search_layers({args.pooling: vectors}, labels, config=config, show_progress_bar=False)
    search_seconds = time.perf_counter() - start

    print(f"old  (C=1 probe, threshold greedy):  {old_seconds:7.1f} s  chose {old_chosen}")
    print(f"new  (ranking probe + noise-rule greedy): {ranking_seconds:7.1f} s  chose {greedy.chosen}")
    print(f"new  search_layers (+ tuned checks):  {search_seconds:7.1f} s  chose {search.layers}")
    print(
        f"ratio new/old: ranking + greedy {ranking_seconds / old_seconds:.2f}x, whole search "
        f"{search_seconds / old_seconds:.2f}x (goal <= 3x)"
    )
    if args.no_agreement:
        return

    start = time.perf_counter()
    tuned = layer_scores(vectors, labels, config, probe="tuned", show_progress_bar=False)
    print(f"tuned probe (nested CV) on every layer: {time.perf_counter() - start:7.1f} s")
    tuned_curve = [score.accuracy_mean for score in tuned]
    ranking_curve = [score.accuracy_mean for score in ranking]
    print(
        f"Spearman vs tuned probe: ranking probe {spearmanr(ranking_curve, tuned_curve).statistic:.3f}, "
        f"former C=1 probe {spearmanr(old_curve, tuned_curve).statistic:.3f} (goal >= 0.9)"
    )
    print("layer | tuned CV acc (C per fold) | ranking CV acc | former C=1 CV acc")
    for layer, (t, r, o) in enumerate(zip(tuned, ranking_curve, old_curve, strict=True)):
        cs = ",".join(f"{c:g}" for c in t.regularisation_folds)
        print(f"{layer:5d} | {100 * t.accuracy_mean:5.1f} ({cs}) | {100 * r:5.1f} | {100 * o:5.1f}")


if __name__ == "__main__":
    main()
