"""The one command that regenerates the results tables (Markdown + CSV) from ``eval/configs.json``.

Run:  .venv/bin/python eval/make_tables.py [--config eval/configs.json] [--datasets sst2 mr]
                                           [--only NAME ...] [--no-run] [--no-costs] [--overwrite]

1. Evaluates, through MTEB, every configuration whose result files are missing (both protocols; results
   under ``<results_folder>/results/``, MTEB's layout). Finished results are reused, so a re-run only
   tabulates; ``--overwrite`` recomputes them.
2. Measures the cost of every distinct embedder whose cost file is missing, each in a fresh process
   (``<results_folder>/costs/``).
3. Writes ``<results_folder>/tables.md`` and ``tables.csv`` (and puts the tables into ``eval/RESULTS.md``):
   per dataset, one row per configuration
   (last layer / best single layer / fused layers / multi-model fusion / baseline) with the MTEB
   standard-protocol accuracy (mean and standard deviation over its 10 experiments), the paper-protocol
   accuracy and macro-F1, and the cost columns (embedding dimension, parameters, peak memory,
   sentences per second), plus the command that reproduces the row.

``--no-run`` only tabulates what is there. Scores are percentages on the (possibly subsampled) test
split named in each table's heading.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
from pathlib import Path

from mteb.results import TaskResult
from runner import REPOSITORY, Configuration, Plan, load_plan, revisions, run_costs, run_evaluations

from lafusion_st.evaluation import per_text_correctness
from lafusion_st.mteb_tasks import TASKS
from lafusion_st.stats import accuracy_interval, holm, mcnemar

COLUMNS = [
    "dataset", "role", "models", "embedder", "layers", "standard_accuracy", "standard_accuracy_sd", "paper_accuracy",
    "paper_accuracy_low", "paper_accuracy_high", "paper_macro_f1", "embedding_dimension", "parameters_millions",
    "peak_rss_mib", "model_rss_mib", "sentences_per_second", "load_average", "command",
]  # fmt: skip
DISPLAY_NAMES = {"sst2": "SST-2", "mr": "MR", "r8": "R8", "r52": "R52"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPOSITORY / "eval" / "configs.json")
    parser.add_argument("--datasets", nargs="+", choices=list(TASKS), help="default: those of the config file")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only the configurations with these MTEB names")
    parser.add_argument("--no-run", action="store_true", help="tabulate existing results without running anything")
    parser.add_argument("--overwrite", action="store_true", help="recompute results and costs that exist")
    parser.add_argument(
        "--results-md",
        type=Path,
        default=REPOSITORY / "eval" / "RESULTS.md",
        help="document whose tables (between its tables markers) are replaced, if it exists",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes evaluating configurations (default: %(default)s, one per core here; 1 beside other jobs)",
    )
    parser.add_argument(
        "--no-costs",
        action="store_true",
        help="evaluate only; measure the costs in a later run, when the machine is quiet",
    )
    args = parser.parse_args()
    if not args.no_run:
        plan = load_plan(args.config, args.datasets, args.only)
        run_evaluations(plan, overwrite=args.overwrite, workers=args.workers)
        if not args.no_costs:
            run_costs(plan, overwrite=args.overwrite)
    full_plan = tabulated_plan(args.config)  # the tables show every configuration that has results
    revision = revisions(full_plan)  # results count only under each configuration's own weights revision
    rows = [
        table_row(full_plan, configuration, revision[configuration.name], args.config)
        for configuration in full_plan.configurations
    ]
    write_csv(rows, full_plan.results_folder / "tables.csv")
    tables = markdown(full_plan, rows)
    (full_plan.results_folder / "tables.md").write_text(tables)
    print(f"wrote {full_plan.results_folder / 'tables.md'} and tables.csv ({len(rows)} rows)")
    if args.results_md.is_file():
        marker = json.loads(args.config.read_text()).get("tables_marker", "tables")
        insert_tables(args.results_md, tables, marker)
        print(f"updated the tables in {args.results_md}")


def tabulated_plan(config: Path) -> Plan:
    """The plan over every dataset of the config file whose layers can be resolved (selection run or not)."""
    plans = []
    for dataset in json.loads(config.read_text())["datasets"]:
        try:
            plans.append(load_plan(config, [dataset]))
        except ValueError as error:
            print(f"not tabulated: {error}")
    if not plans:
        raise SystemExit("Nothing to tabulate: no dataset's configurations could be resolved (see above).")
    return dataclasses.replace(
        plans[0],
        datasets=tuple(dataset for plan in plans for dataset in plan.datasets),
        subsample={dataset: size for plan in plans for dataset, size in plan.subsample.items()},
        configurations=tuple(configuration for plan in plans for configuration in plan.configurations),
    )


def insert_tables(path: Path, tables: str, marker: str = "tables") -> None:
    """Replace what lies between the ``<!-- {marker}:start -->`` and ``<!-- {marker}:end -->`` markers of
    ``path`` by ``tables`` (one pair of markers per configuration file, e.g. subsample and full-data tables)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {start} ... {end} that say where the tables go.")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    tables = tables.replace("\n## ", "\n### ")  # one heading level below the document's sections
    path.write_text(f"{head}{start}\n{tables}{end}{tail}", encoding="utf-8")


