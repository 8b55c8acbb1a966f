"""``lafusion predict``: label texts with a saved ``FusedClassifier`` or its ONNX export.

Kept beside the CLI rather than in it, like ``onnx_export.cli``: the main parser only wires it in. A folder
holding ``lafusion_onnx.json`` is served by ONNX Runtime (:class:`onnx_export.ORTFusedClassifier`, no
torch); a folder with ``head/`` and ``modules.json`` by PyTorch (:meth:`FusedClassifier.load`).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from lafusion_st.errors import InvalidArgumentError
from onnx_export.manifest import DTYPES, MANIFEST_FILE
from onnx_export.providers import PROVIDERS

PREDICT_HELP = "label texts with a saved classifier folder (lafusion run's model/) or its ONNX export"
OUTPUT_FORMATS = (".jsonl", ".csv", ".tsv")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="saved FusedClassifier folder, or the folder `lafusion export` made of one")
    parser.add_argument("texts", nargs="*", help="texts to label")
    parser.add_argument("--input", help="file of texts: one a line, or .jsonl/.csv/.tsv/.parquet with --text-col")
    parser.add_argument("--text-col", default="text", help="text column/field of a .jsonl/.csv/.tsv/.parquet input")
    parser.add_argument("--output", help=f"write labels (and probabilities) to a {'/'.join(OUTPUT_FORMATS)} file")
    parser.add_argument("--proba", action="store_true", help="also give each class's probability")
    parser.add_argument("--batch-size", type=int, default=32)
    onnx = parser.add_argument_group("ONNX exports only")
    onnx.add_argument("--provider", choices=PROVIDERS, default="auto", help="ONNX Runtime provider (default: auto)")
    onnx.add_argument("--dtype", choices=DTYPES, default="fp32", help="embedder graph variant (default: fp32)")


def predict_command(args: argparse.Namespace) -> int:
    texts = list(args.texts)
    if args.input:  # read as `lafusion embed` reads it: the same formats and the same errors
        from lafusion_st.text_files import read_text_table

        texts += read_text_table(args.input, text_col=args.text_col).column("text").to_pylist()
    if not texts:
        raise InvalidArgumentError("give texts as arguments or --input FILE")
    if args.output and Path(args.output).suffix.lower() not in OUTPUT_FORMATS:
        raise InvalidArgumentError(f"--output must end in one of {list(OUTPUT_FORMATS)}, got {args.output!r}")
    classifier = load_classifier(Path(args.path), args)
    probabilities = classifier.predict_proba(texts)
    classes = classifier.classes_.tolist()
    labels = [classes[index] for index in probabilities.argmax(axis=1)]
    if args.output:
        write_predictions(Path(args.output), texts, labels, classes, probabilities if args.proba else None)
        print(f"wrote {len(texts)} predictions to {args.output}")
        return 0
    for row, (text, label) in enumerate(zip(texts, labels, strict=True)):
        scores = "\t" + " ".join(f"{c}={p:.4f}" for c, p in zip(classes, probabilities[row], strict=True))
        print(f"{label}{scores if args.proba else ''}\t{text}")
    return 0


def load_classifier(path: Path, args: argparse.Namespace) -> Any:
    if _is_onnx(path):
        from onnx_export import ORTFusedClassifier

        return ORTFusedClassifier(path, provider=args.provider, dtype=args.dtype, batch_size=args.batch_size)
    if (path / "modules.json").is_file() and (path / "head").is_dir():
        from lafusion_st.classifier import FusedClassifier

        return FusedClassifier.load(path, batch_size=args.batch_size)
    raise InvalidArgumentError(
        f"{path} is neither a saved classifier (modules.json + head/, as `lafusion run` writes in "
        f"model/) nor its ONNX export ({MANIFEST_FILE} + head/)."
    )


def write_predictions(path: Path, texts: list[str], labels: list, classes: list, probabilities: Any) -> None:
    if path.suffix.lower() == ".jsonl":
        with path.open("w", encoding="utf-8") as handle:
            for row, (text, label) in enumerate(zip(texts, labels, strict=True)):
                record: dict[str, Any] = {"text": text, "label": label}
                if probabilities is not None:
                    record["probabilities"] = dict(zip(map(str, classes), probabilities[row].tolist(), strict=True))
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        writer.writerow(["text", "label", *([f"p_{c}" for c in classes] if probabilities is not None else [])])
        for row, (text, label) in enumerate(zip(texts, labels, strict=True)):
            writer.writerow([text, label, *(probabilities[row].tolist() if probabilities is not None else [])])


def _is_onnx(path: str | Path) -> bool:
    return Path(path, MANIFEST_FILE).is_file()
