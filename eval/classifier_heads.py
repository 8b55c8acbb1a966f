"""Item 6 evidence: which head earns its cost? Logistic vs the paper's MLP, and for the SmolLM2 + Gemma3 pair
concat vs the Hadamard- and sum-residual fusion heads.

Run:  nice .venv/bin/python eval/classifier_heads.py [--config eval/configs.json] [--datasets sst2 mr]
      [--pair-datasets mr] [--embed mr] [--overwrite]

Data: the texts of the configuration file (``eval/configs.json``: the stratified, seed 0, subsamples of
eval/RESULTS.md, SST-2/MR 1000 train / 500 test, R8/R52 500/300; ``eval/configs_full.json``: full splits).
Features: each model's layers chosen by CV on the training split in its selection folder
(``<selection_folder>/<dataset>/report.json``, greedy layers, with the pooling chosen there), read from the
scan cache or computed by the built embedder (``--embed``); both are the vectors ``FusedClassifier`` sees
(``lafusion run`` checks the embedder against the scan).
Every head is fit on the training subsample only (the MLP heads carve their early-stopping split out of
it) and scored once on the test subsample. Reported per head: test accuracy with its 95% percentile
bootstrap interval over test texts, macro-F1, an exact McNemar test against the logistic head on the same
features (p-values Holm-adjusted within each dataset), and the fit time (wall clock; the embedding cost is
the same for every head and excluded). Intervals and tests are ``lafusion_st.stats``'s, as in ``lafusion run``.

Models are SmolLM2-135M and Gemma-3-270m from 4-bit GGUF releases, de-quantized to fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from runner import REPOSITORY, Plan, load_data_plan
from sklearn.metrics import f1_score

from lafusion_st import build_fused_model
from lafusion_st.fit_cache import fit_events
from lafusion_st.heads import HadamardResidualHead, LogisticHead, MLPHead, SumResidualHead
from lafusion_st.scan import scan_task
from lafusion_st.stats import accuracy_interval, holm, mcnemar

DATASETS = ("sst2", "mr", "r8", "r52")
SINGLE = "smollm2-135m"
PAIR = ["smollm2-135m", "gemma3-270m"]


def chosen(task: str, model: str, selection_folder: Path) -> tuple[list[int], str]:
    """The layers and pooling the CV search on the training subsample chose for ``model`` (reports written
    before pooling was searched have no ``pooling``: theirs was mean)."""
    path = selection_folder / task / "report.json"
    selections = json.loads(path.read_text())["selections"]
    if model not in selections:
        raise SystemExit(f"{path} has no selection for {model} (it has {sorted(selections)}); run it first.")
    return list(selections[model]["chosen"]), selections[model].get("pooling", "mean")


def features(plan: Plan, task: str, models: list[str], embed: bool = False):
    """Train/test features of ``models`` at their chosen layers and pooling: from the scan cache, or (``embed``)
    from the built, truncated embedder, which costs less than a scan of every layer when nothing is cached.
    Also returns the block sizes and a name per model."""
    train, test = plan.splits(task)
    choices = {model: chosen(task, model, plan.selection_folder) for model in models}
    if embed:
        embedders = [
            build_fused_model(m, layers=layers, pooling=pooling, max_seq_length=256)
            for m, (layers, pooling) in choices.items()
        ]
        x_train = [embedder.encode(train.texts, batch_size=32) for embedder in embedders]
        x_test = [embedder.encode(test.texts, batch_size=32) for embedder in embedders]
    else:
        poolings = sorted({pooling for _, pooling in choices.values()})
        scans = scan_task(models, train.texts, test.texts, poolings=poolings, max_seq_length=256)
        x_train = [scans.train[m][pooling].concat(layers) for m, (layers, pooling) in choices.items()]
        x_test = [scans.test[m][pooling].concat(layers) for m, (layers, pooling) in choices.items()]
    dims = tuple(block.shape[1] for block in x_train)
    names = {m: f"{m} {layers} {pooling}" for m, (layers, pooling) in choices.items()}
    return (
        np.concatenate(x_train, axis=1),
        np.asarray(train.labels),
        np.concatenate(x_test, axis=1),
        np.asarray(test.labels),
        dims,
        names,
    )


def evaluate(name, head, x_train, y_train, x_test, y_test, dims) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    with fit_events() as events:
        head.fit(x_train, y_train, member_dims=dims)
    fit_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    read = [event for event in events if event.cached]  # a logistic head the selection's test scoring fit
    fit_seconds += sum(event.seconds for event in read)  # the fit's own cost, not the read's milliseconds
    cpu_seconds += sum(event.cpu_seconds for event in read)
    predicted = head.predict(x_test)
    correct = np.asarray(predicted == y_test, dtype=bool)
    interval = accuracy_interval(correct)
    low, high = interval.low, interval.high
    row = {
        "configuration": name,
        "head": type(head).__name__,
        "accuracy": float(correct.mean()),
        "ci95": [low, high],
        "macro_f1": float(f1_score(y_test, predicted, average="macro", zero_division=0)),
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": cpu_seconds,
        "fit_read_from_cache": bool(read),
        "fitted": head._fitted_summary(),
        "correct": correct.tolist(),
    }
    accuracy = f"acc {row['accuracy']:.4f} [{low:.3f}, {high:.3f}]"
    print(f"  {name:<48} {accuracy}  fit {fit_seconds:6.1f} s{CACHED * bool(read)}", flush=True)
    return row


def run_dataset(plan: Plan, task: str, with_pair: bool, embed: bool) -> list[dict]:
    rows = []
    x_train, y_train, x_test, y_test, dims, names = features(plan, task, [SINGLE], embed)
    label = names[SINGLE]
    print(f"{task}: {len(y_train)} train / {len(y_test)} test, {x_train.shape[1]} features", flush=True)
    single = [
        evaluate(f"{label} + logistic", LogisticHead(), x_train, y_train, x_test, y_test, dims),
        evaluate(f"{label} + MLP", MLPHead(), x_train, y_train, x_test, y_test, dims),
    ]
    rows += _compare(single)
    if with_pair:
        x_train, y_train, x_test, y_test, dims, names = features(plan, task, PAIR)
        label = " + ".join(names[m] for m in PAIR)
        pair = [
            evaluate(f"{label}, concat + logistic", LogisticHead(), x_train, y_train, x_test, y_test, dims),
            evaluate(f"{label}, concat + MLP", MLPHead(), x_train, y_train, x_test, y_test, dims),
            evaluate(f"{label}, Hadamard residual", HadamardResidualHead(), x_train, y_train, x_test, y_test, dims),
            evaluate(f"{label}, sum residual", SumResidualHead(), x_train, y_train, x_test, y_test, dims),
        ]
        rows += _compare(pair)
    adjusted = holm([row["mcnemar_p"] for row in rows if row["mcnemar_p"] is not None])
    for row in (row for row in rows if row["mcnemar_p"] is not None):
        row["mcnemar_p_holm"] = adjusted.pop(0)
    for row in rows:
        row["dataset"] = task
        row["num_train"], row["num_test"] = len(y_train), len(y_test)
    return rows


def _compare(group: list[dict]) -> list[dict]:
    """Paired test of every head against the group's first (logistic) head on the same features."""
    reference = np.asarray(group[0]["correct"])
    for row in group:
        row["delta_vs_logistic"] = row["accuracy"] - group[0]["accuracy"]
        row["mcnemar_p"] = None if row is group[0] else mcnemar(np.asarray(row["correct"]), reference).p_value
    return group


