"""Truncation benchmark: a fused embedder on layers <= L/2 vs the full model, measured side by side.

Run:  .venv/bin/python eval/bench_truncation.py [--model smollm2-135m] [--texts 256] [--repeats 3]

Prints the time of both embedders on the same texts (best of ``--repeats``), the ratio, and the max
abs difference between the truncated embedder's vectors and the same layers pooled from the full
model's hidden states (must be ~0: truncation changes cost, not vectors).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lafusion_st import build_fused_model
from lafusion_st.data import load_bundled


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    texts = load_bundled("mr", "test").texts[: args.texts]
    full = build_fused_model(args.model, layers=[-1])
    depth = full[0].source_num_layers
    half_layers = [depth // 4, depth // 3, depth // 2]
    truncated = build_fused_model(args.model, layers=half_layers)
    # Same layers pooled from the full model's hidden states (untruncated backbone, same LayerSelect).
    untruncated = build_fused_model(args.model, layers=half_layers + [depth])
    encode = dict(batch_size=args.batch_size, convert_to_numpy=True)

    with torch.inference_mode():
        full.encode(texts[:8], **encode)  # warm-up
        full_time = best_time(lambda: full.encode(texts, **encode), args.repeats)
        truncated_time = best_time(lambda: truncated.encode(texts, **encode), args.repeats)
        reference = untruncated.encode(texts, **encode)[:, : truncated.get_embedding_dimension()]
        difference = np.abs(truncated.encode(texts, **encode) - reference).max()

    print(
        f"model {args.model}: {depth} layers; {len(texts)} MR test texts, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(f"{'configuration':<38}{'layers run':>11}{'seconds':>10}{'texts/s':>10}")
    print(f"{'full model, last layer':<38}{depth:>11}{full_time:>10.2f}{len(texts) / full_time:>10.1f}")
    fused_name = f"fused layers {half_layers}"
    print(f"{fused_name:<38}{max(half_layers):>11}{truncated_time:>10.2f}{len(texts) / truncated_time:>10.1f}")
    print(f"time ratio truncated / full: {truncated_time / full_time:.3f} (layer ratio {max(half_layers) / depth:.3f})")
    print(f"max abs diff vs the same layers pooled from the full model: {difference:.3g}")


if __name__ == "__main__":
    main()
