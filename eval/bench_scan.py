"""Cost of a layer scan next to one plain forward pass of the same model over the same texts.

The scan's promise (issue 3): pooling every one of the L + 1 hidden states and writing them to the cache
costs at most 1.15x one plain forward pass. Both sides run the same tokenizer, the same batches (texts
sorted by length inside each chunk) and the same loaded model; the plain pass calls the backbone with
``output_hidden_states=False`` and pools nothing. The scan side is the public ``LayerScanner.scan`` into an
empty cache folder (cache key, forward, pooling, chunk writes, final file, checksum, sidecar). Runs are
interleaved (plain, scan, plain, scan, ...) so that a change in machine load hits both alike; the ratio of
the fastest runs is the headline, the ratio of medians is printed beside it. On a shared machine wall time
swings with other people's jobs, so the process CPU time (all threads) of each run is reported too, and a
third figure pairs the two sides batch by batch (plain forward of batch i, then ``embed_batch`` of batch i,
back to back), which cancels load changes slower than a batch; it covers forward + pooling, not file I/O,
whose share is the end-to-end ratio minus this one.

Usage::

    python eval/bench_scan.py --model smollm2-135m --texts 256
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lafusion_st.data import load_bundled
from lafusion_st.registry import MARKER_FILE, OFFLINE_MODELS, default_cache_dir
from lafusion_st.scan import LayerScanner
from lafusion_st.spec import ScanSettings

GOAL = 1.15


def wait_for_model(name: str, timeout_s: float) -> None:
    """Wait until a short-named decoder is materialised (someone else may be building it right now), so
    this script never starts a second, concurrent materialisation."""
    if name not in OFFLINE_MODELS or OFFLINE_MODELS[name].source == "folder":
        return
    marker = default_cache_dir() / name / MARKER_FILE
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker} did not appear within {timeout_s:.0f} s.")
        print(f"waiting for {marker} ...", flush=True)
        time.sleep(15)


def plain_pass(scanner: LayerScanner, texts: list[str]) -> None:
    """The model's forward pass over the scan's batches, with no hidden states kept and nothing pooled."""
    with torch.inference_mode():
        for positions in scanner.batches(texts):
            scanner.module.forward(
                scanner.preprocess([texts[index] for index in positions]), output_hidden_states=False
            )


def paired_batches(scanner: LayerScanner, texts: list[str]) -> tuple[float, float]:
    """Sum of wall seconds of the plain forward and of ``embed_batch`` over the same batches, alternating."""
    plain = scanned = 0.0
    with torch.inference_mode():
        for positions in scanner.batches(texts):
            batch = [texts[index] for index in positions]
            start = time.perf_counter()
            scanner.module.forward(scanner.preprocess(batch), output_hidden_states=False)
            middle = time.perf_counter()
            scanner.embed_batch(batch)
            plain, scanned = plain + middle - start, scanned + time.perf_counter() - middle
    return plain, scanned


def timed(function, *args) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(label: str, plain: list[float], scanned: list[float]) -> str:
    best = min(scanned) / min(plain)
    median = statistics.median(scanned) / statistics.median(plain)
    return (
        f"{label}: plain {', '.join(f'{t:.2f}' for t in plain)} s | scan {', '.join(f'{t:.2f}' for t in scanned)} s\n"
        f"  ratio scan / plain: {best:.3f} (fastest runs), {median:.3f} (medians); goal <= {GOAL} "
        f"-> {'met' if best <= GOAL else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="sst2", help="bundled dataset whose training texts are used")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--poolings", default="mean", help="comma-separated, e.g. mean,last,max")
    parser.add_argument("--batch-size", type=int, default=ScanSettings.batch_size)
    parser.add_argument("--max-seq-length", type=int, default=ScanSettings.max_seq_length)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--wait-s", type=float, default=3600.0, help="how long to wait for the model to be materialised"
    )
    args = parser.parse_args()

    wait_for_model(args.model, args.wait_s)
    texts = load_bundled(args.dataset, "train").subsample(args.texts, seed=0).texts
    cache_dir = Path(tempfile.mkdtemp(prefix="lafusion_bench_scan_"))
    try:
        scanner = LayerScanner(
            args.model,
            args.poolings.split(","),
            max_seq_length=args.max_seq_length,
            batch_size=args.batch_size,
            cache_dir=cache_dir,
            show_progress_bar=False,
        )
        plain_pass(scanner, texts[: args.batch_size])  # warm-up: model load, first-call allocations
        plain_times, scan_times, paired = [], [], []
        for _ in range(args.repeats):
            plain_times.append(timed(plain_pass, scanner, texts))
            shutil.rmtree(cache_dir, ignore_errors=True)
            scan_times.append(timed(scanner.scan, texts))
            paired.append(paired_batches(scanner, texts))
        tokens = sum(
            int(scanner.preprocess([texts[i] for i in batch])["attention_mask"].sum())
            for batch in scanner.batches(texts)
        )
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    print(
        f"model {args.model} ({scanner.source_num_layers} layers + embeddings, hidden {scanner.hidden_size}), "
        f"{len(texts)} {args.dataset} texts ({tokens} tokens), batch {args.batch_size}, poolings {args.poolings}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(summary("wall time", [wall for wall, _ in plain_times], [wall for wall, _ in scan_times]))
    print(summary("CPU time ", [cpu for _, cpu in plain_times], [cpu for _, cpu in scan_times]))
    print(
        summary(
            "paired per batch, forward + pooling only",
            [plain for plain, _ in paired],
            [scanned for _, scanned in paired],
        )
    )


if __name__ == "__main__":
    main()
