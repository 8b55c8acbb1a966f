"""Layer-aware selection on the bundled datasets: the evidence tables of eval/selection/SUMMARY.md.

Run:  .venv/bin/python eval/selection_runs.py [--config eval/configs.json] [--datasets sst2 mr r8 r52] [--models ...]
      (--summary-only rewrites SUMMARY.md from the datasets already run, e.g. after merging runs made apart)

For each dataset, one ``run_task`` (the code behind ``lafusion run``) with SmolLM2-135M, Gemma3-270M and
MiniLM-L6 by default: every layer of every model scanned once in every candidate pooling (cached), layers
ranked by 5-fold CV on the training subsample only, a greedy layer fusion grown from the last layer under
the noise rule, the pooling and the final choice made by the tuned probe, a greedy choice of models, then
the test split scores what was chosen with the tuned probe (95% bootstrap intervals over test texts).
Three more tables come from the same scans:

* **comparisons**: McNemar tests of the choice against the last layer and against the best single layer,
  of the two LLMs fused against the better one, and of the best LLM choice against MiniLM, Holm-adjusted
  within each dataset's table;
* **oracle gap**: per model, the automatic choice against the single layer (any searched pooling) with the
  best *test* accuracy, a ceiling that is never used to choose anything;
* **before/after**: the test accuracies the former probe (``C=1``, threshold 0.002) gave for the same
  roles, read from ``<output>/<dataset>/summary_former_probe.json`` (the previous run's summary, kept).

The data settings come from the configuration file that ``eval/make_tables.py`` reads next (one home for
them): its ``subsample`` sizes and seed, and its ``selection_folder`` (``<output>`` below), where the MTEB
configurations ``"best layer"`` and ``"greedy layers"`` find these choices. ``eval/configs.json`` holds the
subsamples of eval/RESULTS.md's first tables (stratified, seed 0, because scanning every dataset with two LLMs
takes hours on a 2-core CPU); ``eval/configs_full.json`` the full splits (see ``eval/full_data.py``).

Writes ``<output>/<dataset>/{report.json,layer_curves.png,summary.json}`` (the fused embedders under
``model/`` are not kept in git) and ``<output>/SUMMARY.md`` from all datasets run so far.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from joblib import Parallel, delayed
from runner import REPOSITORY, Plan, load_data_plan
from tqdm.auto import tqdm

from lafusion_st.pipeline import (
    BEST_LAYER,
    FUSED_LAYERS,
    LAST_LAYER,
    RunResult,
    run_task,
    score_fusion_on_test,
)
from lafusion_st.probe import ProbeConfig, fit_and_test
from lafusion_st.scan import fused_from_scan
from lafusion_st.spec import RunSettings
from lafusion_st.stats import holm, mcnemar

LLMS = ["smollm2-135m", "gemma3-270m"]
BASELINE = "minilm-l6"
MODELS = [*LLMS, BASELINE]
FORMER = "summary_former_probe.json"
DEFAULT_CONFIG = REPOSITORY / "eval" / "configs.json"
# The probes' worker processes (ProbeConfig.n_jobs: ranked layers, tuned CV folds, the oracle's fits): four
# tuned fits on full R52 (MiniLM layers, 52 classes) took 96.0 s one after another and 52.8 s two at a time
# on the idle 2-core machine, with identical coefficients. Every fit is single-threaded whatever the count.
WORKERS = 2


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def interval(score) -> str:
    return (
        f"{percent(score.accuracy)} [{percent(score.accuracy_interval.low)}, {percent(score.accuracy_interval.high)}]"
    )


def configuration_rows(task: str, result: RunResult) -> list[str]:
    """``dataset | configuration | pooling | CV acc | test acc [95% CI] | macro-F1 | C``."""
    return [
        f"| {task} | {row.label} | {'/'.join(dict.fromkeys(row.spec.pooling))} | {percent(row.cv.accuracy_mean)} | "
        f"{interval(row.test)} | {percent(row.test.macro_f1)} | {row.test.C:g} |"
        for row in result.rows.values()
    ]


def comparison_rows(task: str, result: RunResult, models: list[str], settings, train, test) -> list[str]:
    """The paired comparisons the text makes, McNemar with Holm's adjustment over this dataset's table."""
    pairs = []
    for model in models:
        fused, last, best = (result.rows[(model, role)] for role in (FUSED_LAYERS, LAST_LAYER, BEST_LAYER))
        if best.spec == last.spec:  # one test, counted once in Holm's family
            pairs.append((f"{model}: choice vs last layer (also the best single layer on CV)", fused, last))
        else:
            pairs += [
                (f"{model}: choice vs last layer", fused, last),
                (f"{model}: choice vs best single layer", fused, best),
            ]
    llms = [model for model in LLMS if model in models]
    by_cv = lambda model: result.rows[(model, FUSED_LAYERS)].cv.accuracy_mean  # noqa: E731 (chosen on train)
    if len(llms) == 2:
        pair_spec = settings.spec(llms, [result.layers(m) for m in llms], [result.searches[m].pooling for m in llms])
        pair = score_fusion_on_test(result.scans, pair_spec, train, test, settings.probe)
        better = max(llms, key=by_cv)
        pairs.append((f"two LLMs vs the better ({better})", _Scored(pair), result.rows[(better, FUSED_LAYERS)]))
    if llms and BASELINE in models:
        best_llm = max(llms, key=by_cv)
        pairs.append(
            (
                f"{best_llm} choice vs MiniLM choice",
                result.rows[(best_llm, FUSED_LAYERS)],
                result.rows[(BASELINE, FUSED_LAYERS)],
            )
        )
    pairs = [(name, a, b) for name, a, b in pairs if getattr(a, "spec", None) is None or a.spec != b.spec]
    tests = [mcnemar(a.test.correct, b.test.correct) for _, a, b in pairs]
    adjusted = holm([test.p_value for test in tests])
    return [
        f"| {task} | {name} | {percent(a.test.accuracy)} | {percent(b.test.accuracy)} | {100 * t.difference:+.1f} | "
        f"{t.only_a}/{t.only_b} | {t.p_value:.3g} | {p:.3g} | {'yes' if p < 0.05 else 'no'} |"
        for (name, a, b), t, p in zip(pairs, tests, adjusted, strict=True)
    ]


class _Scored:
    """A test score standing in for a row (the LLM pair is scored outside ``run_task``)."""

    def __init__(self, test) -> None:
        self.test = test


def oracle_rows(task: str, result: RunResult, models: list[str], settings, train, test) -> list[str]:
    """Per model: the automatic choice, the last layer, and the best single layer on *test* (a ceiling)."""
    lines = []
    for model in models:
        oracle_accuracy, oracle_name = -1.0, ""
        candidates = [
            (pooling, layer)
            for pooling in settings.poolings
            for layer in range(result.scans.train[model][pooling].vectors.shape[0])
        ]
        # One tuned-probe fit per layer and pooling on the whole training split (an hour and more on full
        # R52), independent of each other: in worker processes, each fit single-threaded and unchanged. This
        # is score_fusion_on_test split in two: the layer's features are cut from the scan here, so a worker
        # receives one layer's matrices rather than a pickle of every model's whole scan.
        specs = [settings.spec([model], [[layer]], [pooling]) for pooling, layer in candidates]
        fits = (
            delayed(fit_and_test)(
                fused_from_scan(result.scans.train, spec), train.labels,
                fused_from_scan(result.scans.test, spec), test.labels, settings.probe,
            )
            for spec in specs
        )  # fmt: skip
        scores = Parallel(n_jobs=settings.probe.n_jobs, return_as="generator")(fits)
        for (pooling, layer), score in zip(
            candidates, tqdm(scores, total=len(candidates), desc=f"oracle {model}", unit="layer"), strict=True
        ):
            if score.accuracy > oracle_accuracy:
                oracle_accuracy, oracle_name = score.accuracy, f"{pooling} [{layer}]"
        auto, last = result.rows[(model, FUSED_LAYERS)], result.rows[(model, LAST_LAYER)]
        choice = f"{result.searches[model].pooling} {result.layers(model)}"
        lines.append(
            f"| {task} | {model} | {choice} | {percent(auto.test.accuracy)} | "
            f"{percent(last.test.accuracy)} | {oracle_name} {percent(oracle_accuracy)} | "
            f"{100 * (auto.test.accuracy - oracle_accuracy):+.1f} |"
        )
    return lines


def before_after_rows(task: str, result: RunResult, output: Path) -> list[str]:
    """The former probe's test accuracy per configuration role (from the kept former summary) and today's."""
    path = output / task / FORMER
    if not path.is_file():
        return []
    former = {}
    for line in json.loads(path.read_text(encoding="utf-8"))["rows"]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        former[cells[1]] = cells[3]
    lines = []
    for (model, role), row in result.rows.items():
        match = next((name for name in former if name.startswith(f"{model} {role} ")), None)
        if match is not None:
            lines.append(
                f"| {task} | {model} {role} | {match[len(model) + len(role) + 2 :]} {former[match]} | "
                f"{'/'.join(dict.fromkeys(row.spec.pooling))} {list(row.spec.layers[0])} {percent(row.test.accuracy)} |"
            )
    return lines


def header(*columns: str) -> list[str]:
    """A Markdown table's header and rule."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def former_probe_section(table: list[str]) -> list[str]:
    """The former-vs-tuned probe table, or nothing where no dataset kept a former summary (a header
    without rows would read as a table whose rows were lost)."""
    if len(table) <= 2:
        return []
    return [
        "## Former probe (C = 1, threshold 0.002, mean pooling) and tuned probe, same subsamples (test acc., %)",
        "",
        *table,
        "",
    ]


