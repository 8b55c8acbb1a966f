"""FusedSentenceTransformer: a ``SentenceTransformer`` with input checks that fused embedders promise."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


class FusedSentenceTransformer(SentenceTransformer):
    """A ``SentenceTransformer`` that checks its inputs before encoding.

    It loads and saves exactly like its parent (``FusedSentenceTransformer(path)`` or
    ``SentenceTransformer(path)`` read the same folder and give the same vectors). What it adds to
    ``encode``: a ``TypeError`` naming the index of the first non-string input (before length sorting
    hides it), and an empty input list gives an empty ``(0, dim)`` array (or tensor) instead of a
    dimensionless one, so downstream code that stacks or indexes columns keeps working.
    """

    def encode(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"encode() takes a string or a list of strings, got {type(inputs).__name__}.")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Input {index} is {type(text).__name__} ({text!r}); lafusion embeds strings only.")
        if len(texts) == 0:
            return self._empty_embeddings(**kwargs)
        return super().encode(list(texts) if isinstance(inputs, tuple) else inputs, *args, **kwargs)

    def _empty_embeddings(self, convert_to_numpy: bool = True, convert_to_tensor: bool = False, **_: Any) -> Any:
        dimension = self.get_embedding_dimension()
        if convert_to_tensor:
            return torch.empty((0, dimension), device=self.device)
        if convert_to_numpy:
            return np.empty((0, dimension), dtype=np.float32)
        return []
