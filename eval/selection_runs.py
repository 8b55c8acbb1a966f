"""Layer-aware selection on the bundled datasets: the evidence tables of eval/selection/SUMMARY.md.

Run:  .venv/bin/python eval/selection_runs.py [--config eval/configs.json] [--datasets sst2 mr r8 r52] [--models ...]
      (--summary-only rewrites SUMMARY.md from the datasets already run, e.g. after merging runs made apart)

For each dataset, two stages. **Selection**: one ``run_task`` (the code behind ``lafusion select``) with
SmolLM2-135M, Gemma3-270M and MiniLM-L6 by default, given no test text: every layer of every model scanned
once in every candidate pooling (cached), layers ranked by 5-fold CV on the training subsample only, a greedy
layer fusion grown from the last layer under the noise rule, the pooling and the final choice made by the
tuned probe, a greedy choice of models; its report.json holds every choice. **Test scoring**: from that report
and the scans, the tuned probe fit on the whole training split and scored on the test split (95% bootstrap
intervals over test texts) for each configuration the tables need, each fitted once, in worker processes. A
report.json already there from the same data size and settings is reused (``--reselect`` redoes it), so a run
stopped after the selection, hours on full R52, resumes at the test scoring. Three more tables come from the
same fits, and the oracle's from its own:

* **comparisons**: McNemar tests of the choice against the last layer and against the best single layer,
  of the two LLMs fused against the better one, and of the best LLM choice against MiniLM, Holm-adjusted
  within each dataset's table;
* **oracle gap**: per model, the automatic choice against the single layer (any searched pooling) and ``C``
  with the best *test* accuracy (``fit_and_test_every_C``: the tuned probe's model along its ``C`` grid, a
  third of the cost of 114 inner-CV fits on full R52), a ceiling that is never used to choose anything;
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
from dataclasses import replace
from pathlib import Path

from runner import REPOSITORY, Plan, load_data_plan

from lafusion_st.data import check_classification_data
from lafusion_st.pipeline import (
    ALL_MODELS,
    BEST_LAYER,
    FUSED_LAYERS,
    GREEDY_MODELS,
    LAST_LAYER,
    Row,
    compare_rows,
    joined_spec,
    run_task,
    score_on_test,
)
from lafusion_st.probe import ProbeConfig, ProbeScore, TestScore, fit_and_test_every_C
from lafusion_st.report import save_report
from lafusion_st.scan import TaskScan, scan_task
from lafusion_st.spec import EmbedderSpec, RunSettings
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
ROLE_NAMES = {LAST_LAYER: "last layer", BEST_LAYER: "best single layer"}  # as the comparisons table says them


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def interval(score) -> str:
    return (
        f"{percent(score.accuracy)} [{percent(score.accuracy_interval.low)}, {percent(score.accuracy_interval.high)}]"
    )


def reusable_report(path: Path, task: str, train, models: list[str], settings: RunSettings) -> dict | None:
    """The report of an earlier selection at ``path`` if it was made on the same training texts and labels
    (their SHA-256), models and settings (poolings, token limit, precision, noise rule, layer limit, seeds, probe
    with any worker count), else ``None``; also ``None`` for a report that does not record all of them (written
    before they were recorded, or by coarse-to-fine), which is then redone rather than trusted.

    This is what makes a stopped run resumable: the selection (hours on full R52) is kept once written, and
    only the test scoring, which the report's choices fully determine, is redone.
    """
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    recorded = report.get("settings") or {}
    probe, wanted_probe = _fit_settings(report.get("probe") or {}), _fit_settings(vars(settings.probe))
    wanted = {
        "train_sha256": train.fingerprint(),
        "models": models,
        "poolings": list(settings.poolings),
        "max_seq_length": settings.max_seq_length,
        "standard_errors": settings.standard_errors,
        "max_layers": settings.max_layers,
        "seeds": settings.seeds,
        "coarse_to_fine": None,
    }
    same = (
        report.get("task") == task
        and all(key in recorded and recorded[key] == value for key, value in wanted.items())
        and (recorded.get("chosen") or {}).get("dtype") == settings.dtype
        and probe == wanted_probe
    )
    return report if same else None


def _fit_settings(probe: dict) -> dict:
    """A probe's settings that change its fits, as JSON has them: all but the worker count (speed only)."""
    return {key: value for key, value in json.loads(json.dumps(probe)).items() if key != "n_jobs"}


