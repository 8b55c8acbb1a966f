"""Compute precision: fp32, bf16 or fp16 forward passes over float32 weights.

Why autocast and not casting the weights: the weights stay float32 in memory and on disk, so a bf16 run
saves, reloads and exports (ONNX export always traces in float32) exactly like an fp32 one, and precision
is a setting of the run, not of the files. Under ``torch.autocast`` the matrix products run in the low
precision while norms, softmax and the residual stream stay float32, and the hidden states handed to
pooling are float32, so pooling accumulates in float32.

Refused, with a clear error: fp16 on CPU (half-precision CPU kernels are slow and lose accuracy), and bf16
on a device without native bf16 arithmetic (a CPU without AVX512-BF16/AMX, an old GPU): emulated bf16 is
slower than fp32 there (4x slower matrix products on this project's AVX2-only build machine).
"""

from __future__ import annotations

import contextlib
from functools import cache

import torch

from lafusion_st.modes import DTYPES, Dtype

TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_dtype(dtype: str) -> Dtype:
    """Return ``dtype`` if it is one of :data:`~lafusion_st.modes.DTYPES`, else raise a ``ValueError``."""
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {list(DTYPES)}.")
    return dtype  # type: ignore[return-value]


def check_dtype_on_device(dtype: Dtype, device: torch.device | str) -> None:
    """Raise a ``ValueError`` if ``device`` cannot run ``dtype`` natively (fp32 always can)."""
    device = torch.device(device)
    if dtype == "fp32":
        return
    if device.type == "cpu" and dtype == "fp16":
        raise ValueError("dtype 'fp16' is refused on CPU; use 'fp32' (or 'bf16' on a CPU with native bf16).")
    if dtype == "bf16" and not native_bf16(device.type):
        raise ValueError(
            f"dtype 'bf16' needs native bf16 arithmetic, which this {device.type} lacks (emulated bf16 is slower "
            "than fp32); use dtype 'fp32' here, or a CPU with AVX512-BF16/AMX or a GPU with bf16."
        )


@cache
def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` (``cpu``/``cuda``) has native bf16 arithmetic."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast(dtype: Dtype, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a forward pass of ``dtype`` runs in (nothing for fp32), after checking the device."""
    device = torch.device(device)
    check_dtype_on_device(dtype, device)
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=TORCH_DTYPES[dtype])
