"""fp32 vs bf16 layer scans side by side: speed, vector deviation, CV curves, chosen layers, test accuracy.

For each dataset subsample the script scans the training and test texts with the same model in fp32 and in
bf16 (``LayerScanner(dtype=...)``, cached like any scan), then reports:

* sentences/s of forward + pooling (``embed_batch``) on the same batches, fp32 and bf16 interleaved;
* the deviation of bf16 pooled vectors from fp32: relative L2 error per text and layer (median and max)
  and the largest element-wise difference;
* the Pearson correlation of the two per-layer CV accuracy curves (training split only);
* the layers each precision chooses (best single layer; greedy fusion as ``lafusion run`` does it);
* test accuracy of each precision's own choice, with a 95% Wilson interval.

On a CPU without native bf16 the library refuses ``dtype="bf16"``; the script then lifts that check (the
forward pass is the library's, under ``torch.autocast``) to measure the numerics, and says that its bf16
speed is emulated.

Usage::

    python eval/bench_precision.py --model smollm2-135m --data sst2:1000:500 --data r8:400:200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import binomtest, pearsonr

from lafusion_st import precision
from lafusion_st.data import load_bundled
from lafusion_st.probe import fit_and_test, layer_scores
from lafusion_st.scan import LayerScanner
from lafusion_st.selection import GREEDY_CANDIDATES, greedy_layers
from lafusion_st.spec import RunSettings

DTYPES = ("fp32", "bf16")


def parse_data(text: str) -> tuple[str, int, int]:
    name, train, test = text.split(":")
    return name, int(train), int(test)


def wilson(accuracy: float, count: int) -> str:
    interval = binomtest(round(accuracy * count), count).proportion_ci(confidence_level=0.95, method="wilson")
    return f"{accuracy:.4f} [{interval.low:.4f}, {interval.high:.4f}]"


def sentences_per_second(scanners: dict[str, LayerScanner], texts: list[str], count: int) -> dict[str, float]:
    """Forward + pooling rate of each precision over ``count`` batches spread over the sorted plan."""
    batches = scanners["fp32"].batches(texts)
    chosen = [batches[int(q * len(batches))] for q in np.linspace(0, 1, count, endpoint=False) + 0.5 / count]
    for scanner in scanners.values():
        scanner.embed_batch([texts[index] for index in chosen[-1]])  # warm-up
    seconds = dict.fromkeys(scanners, 0.0)
    for batch in chosen:
        batch_texts = [texts[index] for index in batch]
        for dtype, scanner in scanners.items():
            started = time.perf_counter()
            scanner.embed_batch(batch_texts)
            seconds[dtype] += time.perf_counter() - started
    total = sum(len(batch) for batch in chosen)
    return {dtype: total / seconds[dtype] for dtype in scanners}


def choose(vectors: np.ndarray, labels: list, settings: RunSettings) -> tuple[list[float], int, list[int]]:
    """CV curve, best layer and greedy fused layers, chosen on the training split as ``lafusion run`` does."""
    curve = layer_scores(vectors, labels, settings.probe, show_progress_bar=False)
    accuracies = [score.accuracy_mean for score in curve]
    best = max(range(len(curve)), key=lambda layer: (accuracies[layer], -layer))
    candidates = sorted(range(len(curve)), key=lambda layer: -accuracies[layer])[:GREEDY_CANDIDATES]
    selection = greedy_layers(
        vectors,
        labels,
        curve,
        standard_errors=settings.standard_errors,
        max_layers=settings.max_layers,
        candidates=candidates,
        config=settings.probe,
        show_progress_bar=False,
    )
    return accuracies, best, list(selection.chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", action="append", type=parse_data, help="dataset:train:test subsample sizes")
    parser.add_argument("--timing-batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=256)
    args = parser.parse_args()
    data = args.data or [("sst2", 1000, 500), ("r8", 400, 200)]
    settings = RunSettings()

    native = precision.native_bf16("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native CPU bf16: {native}")
    if not native:
        print("  this CPU has no native bf16: lafusion refuses dtype='bf16' here; the check is lifted to measure")
        print("  the numerics, and the bf16 speed below is emulated (a lower bound for CPUs with AVX512-BF16/AMX)")
        precision.native_bf16 = lambda device_type: True
    scanners = {
        dtype: LayerScanner(
            args.model,
            settings.poolings[0],
            batch_size=args.batch_size,
            max_seq_length=args.max_seq_length,
            dtype=dtype,
            show_progress_bar=False,
        )
        for dtype in DTYPES
    }
    for name, num_train, num_test in data:
        train = load_bundled(name, "train").subsample(num_train, seed=0)
        test = load_bundled(name, "test").subsample(num_test, seed=0)
        print(
            f"\n{name}: {len(train)} train / {len(test)} test texts, {args.model} (4-bit-derived weights), "
            f"max_seq_length {args.max_seq_length}"
        )
        rates = sentences_per_second(scanners, train.texts, args.timing_batches)
        print(
            f"  sentences/s (forward + pooling, {args.timing_batches} batches of {args.batch_size}): "
            f"fp32 {rates['fp32']:.1f}, bf16 {rates['bf16']:.1f} ({rates['bf16'] / rates['fp32']:.2f}x)"
        )
        scans = {}
        for dtype, scanner in scanners.items():
            started = time.perf_counter()
            scans[dtype] = (scanner.scan(train.texts)["mean"].vectors, scanner.scan(test.texts)["mean"].vectors)
            print(f"  {dtype} scan of train + test (cache hits are near 0 s): {time.perf_counter() - started:.0f} s")
        reference, low = scans["fp32"][0], scans["bf16"][0]
        relative = np.linalg.norm(low - reference, axis=-1) / np.maximum(np.linalg.norm(reference, axis=-1), 1e-12)
        print(
            f"  bf16 vs fp32 pooled vectors (train, every layer): relative L2 error median {np.median(relative):.2e}, "
            f"max {relative.max():.2e}; largest element difference {np.abs(low - reference).max():.3g} "
            f"(largest fp32 element {np.abs(reference).max():.3g})"
        )
        chosen = {}
        for dtype in DTYPES:
            chosen[dtype] = choose(scans[dtype][0], train.labels, settings)
        curve_r = pearsonr(chosen["fp32"][0], chosen["bf16"][0]).statistic
        print(
            f"  CV curves: Pearson r {curve_r:.4f}; largest layer-wise difference "
            f"{max(abs(a - b) for a, b in zip(chosen['fp32'][0], chosen['bf16'][0], strict=True)):.4f}"
        )
        for dtype in DTYPES:
            curve, best, fused = chosen[dtype]
            train_vectors, test_vectors = scans[dtype]
            tested = {
                label: fit_and_test(
                    np.concatenate([train_vectors[layer] for layer in layers], axis=1),
                    train.labels,
                    np.concatenate([test_vectors[layer] for layer in layers], axis=1),
                    test.labels,
                    settings.probe,
                )
                for label, layers in (("best", [best]), ("fused", fused))
            }
            print(
                f"  {dtype}: best layer {best} (CV {curve[best]:.4f}), "
                f"test {wilson(tested['best'].accuracy, len(test))}; "
                f"fused {fused}, test {wilson(tested['fused'].accuracy, len(test))}"
            )
        same = chosen["fp32"][1:] == chosen["bf16"][1:]
        print(f"  chosen layers {'identical' if same else 'DIFFER'} between fp32 and bf16")


if __name__ == "__main__":
    main()
