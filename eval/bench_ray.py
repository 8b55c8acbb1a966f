"""One process vs Ray Data with 1 and 2 actors, embedding the same texts: throughput, overhead, agreement.

Each engine embeds the same SST-2 training texts with the same fused embedder through ``embed_file`` (the
code behind ``lafusion embed --engine ...``), into shards of ``--shard-rows`` texts, so the actors share the
work shard by shard. Wall time includes loading the model (once per actor) and, for Ray, starting the local
cluster (timed separately). The single process uses every core as torch threads; each actor gets one CPU
(and one thread). Run on a machine with few cores this measures overhead, not scaling: say how many cores.

Usage::

    python eval/bench_ray.py --model smollm2-135m --layers 12 --texts 512
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lafusion_st.builders import build_fused_model
from lafusion_st.data import load_bundled
from lafusion_st.distributed import RayOptions, connect
from lafusion_st.embed_files import embed_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="12", help="comma-separated layers of the embedder")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--shard-rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--actors", default="1,2")
    args = parser.parse_args()

    layers = [int(layer) for layer in args.layers.split(",")]
    load_model = functools.partial(build_fused_model, args.model, layers=layers)
    texts = load_bundled("sst2", "train").subsample(args.texts, seed=0).texts
    print(
        f"{os.cpu_count()} CPU cores; {args.model} (4-bit-derived weights) layers {layers}; {len(texts)} SST-2 texts; "
        f"shards of {args.shard_rows}, batch {args.batch_size}"
    )
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder, "texts.txt")
        source.write_text("\n".join(text.replace("\n", " ") for text in texts) + "\n", encoding="utf-8")
        common = {"embedder": {"model": args.model, "layers": layers}, "batch_size": args.batch_size}
        rows = []
        started = time.perf_counter()
        embed_file(load_model, source, Path(folder, "local.npy"), shard_rows=args.shard_rows, **common)
        rows.append((f"one process, {torch.get_num_threads()} torch threads", time.perf_counter() - started))
        reference = np.load(Path(folder, "local.npy"))

        started = time.perf_counter()
        connect(None)
        init_s = time.perf_counter() - started
        differences = []
        for count in [int(value) for value in args.actors.split(",")]:
            output = Path(folder, f"ray{count}.npy")
            options = RayOptions(num_actors=count, cpus_per_actor=1)
            started = time.perf_counter()
            embed_file(
                load_model, source, output, engine="ray", ray_options=options, shard_rows=args.shard_rows, **common
            )
            rows.append((f"Ray, {count} actor(s) x 1 CPU", time.perf_counter() - started))
            differences.append(float(np.abs(np.load(output) - reference).max()))
    print(f"local Ray cluster start: {init_s:.1f} s (paid once per driver process, not counted below)")
    print("| engine | wall s (model loads included) | texts/s |\n|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} | {len(texts) / seconds:.1f} |")
    print(f"largest |Ray - one process| element difference: {max(differences):.3g}")


if __name__ == "__main__":
    main()
