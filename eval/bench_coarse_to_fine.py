"""Full scan + selection vs coarse-to-fine, side by side: wall time, layers scanned in full, the final choice.

For each dataset subsample the script runs the search of ``lafusion select`` twice on the same training
texts, each with its own empty scan cache (so both pay their forward passes):

* **full**: every layer of every text scanned (``scan_task``), then ``search_layers``;
* **coarse-to-fine**: every layer of a stratified sample scanned and scored, the candidates kept under the
  noise rule, the whole training split scanned only up to the deepest candidate
  (``scan_task_coarse_to_fine``), then ``search_layers`` on those layers (its incumbent the sample's best
  layer when the last layer was not scanned in full).

It prints the wall and CPU seconds of each stage, the forward work (real tokens x transformer layers run, from
the tokenizer: the part of the cost no machine load can move), the layers scanned in full, the candidates, and
each path's choice of pooling and layers. Training data only: nothing here reads a test split. Wall times on a
shared machine move with its load (the paths run one after the other per dataset); with one torch thread
(``OMP_NUM_THREADS=1``) the CPU seconds follow the work done.

Usage::

    python eval/bench_coarse_to_fine.py --model smollm2-135m --data sst2:3000:1000 --data r8:1500:500
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lafusion_st.coarse_to_fine import describe, scan_task_coarse_to_fine
from lafusion_st.data import load_bundled
from lafusion_st.scan import make_scanner, scan_task
from lafusion_st.selection import search_layers
from lafusion_st.spec import RunSettings


def parse_data(text: str) -> tuple[str, int, int]:
    name, train, sample = text.split(":")
    return name, int(train), int(sample)


def token_counts(model: str, texts: list[str], max_seq_length: int) -> int:
    """Real tokens of ``texts`` as a scan feeds them to the model (truncated to ``max_seq_length``)."""
    tokenizer = make_scanner(model, show_progress_bar=False).tokenizer
    ids = tokenizer(texts, truncation=True, max_length=max_seq_length)["input_ids"]
    return sum(max(len(row), 1) for row in ids)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", action="append", type=parse_data, help="dataset:train texts:coarse sample size")
    parser.add_argument("--cache-dir", help="scan cache root (default: a fresh temporary folder, so both paths scan)")
    args = parser.parse_args()
    data = args.data or [("sst2", 3000, 1000), ("r8", 1500, 500)]
    settings = RunSettings()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model} (4-bit-derived weights); "
        f"poolings {list(settings.poolings)}, max_seq_length {settings.max_seq_length}, batch size "
        f"{settings.batch_size}, dtype {settings.dtype}, noise rule {settings.standard_errors:g} SE"
    )
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.cache_dir or scratch)
        for name, num_train, sample_size in data:
            train = load_bundled(name, "train").subsample(num_train, seed=0)
            print(f"\n{name}: {len(train)} training texts, {len(train.classes)} classes, coarse sample {sample_size}")
            common = {
                "max_seq_length": settings.max_seq_length,
                "batch_size": settings.batch_size,
                "dtype": settings.dtype,
                "show_progress_bar": False,
            }
            search = {
                "max_layers": settings.max_layers,
                "standard_errors": settings.standard_errors,
                "config": settings.probe,
                "show_progress_bar": False,
            }

            started = clocks()
            full_scan = scan_task(
                args.model, train.texts, poolings=settings.poolings, cache_dir=root / f"{name}-full", **common
            )
            full_scan_time = since(started)
            started = clocks()
            vectors = {pooling: full_scan.train[args.model][pooling].vectors for pooling in settings.poolings}
            full = search_layers(vectors, train.labels, **search)
            full_times = (full_scan_time, since(started))
            depth = vectors[settings.poolings[0]].shape[0] - 1
            print(
                f"  full: scan {full_times[0][0]:.0f} s (CPU {full_times[0][1]:.0f} s), selection "
                f"{full_times[1][0]:.0f} s (CPU {full_times[1][1]:.0f} s); chose {full.pooling} {full.layers} "
                f"(CV {full.score.accuracy_mean:.4f})"
            )

            started = clocks()
            scans, coarse = scan_task_coarse_to_fine(
                args.model,
                train,
                None,
                settings.poolings,
                sample_size=sample_size,
                standard_errors=settings.standard_errors,
                config=settings.probe,
                cache_dir=root / f"{name}-c2f",
                **common,
            )
            fine_scan_time = since(started)
            started = clocks()
            stage = coarse[args.model]
            vectors = {pooling: scans.train[args.model][pooling].vectors for pooling in settings.poolings}
            fine = search_layers(vectors, train.labels, incumbent=stage.incumbent, **search)
            fine_times = (fine_scan_time, since(started))
            print(f"  {describe(stage)}")
            print(
                f"  coarse-to-fine: coarse stage + truncated scan {fine_times[0][0]:.0f} s (CPU "
                f"{fine_times[0][1]:.0f} s), selection {fine_times[1][0]:.0f} s (CPU {fine_times[1][1]:.0f} s); "
                f"chose {fine.pooling} {fine.layers} (CV {fine.score.accuracy_mean:.4f}); incumbent "
                f"{'last layer' if stage.incumbent is None else f'layer {stage.incumbent}'}"
            )
            sample = train.subsample(sample_size, seed=settings.probe.seed)
            tokens = {
                texts: token_counts(args.model, data.texts, settings.max_seq_length)
                for texts, data in (("train", train), ("sample", sample))
            }
            work = (tokens["train"] * depth, tokens["sample"] * depth + tokens["train"] * stage.depth)
            print(
                f"  forward work (tokens x layers): full {work[0]:,}, coarse-to-fine {work[1]:,} "
                f"({work[1] / work[0]:.2f} of full)"
            )
            same = (full.pooling, full.layers) == (fine.pooling, fine.layers)
            wall = [sum(stage_time[0] for stage_time in times) for times in (full_times, fine_times)]
            cpu = [sum(stage_time[1] for stage_time in times) for times in (full_times, fine_times)]
            rows.append(
                f"| {name} | {len(train)} / {stage.sample_size} | {full_times[0][0]:.0f} + {full_times[1][0]:.0f} = "
                f"{wall[0]:.0f} | {fine_times[0][0]:.0f} + {fine_times[1][0]:.0f} = {wall[1]:.0f} | "
                f"{cpu[0]:.0f} / {cpu[1]:.0f} ({cpu[0] / cpu[1]:.2f}x) | {work[1] / work[0]:.2f} | "
                f"0..{stage.depth} of {depth} | {full.pooling} {full.layers} | {fine.pooling} {fine.layers} | "
                f"{'same' if same else 'differs'} |"
            )
    print(
        "\n| data | train / sample | full: scan + select, wall s | coarse-to-fine: scans + select, wall s | CPU s "
        "full / c2f | forward work c2f / full | layers scanned in full | full choice | coarse-to-fine choice "
        "| choice |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
