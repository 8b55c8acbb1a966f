"""lafusion_st.files: the one reader of lafusion's versioned JSON files, and the readers built on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lafusion_st.errors import InvalidArgumentError, MissingFileError
from lafusion_st.files import read_versioned_json
from lafusion_st.heads import CONFIG_FILE, load_head
from lafusion_st.spec import SPEC_FILE, read_spec_file
from onnx_export.classifier import HEAD_DIR, HEAD_MANIFEST, read_head_manifest
from onnx_export.errors import ExportedModelError
from onnx_export.manifest import MANIFEST_FILE, read_manifest

BROKEN = [
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe", "is not valid JSON"),
    (b"[1, 2]", "must hold a JSON object, got list"),
    (b'{"format": "other", "format_version": 1}', r"is not a lafusion-test file \(format 'other'\)"),
    (b'{"format_version": 1}', r"is not a lafusion-test file \(format None\)"),
    (
        b'{"format": "lafusion-test", "format_version": 3}',
        "format_version 3; this lafusion reads lafusion-test version 1 or 2",
    ),
    (b'{"format": "lafusion-test"}', "format_version None"),
    (b'{"format": "lafusion-test", "format_version": true}', "format_version True"),
]


@pytest.mark.parametrize(("content", "match"), BROKEN)
def test_versioned_json_errors_name_the_file_and_the_fault(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "thing.json"
    path.write_bytes(content)
    with pytest.raises(ExportedModelError, match=match) as raised:
        read_versioned_json(path, "lafusion-test", (1, 2), ExportedModelError, remedy="Re-export it.")
    assert str(path) in str(raised.value) and str(raised.value).endswith("Re-export it.")


def test_versioned_json_reads_a_good_file_and_explains_a_missing_one(tmp_path: Path) -> None:
    document = {"format": "lafusion-test", "format_version": 2, "payload": [1]}
    (tmp_path / "thing.json").write_text(json.dumps(document))
    assert read_versioned_json(tmp_path / "thing.json", "lafusion-test", (1, 2)) == document
    with pytest.raises(MissingFileError, match=r"nothing\.json is missing: the folder is not a test\.$"):
        read_versioned_json(tmp_path / "nothing.json", "lafusion-test", 1, missing="the folder is not a test.")
    with pytest.raises(InvalidArgumentError, match=r"lafusion-test version 1\.$"):
        read_versioned_json(tmp_path / "thing.json", "lafusion-test", 1)


@pytest.mark.parametrize(
    ("reader", "relative", "error"),
    [
        (read_spec_file, SPEC_FILE, InvalidArgumentError),
        (load_head, CONFIG_FILE, InvalidArgumentError),
        (read_manifest, MANIFEST_FILE, ExportedModelError),
        (read_head_manifest, f"{HEAD_DIR}/{HEAD_MANIFEST}", ExportedModelError),
    ],
    ids=["spec", "head", "onnx-manifest", "onnx-head-manifest"],
)
def test_every_versioned_reader_refuses_a_file_that_is_not_an_object(tmp_path: Path, reader, relative, error) -> None:
    """Each reader raises its own error class naming the file (read_head_manifest raised AttributeError)."""
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[]")
    with pytest.raises(error, match="must hold a JSON object, got list"):
        reader(tmp_path)
