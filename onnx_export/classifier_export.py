"""Export the head of a ``FusedClassifier`` next to its embedder's ONNX graphs, and check it end to end.

:func:`onnx_export.export` calls :func:`export_head` when it is given a ``FusedClassifier`` or a folder
saved by one (an embedder folder with ``head/``). The check compares ``ORTFusedClassifier`` with the
PyTorch classifier on the exporter's validation texts: the largest probability difference must stay
within :data:`PROBA_ATOL`, and the labels must agree; both figures go into ``head/classifier.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lafusion_st.files import write_text_atomic
from onnx_export import manifest as manifest_io
from onnx_export.classifier import (
    HEAD_DIR,
    HEAD_FORMAT,
    HEAD_FORMAT_VERSION,
    HEAD_GRAPH,
    HEAD_MANIFEST,
    ORTFusedClassifier,
)
from onnx_export.errors import ParityError
from onnx_export.head_graph import build_head_graph
from onnx_export.validation import VALIDATION_TEXTS
from onnx_export.variants import save_graph

PROBA_ATOL = 1e-4
"""Largest accepted |ORT - PyTorch| probability (fp32). The embedder's own tolerance allows coordinate
differences of about 1e-5 of their size, and standardisation by the training spread shrinks them further:
tiny test models differ by about 1e-7."""


def classifier_parts(model_or_path: Any) -> tuple[Any, Any] | None:
    """``(embedder model, fitted head)`` of a ``FusedClassifier`` or a folder saved by one; else ``None``."""
    from lafusion_st.classifier import HEAD_FOLDER, FusedClassifier

    if isinstance(model_or_path, FusedClassifier):
        classifier = model_or_path
    elif isinstance(model_or_path, (str, Path)) and Path(model_or_path, HEAD_FOLDER).is_dir():
        classifier = FusedClassifier.load(model_or_path)
    else:
        return None
    if not hasattr(classifier, "head_"):
        raise ValueError("The FusedClassifier is not fitted; fit (or load) it before exporting.")
    return classifier.embedder_model(), classifier.head_


def export_head(head: Any, model: Any, out_dir: Path, opset: int, validate: bool) -> None:
    """Write ``head/head.onnx`` and ``head/classifier.json`` into an embedder export ``out_dir``.

    Raises:
        ParityError: ONNX Runtime's probabilities differ from PyTorch's beyond :data:`PROBA_ATOL`, or a label
            differs; ``head/`` is then removed so the folder cannot classify by mistake.
    """
    from lafusion_st.heads.labels import labels_to_json

    folder = out_dir / HEAD_DIR
    folder.mkdir()
    save_graph(build_head_graph(head, opset), folder / HEAD_GRAPH)
    manifest: dict[str, Any] = {
        "format": HEAD_FORMAT,
        "format_version": HEAD_FORMAT_VERSION,
        "head_class": type(head).__name__,
        "input_dimension": int(head.n_features_in_),
        "member_dims": list(head.member_dims_),
        "classes": labels_to_json(head.classes_),
        "graph": {"file": HEAD_GRAPH, "files": manifest_io.file_records(folder, [HEAD_GRAPH])},
    }
    _write(folder, manifest)
    if validate:
        expected = head.predict_proba(model.encode(list(VALIDATION_TEXTS), convert_to_numpy=True))
        found = ORTFusedClassifier(out_dir, provider="cpu").predict_proba(list(VALIDATION_TEXTS))
        difference = float(np.abs(found - expected).max())
        agreement = float(np.mean(found.argmax(axis=1) == expected.argmax(axis=1)))
        if difference > PROBA_ATOL or agreement < 1.0:
            shutil.rmtree(folder)
            raise ParityError(
                f"The exported classifier's probabilities differ from PyTorch by up to {difference:.3g} (tolerance "
                f"{PROBA_ATOL}) and its labels agree on {agreement:.0%} of the validation texts."
            )
        manifest["parity"] = {"max_abs_diff": difference, "label_agreement": agreement, "texts": len(expected)}
        _write(folder, manifest)


def _write(folder: Path, manifest: dict[str, Any]) -> None:
    write_text_atomic(folder / HEAD_MANIFEST, json.dumps(manifest, indent=2) + "\n")
