"""ONNX export of lafusion embedders and an ONNX Runtime encoder with ``SentenceTransformer.encode``'s API.

``export`` (torch, Optimum) writes a self-describing folder; ``ORTFusedEncoder`` (vectors) and
``ORTFusedClassifier`` (labels, for an exported ``FusedClassifier``) serve it with only
onnxruntime, numpy and tokenizers installed. The torch-side names are imported on first use (PEP 562), so
``from onnx_export import ORTFusedEncoder`` works on a serving machine without torch.
"""

from __future__ import annotations

from lafusion_st.lazy import lazy_exports
from onnx_export.classifier import ORTFusedClassifier
from onnx_export.encoder import ORTFusedEncoder
from onnx_export.errors import (
    ExportedModelError,
    NonFiniteEmbeddingError,
    ParityError,
    ProviderUnavailableError,
    TokenizerMismatchError,
    UnsupportedArchitectureError,
)

_NEEDS_TORCH = {
    "export": "onnx_export.exporter",
    "validate_export": "onnx_export.validation",
    "compare_with_pytorch": "onnx_export.validation",
    "add_export_arguments": "onnx_export.cli",
    "export_command": "onnx_export.cli",
}

__all__ = [
    "ExportedModelError",
    "NonFiniteEmbeddingError",
    "ORTFusedClassifier",
    "ORTFusedEncoder",
    "ParityError",
    "ProviderUnavailableError",
    "TokenizerMismatchError",
    "UnsupportedArchitectureError",
    *_NEEDS_TORCH,
]


__getattr__, __dir__ = lazy_exports(__name__, _NEEDS_TORCH)
