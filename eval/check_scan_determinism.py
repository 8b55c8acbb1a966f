"""Is a scan bit-reproducible on one machine? The same texts scanned in fresh processes: twice, with one torch
thread, and beside CPU-bound processes that compete for the cores.

Run:  .venv/bin/python eval/check_scan_determinism.py [--model smollm2-135m] [--texts 64]

Why: full-data scans recomputed in different sessions differed in the last digits (eval/RESULTS.md, SST-2 and
R52), enough to flip a near-tied choice or two test texts. This says whether threads or load on one machine can
cause that; if every line prints "identical", the cause lies between machines (eval/full_data.py's run.json
records each step's CPU). Each scan goes to an empty cache folder, so nothing is read back from an earlier one.
Texts: the first ``--texts`` training texts of the bundled R52 split (long ones, 256 tokens, padded batches).
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SCAN = """
import sys, numpy as np, torch
from lafusion_st.data import load_bundled
from lafusion_st.scan import scan_task
model, count, threads, cache, output = sys.argv[1:]
torch.set_num_threads(int(threads))
texts = load_bundled("r52", "train").texts[: int(count)]
scan = scan_task(model, texts, None, poolings=("mean",), cache_dir=cache, show_progress_bar=False)
np.save(output, np.asarray(scan.train[model]["mean"].vectors))
"""


def scan(model: str, texts: int, threads: int, folder: Path, name: str) -> np.ndarray:
    """Scan in a fresh process with ``threads`` torch threads and an empty cache; return its vectors."""
    output = folder / f"{name}.npy"
    cache = folder / f"cache-{name}"
    command = [sys.executable, "-c", SCAN, model, str(texts), str(threads), str(cache), str(output)]
    subprocess.run(command, check=True)
    return np.load(output)


def busy() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=64)
    args = parser.parse_args()
    threads = max(1, min(2, multiprocessing.cpu_count()))
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        reference = scan(args.model, args.texts, threads, folder, "reference")
        print(f"{args.model}: {reference.shape} (layers, texts, dims), {threads} threads")
        runs = {
            "a second process": lambda: scan(args.model, args.texts, threads, folder, "again"),
            "one torch thread": lambda: scan(args.model, args.texts, 1, folder, "one-thread"),
        }
        for name, run in runs.items():
            report(name, reference, run())
        workers = [multiprocessing.Process(target=busy, daemon=True) for _ in range(threads)]
        for worker in workers:
            worker.start()
        try:
            report(
                f"beside {len(workers)} busy processes",
                reference,
                scan(args.model, args.texts, threads, folder, "load"),
            )
        finally:
            for worker in workers:
                worker.terminate()


def report(name: str, reference: np.ndarray, vectors: np.ndarray) -> None:
    difference = float(np.abs(vectors - reference).max())
    verdict = "identical" if np.array_equal(vectors, reference) else f"differs (max |difference| {difference:.3g})"
    print(f"  {name:<26} {verdict}")


if __name__ == "__main__":
    main()
