"""Names a package exports but imports only on first use (PEP 562 ``__getattr__`` and ``__dir__``).

Why: ``lafusion_st``, ``lafusion_st.heads`` and ``onnx_export`` each export names whose modules pull in
torch or scikit-learn, while their light parts (the CLI parser, the label codec, the ONNX Runtime encoder)
must import without them. Standard library only, so the torch-free ONNX encoder can use it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module-level ``__getattr__`` and ``__dir__`` for names imported on first use.

    Example (in a package's ``__init__.py``)::

        __getattr__, __dir__ = lazy_exports(__name__, {"export": "onnx_export.exporter"})

    Args:
        package: The package's ``__name__``.
        exports: Each lazily exported name and the module that defines it.

    Returns:
        ``__getattr__`` (imports the defining module and returns the name; ``AttributeError`` for any other
        name) and ``__dir__`` (the package's own names and the lazy ones, sorted).
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