def sample_note(plan: Plan) -> str:
    sizes = {dataset: plan.subsample[dataset] for dataset in plan.datasets}
    if not any(any(size) for size in sizes.values()):
        return "full splits"
    parts = [f"{DISPLAY_NAMES[d]} {train or 'all'}/{test or 'all'}" for d, (train, test) in sizes.items()]
    return f"stratified subsamples (seed {plan.seed}), at most train/test examples: {', '.join(parts)}"


def table_row(plan: Plan, configuration: Configuration, revision: str, config_file: Path) -> dict:
    """One configuration on one dataset: its scores under each protocol and its costs (blank if missing)."""
    row = dict.fromkeys(COLUMNS, "")
    layers = " + ".join("L" + ",".join(map(str, layers)) for layers in configuration.layers)
    models = "+".join(configuration.models) or configuration.sentence_transformer
    row.update(
        dataset=configuration.dataset,
        role=configuration.role,
        models=models,
        embedder=configuration.name,
        layers=layers or "-",
    )
    for task in plan.tasks(configuration.dataset):
        path = plan.result_path(configuration.name, revision, task.metadata.name)
        if path is None:
            continue
        scores = TaskResult.from_disk(path).scores["test"][0]
        if task.n_experiments > 1:
            runs = [experiment["accuracy"] for experiment in scores["scores_per_experiment"]]
            row.update(
                standard_accuracy=percent(scores["accuracy"]), standard_accuracy_sd=percent(statistics.stdev(runs))
            )
        else:
            row.update(paper_accuracy=percent(scores["accuracy"]), paper_macro_f1=percent(scores["f1"]))
            predictions = plan.prediction_path(configuration.name, revision, task)
            if predictions is not None:
                correct = per_text_correctness(task, predictions.parent)
                interval = accuracy_interval(correct)
                row.update(paper_accuracy_low=percent(interval.low), paper_accuracy_high=percent(interval.high))
                row["correct"] = correct  # for the paired tests; not a CSV column
    cost_file = plan.cost_path(configuration.name)
    if cost_file.exists():
        cost = json.loads(cost_file.read_text())
        row.update(
            embedding_dimension=cost["embedding_dimension"],
            parameters_millions=f"{cost['n_parameters'] / 1e6:.1f}",
            peak_rss_mib=f"{cost['peak_rss_mb']:.0f}",
            model_rss_mib=f"{cost['peak_rss_mb'] - cost['runtime_rss_mb']:.0f}",
            sentences_per_second=f"{cost['sentences_per_second']:.1f}",
            load_average=cost["load_average_1min"],
        )
    config = (
        config_file.resolve().relative_to(REPOSITORY)
        if config_file.resolve().is_relative_to(REPOSITORY)
        else config_file
    )
    row["command"] = (
        f"python eval/make_tables.py --config {config} --datasets {configuration.dataset} --only '{configuration.name}'"
    )
    return row


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown(plan: Plan, rows: list[dict]) -> str:
    lines = [
        "<!-- generated by eval/make_tables.py; do not edit by hand -->",
        f"Data: {sample_note(plan)}. Standard = MTEB's own protocol: its classifier, an unscaled "
        "`LogisticRegression(max_iter=100)`, trained on 8 texts per label, 10 draws (mean ± sd over them); it "
        "measures few-shot separability, not what a trained probe reaches. Paper = the tuned probe (standardised "
        "features, logistic regression with C chosen by an inner CV on the training rows only) trained on the whole "
        "(subsampled) training split, one experiment, with a 95% bootstrap interval over test texts. Scores in %. "
        "Cost columns, measured in one fresh process per embedder on the first SST-2 test sentences (costs/*.json): "
        "params = parameters of the (truncated) model; memory = peak resident memory while encoding minus that of the "
        "process before the model was built (weights + activations; tables.csv also has the whole-process peak); "
        "sent/s = fastest of the timed passes, batch size as configured; load = the machine's 1-minute load average "
        "when it was measured (other jobs share the CPU: compare speeds "
        "only at similar load). Rows are reproduced by their command "
        "(add --overwrite to recompute existing results).",
        "",
        "## Summary: accuracy by dataset (standard / paper protocol)",
        "",
    ]
    datasets = [dataset for dataset in plan.datasets if any(row["dataset"] == dataset for row in rows)]
    lines += table(
        ["role", "models", *(DISPLAY_NAMES[d] for d in datasets)],
        [
            [role, models, *(summary_cell(rows, role, models, d) for d in datasets)]
            for role, models in dict.fromkeys((row["role"], row["models"]) for row in rows)
        ],
    )
    for dataset in datasets:
        dataset_rows = [row for row in rows if row["dataset"] == dataset]
        lines += ["", f"## {DISPLAY_NAMES[dataset]}", ""]
        lines += table(
            [
                "role",
                "embedder",
                "standard acc",
                "paper acc [95% CI]",
                "paper macro-F1",
                "dim",
                "params (M)",
                "memory (MiB)",
                "sent/s",
                "load",
            ],
            [
                [
                    row["role"],
                    f"`{row['embedder']}`",
                    f"{row['standard_accuracy']} ± {row['standard_accuracy_sd']}" if row["standard_accuracy"] else "",
                    paper_cell(row),
                    row["paper_macro_f1"],
                    row["embedding_dimension"],
                    row["parameters_millions"],
                    row["model_rss_mib"],
                    row["sentences_per_second"],
                    row["load_average"],
                ]  # fmt: skip
                for row in dataset_rows
            ],
        )
        lines += ["", *comparison_table(dataset_rows)]
        lines += ["", "Commands, by row:", ""] + [f"{i}. `{row['command']}`" for i, row in enumerate(dataset_rows, 1)]
    return "\n".join(lines) + "\n"


