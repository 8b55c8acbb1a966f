"""eval/selection_runs.py resumes a stopped full-data run from run_task's report.json: the rows it rebuilds from
the report, and their test scores, must be run_task's own, or a resumed table would differ from a fresh one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lafusion_st.data import LabeledTexts
from lafusion_st.pipeline import run_task, score_on_test
from lafusion_st.probe import ProbeConfig
from lafusion_st.spec import RunSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eval"))  # the eval scripts are not a package
from selection_runs import chosen_rows, reusable_report  # noqa: E402

FAST = ProbeConfig(folds=4, max_iter=200, Cs=(0.01, 0.1, 1.0))


def test_rows_rebuilt_from_the_report_are_run_tasks_rows(tiny_models, good_or_not, tmp_path, scan_cache_dir) -> None:
    models = [tiny_models["llama"], tiny_models["bert"]]
    settings = RunSettings(poolings=("mean", "last"), probe=FAST, max_layers=2)
    test = LabeledTexts(good_or_not.texts[:40], good_or_not.labels[:40])
    result = run_task("good", good_or_not, test, models, tmp_path / "run", settings)
    report = json.loads(result.report_path.read_text())

    rows = chosen_rows(report, models, settings)
    assert list(rows) == list(result.rows)  # the same roles, in run_task's order
    for key, row in rows.items():
        assert row.spec == result.rows[key].spec and row.cv == result.rows[key].cv, key
    scores = score_on_test([row.spec for row in rows.values()], result.scans, good_or_not, test, FAST)
    for key, row in result.rows.items():
        assert np.array_equal(scores[row.spec].correct, row.test.correct) and scores[row.spec].C == row.test.C, key
    assert reusable_report(result.report_path, "good", good_or_not, models, settings) == report
    other_labels = LabeledTexts(good_or_not.texts, [1 - label for label in good_or_not.labels])
    assert reusable_report(result.report_path, "good", other_labels, models, settings) is None
