"""Full scan + selection vs coarse-to-fine, side by side: wall time, layers scanned in full, the final choice.

For each dataset subsample the script runs the search of ``lafusion select`` twice on the same training
texts, each with its own empty scan cache (so both pay their forward passes):

* **full**: every layer of every text scanned (``scan_task``), then ``search_layers``;
* **coarse-to-fine**: every layer of a stratified sample scanned and scored, the candidates kept under the
  noise rule, the whole training split scanned only up to the deepest candidate
  (``scan_task_coarse_to_fine``), then ``search_layers`` on those layers (its incumbent the sample's best
  layer when the last layer was not scanned in full).

It prints the seconds of each stage, the layers scanned in full, the candidates, and each path's choice of
pooling and layers. Training data only: nothing here reads a test split. Timings on a shared machine move
with its load; the two paths run one after the other per dataset.

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
from lafusion_st.scan import scan_task
from lafusion_st.selection import search_layers
from lafusion_st.spec import RunSettings


def parse_data(text: str) -> tuple[str, int, int]:
    name, train, sample = text.split(":")
    return name, int(train), int(sample)


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

            started = time.perf_counter()
            full_scan = scan_task(
                args.model, train.texts, poolings=settings.poolings, cache_dir=root / f"{name}-full", **common
            )
            scanned = time.perf_counter()
            vectors = {pooling: full_scan.train[args.model][pooling].vectors for pooling in settings.poolings}
            full = search_layers(vectors, train.labels, **search)
            full_times = (scanned - started, time.perf_counter() - scanned)
            depth = vectors[settings.poolings[0]].shape[0] - 1
            print(
                f"  full: scan {full_times[0]:.0f} s, selection {full_times[1]:.0f} s; chose {full.pooling} "
                f"{full.layers} (CV {full.score.accuracy_mean:.4f})"
            )

            started = time.perf_counter()
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
            scanned = time.perf_counter()
            stage = coarse[args.model]
            vectors = {pooling: scans.train[args.model][pooling].vectors for pooling in settings.poolings}
            fine = search_layers(vectors, train.labels, incumbent=stage.incumbent, **search)
            fine_times = (scanned - started, time.perf_counter() - scanned)
            print(f"  {describe(stage)}")
            print(
                f"  coarse-to-fine: coarse stage + truncated scan {fine_times[0]:.0f} s, "
                f"selection {fine_times[1]:.0f} s; "
                f"chose {fine.pooling} {fine.layers} (CV {fine.score.accuracy_mean:.4f}); incumbent "
                f"{'last layer' if stage.incumbent is None else f'layer {stage.incumbent}'}"
            )
            same = (full.pooling, full.layers) == (fine.pooling, fine.layers)
            rows.append(
                f"| {name} | {len(train)} / {stage.sample_size} | {full_times[0]:.0f} + {full_times[1]:.0f} = "
                f"{sum(full_times):.0f} | {fine_times[0]:.0f} + {fine_times[1]:.0f} = {sum(fine_times):.0f} | "
                f"{sum(full_times) / sum(fine_times):.2f}x | 0..{stage.depth} of {depth} | "
                f"{full.pooling} {full.layers} | {fine.pooling} {fine.layers} | {'same' if same else 'differs'} |"
            )
    print(
        "\n| data | train / sample | full: scan + select (s) | coarse-to-fine: scans + select (s) | speed-up "
        "| layers scanned in full | full choice | coarse-to-fine choice | choice |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
