"""Imports that moved between sentence-transformers releases.

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

__all__ = ["InputModule", "Module", "Transformer"]
