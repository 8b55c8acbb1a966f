"""How much the tuned probe's test accuracy moves with the order of its training rows alone.

Run:  python eval/probe_order.py --dataset sst2 --model smollm2-135m --layer 10 --pooling mean

Why: the tuned probe chooses ``C`` by a shuffled stratified inner CV, and a shuffled split depends on the row
order. MTEB's undersampling shuffles the training rows (``RandomState(task seed)``, even when it keeps them all);
the paper protocol used to fit on that order, and so disagreed with ``lafusion run`` on the same texts, until it
kept the split's order (``lafusion_st.mteb_tasks.train_on_every_row``). The order stays arbitrary: this script
fits the probe on one layer's scanned vectors in the plan's order (the one both use now), in MTEB's shuffled
order and in ``--permutations`` random orders, and prints each order's chosen ``C`` and test accuracy: the spread
is the part of any single test figure that comes from the inner folds, not from the features.
"""

from __future__ import annotations

import argparse

import numpy as np
from runner import REPOSITORY, load_data_plan

from lafusion_st.probe import fit_and_test
from lafusion_st.scan import scan_task

MTEB_SEED = 42
"""MTEB's default task seed, the seed of its undersampling's training-row shuffle."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=REPOSITORY / "eval" / "configs.json", help="data settings")
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--pooling", default="mean")
    parser.add_argument("--permutations", type=int, default=8)
    args = parser.parse_args()
    train, test = load_data_plan(args.config, [args.dataset]).splits(args.dataset)
    scans = scan_task([args.model], train.texts, test.texts, [args.pooling])
    train_vectors = scans.train[args.model][args.pooling].vectors[args.layer]
    test_vectors = scans.test[args.model][args.pooling].vectors[args.layer]
    labels = np.asarray(train.labels)
    mteb_order = np.arange(len(labels))
    np.random.RandomState(MTEB_SEED).shuffle(mteb_order)
    rng = np.random.default_rng(0)
    orders = {"plan order (selection, paper protocol)": np.arange(len(labels)), "MTEB's shuffle": mteb_order}
    orders.update({f"random order {index}": rng.permutation(len(labels)) for index in range(args.permutations)})
    print(f"{args.dataset} {len(train)}/{len(test)}, {args.model} L{args.layer} {args.pooling}, tuned probe")
    print("| training-row order | C | test acc. % [95% interval] |\n|---|---|---|")
    accuracies = []
    for name, order in orders.items():
        score = fit_and_test(train_vectors[order], labels[order], test_vectors, test.labels)
        accuracies.append(score.accuracy)
        low, high = score.accuracy_interval.low, score.accuracy_interval.high
        print(f"| {name} | {score.C:g} | {100 * score.accuracy:.1f} [{100 * low:.1f}, {100 * high:.1f}] |")
    print(
        f"spread over {len(orders)} orders: {100 * min(accuracies):.1f} to {100 * max(accuracies):.1f} "
        f"(sd {100 * np.std(accuracies):.1f} points)"
    )


if __name__ == "__main__":
    main()
