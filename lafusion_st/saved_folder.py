"""What a saved lafusion folder may contain, and how to recognise one.

Why a module of its own, free of torch: the loaders (:class:`~lafusion_st.model.FusedSentenceTransformer`,
``MultiModelFuse`` members, ``onnx_export.export``) check a folder before sentence-transformers imports
anything from it, and the model registry must recognise a saved embedder passed where a model is expected,
without importing torch.
"""

from __future__ import annotations

import json
import os
from typing import Any

from lafusion_st.errors import InvalidArgumentError
from lafusion_st.files import check_component

OWN_MODULES_PACKAGE = "lafusion_st.modules"
OWN_MODULE_FILES = {
    "LayerSelect": "layer_select",
    "MultiModelFuse": "multi_model_fuse",
    "TruncatedTransformer": "truncated_transformer",
}
"""lafusion's module classes and the files defining them: the only non-sentence-transformers classes a
lafusion loader imports without ``trust_remote_code=True``."""
OWN_MODULE_CLASSES = frozenset(
    ref
    for name, file in OWN_MODULE_FILES.items()
    for ref in (f"{OWN_MODULES_PACKAGE}.{name}", f"{OWN_MODULES_PACKAGE}.{file}.{name}")
)
ST_PACKAGE = "sentence_transformers."


class UntrustedModuleError(InvalidArgumentError):
    """A saved folder names a module class outside the allow-list; loading it would run that code."""


def check_saved_modules(folder: str, trust_remote_code: bool = False) -> None:
    """Check a local saved folder's ``modules.json`` before sentence-transformers reads it.

    Every module ``path`` must be a single relative component inside ``folder`` (``""`` is the root), and,
    unless ``trust_remote_code``, every ``type`` must be a sentence-transformers class or one of
    :data:`OWN_MODULE_CLASSES`.

    Raises:
        InvalidArgumentError: Malformed ``modules.json``, or a path that is absolute, nested or leads outside.
        UntrustedModuleError: A class outside the allow-list (its name and the folder are in the message).
    """
    path = os.path.join(folder, "modules.json")
    for entry in read_modules_json(folder):
        if entry.get("path") != "":
            check_component(entry.get("path"), f"Module path in {path}", root=folder)
        if not trust_remote_code:
            check_module_class(entry.get("type"), folder)


def read_modules_json(folder: str) -> list[dict[str, Any]]:
    """The entries of ``folder/modules.json``, checked to be a list of JSON objects.

    Raises:
        InvalidArgumentError: (a ``ValueError``) Not JSON, or not such a list.
    """
    path = os.path.join(folder, "modules.json")
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InvalidArgumentError(f"{path} must hold a list of module entries.")
    return entries


def check_module_class(class_ref: object, folder: str) -> None:
    """Raise :class:`UntrustedModuleError` unless ``class_ref`` is allowed (see :func:`check_saved_modules`)."""
    if isinstance(class_ref, str) and (class_ref in OWN_MODULE_CLASSES or class_ref.startswith(ST_PACKAGE)):
        return
    raise UntrustedModuleError(
        f"{folder} asks for the module class {class_ref!r}, which is neither a sentence-transformers class nor "
        f"one of lafusion's ({sorted(OWN_MODULE_FILES)}). lafusion does not import it, because that would run "
        "code shipped with the folder. Pass trust_remote_code=True only if you trust whoever wrote this folder."
    )


def saved_embedder_sources(folder: str) -> list[str] | None:
    """The source models a saved lafusion embedder was built from, or ``None`` if ``folder`` is not one.

    A folder is a saved lafusion embedder when its ``modules.json`` names one of lafusion's module classes.
    Its ``TruncatedTransformer`` may keep only the first layers of the source model, so reading it as a
    model would look like a shallower complete model (and put the final norm on the wrong layer). Members of
    a multi-model embedder are looked up under ``members/``; a source that was not recorded (folders saved
    before it was) is reported as ``"unrecorded"``.
    """
    entries = _read_json(os.path.join(folder, "modules.json"))
    if not isinstance(entries, list):
        return None
    types = [entry.get("type") for entry in entries if isinstance(entry, dict)]
    if not any(class_ref in OWN_MODULE_CLASSES for class_ref in types):
        return None
    fuse_config = _read_json(os.path.join(folder, "multi_model_fuse_config.json"))
    if isinstance(fuse_config, dict) and isinstance(fuse_config.get("member_names"), list):
        sources: list[str] = []
        for name in fuse_config["member_names"]:
            sources += saved_embedder_sources(os.path.join(folder, "members", str(name))) or ["unrecorded"]
        return sources
    backbone = _read_json(os.path.join(folder, "sentence_bert_config.json"))
    source = backbone.get("source_model") if isinstance(backbone, dict) else None
    return [source if isinstance(source, str) else "unrecorded"]


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
