"""The committed evidence agrees with itself: where an MTEB table and a selection report score the same
configuration, the paper protocol's test accuracy is the selection's.

Both fit the tuned probe on the same training rows in the same order (the paper protocol trains on every row in
the split's order: ``lafusion_st.mteb_tasks.train_on_every_row``) and on the same vectors (the MTEB runner hands
MTEB the scan's own rows: ``CachedEncoder.remember``), so they agree to the six digits MTEB writes. Before both
were so, one table's figure could move by a point against the other's on the same texts (eval/RESULTS.md). Reads
committed files only.
"""

from __future__ import annotations

import json

import pytest
from runner import REPOSITORY, load_plan
from selection_runs import MODELS, chosen_rows

from lafusion_st.spec import RunSettings


@pytest.mark.parametrize("config", ["eval/configs_full.json", "eval/configs.json"])
def test_paper_protocol_accuracy_is_the_selections_test_accuracy(config: str) -> None:
    plan = load_plan(REPOSITORY / config)
    compared = []
    for dataset in plan.datasets:
        report = json.loads((plan.selection_folder / dataset / "report.json").read_text(encoding="utf-8"))
        rows = chosen_rows(report, MODELS, RunSettings())
        tested = {row.spec: report["test"][row.label]["accuracy"] for row in rows.values()}
        (paper,) = [task.metadata.name for task in plan.tasks(dataset) if task.n_experiments == 1]
        for configuration in plan.configurations:
            if configuration.dataset != dataset or configuration.spec not in tested:
                continue
            folder = plan.results_folder / "results" / configuration.name.replace("/", "__")
            (path,) = folder.glob(f"*/{paper}.json")  # one revision of the embedder
            accuracy = json.loads(path.read_text(encoding="utf-8"))["scores"]["test"][0]["accuracy"]
            assert accuracy == round(tested[configuration.spec], 6), (dataset, configuration.name)
            compared.append((dataset, configuration.role))
    # every dataset's last layer, best single layer and fused layers of both LLMs
    assert len(compared) == 6 * len(plan.datasets), compared
