"""eval/runner.py: a cached result counts only under the configuration's own weights revision."""

from __future__ import annotations

from pathlib import Path

from runner import Configuration, Plan

from lafusion_st.spec import EmbedderSpec


def test_results_of_another_revision_are_not_taken_for_this_one(tmp_path: Path) -> None:
    spec = EmbedderSpec("smollm2-135m", [30])
    configuration = Configuration("sst2", "last layer", spec.name, spec=spec)
    plan = Plan(tmp_path, ("sst2",), ("paper",), {"sst2": (40, 20)}, 0, 32, 8, (configuration,))
    (task,) = plan.tasks("sst2")
    folder = tmp_path / "results" / spec.name.replace("/", "__")
    (folder / "0ther0revision00").mkdir(parents=True)
    (folder / "0ther0revision00" / f"{task.metadata.name}.json").write_text("{}")
    assert plan.result_path(spec.name, "158f638fe5a26827", task.metadata.name) is None
    assert plan.missing(configuration, "158f638fe5a26827")
    (folder / "158f638fe5a26827").mkdir()
    (folder / "158f638fe5a26827" / f"{task.metadata.name}.json").write_text("{}")
    assert plan.result_path(spec.name, "158f638fe5a26827", task.metadata.name) is not None
    assert not plan.missing(configuration, "158f638fe5a26827")
