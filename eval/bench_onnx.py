"""PyTorch vs ONNX Runtime (CPU) for a full-depth and a half-depth SmolLM2 embedder, measured in one run.

Prints two tables:

1. Throughput (sentences/s) and peak memory for {PyTorch, ONNX Runtime} x {full depth (layer 30 of 30),
   half depth (layers 12+15, the graph stops after layer 15)} x batch sizes 1/8/32 x short/long texts,
   with the ratios the design asks for: ORT / PyTorch throughput (goal >= 1.3 at batch 32) and
   half-depth / full-depth time (goal <= 0.6 in both runtimes).
2. The ONNX Runtime variants of the half-depth model (fp32, ORT transformer fusions, fp16, int8 dynamic):
   deviation from PyTorch, MTEB accuracy on the SST-2 task (paper protocol: the probe trained on a train
   subsample, scored on a test subsample), and batch-32 throughput.

Each (runtime, depth) is timed in its own subprocess, so peak RSS is that configuration's alone; the ONNX
Runtime worker never imports torch, as on a serving machine. SmolLM2 here is the 4-bit (Q4_1) GGUF
de-quantized to fp32, not the original bf16 weights.

    python eval/bench_onnx.py            # ~8 min on 2 cores; exports are cached in --work-dir
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from costs import peak_rss_mib

from lafusion_st.spec import EmbedderSpec

MODEL = "smollm2-135m"
DEPTHS = {"full": [30], "half": [12, 15]}
BATCH_SIZES = (1, 8, 32)
VARIANTS = ("fp32", "fp32+fusions", "fp16", "int8")


# -------------------------------------------------------------------------------------------- texts
def benchmark_texts(count: int) -> dict[str, list[str]]:
    """Short texts (SST-2 sentences, ~20 tokens) and long ones (several joined, cut at the default max_seq_length)."""
    from lafusion_st.data import load_bundled

    sentences = [text for text in load_bundled("sst2", "train").texts if len(text.split()) >= 12]
    long_texts = [" ".join(sentences[start : start + 12]) for start in range(0, 12 * count, 12)]
    return {"short": sentences[:count], "long": long_texts[:count]}


# ------------------------------------------------------------------------------------------ workers
def time_encode(encode, texts: list[str], batch_size: int) -> float:
    """Sentences per second of ``encode`` over ``texts`` after one warm-up batch."""
    encode(texts[:batch_size], batch_size=batch_size)
    start = time.perf_counter()
    encode(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - start)


def worker(runtime: str, depth: str, folder: str, texts_file: str, threads: int) -> None:
    """Time one (runtime, depth) configuration; print a JSON line with throughputs and peak RSS."""
    texts = json.loads(Path(texts_file).read_text())
    if runtime == "pytorch":
        import torch

        from lafusion_st import build_fused_model

        torch.set_num_threads(threads)
        baseline = peak_rss_mib()
        model = build_fused_model(MODEL, layers=DEPTHS[depth], device="cpu")
        encode = model.encode
    else:
        from onnx_export import ORTFusedEncoder

        baseline = peak_rss_mib()
        encode = ORTFusedEncoder(folder, provider="cpu", num_threads=threads).encode
    throughput = {
        f"{length}/{batch_size}": time_encode(encode, texts[length], batch_size)
        for length in ("short", "long")
        for batch_size in BATCH_SIZES
    }
    print(json.dumps({"throughput": throughput, "peak_rss_mib": peak_rss_mib(), "imports_rss_mib": baseline}))


def run_worker(runtime: str, depth: str, folder: Path, texts_file: Path, threads: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        runtime,
        depth,
        str(folder),
        str(texts_file),
        "--threads",
        str(threads),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{runtime}/{depth} worker failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ exports
def exported(work_dir: Path, name: str, layers: list[int], **options) -> Path:
    """Export once and reuse: a folder with a manifest passed validation."""
    from lafusion_st import build_fused_model
    from onnx_export import export

    folder = work_dir / name
    if not (folder / "lafusion_onnx.json").is_file():
        started = time.perf_counter()
        export(build_fused_model(MODEL, layers=layers, device="cpu"), folder, **options)
        print(f"exported {name} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


# --------------------------------------------------------------------------------------- accuracy
def variant_table(half: Path, optimized: Path, probe_size: int, threads: int) -> list[dict]:
    """Deviation from PyTorch, MTEB accuracy and batch-32 throughput of each ORT variant (half depth).

    Accuracy is MTEB's, on the paper protocol of the SST-2 task (logistic regression on ``probe_size``
    training texts, scored on ``probe_size`` test texts), through the same ``evaluate_encoder`` entry point
    as every other result, so the variants are compared the way MTEB compares embedders.
    """
    import tempfile

    import torch

    from lafusion_st import build_fused_model
    from lafusion_st.evaluation import evaluate_encoder
    from lafusion_st.mteb_tasks import get_tasks
    from onnx_export import ORTFusedEncoder, compare_with_pytorch

    tasks = get_tasks(["sst2"], protocol="paper", max_train=probe_size, max_test=probe_size)
    timing_texts = benchmark_texts(64)["short"]
    results_folder = tempfile.mkdtemp(prefix="bench_onnx_mteb_")

    def mteb_accuracy(encoder, name: str) -> float:
        result = evaluate_encoder(encoder, tasks, results_folder, name=f"bench/{name}", overwrite=True)
        return float(result.task_results[0].get_score())

    torch.set_num_threads(threads)
    model = build_fused_model(MODEL, layers=DEPTHS["half"], device="cpu")
    rows = [
        {
            "variant": "PyTorch fp32",
            "accuracy": mteb_accuracy(model, "pytorch"),
            "sent_s": time_encode(model.encode, timing_texts, 32),
        }
    ]
    for variant in VARIANTS:
        folder, dtype = (optimized, "fp32") if variant == "fp32+fusions" else (half, variant)
        encoder = ORTFusedEncoder(folder, provider="cpu", dtype=dtype, num_threads=threads)
        results = compare_with_pytorch(model, encoder)
        rows.append(
            {
                "variant": f"ORT {variant}",
                "max_abs_diff": max(result.max_abs_diff for result in results),
                "relative": max(result.max_abs_diff / result.max_abs_reference for result in results),
                "min_cosine": min(result.min_cosine for result in results),
                "accuracy": mteb_accuracy(encoder, variant.replace("+", "-")),
                "sent_s": time_encode(encoder.encode, timing_texts, 32),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------- printing
def print_speed_table(results: dict[tuple[str, str], dict]) -> None:
    print("\nThroughput (sentences/s) and peak RSS, CPU; ratios measured in this run")
    header = (
        f"{'texts':<6}{'batch':>6} | {'PT full':>8}{'ORT full':>9}{'ORT/PT':>7} | "
        f"{'PT half':>8}{'ORT half':>9}{'ORT/PT':>7} | {'half/full time: PT':>19}{'ORT':>6}"
    )
    print(header)
    print("-" * len(header))
    for length in ("short", "long"):
        for batch_size in BATCH_SIZES:
            key = f"{length}/{batch_size}"
            speed = {config: result["throughput"][key] for config, result in results.items()}
            pt_full, ort_full = speed[("pytorch", "full")], speed[("onnxruntime", "full")]
            pt_half, ort_half = speed[("pytorch", "half")], speed[("onnxruntime", "half")]
            print(
                f"{length:<6}{batch_size:>6} | {pt_full:>8.1f}{ort_full:>9.1f}{ort_full / pt_full:>7.2f} | "
                f"{pt_half:>8.1f}{ort_half:>9.1f}{ort_half / pt_half:>7.2f} "
                f"| {pt_full / pt_half:>19.2f}{ort_full / ort_half:>6.2f}"
            )
    print("\nPeak RSS (MiB): whole process / after imports, before the model")
    for (runtime, depth), result in results.items():
        print(f"  {runtime:<12}{depth:<5} {result['peak_rss_mib']:>7.0f} / {result['imports_rss_mib']:.0f}")


def print_variant_table(rows: list[dict], probe_size: int) -> None:
    print(
        "\nHalf-depth variants: deviation from PyTorch (validation texts), MTEB SST-2 accuracy, "
        f"paper protocol ({probe_size} train / {probe_size} test), batch-32 short texts"
    )
    header = f"{'variant':<18}{'max abs diff':>13}{'rel. to max':>12}{'min cosine':>12}{'accuracy':>10}{'sent/s':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        deviation = (
            f"{row['max_abs_diff']:>13.3g}{row['relative']:>12.2e}{row['min_cosine']:>12.8f}"
            if "max_abs_diff" in row
            else f"{'(reference)':>13}{'':>12}{'':>12}"
        )
        print(f"{row['variant']:<18}{deviation}{row['accuracy']:>10.3f}{row['sent_s']:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "lafusion" / "bench_onnx")
    parser.add_argument("--texts", type=int, default=32, help="Texts per (length, batch size) measurement.")
    parser.add_argument("--probe-size", type=int, default=500, help="SST-2 train and test subsample size.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=4, metavar=("RUNTIME", "DEPTH", "FOLDER", "TEXTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, threads=args.threads)
        return

    args.work_dir.mkdir(parents=True, exist_ok=True)
    folders = {
        "full": exported(args.work_dir, "full", DEPTHS["full"]),
        "half": exported(args.work_dir, "half", DEPTHS["half"], dtypes=("fp32", "fp16", "int8")),
    }
    optimized = exported(args.work_dir, "half-fusions", DEPTHS["half"], optimize=True)
    texts_file = args.work_dir / "texts.json"
    texts_file.write_text(json.dumps(benchmark_texts(args.texts)))
    results = {
        (runtime, depth): run_worker(runtime, depth, folders[depth], texts_file, args.threads)
        for depth in ("full", "half")
        for runtime in ("pytorch", "onnxruntime")
    }
    rows = variant_table(folders["half"], optimized, args.probe_size, args.threads)
    print(
        f"\n{MODEL} (4-bit Q4_1 GGUF de-quantized to fp32), mean pooling, "
        f"max_seq_length {EmbedderSpec.max_seq_length}, {args.threads} threads"
    )
    print_speed_table(results)
    print_variant_table(rows, args.probe_size)


if __name__ == "__main__":
    main()
