"""The manifest that makes an exported folder self-describing, and the checks run before trusting it.

Why a manifest of our own next to Optimum's ``config.json``: ONNX Runtime needs more than the graph to
reproduce ``SentenceTransformer.encode`` (padding side, pad id, max length, the empty-text rule, how member
vectors are fused), and a deployment must be able to tell a damaged or swapped file from a good one
without torch. ``lafusion_onnx.json`` holds all of it; this module reads and writes it with the standard
library only, so the encoder stays importable where only onnxruntime, numpy and tokenizers exist.

Schema (format version 1)::

    {
      "format": "lafusion-onnx", "format_version": 1,
      "embedding_dimension": int, "opset": int, "dtypes": ["fp32", ...],
      "model_fusion": null | {"mode": "concat"|"mean"|"sum"|"weighted", "file": "fusion.onnx",
                              "files": {name: {"bytes": int, "sha256": str}}},
      "members": [{
        "name": str, "folder": "." | "members/<name>",
        "architecture": "LlamaModel", "model_type": "llama",
        "num_layers": int, "source_num_layers": int,          # layers kept in the graph / in the source
        "layers": [int], "pooling": str, "fusion": str,       # LayerSelect settings
        "modules": [{"class": str, "config": {...}}],         # the sentence-transformers pipeline traced
        "embedding_dimension": int, "num_parameters": int,     # parameters of the kept layers
        "inputs": ["input_ids", "attention_mask", ...],
        "tokenizer": {"file": "tokenizer.json", "sha256": str, "max_seq_length": int,
                      "padding_side": str, "truncation_side": str, "pad_token": str,
                      "pad_token_id": int, "pad_token_type_id": int,
                      "empty_text_substitute": str | null},
        "graphs": {dtype: {"file": "model.onnx", "files": {name: {"bytes": int, "sha256": str}}}}
      }],
      "variants": {dtype: {"optimized": bool, "max_abs_diff": float, "min_cosine": float}},
      "versions": {distribution: version},
      "spec": null | {...}       # the EmbedderSpec exported (lafusion_st.spec), absent in older exports
    }
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lafusion_st.errors import InvalidArgumentError
from lafusion_st.files import check_component, file_sha256, read_versioned_json, write_text_atomic
from lafusion_st.spec import EmbedderSpec
from onnx_export.errors import ExportedModelError, TokenizerMismatchError

MANIFEST_FILE = "lafusion_onnx.json"
FORMAT = "lafusion-onnx"
FORMAT_VERSION = 1
DTYPES: tuple[str, ...] = ("fp32", "fp16", "int8")


def file_records(folder: str | Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and checksum of each named file in ``folder``, as stored in the manifest."""
    return {
        name: {"bytes": Path(folder, name).stat().st_size, "sha256": file_sha256(Path(folder, name))} for name in names
    }


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` (format fields added) as ``lafusion_onnx.json`` in ``folder``."""
    return write_text_atomic(
        Path(folder, MANIFEST_FILE),
        json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}, indent=2) + "\n",
    )


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and sanity-check the manifest of an exported folder.

    Raises:
        ExportedModelError: The folder or manifest is missing, not JSON, of another format, or newer than
            this reader.
    """
    path = Path(folder, MANIFEST_FILE)
    manifest = read_versioned_json(
        path,
        FORMAT,
        FORMAT_VERSION,
        ExportedModelError,
        missing=f"{folder} is not a lafusion ONNX export. Create one with onnx_export.export(model, out_dir) or "
        "`lafusion export`.",
        missing_cls=ExportedModelError,
        remedy="Re-export the model.",
    )
    try:
        check_paths(folder, manifest)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ExportedModelError(f"{path} names files it may not use: {error}") from error
    return manifest


def spec_of(manifest: dict[str, Any]) -> EmbedderSpec | None:
    """The embedder spec recorded in a manifest, or ``None`` (an export of a model without one, or an export
    written before specs were recorded).

    Raises:
        ExportedModelError: The recorded spec is invalid.
    """
    recorded = manifest.get("spec")
    if recorded is None:
        return None
    try:
        return EmbedderSpec.from_dict(recorded)
    except InvalidArgumentError as error:
        raise ExportedModelError(f"{MANIFEST_FILE}: invalid spec ({error}); re-export the model.") from error


def check_paths(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Every folder and file the manifest names must stay inside ``folder``: member folders are ``.`` or
    ``members/<name>``, files are single names inside their member's folder.

    Raises:
        ValueError: A name with separators, ``..``, an absolute path, or a symlink leading outside.
    """
    folder = Path(folder)
    fusion = manifest["model_fusion"]
    if fusion is not None:
        _check_files(folder, fusion)
    for member in manifest["members"]:
        parts = member["folder"].split("/")
        if member["folder"] != "." and (len(parts) != 2 or parts[0] != "members"):
            raise ValueError(f"member folder {member['folder']!r} must be '.' or 'members/<name>'")
        member_folder = Path(folder)
        if member["folder"] != ".":
            member_folder = member_folder / "members" / check_component(parts[1], "Member folder", folder / "members")
        check_component(member["tokenizer"]["file"], "Tokenizer file", member_folder)
        for graph in member["graphs"].values():
            _check_files(member_folder, graph)


def _check_files(folder: Path, graph: dict[str, Any]) -> None:
    check_component(graph["file"], "Graph file", folder)
    for name in graph["files"]:
        check_component(name, "Graph data file", folder)


def verify_files(folder: str | Path, records: dict[str, dict[str, Any]]) -> None:
    """Check that every recorded file exists with its recorded size and checksum.

    Raises:
        ExportedModelError: Naming the first file that is missing, truncated/extended, or corrupted.
    """
    for name, record in records.items():
        path = Path(folder, name)
        if not path.is_file():
            raise ExportedModelError(
                f"{path} is missing; the exported folder is incomplete (copy it whole or re-export)."
            )
        size = path.stat().st_size
        if size != record["bytes"]:
            raise ExportedModelError(
                f"{path} is {size} bytes, expected {record['bytes']}: truncated or replaced; re-export."
            )
        if file_sha256(path) != record["sha256"]:
            raise ExportedModelError(f"{path} does not match its recorded SHA-256: the file is corrupted; re-export.")


def verify_tokenizer(folder: str | Path, spec: dict[str, Any]) -> Path:
    """Check the member's tokenizer file is the one exported with its graph; return its path.

    Raises:
        TokenizerMismatchError: The file is missing or differs from the exported one (another model's
            tokenizer would feed token ids the graph's embedding table does not mean, silently).
    """
    path = Path(folder, spec["file"])
    if not path.is_file():
        raise TokenizerMismatchError(f"Tokenizer file {path} is missing; the exported folder is incomplete.")
    if file_sha256(path) != spec["sha256"]:
        raise TokenizerMismatchError(
            f"Tokenizer file {path} is not the one this graph was exported with (SHA-256 differs). Restore the "
            "exported tokenizer.json or re-export the model with the tokenizer you want."
        )
    return path
