"""Choosing ONNX Runtime execution providers, and refusing a silent CUDA -> CPU fallback.

Why: ``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as *available* even on a machine without a GPU or
CUDA libraries; creating a session with it then logs an error and quietly runs on CPU. The only reliable
test is the provider list of the created session, which :func:`check_session_providers` reads. After one
such fallback, ``auto`` stops asking for CUDA in this process, so the failed-library error ONNX Runtime
logs appears once, not once per session.
"""

from __future__ import annotations

import logging
from typing import Literal

import onnxruntime as ort

from onnx_export.errors import ProviderUnavailableError

logger = logging.getLogger(__name__)

Provider = Literal["auto", "cuda", "cpu"]
PROVIDERS: tuple[Provider, ...] = ("auto", "cuda", "cpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_cuda_failed_here = False


def requested_providers(provider: str) -> list[str]:
    """ONNX Runtime provider names to try for ``provider``, best first.

    ``cuda`` also lists the CPU provider, as ONNX Runtime recommends: it only takes the few operators CUDA
    has no kernel for, while the session's first provider must still be CUDA (see
    :func:`check_session_providers`).
    """
    if provider not in PROVIDERS:
        raise ValueError(f"Unknown provider {provider!r}; choose one of {list(PROVIDERS)}.")
    if provider == "cpu":
        return [CPU]
    if provider == "cuda" or (CUDA in ort.get_available_providers() and not _cuda_failed_here):
        return [CUDA, CPU]
    return [CPU]


def check_session_providers(session: ort.InferenceSession, provider: str) -> list[str]:
    """The providers ``session`` really uses; raise if CUDA was asked for explicitly but is not among them.

    Raises:
        ProviderUnavailableError: ``provider == "cuda"`` and the session fell back to CPU.
    """
    global _cuda_failed_here
    in_use = session.get_providers()
    if provider != "cpu" and in_use[0] != CUDA and CUDA in ort.get_available_providers():
        _cuda_failed_here = True
    if provider == "cuda" and in_use[0] != CUDA:
        raise ProviderUnavailableError(
            f"provider='cuda' was asked for, but ONNX Runtime {ort.__version__} runs this model on {in_use} "
            f"(built with {ort.get_available_providers()}; no usable GPU or CUDA/cuDNN libraries here). "
            "Install onnxruntime-gpu with its CUDA dependencies on a GPU machine, or pass provider='cpu' "
            "(or 'auto' to take CUDA when it works)."
        )
    if provider == "auto" and _cuda_failed_here:
        logger.info("CUDAExecutionProvider is built in but not usable here; provider='auto' runs on %s.", in_use)
    return in_use
