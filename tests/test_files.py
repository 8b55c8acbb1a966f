"""lafusion_st.files: the one reader of lafusion's versioned JSON files, the readers built on it, and the one
rule for a cache entry's lock in a cache folder that may not be written."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from lafusion_st.errors import InvalidArgumentError, MissingFileError
from lafusion_st.files import entry_lock, read_versioned_json
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


def refusing(error: OSError):
    def acquire(*args, **kwargs):
        raise error

    return acquire


@pytest.mark.parametrize(
    "error", [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EROFS, "Read-only file system")]
)
def test_an_entry_lock_refused_for_want_of_write_access_is_yielded_not_raised(tmp_path: Path, monkeypatch, error):
    lock = FileLock(str(tmp_path / "entry.lock"))
    monkeypatch.setattr(lock, "acquire", refusing(error))
    with entry_lock(lock) as refused:
        assert refused is error and not lock.is_locked
    with pytest.raises(KeyError) as failure, entry_lock(lock):
        raise KeyError("a failure of the caller's own")
    assert failure.value.__context__ is None  # not shown as "during handling of" the refusal


def test_an_entry_lock_in_a_folder_without_write_permission_is_refused_even_if_its_lock_file_opens(
    tmp_path: Path, monkeypatch
) -> None:
    """Another user's lock file left writable in a folder this process may not write must not let a scan run."""
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: not (mode & os.W_OK))
    lock = FileLock(str(tmp_path / "entry.lock"))
    with entry_lock(lock) as refused:
        assert isinstance(refused, PermissionError) and not lock.is_locked


@pytest.mark.parametrize("error", [OSError(errno.EMFILE, "Too many open files"), Timeout("entry.lock")])
def test_other_lock_failures_propagate_instead_of_reading_without_the_lock(tmp_path: Path, monkeypatch, error):
    """Reading unlocked in a writable cache could see, and remove, an entry that another process is replacing."""
    lock = FileLock(str(tmp_path / "entry.lock"))
    monkeypatch.setattr(lock, "acquire", refusing(error))
    with pytest.raises(type(error)), entry_lock(lock):
        pytest.fail("the block must not run")


def test_an_entry_lock_is_held_in_the_block_and_released_after(tmp_path: Path) -> None:
    lock = FileLock(str(tmp_path / "new folder" / "entry.lock"))
    with entry_lock(lock) as refused:
        assert refused is None and lock.is_locked
    assert not lock.is_locked
