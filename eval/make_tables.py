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
import warnings
from pathlib import Path

from mteb.results import TaskResult
from runner import REPOSITORY, Configuration, Plan, load_plan, revisions, run_costs, run_evaluations
from sklearn.exceptions import ConvergenceWarning

from lafusion_st.mteb_tasks import TASKS

COLUMNS = [
    "dataset", "role", "models", "embedder", "layers", "standard_accuracy", "standard_accuracy_sd", "paper_accuracy",
    "paper_macro_f1", "embedding_dimension", "parameters_millions",
    "peak_rss_mib", "model_rss_mib", "sentences_per_second", "load_average", "command",
]  # fmt: skip
DISPLAY_NAMES = {"sst2": "SST-2", "mr": "MR", "r8": "R8", "r52": "R52"}
TABLES_START, TABLES_END = "<!-- tables:start -->", "<!-- tables:end -->"


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
        "--no-costs",
        action="store_true",
        help="evaluate only; measure the costs in a later run, when the machine is quiet",
    )
    args = parser.parse_args()
    # MTEB's standard protocol fits LogisticRegression(max_iter=100), which often stops before converging:
    # that is the protocol, not an error, and one warning per fit would bury the progress lines.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)

    if not args.no_run:
        plan = load_plan(args.config, args.datasets, args.only)
        run_evaluations(plan, overwrite=args.overwrite)
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
        insert_tables(args.results_md, tables)
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


def insert_tables(path: Path, tables: str) -> None:
    """Replace what lies between the ``TABLES_START`` and ``TABLES_END`` markers of ``path`` by ``tables``."""
    text = path.read_text(encoding="utf-8")
    if TABLES_START not in text or TABLES_END not in text:
        raise SystemExit(f"{path} lacks the markers {TABLES_START} ... {TABLES_END} that say where the tables go.")
    head, rest = text.split(TABLES_START, 1)
    tail = rest.split(TABLES_END, 1)[1]
    tables = tables.replace("\n## ", "\n### ")  # one heading level below the document's sections
    path.write_text(f"{head}{TABLES_START}\n{tables}{TABLES_END}{tail}", encoding="utf-8")


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
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def markdown(plan: Plan, rows: list[dict]) -> str:
    lines = [
        "<!-- generated by eval/make_tables.py; do not edit by hand -->",
        f"Data: {sample_note(plan)}. Standard = MTEB's protocol (8 examples per label, 10 experiments; mean ± sd). "
        "Paper = probe on the whole (subsampled) training split, one experiment. Scores in %. "
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
                "paper acc",
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
                    row["paper_accuracy"],
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
        lines += ["", "Commands, by row:", ""] + [f"{i}. `{row['command']}`" for i, row in enumerate(dataset_rows, 1)]
    return "\n".join(lines) + "\n"


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