def chosen_rows(report: dict, models: list[str], settings: RunSettings) -> dict[tuple[str, str], Row]:
    """The rows ``run_task`` scored, in its order, rebuilt from its report: each role's configuration and its
    tuned-probe CV score on the training split (no test score yet)."""
    selections, cv = report["selections"], report["cv"]
    single = {
        model: settings.spec([model], [selections[model]["chosen"]], [selections[model]["pooling"]]) for model in models
    }
    specs = {}
    for model in models:
        specs[(model, LAST_LAYER)] = settings.spec([model], [[report["models"][model]["last_layer"]]])
        pooling = selections[model]["pooling"]
        best = selections[model]["best_single"][pooling]["layer"]  # the search's best single layer in its pooling
        specs[(model, BEST_LAYER)] = settings.spec([model], [[best]], [pooling])
        specs[(model, FUSED_LAYERS)] = single[model]
    chosen_models = report["settings"]["chosen_models"]
    for role, kept in ((ALL_MODELS, models), (GREEDY_MODELS, chosen_models)):
        if len(models) > 1 and (role == ALL_MODELS or len(kept) < len(models)):
            specs[("+".join(kept), role)] = joined_spec(single, kept)
    rows = {}
    for key, spec in specs.items():
        label = Row(key[1], spec, None).label  # type: ignore[arg-type]
        if label not in cv:
            raise ValueError(f"The report has no CV score for {label!r}: it was not written by this script's run_task.")
        rows[key] = Row(key[1], spec, ProbeScore.from_dict(cv[label]))
    return rows


def record_test_scores(path: Path, report: dict, rows: dict[tuple[str, str], Row]) -> None:
    """Put the rows' test fits into the report's ``test`` section, as ``lafusion run`` writes them when given the
    test split (full precision: ``eval/test_tables_agree.py`` compares them with the MTEB paper protocol's).

    The choices above them were made before any test text was read; only this section holds test results, and
    :func:`reusable_report` does not read it.
    """
    report["test"] = {row.label: row.test.to_dict() for row in rows.values()}
    save_report(path, report)


def llm_pair(rows: dict[tuple[str, str], Row], models: list[str]) -> EmbedderSpec | None:
    """The two LLMs' choices fused (scored for the "two LLMs vs the better one" comparison), if both ran."""
    llms = [model for model in LLMS if model in models]
    if len(llms) != 2:
        return None
    return joined_spec({model: rows[(model, FUSED_LAYERS)].spec for model in llms}, llms)


def single_layers(model: str, scans: TaskScan, settings: RunSettings) -> list[EmbedderSpec]:
    """Every layer of ``model`` in every searched pooling: the oracle's candidates."""
    return [
        settings.spec([model], [[layer]], [pooling])
        for pooling in settings.poolings
        for layer in range(scans.train[model][pooling].vectors.shape[0])
    ]


def configuration_rows(task: str, rows: dict[tuple[str, str], Row]) -> list[str]:
    """``dataset | configuration | pooling | CV acc | test acc [95% CI] | macro-F1 | C``."""
    return [
        f"| {task} | {row.label} | {'/'.join(dict.fromkeys(row.spec.pooling))} | {percent(row.cv.accuracy_mean)} | "
        f"{interval(row.test)} | {percent(row.test.macro_f1)} | {row.test.C:g} |"
        for row in rows.values()
    ]


def comparison_rows(task: str, rows: dict[tuple[str, str], Row], models: list[str], pair) -> list[str]:
    """The paired comparisons the text makes, McNemar with Holm's adjustment over this dataset's table.

    Per model, the pairs of ``lafusion run`` (:func:`compare_rows`: a last layer that is also the best single
    layer is tested once); then the two LLMs fused against the better one (``pair``, its test score) and the
    best LLM choice against MiniLM's. The better LLM is the one with the better CV score: chosen on training data.
    """
    roles = {row.label: (model, role) for (model, role), row in rows.items()}
    named = []
    for comparison in compare_rows(rows, models):
        model, role = roles[comparison.worse]
        also_best = role == LAST_LAYER and rows[(model, BEST_LAYER)].spec == rows[(model, LAST_LAYER)].spec
        named.append(
            (
                f"{model}: choice vs {ROLE_NAMES[role]}" + (" (also the best single layer on CV)" if also_best else ""),
                rows[roles[comparison.better]].test,
                rows[roles[comparison.worse]].test,
            )
        )
    llms = [model for model in LLMS if model in models]
    if llms:  # the better LLM by its CV score: chosen on training data
        best_llm = max(llms, key=lambda model: rows[(model, FUSED_LAYERS)].cv.accuracy_mean)
        if pair is not None:
            named.append((f"two LLMs vs the better ({best_llm})", pair, rows[(best_llm, FUSED_LAYERS)].test))
        if BASELINE in models:
            choices = rows[(best_llm, FUSED_LAYERS)].test, rows[(BASELINE, FUSED_LAYERS)].test
            named.append((f"{best_llm} choice vs MiniLM choice", *choices))
    tests = [mcnemar(a.correct, b.correct) for _, a, b in named]
    adjusted = holm([test.p_value for test in tests])
    return [
        f"| {task} | {name} | {percent(a.accuracy)} | {percent(b.accuracy)} | {100 * t.difference:+.1f} | "
        f"{t.only_a}/{t.only_b} | {t.p_value:.3g} | {p:.3g} | {'yes' if p < 0.05 else 'no'} |"
        for (name, a, b), t, p in zip(named, tests, adjusted, strict=True)
    ]


