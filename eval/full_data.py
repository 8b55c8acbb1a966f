"""Full-data evidence, one dataset per command: selection, both MTEB protocols, costs and the heads table.

Run:  nohup .venv/bin/python eval/full_data.py DATASET > full_DATASET.log 2>&1 &

``DATASET`` is one of sst2, mr, r8, r52. The data settings are those of ``eval/configs_full.json`` (whole
splits; SST-2 keeps 20,000 stratified training phrases and its whole test split). The steps, each a
separate script that can also be run alone, in this order:

1. ``eval/selection_runs.py``: scans SmolLM2-135M, Gemma3-270M and MiniLM-L6 over every layer and
   candidate pooling, chooses layers, pooling and models by CV on the training split only, scores the test
   split with 95% intervals and Holm-corrected McNemar tests, and the oracle gap (``eval/full/DATASET``).
2. ``eval/make_tables.py``: both MTEB protocols for every configuration of the config file, from the same
   scans, the cost columns, and the tables (``eval/results_full``, and between the ``full-tables`` markers
   of eval/RESULTS.md).
3. ``eval/classifier_heads.py``: the logistic, MLP and (for the two LLMs) residual fusion heads on the
   chosen layers (``eval/full/classifier``).

Resumable: a step whose outputs are there is skipped (the selection when ``eval/full/DATASET/summary.json``
exists, the MTEB results per configuration, the heads per dataset), and a selection step that stopped after
its choices (``report.json``) restarts at its test scoring, so a run that stopped is restarted with the same
command. The MTEB and heads steps read only the choices (``report.json``), so once a selection has written
them, ``--steps mteb heads`` can run beside the selection step's test scoring (not beside a selection that is
still choosing: they would read the old report). Nothing depends on a scan cache being there: a
missing scan is recomputed (that is what makes a step slow, not wrong). The same holds for the fit cache
(``lafusion_st.fit_cache``), through which the MTEB paper protocol and the heads' logistic rows read the tuned
fits the selection's test scoring made instead of fitting them again. The wall time of each step, the CPU it
ran on and the settings are written to ``eval/full/DATASET/run.json``; commit ``eval/full``,
``eval/results_full`` and eval/RESULTS.md when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from runner import REPOSITORY, load_data_plan

from lafusion_st.files import write_text_atomic

# Repository-relative, as the steps (run in the repository) and run.json name it; absolute for loading here.
CONFIG_ARGUMENT = "eval/configs_full.json"
CONFIG = REPOSITORY / CONFIG_ARGUMENT


STEPS = ("selection", "mteb", "heads")


def steps(dataset: str, wanted: list[str], selection_done: bool) -> list[tuple[str, list[str]]]:
    """``(name, command)`` of the wanted steps still to run for ``dataset``, in order."""
    # Repository-relative paths (the steps run in the repository): they end up in the generated tables'
    # "Last command" lines, which must rerun on any checkout.
    scripts = {
        "selection": ["eval/selection_runs.py"],
        "mteb": ["eval/make_tables.py"],
        "heads": ["eval/classifier_heads.py", "--pair-datasets", dataset],
    }
    return [
        (name, [sys.executable, *scripts[name], "--config", CONFIG_ARGUMENT, "--datasets", dataset])
        for name in STEPS
        if name in wanted and not (name == "selection" and selection_done)
    ]


def read_record(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"steps": {}}


VECTOR_EXTENSIONS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_tile"}
"""The /proc/cpuinfo flags that change which kernels torch and MKL run."""


def machine() -> dict:
    """The CPU a step ran on. Why: rescanned on one machine, the vectors agree bit for bit (the SST-2 heads
    refit of 2026-12-07 reproduced every figure of 2026-12-02), while scans recomputed in other sessions differed
    in the last digits, enough to flip a near-tied choice or two test texts (eval/RESULTS.md); torch picks its
    vectorised kernels by instruction set, so a run says which it had."""
    import torch  # only here: the other steps' orchestration needs no torch

    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere, platform's name for the processor
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    # keys repeat once per core, with the same values
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        # a model name can be as vague as "AMD EPYC": family and model tell CPU generations apart
        "cpu_family_model": f"{fields['cpu family']}/{fields['model']}" if "cpu family" in fields else None,
        "vector_extensions": sorted(set(fields.get("flags", "").split()) & VECTOR_EXTENSIONS),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def record_step(path: Path, fields: dict, name: str, seconds: float) -> dict:
    """Add a finished step's wall time to ``run.json``, read again just before writing: two steps of one dataset
    may run at once (the MTEB step beside the selection's test scoring), and neither may drop the other's."""
    where = machine()  # before the read: its first call imports torch, and the other process may write meanwhile
    record = read_record(path)
    record.update(fields)
    record["steps"][name] = {
        "seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": where,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")  # the other process never reads half a file
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["sst2", "mr", "r8", "r52"])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="default: all, in order")
    args = parser.parse_args()
    plan = load_data_plan(CONFIG, [args.dataset])
    folder = plan.selection_folder / args.dataset
    fields = {
        "dataset": args.dataset,
        "config": CONFIG_ARGUMENT,
        "train_test": [len(split) for split in plan.splits(args.dataset)],
        "cpu_count": os.cpu_count(),
        "command": f"python eval/full_data.py {args.dataset}",
    }
    record = read_record(folder / "run.json")
    for name, command in steps(args.dataset, args.steps, (folder / "summary.json").is_file()):
        print(f"== {name}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPOSITORY)
        record = record_step(folder / "run.json", fields, name, time.perf_counter() - start)
        print(f"== {name}: {record['steps'][name]['seconds']:.0f} s", flush=True)
    total = sum(step["seconds"] for step in record["steps"].values())
    print(
        f"{args.dataset}: done; {total / 60:.0f} min over all steps (this and earlier runs). Commit eval/full, "
        "eval/results_full and eval/RESULTS.md."
    )


if __name__ == "__main__":
    main()
