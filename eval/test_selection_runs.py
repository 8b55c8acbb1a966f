"""eval/selection_runs.py's SUMMARY.md: rebuilt from each dataset's summary.json, which datasets may write in
separate runs (one full-data dataset per session), so it must not need the scans again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runner import REPOSITORY, load_data_plan
from selection_runs import write_summary

from lafusion_st.spec import RunSettings

ROW = "| r8 | smollm2-135m last layer [30] | mean | 90.0 | 89.0 [88.0, 90.0] | 80.0 | 0.01 |"


def write_dataset_summary(folder: Path, before_after: list[str]) -> None:
    folder.mkdir(parents=True)
    summary = {
        "size": "5485/2189", "models": ["smollm2-135m"], "rows": [ROW], "comparisons": [], "oracle": [],
        "before_after": before_after, "kept_simpler": 2, "seconds": 1234.0,
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def config_file(tmp_path: Path) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"selection_folder": str(tmp_path / "full"), "datasets": ["r8", "r52"]}))
    return config


def test_summary_only_rebuilds_from_the_datasets_run_and_names_those_not_run(tmp_path: Path) -> None:
    write_dataset_summary(tmp_path / "full" / "r8", before_after=[])
    command = [sys.executable, "eval/selection_runs.py", "--config", str(config_file(tmp_path)), "--summary-only"]
    done = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "full" / "SUMMARY.md").read_text(encoding="utf-8")
    assert ROW in text
    assert "Train/test texts: r8 5485/2189" in text and "r8 1234 s" in text
    assert "Not run yet with the tuned probe: r52." in text
    assert "Former probe" not in text  # no dataset kept a former summary: no empty table


def test_the_former_probe_table_appears_when_a_dataset_kept_one(tmp_path: Path) -> None:
    former = "| r8 | smollm2-135m last layer | [30] 88.0 | mean [30] 89.0 |"
    write_dataset_summary(tmp_path / "full" / "r8", before_after=[former])
    config = config_file(tmp_path)
    text = write_summary(load_data_plan(config), config, RunSettings())
    assert "## Former probe" in text and former in text
