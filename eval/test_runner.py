"""eval/runner.py: a cached result counts only under the configuration's own weights revision; one scan per model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import runner
from runner import REPOSITORY, Configuration, Plan, _poolings, load_plan, run_evaluations

from lafusion_st.spec import EmbedderSpec


def test_results_of_another_revision_are_not_taken_for_this_one(tmp_path: Path) -> None:
    spec = EmbedderSpec("smollm2-135m", [30])
    configuration = Configuration("sst2", "last layer", spec.name, spec=spec)
    plan = Plan(tmp_path, ("sst2",), ("paper",), {"sst2": (40, 20)}, 0, 32, 8, tmp_path, (configuration,))
    (task,) = plan.tasks("sst2")
    folder = tmp_path / "results" / spec.name.replace("/", "__")
    (folder / "0ther0revision00").mkdir(parents=True)
    (folder / "0ther0revision00" / f"{task.metadata.name}.json").write_text("{}")
    assert plan.result_path(spec.name, "158f638fe5a26827", task.metadata.name) is None
    assert plan.missing(configuration, "158f638fe5a26827")
    (folder / "158f638fe5a26827").mkdir()
    (folder / "158f638fe5a26827" / f"{task.metadata.name}.json").write_text("{}")
    assert plan.result_path(spec.name, "158f638fe5a26827", task.metadata.name) is not None
    # The paper protocol's interval and paired tests need its per-text predictions of the same revision.
    assert plan.missing(configuration, "158f638fe5a26827")
    predictions = plan.prediction_folder(spec.name, "158f638fe5a26827")
    predictions.mkdir(parents=True)
    (predictions / task.prediction_file_name).write_text("{}")
    assert not plan.missing(configuration, "158f638fe5a26827")


def test_comparison_table_pairs_the_stated_comparisons_with_holm() -> None:
    from make_tables import comparison_table

    def row(role: str, models: str, embedder: str, correct: list[bool]) -> dict:
        return {"role": role, "models": models, "embedder": embedder, "correct": np.array(correct)}

    right, wrong = [True] * 30, [False] * 30
    rows = [
        row("last layer", "m", "m-last", wrong + right),
        row("best single layer", "m", "m-best", right + right),
        row("fused layers", "m", "m-fused", right + right),
        row("baseline", "b", "b", right + wrong),
    ]
    lines = comparison_table(rows)
    body = [line for line in lines if line.startswith("| m")]
    assert [line.split(" | ")[0] for line in body] == [
        "| m: fused layers vs last layer",
        "| m: fused layers vs best single layer",
        "| m: fused layers vs b",
    ]
    # 30 discordant texts all one way: exact McNemar p = 2 * 0.5**30, twice (vs last, vs b); Holm: 3 * p for both.
    last = body[0].split(" | ")
    assert last[1:5] == ["+50.0", "30/0", f"{2 * 0.5**30:.3g}", f"{3 * 2 * 0.5**30:.3g}"]
    assert last[5].startswith("a better")
    assert body[1].split(" | ")[1:3] == ["+0.0", "0/0"] and "no significant" in body[1]


def test_a_last_layer_that_is_also_the_best_single_layer_is_tested_once() -> None:
    """On full R52 SmolLM2's best single layer on CV is its last ([30]): the table tested the fusion against it
    twice, and the duplicate counted in Holm's family (Holm p 0.00106 instead of 0.000793 for that test)."""
    from make_tables import comparison_table

    right, wrong = [True] * 30, [False] * 30
    rows = [
        {"role": role, "models": "m", "embedder": embedder, "correct": np.array(correct)}
        for role, embedder, correct in [
            ("last layer", "m-L30", wrong + right),
            ("best single layer", "m-L30", wrong + right),
            ("fused layers", "m-fused", right + right),
        ]
    ]
    body = [line for line in comparison_table(rows) if line.startswith("| m")]
    assert [line.split(" | ")[0] for line in body] == [
        "| m: fused layers vs last layer (also the best single layer on CV)"
    ]
    assert body[0].split(" | ")[3:5] == [f"{2 * 0.5**30:.3g}"] * 2  # a family of one: Holm leaves p as it is


def test_each_model_is_scanned_once_for_every_pooling_its_rows_use() -> None:
    """On MR the last-layer rows are mean-pooled and the chosen layers last-token: one scan serves both (before,
    a forward pass per pooling: SmolLM2's mean pass over full MR was most of its first row's 520 s)."""
    plan = load_plan(REPOSITORY / "eval" / "configs_full.json")
    assert _poolings(plan, "mr", "smollm2-135m", 256) == ["last", "mean"]
    assert _poolings(plan, "r8", "gemma3-270m", 256) == ["mean"]
    assert _poolings(plan, "mr", "gemma3-270m", 128) == []  # no row at another token limit


def test_an_embedder_that_fills_two_rows_of_a_dataset_is_evaluated_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On full MR Gemma3's best single layer is also its fusion ([11]): the MTEB step evaluated it twice (48 s
    each), in two worker processes writing the same result files."""
    chosen, last = EmbedderSpec("gemma3-270m", [11], pooling="last"), EmbedderSpec("gemma3-270m", [18])
    configurations = (
        Configuration("mr", "best single layer", chosen.name, spec=chosen),
        Configuration("mr", "fused layers", chosen.name, spec=chosen),
        Configuration("mr", "last layer", last.name, spec=last),
        Configuration("sst2", "fused layers", chosen.name, spec=chosen),  # another dataset: its own results
    )
    plan = Plan(tmp_path, ("mr", "sst2"), ("paper",), {}, 0, 8, 8, tmp_path, configurations)
    evaluated: list[tuple[str, str, str]] = []

    def record(plan: Plan, configuration: Configuration, overwrite: bool) -> str:
        evaluated.append((configuration.dataset, configuration.role, configuration.name))
        return "done"

    monkeypatch.setattr(runner, "_evaluate", record)
    run_evaluations(plan, workers=1, log=lambda line: None)
    assert evaluated == [
        ("mr", "best single layer", chosen.name),
        ("mr", "last layer", last.name),
        ("sst2", "fused layers", chosen.name),
    ]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")  # 16 test texts: F1 of empty classes
def test_configurations_evaluated_in_two_processes_give_the_results_of_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make_tables --workers 2`` runs configurations in worker processes: the same scores, logged in the
    plan's order, and results on disk that a later run finds (it says "cached", computes nothing)."""
    monkeypatch.setenv("LAFUSION_CACHE", str(tmp_path / "cache"))  # the workers inherit it: one scan cache
    specs = (EmbedderSpec("smollm2-135m", [3]), EmbedderSpec("smollm2-135m", [6], pooling="last"))
    configurations = tuple(Configuration("sst2", "layer", spec.name, spec=spec) for spec in specs)
    logs: dict[int, list[str]] = {}
    for workers in (1, 2):
        plan = Plan(
            tmp_path / f"results_{workers}", ("sst2",), ("paper",), {"sst2": (32, 16)}, 0, 8, 8, tmp_path,
            configurations,
        )  # fmt: skip
        logs[workers] = []
        run_evaluations(plan, log=logs[workers].append, workers=workers)
    timeless = lambda line: (line.split(" in ")[0], line.split(": ", 1)[1])  # noqa: E731
    assert [line.split()[:2] for line in logs[2]] == [["done", spec.name] for spec in specs]
    assert [timeless(line) for line in logs[2]] == [timeless(line) for line in logs[1]]
    again: list[str] = []
    run_evaluations(plan, log=again.append, workers=2)
    assert again == [f"cached   {spec.name} on sst2" for spec in specs]
