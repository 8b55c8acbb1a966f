"""Item 5 evidence: a real SmolLM2 classifier gives the same labels from ONNX Runtime as from PyTorch.

Run:  nice .venv/bin/python eval/classifier_onnx_parity.py [--work /tmp/lafusion-onnx-parity]
      [--output eval/classifier/onnx_parity.json]

A ``FusedClassifier`` (SmolLM2-135M, 4-bit GGUF de-quantized to fp32; the layers chosen by CV in
``eval/selection/sst2/report.json``; ``LogisticHead`` with C by inner CV) is fit on the SST-2 training
subsample of eval/RESULTS.md (1000 texts, stratified, seed 0), saved, exported to ONNX (fp32, checked by the
exporter), and both the PyTorch classifier and ``ORTFusedClassifier`` (CPU) classify the *full* bundled
SST-2 test split. Printed and written: label agreement, the largest probability difference, each side's
test accuracy and wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from lafusion_st import FusedClassifier, LogisticHead, build_fused_model
from lafusion_st.data import load_bundled
from lafusion_st.scan import scan
from onnx_export import ORTFusedClassifier, export

MODEL = "smollm2-135m"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lafusion-onnx-parity"))
    parser.add_argument("--output", type=Path, default=Path("eval/classifier/onnx_parity.json"))
    parser.add_argument("--selection-folder", type=Path, default=Path("eval/selection"))
    args = parser.parse_args(argv)
    layers = json.loads((args.selection_folder / "sst2" / "report.json").read_text())["selections"][MODEL]["chosen"]
    train = load_bundled("sst2", "train").subsample(1000, seed=0)
    test = load_bundled("sst2", "test")
    shutil.rmtree(args.work, ignore_errors=True)

    # The head is fit on the training texts' vectors from the scan cache (what the embedder gives, checked by
    # `lafusion run`), which spares re-embedding them; the test split is embedded by both sides below.
    features = scan(MODEL, train.texts, poolings=["mean"], max_seq_length=256)["mean"].concat(layers)
    head = LogisticHead().fit(features, train.labels)
    classifier = FusedClassifier.from_parts(build_fused_model(MODEL, layers=layers), head)
    print(f"head fit on {len(train)} texts (C = {head.C_})", flush=True)
    classifier.save(args.work / "classifier")
    export(args.work / "classifier", args.work / "onnx")
    print("exported", flush=True)

    start = time.perf_counter()
    torch_proba = classifier.predict_proba(test.texts)
    torch_seconds = time.perf_counter() - start
    served = ORTFusedClassifier(args.work / "onnx", provider="cpu")
    start = time.perf_counter()
    ort_proba = served.predict_proba(test.texts)
    ort_seconds = time.perf_counter() - start

    labels = np.asarray(test.labels)
    torch_labels = classifier.classes_[torch_proba.argmax(axis=1)]
    ort_labels = served.classes_[ort_proba.argmax(axis=1)]
    result = {
        "model": f"{MODEL} (4-bit GGUF de-quantized to fp32) layers {layers}, mean pooling, LogisticHead",
        "train": len(train),
        "test": len(test),
        "label_agreement": float(np.mean(torch_labels == ort_labels)),
        "disagreements": int(np.sum(torch_labels != ort_labels)),
        "max_abs_proba_diff": float(np.abs(torch_proba - ort_proba).max()),
        "torch_accuracy": float(np.mean(torch_labels == labels)),
        "ort_accuracy": float(np.mean(ort_labels == labels)),
        "torch_seconds": torch_seconds,
        "ort_seconds": ort_seconds,
        "export_parity": json.loads((args.work / "onnx" / "head" / "classifier.json").read_text()).get("parity"),
        "command": "python eval/classifier_onnx_parity.py",
    }
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
