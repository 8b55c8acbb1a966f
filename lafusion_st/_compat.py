"""Imports that moved between sentence-transformers (and transformers) releases.

We test on sentence-transformers 5.7 (pinned) and keep the modules importable on 6.x, whose module base
classes live under a different path. One place to look them up, so no module guesses on its own.
"""

from __future__ import annotations

try:  # sentence-transformers >= 5.4
    from sentence_transformers.base.modules import InputModule, Module, Transformer
except ImportError:  # pragma: no cover - exercised only on other releases
    try:
        from sentence_transformers.base.models import InputModule, Module, Transformer
    except ImportError:
        from sentence_transformers.models import InputModule, Module, Transformer

try:  # transformers >= 5
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY as OUTPUT_RECORDING_REGISTRY
except ImportError:  # pragma: no cover - exercised only on other releases
    try:  # transformers 4.5x
        from transformers.utils.generic import _CAN_RECORD_REGISTRY as OUTPUT_RECORDING_REGISTRY
    except ImportError:  # releases without the registry need nothing
        OUTPUT_RECORDING_REGISTRY = None

__all__ = ["OUTPUT_RECORDING_REGISTRY", "InputModule", "Module", "Transformer"]