def paper_cell(row: dict) -> str:
    """``accuracy [low, high]`` (95% bootstrap interval over test texts) when the predictions are there."""
    if row["paper_accuracy_low"]:
        return f"{row['paper_accuracy']} [{row['paper_accuracy_low']}, {row['paper_accuracy_high']}]"
    return row["paper_accuracy"]


LAST, BEST, FUSED, MULTI, BASELINE = "last layer", "best single layer", "fused layers", "multi-model fusion", "baseline"


def comparisons(rows: list[dict]) -> list[tuple[str, dict, dict]]:
    """The comparisons the text of RESULTS.md makes on one dataset (paper protocol, same test texts): per LLM
    its fused layers against its last and its best single layer and against the baseline, and the
    multi-model fusion against each of its members' fused layers. Rows without predictions are left out.

    A last layer that is also the best single layer is tested once (as in ``eval/selection_runs.py``): the
    same test twice would count twice in Holm's family and inflate every adjusted p of the table."""
    by_role = {(row["role"], row["models"]): row for row in rows if "correct" in row}
    baseline = next((row for (role, _), row in by_role.items() if role == BASELINE), None)
    pairs = []
    for (role, models), row in by_role.items():
        if role == FUSED:
            last, best = by_role.get((LAST, models)), by_role.get((BEST, models))
            also_best = last is not None and best is not None and last["embedder"] == best["embedder"]
            others = (
                [(f"{LAST} (also the best single layer on CV)", last)] if also_best else [(LAST, last), (BEST, best)]
            )
            for name, other in others:
                if other is not None and other["embedder"] != row["embedder"]:
                    pairs.append((f"{models}: fused layers vs {name}", row, other))
            if baseline is not None:
                pairs.append((f"{models}: fused layers vs {baseline['models']}", row, baseline))
        if role == MULTI:
            for member in models.split("+"):
                if (FUSED, member) in by_role:
                    pairs.append((f"{models} vs {member} fused layers", row, by_role[(FUSED, member)]))
    return pairs


def comparison_table(rows: list[dict]) -> list[str]:
    """McNemar's exact test of each comparison, Holm-adjusted within the table; "better" only where significant."""
    pairs = comparisons(rows)
    if not pairs:
        return []
    tests = [mcnemar(a["correct"], b["correct"]) for _, a, b in pairs]
    adjusted = holm([test.p_value for test in tests])
    return [
        "Paired comparisons (paper protocol, McNemar's exact test on the same test texts, Holm-adjusted within this "
        'table; "better" only where the adjusted p < 0.05):',
        "",
        *table(
            ["comparison", "a - b (points)", "texts only a / only b right", "p", "Holm p", "verdict"],
            [
                [
                    name,
                    f"{100 * test.difference:+.1f}",
                    f"{test.only_a}/{test.only_b}",
                    f"{test.p_value:.3g}",
                    f"{p:.3g}",
                    ("a better" if test.difference > 0 else "b better") if p < 0.05 else "no significant difference",
                ]
                for (name, _, _), test, p in zip(pairs, tests, adjusted, strict=True)
            ],
        ),
    ]


def summary_cell(rows: list[dict], role: str, models: str, dataset: str) -> str:
    """``standard / paper (layers)`` of a role and models on a dataset; layer choices may differ by dataset."""
    for row in rows:
        if (row["role"], row["models"], row["dataset"]) == (role, models, dataset) and (
            row["standard_accuracy"] or row["paper_accuracy"]
        ):
            layers = f" ({row['layers']})" if row["layers"] != "-" else ""
            return f"{row['standard_accuracy'] or '–'} / {row['paper_accuracy'] or '–'}{layers}"
    return ""


def table(header: list[str], body: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in body
    ]


if __name__ == "__main__":
    main()
