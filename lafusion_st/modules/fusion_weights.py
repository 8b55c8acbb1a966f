"""The learnable weights of ``fusion="weighted"``, shared by ``LayerSelect`` (per layer) and ``MultiModelFuse``
(per member): one place for their default, checks and safetensors file.

Why: both modules weight vectors the same way and store the weights the same way; two copies of this code
had already begun to differ only in names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from safetensors.torch import load_file, save_file

from lafusion_st.errors import InvalidArgumentError, MissingFileError
from lafusion_st.modes import FusionMode

WEIGHTS_FILE = "model.safetensors"


def init_fusion_weights(
    fusion: FusionMode, weights: Sequence[float] | None, count: int, name: str
) -> torch.nn.Parameter | None:
    """A trainable parameter of ``count`` weights for ``fusion="weighted"`` (uniform by default), else ``None``.

    Args:
        fusion: The fusion mode.
        weights: Given weights, or ``None`` for ``1 / count`` each.
        count: How many vectors are fused.
        name: The argument's name (``layer_weights``, ``model_weights``), used in errors and as the tensor name.

    Raises:
        InvalidArgumentError: (a ``ValueError``) Weights given for another mode, or not ``count`` of them.
    """
    if fusion != "weighted":
        if weights is not None:
            raise InvalidArgumentError(f"{name} are only used with fusion='weighted', not {fusion!r}.")
        return None
    initial = list(weights) if weights is not None else [1.0 / count] * count
    if len(initial) != count:
        raise InvalidArgumentError(f"Got {len(initial)} {name} for {count} fused vectors.")
    return torch.nn.Parameter(torch.tensor([float(weight) for weight in initial]))


def save_fusion_weights(weights: torch.nn.Parameter | None, name: str, output_path: str) -> None:
    """Write ``weights`` as tensor ``name`` of ``model.safetensors`` in ``output_path`` (nothing if ``None``)."""
    if weights is not None:
        save_file({name: weights.detach().cpu().contiguous()}, os.path.join(output_path, WEIGHTS_FILE))


def load_fusion_weights(fusion: str, name: str, folder: str) -> list[float] | None:
    """The weights saved by :func:`save_fusion_weights` when ``fusion == "weighted"``, else ``None``.

    Raises:
        MissingFileError: (a ``FileNotFoundError``) ``fusion`` is ``weighted`` but the file is missing.
        InvalidArgumentError: (a ``ValueError``) The file lacks the tensor ``name``.
    """
    if fusion != "weighted":
        return None
    path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise MissingFileError(f"fusion='weighted' but the weights file {path} is missing.")
    tensors = load_file(path)
    if name not in tensors:
        raise InvalidArgumentError(f"{path} holds no tensor {name!r} (found {sorted(tensors)}).")
    return tensors[name].tolist()
