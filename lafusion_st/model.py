"""FusedSentenceTransformer: a ``SentenceTransformer`` that reads lafusion folders and checks its inputs."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from lafusion_st.errors import InvalidArgumentError
from lafusion_st.saved_folder import OWN_MODULE_CLASSES, check_module_class, check_saved_modules, read_modules_json
from lafusion_st.spec import EmbedderSpec, read_spec_file, write_spec_file


class FusedSentenceTransformer(SentenceTransformer):
    """A ``SentenceTransformer`` that checks its inputs before encoding.

    It saves exactly like its parent, and ``FusedSentenceTransformer(path)`` and ``SentenceTransformer(path)``
    read the same folder and give the same vectors; on sentence-transformers 6 the latter needs
    ``trust_remote_code=True``, this class never does.

    Loading is restricted (unless ``trust_remote_code=True``): a saved folder may name only
    sentence-transformers' module classes and lafusion's own (:data:`OWN_MODULE_CLASSES`), and every module
    path must be a single name inside the folder; anything else raises before any of its code is imported.

    What it adds to
    ``encode``: a ``TypeError`` naming the index of the first non-string input (before length sorting
    hides it), and an empty input list gives an empty ``(0, dim)`` array (or tensor) instead of a
    dimensionless one, so downstream code that stacks or indexes columns keeps working.

    ``spec`` is the :class:`~lafusion_st.spec.EmbedderSpec` the model was built from (``None`` for one
    assembled by hand, or read from a folder saved before specs were recorded); ``save`` records it in the
    folder and loading the folder reads it back.
    """

    spec: EmbedderSpec | None = None

    def __init__(self, model_name_or_path: str | None = None, *args: Any, **kwargs: Any) -> None:
        saved = model_name_or_path is not None and os.path.isfile(os.path.join(model_name_or_path, "modules.json"))
        if saved:
            check_saved_modules(model_name_or_path, bool(kwargs.get("trust_remote_code", False)))
        super().__init__(model_name_or_path, *args, **kwargs)
        if saved:
            self._check_derived_fields(model_name_or_path)
        if model_name_or_path is not None and Path(model_name_or_path).is_dir():
            self.spec = read_spec_file(model_name_or_path)

    def save(self, path: str, *args: Any, **kwargs: Any) -> None:
        super().save(path, *args, **kwargs)
        if self.spec is not None:
            write_spec_file(path, self.spec)

    def _check_derived_fields(self, folder: str) -> None:
        """Cross-check what a saved ``LayerSelect`` states about its backbone against the loaded backbone.

        Why: these fields are derived when the embedder is built, but a saved folder stores them as plain JSON.
        An edited or mismatched value does not fail on its own: a wrong ``source_num_layers`` re-applies the
        final norm to a truncated model's last layer, a wrong ``hidden_size`` reports a dimension the vectors
        do not have. Each mismatch names the file and field.
        """
        from lafusion_st.modules import LayerSelect, TruncatedTransformer

        paths = [str(entry.get("path", "")) for entry in read_modules_json(folder)]
        modules = list(self)
        for index in range(1, len(modules)):
            backbone, select = modules[index - 1], modules[index]
            if not (isinstance(backbone, TruncatedTransformer) and isinstance(select, LayerSelect)):
                continue
            backbone_file = os.path.join(folder, paths[index - 1], "sentence_bert_config.json")
            select_file = os.path.join(folder, paths[index], "config.json")
            config = backbone.auto_model.config
            hidden_size = (getattr(config, "text_config", None) or config).hidden_size
            problems = []
            if select.source_num_layers != backbone.source_num_layers:
                problems.append(
                    f"{select_file} field source_num_layers is {select.source_num_layers}, but {backbone_file} "
                    f"field source_num_layers is {backbone.source_num_layers}"
                )
            if select.hidden_size != hidden_size:
                problems.append(
                    f"{select_file} field hidden_size is {select.hidden_size}, but the backbone's hidden size "
                    f"(config.json) is {hidden_size}"
                )
            if select.deepest_layer > backbone.num_layers:
                problems.append(
                    f"{select_file} field layers {select.layers} needs layer {select.deepest_layer}, but "
                    f"{backbone_file} field num_layers keeps only {backbone.num_layers}"
                )
            if problems:
                raise InvalidArgumentError(
                    f"The saved embedder {folder} contradicts itself: " + "; ".join(problems) + ". The folder was "
                    "edited or assembled from different embedders; save it again from the built model."
                )

    def _load_module_class_from_ref(
        self, class_ref: str, model_name_or_path: str, trust_remote_code: bool, *args: Any, **kwargs: Any
    ) -> type:
        """Import lafusion's own module classes directly, refuse classes outside the allow-list.

        Why: sentence-transformers 5.x imports any class a local folder names (running code shipped with the
        folder), and 6.x refuses lafusion's own unless ``trust_remote_code=True``. lafusion's modules belong to
        the installed package that defines this class, so reading a fused folder needs no flag; anything else
        not from sentence-transformers needs ``trust_remote_code=True``. (Checked here as well as in
        :func:`check_saved_modules` because hub folders reach this hook without a local ``modules.json``.)
        """
        if class_ref in OWN_MODULE_CLASSES:
            module_path, class_name = class_ref.rsplit(".", 1)
            return getattr(importlib.import_module(module_path), class_name)
        if not trust_remote_code:
            check_module_class(class_ref, model_name_or_path)
        return super()._load_module_class_from_ref(class_ref, model_name_or_path, trust_remote_code, *args, **kwargs)

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
