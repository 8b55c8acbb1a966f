"""lafusion_st.scan_cache: when a reader may serve, wait for or remove a cache entry (no model needed)."""

from __future__ import annotations

import errno
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from lafusion_st import scan_cache
from lafusion_st.scan_cache import ScanCacheEntry, ScanCacheWarning, ScanKey

KEY = ScanKey("fingerprint", "mean", 8, "texts", (2, 3, 4))
OLD = np.zeros(KEY.shape, dtype=np.float32)
NEW = np.arange(np.prod(KEY.shape), dtype=np.float32).reshape(KEY.shape)


def stored_entry(folder: Path, vectors: np.ndarray = OLD) -> ScanCacheEntry:
    """An entry written the way a scan writes it: one chunk, then data file and sidecar."""
    entry = ScanCacheEntry(folder, "model", KEY)
    entry.write_chunk(0, KEY.shape[1], vectors)
    entry.finalize([np.arange(KEY.shape[1])], {})
    return entry


def test_a_reader_waits_for_the_writer_instead_of_discarding_a_half_replaced_entry(tmp_path: Path) -> None:
    entry = stored_entry(tmp_path)
    result: dict[str, np.ndarray | None] = {}
    reader = threading.Thread(target=lambda: result.update(vectors=ScanCacheEntry(tmp_path, "model", KEY).load()))
    with FileLock(str(entry.lock_file)):  # another process rewriting the entry holds its lock
        scan_cache._write_checked(entry.data_file, NEW)  # new data, old sidecar: half replaced
        reader.start()
        reader.join(timeout=0.5)
        assert reader.is_alive()  # waiting, not reading (and removing) the half-replaced entry
        stored_entry(tmp_path, NEW)  # the writer finishes: data and sidecar agree again
    reader.join(timeout=30)
    np.testing.assert_array_equal(result["vectors"], NEW)
    assert entry.data_file.exists() and entry.sidecar_file.exists()


def test_a_reader_holding_the_lock_itself_still_loads(tmp_path: Path) -> None:
    """The scanner holds an entry's lock while it re-reads it; the lock is reentrant for that."""
    entry = stored_entry(tmp_path)
    with entry.lock():
        np.testing.assert_array_equal(entry.load(), OLD)


@pytest.mark.parametrize(
    "error",
    [KeyboardInterrupt(), MemoryError(), OSError(5, "Input/output error")],
    ids=lambda error: type(error).__name__,
)
def test_failures_other_than_corruption_propagate_and_keep_the_entry(tmp_path: Path, monkeypatch, error) -> None:
    entry = stored_entry(tmp_path)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(scan_cache, "safe_open", fail)
    with pytest.raises(type(error)):
        entry.load()
    monkeypatch.undo()
    assert entry.data_file.exists() and entry.sidecar_file.exists()
    np.testing.assert_array_equal(entry.load(), OLD)


def _sidecar(entry: ScanCacheEntry, change) -> None:
    sidecar = json.loads(entry.sidecar_file.read_text())
    entry.sidecar_file.write_text(json.dumps(change(sidecar)))


CORRUPTIONS = {
    "sidecar not JSON": (lambda entry: entry.sidecar_file.write_text("{not json"), "is not valid JSON"),
    "sidecar not UTF-8": (lambda entry: entry.sidecar_file.write_bytes(b"\xff\xfe"), "is not valid JSON"),
    "sidecar a list": (lambda entry: entry.sidecar_file.write_text("[]"), "must hold a JSON object, got list"),
    "other key": (lambda entry: _sidecar(entry, lambda s: {**s, "pooling": "max"}), "field 'pooling'"),
    "data missing": (lambda entry: entry.data_file.unlink(), "is missing"),
    "data truncated": (
        lambda entry: entry.data_file.write_bytes(entry.data_file.read_bytes()[:-8]),
        "not a readable scan tensor",
    ),
    "other data": (lambda entry: scan_cache._write_checked(entry.data_file, NEW), "checksum mismatch"),
    "other shape": (
        lambda entry: scan_cache._write_checked(entry.data_file, NEW[:, :2]),
        r"expected float32 \[2, 3, 4\]",
    ),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_detected_corruption_is_warned_about_and_removed(tmp_path: Path, corrupt) -> None:
    damage, match = corrupt
    entry = stored_entry(tmp_path)
    damage(entry)
    with pytest.warns(ScanCacheWarning, match=match):
        assert entry.load() is None
    assert not entry.data_file.exists() and not entry.sidecar_file.exists()


READ_ONLY = [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EROFS, "Read-only file system")]
"""What creating a lock file raises in a cache this process may not write: a folder of someone else's (filelock
says ``PermissionError``), a read-only mount (a plain ``OSError``, which the scan cache once did not catch)."""


def refuse_with(error: OSError):
    def refuse(*args, **kwargs):
        raise error

    return refuse


@pytest.mark.parametrize("error", READ_ONLY, ids=["permissions", "read-only mount"])
def test_a_cache_this_process_cannot_lock_is_read_without_the_lock(tmp_path: Path, monkeypatch, error) -> None:
    entry = stored_entry(tmp_path)
    monkeypatch.setattr(entry.lock(), "acquire", refuse_with(error))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(entry.load(), OLD)


@pytest.mark.parametrize("error", READ_ONLY, ids=["permissions", "read-only mount"])
def test_a_corrupt_entry_in_a_read_only_cache_is_warned_about_and_left(tmp_path: Path, monkeypatch, error) -> None:
    """Removing it would fail there; the reader must still get ``None`` (and recompute), not the removal's error."""
    entry = stored_entry(tmp_path)
    entry.data_file.write_bytes(entry.data_file.read_bytes()[:-8])
    monkeypatch.setattr(entry.lock(), "acquire", refuse_with(error))
    tried: list[str] = []

    def refused_unlink(path: Path, missing_ok: bool = False) -> None:
        tried.append(path.name)
        raise error

    monkeypatch.setattr(Path, "unlink", refused_unlink)
    with pytest.warns(ScanCacheWarning, match="unusable"):
        assert entry.load() is None
    assert tried == [entry.sidecar_file.name, entry.data_file.name]  # each file tried, the sidecar first