def write_summary(plan: Plan, config: Path, settings: RunSettings) -> str:
    """``SUMMARY.md`` from every dataset's ``summary.json`` in the selection folder (datasets may be run
    separately)."""
    output = plan.selection_folder
    tables = {
        "rows": header(
            "dataset", "configuration", "pooling", "CV acc. (train, tuned probe)", "test acc. [95% CI]",
            "test macro-F1", "C",
        ),
        "comparisons": header(
            "dataset", "comparison", "a", "b", "a - b (points)", "texts only a / only b right", "McNemar p",
            "Holm p", "significant (Holm p < 0.05)",
        ),
        "oracle": header(
            "dataset", "model", "automatic choice", "its test acc.", "last layer",
            "oracle single layer (chosen on test)", "gap to oracle (points)",
        ),
        "before_after": header(
            "dataset", "configuration", "former probe (C=1): layers, test acc.",
            "tuned probe: pooling, layers, test acc.",
        ),
    }  # fmt: skip
    sizes, seconds, kept, models, done = [], [], [], set(), []
    for task in plan.datasets:
        path = output / task / "summary.json"
        part = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if "comparisons" in part:  # summaries of the former probe have none: listed as not regenerated
            for key in tables:
                tables[key] += part[key]
            sizes.append(f"{task} {part['size']}")
            # runs before the probes' worker processes were recorded had one (and the oracle's fits too)
            seconds.append(f"{task} {part['seconds']:.0f} s with {part.get('workers', 1)} probe process(es)")
            kept.append(f"{task} {part['kept_simpler']}")
            done.append(task)
            models.update(part["models"])
    not_regenerated = [task for task in plan.datasets if task not in done]
    config_option = "" if config.resolve() == DEFAULT_CONFIG else f"--config {config} "
    text = "\n".join(
        [
            "<!-- generated by eval/selection_runs.py; do not edit by hand -->",
            f"Command: `python eval/selection_runs.py {config_option}--datasets {' '.join(done)} "
            f"--models {' '.join(sorted(models))}`. Train/test texts: {', '.join(sizes)} (stratified subsamples, "
            f"seed {plan.seed}, where smaller than the full split). "
            f"Candidate poolings {', '.join(settings.poolings)} (the first is the default), max_seq_length "
            f"{settings.max_seq_length}, at most {settings.max_layers} layers, noise rule: a more complex choice "
            f"must gain more than {settings.standard_errors:g} standard error(s) of its paired per-fold CV gain "
            f"(times it kept the simpler choice: {', '.join(kept)}). CV = 5-fold CV on the training subsample "
            "(ranking probe for the layer search; the tuned probe, standardised logistic regression with C chosen "
            "by an inner 3-fold CV, for the pooling, the final choice and every CV number below); test = the tuned "
            "probe fit on the whole training subsample, scored once on the test subsample, with a 95% bootstrap "
            "interval over test texts. Models: the 4-bit-derived GGUF SmolLM2-135M and Gemma3-270M (small "
            "4-bit-derived models, not the papers' 7B LLMs), and fp32 all-MiniLM-L6-v2. "
            f"Wall time per dataset on a 2-core CPU (scan + probes + oracle): {', '.join(seconds)}.",
            "",
            f"Not run yet with the tuned probe: {', '.join(not_regenerated) or 'none'}.",
            "",
            "## Is the automatic choice better than the last layer, the best single layer, MiniLM? (test accuracy, %)",
            "",
            'Paired McNemar tests on the same test texts, Holm-adjusted within each dataset; "better" only where '
            "the adjusted p is below 0.05.",
            "",
            *tables["comparisons"],
            "",
            "## How far is the automatic choice from the best layer on test? (%)",
            "",
            "The oracle is the single layer (of any searched pooling) with the best test accuracy: a ceiling, never "
            "used to choose. Goal: within 1 point of it, and never significantly below the last layer.",
            "",
            *tables["oracle"],
            "",
            *former_probe_section(tables["before_after"]),
            "## All configurations (%)",
            "",
            *tables["rows"],
            "",
        ]
    )
    (output / "SUMMARY.md").write_text(text, encoding="utf-8")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="data settings (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", help="default: those of the config file")
    parser.add_argument("--models", nargs="+", default=MODELS, help=f"default: {' '.join(MODELS)}")
    parser.add_argument(
        "--workers", type=int, default=WORKERS,
        help="processes for the probes' fits (default: %(default)s; 1 on a machine shared with other jobs)",
    )  # fmt: skip
    parser.add_argument(
        "--summary-only", action="store_true",
        help="only rewrite SUMMARY.md from the summary.json files already written (no scans, no probes)",
    )  # fmt: skip
    args = parser.parse_args()
    settings = RunSettings(probe=ProbeConfig(n_jobs=args.workers))
    plan = load_data_plan(args.config, args.datasets)
    output = plan.selection_folder
    for task in [] if args.summary_only else plan.datasets:
        train, test = plan.splits(task)
        start = time.perf_counter()
        result = run_task(task, train, test, args.models, output / task, settings)
        summary = {
            "size": f"{len(train)}/{len(test)}",
            "models": args.models,
            "rows": configuration_rows(task, result),
            "comparisons": comparison_rows(task, result, args.models, settings, train, test),
            "oracle": oracle_rows(task, result, args.models, settings, train, test),
            "before_after": before_after_rows(task, result, output),
            "kept_simpler": sum(len(search.kept_simpler) for search in result.searches.values()),
        }
        summary["seconds"] = time.perf_counter() - start
        summary["workers"] = settings.probe.n_jobs
        (output / task / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"{task}: {summary['seconds']:.0f} s", flush=True)
    print(write_summary(load_data_plan(args.config), args.config, settings))


if __name__ == "__main__":
    main()
