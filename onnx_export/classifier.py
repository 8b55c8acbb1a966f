"""ORTFusedClassifier: a lafusion classifier export served by ONNX Runtime, without torch or scikit-learn.

An exported classifier folder is an embedder export (see :class:`~onnx_export.ORTFusedEncoder`) plus
``head/``: ``head.onnx`` (embedding in, probabilities out; :mod:`onnx_export.head_graph`) and
``classifier.json`` (labels with their type, the graph's checksum, the parity measured at export). The
embedder's graphs give the vector and the head graph the probabilities, so ONNX Runtime alone classifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lafusion_st.files import read_versioned_json
from lafusion_st.heads.labels import labels_from_json
from lafusion_st.modes import BATCH_SIZE
from onnx_export.encoder import ORTFusedEncoder
from onnx_export.errors import ExportedModelError

HEAD_DIR = "head"
HEAD_GRAPH = "head.onnx"
HEAD_MANIFEST = "classifier.json"
HEAD_FORMAT = "lafusion-onnx-classifier"
HEAD_FORMAT_VERSION = 1
PROBABILITIES = "probabilities"


def read_head_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``head/classifier.json`` of an exported classifier.

    Raises:
        ExportedModelError: Missing (the folder is an embedder export only), not JSON, or another format.
    """
    return read_versioned_json(
        Path(folder, HEAD_DIR, HEAD_MANIFEST),
        HEAD_FORMAT,
        HEAD_FORMAT_VERSION,
        ExportedModelError,
        missing=f"{folder} is an embedder export without a classifier. Export a saved FusedClassifier folder "
        "(`lafusion export CLASSIFIER_FOLDER OUT`) to classify with ONNX Runtime.",
        missing_cls=ExportedModelError,
        remedy="Re-export the classifier.",
    )


class ORTFusedClassifier:
    """Classify texts with an exported ``FusedClassifier`` on ONNX Runtime.

    Example::

        classifier = ORTFusedClassifier("mr-classifier-onnx", provider="cpu")
        classifier.predict(["a gripping film"])        # array(['positive'], ...) or the saved label type
        classifier.predict_proba(["a gripping film"])  # [n, k], columns in the order of classes_

    Args:
        path: Folder written by :func:`onnx_export.export` from a saved classifier.
        provider: ``auto``, ``cuda`` (no fallback) or ``cpu``, as for :class:`ORTFusedEncoder`.
        dtype: Variant of the embedder graphs (``fp32``, ``fp16``, ``int8``); the head graph is fp32.
        num_threads: ONNX Runtime intra-op threads on CPU.
        batch_size: Texts per embedder run (as ``FusedClassifier(batch_size=...)``).

    Raises:
        ExportedModelError: Not a classifier export, or a graph/manifest missing or corrupted.
    """

    def __init__(
        self,
        path: str | Path,
        provider: str = "auto",
        dtype: str = "fp32",
        num_threads: int | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.head_manifest = read_head_manifest(self.path)
        self.encoder = ORTFusedEncoder(self.path, provider=provider, dtype=dtype, num_threads=num_threads)
        self.head_session = self.encoder._session(self.path / HEAD_DIR, self.head_manifest["graph"])
        try:
            self.classes_ = labels_from_json(self.head_manifest["classes"])
        except ValueError as error:
            raise ExportedModelError(f"{self.path / HEAD_DIR / HEAD_MANIFEST}: {error}") from error
        if int(self.head_manifest["input_dimension"]) != self.encoder.embedding_dimension:
            raise ExportedModelError(
                f"The head graph takes {self.head_manifest['input_dimension']}-d vectors, the embedder gives "
                f"{self.encoder.embedding_dimension}: {self.path} mixes two exports."
            )

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, k]`` float32 probabilities, columns in the order of ``classes_``."""
        if isinstance(texts, str):
            raise TypeError("Expected a list of texts, got a single string; wrap it in a list.")
        vectors = self.encoder.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True)
        if len(vectors) == 0:
            return np.empty((0, len(self.classes_)), dtype=np.float32)
        return self.head_session.run([PROBABILITIES], {"sentence_embedding": vectors})[0]

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(texts), axis=1)]

    @property
    def providers(self) -> list[str]:
        return self.head_session.get_providers()

    def __repr__(self) -> str:
        return f"ORTFusedClassifier(path={str(self.path)!r}, classes={self.classes_.tolist()!r})"