def oracle_rows(
    task: str,
    rows: dict[tuple[str, str], Row],
    models: list[str],
    scans: TaskScan,
    settings: RunSettings,
    path_scores: dict[EmbedderSpec, list[TestScore]],
) -> list[str]:
    """Per model: the automatic choice, the last layer, and the ceiling: the single layer and ``C`` best on
    *test* (``path_scores``: each single layer's test scores along the probe's ``C`` grid)."""
    lines = []
    for model in models:
        candidates = [(spec, score) for spec in single_layers(model, scans, settings) for score in path_scores[spec]]
        oracle, best = max(candidates, key=lambda candidate: candidate[1].accuracy)  # the first of ties
        auto, last = rows[(model, FUSED_LAYERS)], rows[(model, LAST_LAYER)]
        choice = f"{auto.spec.pooling[0]} {list(auto.spec.layers[0])}"
        lines.append(
            f"| {task} | {model} | {choice} | {percent(auto.test.accuracy)} | "
            f"{percent(last.test.accuracy)} | {oracle.pooling[0]} {list(oracle.layers[0])}, C = {best.C:g}: "
            f"{percent(best.accuracy)} | {100 * (auto.test.accuracy - best.accuracy):+.1f} |"
        )
    return lines


def before_after_rows(task: str, rows: dict[tuple[str, str], Row], output: Path) -> list[str]:
    """The former probe's test accuracy per configuration role (from the kept former summary) and today's."""
    path = output / task / FORMER
    if not path.is_file():
        return []
    former = {}
    for line in json.loads(path.read_text(encoding="utf-8"))["rows"]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        former[cells[1]] = cells[3]
    lines = []
    for (model, role), row in rows.items():
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
            "oracle: single layer and C chosen on test", "gap to oracle (points)",
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
            reused = " (test scoring only: an earlier run's selection reused)" if part.get("reused_selection") else ""
            seconds.append(f"{task} {part['seconds']:.0f} s with {part.get('workers', 1)} probe process(es){reused}")
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
            "The oracle is the single layer (of any searched pooling) and the C (of the tuned probe's grid) with the "
            "best test accuracy, the probe's logistic regression fit on the whole training split along its C grid: "
            "a ceiling, never used to choose. Goal: within 1 point of it, and never significantly below the last "
            "layer.",
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
        "--reselect", action="store_true",
        help="redo the selection even where a report.json of the same settings is there (default: reuse it)",
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
        report_path = output / task / "report.json"
        report = None if args.reselect else reusable_report(report_path, task, train, args.models, settings)
        reused = report is not None
        check_classification_data(train, test)  # e.g. test labels never seen in training: named, not scored wrong
        if not reused:  # the choices, on the training split only: run_task sees no test text
            run_task(task, train, None, args.models, output / task, settings)
            report = json.loads(report_path.read_text(encoding="utf-8"))
        else:
            print(f"{task}: reusing the selection of {report_path} ({report['created']})", flush=True)
        rows = chosen_rows(report, args.models, settings)
        scans = scan_task(args.models, train.texts, test.texts, settings.poolings, **settings.scan.scanner_arguments)
        pair = llm_pair(rows, args.models)
        specs = [row.spec for row in rows.values()] + ([pair] if pair else [])
        scores = score_on_test(specs, scans, train, test, settings.probe)
        singles = [spec for model in args.models for spec in single_layers(model, scans, settings)]
        path_scores = score_on_test(
            singles, scans, train, test, settings.probe, fit=fit_and_test_every_C, description="oracle fits (layer, C)"
        )
        rows = {key: replace(row, test=scores[row.spec]) for key, row in rows.items()}
        record_test_scores(report_path, report, rows)
        summary = {
            "size": f"{len(train)}/{len(test)}",
            "models": args.models,
            "rows": configuration_rows(task, rows),
            "comparisons": comparison_rows(task, rows, args.models, scores[pair] if pair else None),
            "oracle": oracle_rows(task, rows, args.models, scans, settings, path_scores),
            "before_after": before_after_rows(task, rows, output),
            "kept_simpler": sum(len(report["kept_simpler"][model]) for model in args.models),
            "seconds": time.perf_counter() - start,
            "workers": settings.probe.n_jobs,
            "reused_selection": reused,
        }
        (output / task / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"{task}: {summary['seconds']:.0f} s", flush=True)
    print(write_summary(load_data_plan(args.config), args.config, settings))


if __name__ == "__main__":
    main()