CACHED = " (cached)"
CACHED_NOTE = (
    f"Fit times marked{CACHED}: the tuned logistic fit was made once, by an earlier step on the same vectors (in"
    " eval/full_data.py, the selection step's test scoring), and read here from the fit cache"
    " (lafusion_st.fit_cache); the time shown is that fit's."
)


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | features + head | test acc. [95% CI] | macro-F1 | Δ vs logistic | McNemar p (Holm) | fit time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["ci95"]
        p = "-" if row["mcnemar_p"] is None else f"{row['mcnemar_p']:.3g} ({row['mcnemar_p_holm']:.3g})"
        delta = "-" if row["mcnemar_p"] is None else f"{100 * row['delta_vs_logistic']:+.1f}"
        lines.append(
            f"| {row['dataset']} | {row['configuration']} | {100 * row['accuracy']:.1f} [{100 * low:.1f}, "
            f"{100 * high:.1f}] | {100 * row['macro_f1']:.1f} | {delta} | {p} | {row['fit_seconds']:.1f} s"
            f"{CACHED * row.get('fit_read_from_cache', False)} |"
        )
    if any(row.get("fit_read_from_cache") for row in rows):
        lines += ["", CACHED_NOTE]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPOSITORY / "eval" / "configs.json", help="data settings")
    parser.add_argument("--datasets", nargs="+", default=["sst2", "mr"], choices=DATASETS)
    parser.add_argument("--pair-datasets", nargs="*", default=["mr"], choices=DATASETS)
    parser.add_argument(
        "--embed",
        nargs="*",
        default=[],
        choices=DATASETS,
        help="datasets whose single-model features come "
        "from the truncated embedder instead of the scan cache (cheaper when they are not scanned yet)",
    )
    parser.add_argument("--overwrite", action="store_true", help="recompute datasets whose results exist")
    args = parser.parse_args(argv)
    plan = load_data_plan(args.config, args.datasets)
    # The config file names where its heads tables go (default eval/classifier, beside eval/selection).
    output = REPOSITORY / json.loads(args.config.read_text()).get("classifier_folder", "eval/classifier")
    output.mkdir(parents=True, exist_ok=True)
    for task in plan.datasets:
        path = output / f"heads_{task}.json"
        if path.is_file() and not args.overwrite:
            print(f"{task}: {path} exists (--overwrite to recompute)")
            continue
        task_rows = run_dataset(plan, task, task in args.pair_datasets, task in args.embed)
        path.write_text("[\n" + ",\n".join(json.dumps(row) for row in task_rows) + "\n]\n")  # a row a line
    # The table covers every dataset computed so far with this config (datasets may be run one at a time).
    rows = [
        row
        for task in DATASETS
        if (output / f"heads_{task}.json").is_file()
        for row in json.loads((output / f"heads_{task}.json").read_text())
    ]
    print()
    print(table(rows))
    command = " ".join(["python eval/classifier_heads.py", *(sys.argv[1:] if argv is None else argv)])
    (output / "heads.md").write_text(f"Last command: `{command}`\n\n{table(rows)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
