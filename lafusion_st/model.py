"""FusedSentenceTransformer: a ``SentenceTransformer`` that reads lafusion folders and checks its inputs."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from lafusion_st.spec import EmbedderSpec, read_spec_file, write_spec_file

OWN_MODULES_PACKAGE = "lafusion_st.modules"


class FusedSentenceTransformer(SentenceTransformer):
    """A ``SentenceTransformer`` that checks its inputs before encoding.

    It saves exactly like its parent, and ``FusedSentenceTransformer(path)`` and ``SentenceTransformer(path)``
    read the same folder and give the same vectors; on sentence-transformers 6 the latter needs
    ``trust_remote_code=True``, this class never does. What it adds to
    ``encode``: a ``TypeError`` naming the index of the first non-string input (before length sorting
    hides it), and an empty input list gives an empty ``(0, dim)`` array (or tensor) instead of a
    dimensionless one, so downstream code that stacks or indexes columns keeps working.

    ``spec`` is the :class:`~lafusion_st.spec.EmbedderSpec` the model was built from (``None`` for one
    assembled by hand, or read from a folder saved before specs were recorded); ``save`` records it in the
    folder and loading the folder reads it back.
    """

    spec: EmbedderSpec | None = None

    def __init__(self, model_name_or_path: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, *args, **kwargs)
        if model_name_or_path is not None and Path(model_name_or_path).is_dir():
            self.spec = read_spec_file(model_name_or_path)

    def save(self, path: str, *args: Any, **kwargs: Any) -> None:
        super().save(path, *args, **kwargs)
        if self.spec is not None:
            write_spec_file(path, self.spec)

    def _load_module_class_from_ref(self, class_ref: str, *args: Any, **kwargs: Any) -> type:
        """Import lafusion's own module classes directly; every other class goes through the parent's checks.

        Why: sentence-transformers 6 refuses module classes outside its own package unless
        ``trust_remote_code=True``, even from a local folder. lafusion's modules belong to the installed package
        that defines this class, not to code shipped with the model, so reading a fused folder needs no flag.
        """
        if class_ref.startswith(OWN_MODULES_PACKAGE + "."):
            module_path, class_name = class_ref.rsplit(".", 1)
            return getattr(importlib.import_module(module_path), class_name)
        return super()._load_module_class_from_ref(class_ref, *args, **kwargs)

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
