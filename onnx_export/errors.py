"""Typed errors of the ONNX route, so callers (and tests) can tell one failure from another.

Each is a subclass of the built-in exception a user would expect (``ValueError`` for bad arguments or data,
``RuntimeError`` for an environment that cannot do what was asked), so generic handlers keep working, and
of ``lafusion_st.errors.LafusionError`` (except ``ParityError``, a failed self-check rather than a user error),
so the ``lafusion`` command reports them in one line.
Torch-free: the encoder raises these on machines that have only onnxruntime, numpy and tokenizers.
"""

from __future__ import annotations

from lafusion_st.errors import InvalidArgumentError, LafusionError


class UnsupportedArchitectureError(InvalidArgumentError):
    """Optimum's ONNX exporter has no configuration for the backbone's architecture."""


class ExportedModelError(InvalidArgumentError):
    """An exported folder is incomplete or damaged: missing manifest, missing/truncated/corrupt graph file."""


class TokenizerMismatchError(ExportedModelError):
    """The tokenizer file in an exported folder is not the one the graph was exported with."""


class ProviderUnavailableError(LafusionError, RuntimeError):
    """An execution provider was asked for explicitly and ONNX Runtime cannot use it here."""


class NonFiniteEmbeddingError(ValueError):
    """ONNX Runtime produced NaN or infinite coordinates (typically an fp16/int8 graph overflowing)."""


class ParityError(ValueError):
    """ONNX Runtime and PyTorch disagree beyond ``atol + rtol * |torch|`` on one input grid.

    Attributes:
        max_abs_diff: Largest absolute difference seen on the failing grid.
        atol: Absolute tolerance.
        rtol: Relative tolerance.
        grid: Name of the failing input grid (e.g. ``batch=7 padding=left``).
    """

    def __init__(self, max_abs_diff: float, atol: float, rtol: float, grid: str) -> None:
        self.max_abs_diff = max_abs_diff
        self.atol = atol
        self.rtol = rtol
        self.grid = grid
        super().__init__(
            f"ONNX Runtime and PyTorch differ by up to {max_abs_diff:.3g} (max abs) on {grid}, beyond "
            f"atol={atol:g} + rtol={rtol:g} * |PyTorch value|."
        )
