"""eval/full_data.py: the step commands it runs, which end up in committed tables, rerun on any checkout."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from full_data import read_record, record_step, steps
from runner import REPOSITORY


def test_steps_use_repository_relative_paths_that_exist_and_skip_a_finished_selection() -> None:
    planned = steps("mr", ["selection", "mteb", "heads"], selection_done=False)
    assert [name for name, _ in planned] == ["selection", "mteb", "heads"]
    for _, command in planned:
        assert command[0] == sys.executable
        paths = [argument for argument in command[1:] if argument.endswith((".py", ".json"))]
        assert paths and all(not argument.startswith("/") and (REPOSITORY / argument).is_file() for argument in paths)
        assert command[-2:] == ["--datasets", "mr"]
    assert [name for name, _ in steps("mr", ["selection", "heads"], selection_done=True)] == ["heads"]


def test_each_step_script_accepts_the_arguments_it_is_given() -> None:
    for _, command in steps("r8", ["selection", "mteb", "heads"], selection_done=False):
        help_run = subprocess.run([*command[:2], "--help"], cwd=REPOSITORY, capture_output=True, text=True)
        assert help_run.returncode == 0, help_run.stderr
        for option in (argument for argument in command[2:] if argument.startswith("--")):
            assert option in help_run.stdout, (command[1], option)


def test_steps_running_at_once_keep_each_others_wall_time(tmp_path) -> None:
    path = tmp_path / "r52" / "run.json"
    fields = {"dataset": "r52", "command": "python eval/full_data.py r52"}
    assert read_record(path) == {"steps": {}}  # what a run of the MTEB step finds when it begins
    record_step(path, fields, "selection", 600.0)  # another run's step ends meanwhile
    record = record_step(path, fields, "mteb", 300.0)
    assert record["steps"].keys() == {"selection", "mteb"} and record["steps"]["selection"]["seconds"] == 600.0
    assert json.loads(path.read_text()) == record
    # where each step ran: scans agree bit for bit on one machine, not necessarily across CPUs
    assert record["steps"]["mteb"]["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["steps"]["mteb"]["machine"]["cpu"]
