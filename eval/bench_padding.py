"""Padding in layer scans: sorting by characters inside 512-text chunks (before) vs by tokens over all texts.

Padded positions cost a forward pass like real ones. The script counts, for a bundled dataset's whole
training split, the share of padded positions of the batches each rule forms (tokenizer only, exact), then
times the forward + pooling of the scan (``LayerScanner.embed_batch``) on batches of both rules. Timing every
batch of R8 twice would take most of an hour on a 2-core machine, so ``--sample-batches`` batches are drawn
from each rule (the same quantiles of each rule's batch list, interleaved before/after so that load changes
hit both alike) and the total is estimated as the number of batches times their mean time.

Usage::

    python eval/bench_padding.py --dataset r8 --model smollm2-135m --sample-batches 12
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from lafusion_st.data import load_bundled
from lafusion_st.scan import LayerScanner

OLD_CHUNK = 512


def char_sorted_chunks(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """The rule before: consecutive chunks of 512 texts, each sorted by character count, longest first."""
    batches = []
    for start in range(0, len(texts), OLD_CHUNK):
        order = start + np.argsort([-len(text) for text in texts[start : start + OLD_CHUNK]], kind="stable")
        batches += [order[offset : offset + batch_size] for offset in range(0, len(order), batch_size)]
    return batches


def padded_share(batches: list[np.ndarray], lengths: np.ndarray) -> tuple[float, int]:
    """(share of padded positions, total positions) of a list of batches."""
    positions = sum(len(batch) * int(lengths[batch].max()) for batch in batches)
    return 1 - int(lengths.sum()) / positions, positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="r8")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--sample-batches", type=int, default=12, help="batches timed per rule (0: counts only)")
    args = parser.parse_args()

    texts = load_bundled(args.dataset, "train").texts
    with tempfile.TemporaryDirectory() as cache_dir:
        scanner = LayerScanner(
            args.model,
            max_seq_length=args.max_seq_length,
            batch_size=args.batch_size,
            cache_dir=cache_dir,
            show_progress_bar=False,
        )
        started = time.perf_counter()
        new = scanner.batches(texts)
        plan_s = time.perf_counter() - started
    lengths = np.array(
        [
            len(ids)
            for ids in scanner.module.tokenizer(texts, truncation=True, max_length=args.max_seq_length)["input_ids"]
        ]
    )
    old = char_sorted_chunks(texts, args.batch_size)
    print(
        f"{args.model} (4-bit-derived GGUF weights), {args.dataset} train: {len(texts)} texts, {int(lengths.sum())} "
        f"real tokens (max_seq_length {args.max_seq_length}), batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"planning the token sort (tokenizing every text): {plan_s:.1f} s")
    shares = {}
    for label, batches in (("chars within 512-text chunks (before)", old), ("tokens over all texts (now)", new)):
        shares[label] = padded_share(batches, lengths)
        print(
            f"  {label:<40} padded share {shares[label][0]:.2%}, positions {shares[label][1]}, {len(batches)} batches"
        )
    if not args.sample_batches:
        return
    times: dict[str, list[float]] = {"old": [], "new": []}
    quantiles = np.linspace(0, 1, args.sample_batches, endpoint=False) + 0.5 / args.sample_batches
    scanner.embed_batch([texts[index] for index in new[-1]])  # warm-up
    for quantile in quantiles:
        for key, batches in (("old", old), ("new", new)):
            batch = [texts[index] for index in batches[int(quantile * len(batches))]]
            started = time.perf_counter()
            scanner.embed_batch(batch)
            times[key].append(time.perf_counter() - started)
    estimate = {key: statistics.mean(times[key]) * len(batches) for key, batches in (("old", old), ("new", new))}
    print(
        f"forward + pooling, {args.sample_batches} sampled batches a rule: mean {statistics.mean(times['old']):.2f} s "
        f"(before) vs {statistics.mean(times['new']):.2f} s (now) a batch"
    )
    print(
        f"estimated scan of the split: "
        f"{estimate['old'] / 60:.1f} min (before) vs {estimate['new'] / 60:.1f} min (now): "
        f"{estimate['old'] / estimate['new']:.2f}x faster"
    )


if __name__ == "__main__":
    main()
