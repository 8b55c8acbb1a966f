"""Storage of layer scans: the cache key, the files of one entry, locking, checksums.

Why apart from :mod:`lafusion_st.scan`: the scanner computes vectors, this module decides when stored ones
may be served. Keeping the decision in one small place is what lets later features (another dtype, a
partial depth) extend the key without touching the forward pass.

Cache layout (one entry per :class:`ScanKey`)::

    <cache_dir>/<model>.<pooling>.<digest>.safetensors   tensor "layers" [L + 1, N, H], float32
    <cache_dir>/<model>.<pooling>.<digest>.json          sidecar: the key's fields, versions, sha256 of the data
    <cache_dir>/<model>.<pooling>.<digest>.partial/      chunk files of an unfinished scan (resume point)
    <cache_dir>/<model>.<pooling>.<digest>.lock          held while a process computes or reads the entry

The sidecar is written last, so an entry without one is unfinished. Readers and writers of an entry hold its
lock, so a reader never sees an entry half replaced. An entry found corrupt (a sidecar that is not JSON or
names another key, a data file missing, unreadable as safetensors, of the wrong shape or failing its
checksum) is reported with a warning, removed (kept where the cache may not be written) and recomputed;
any other failure while reading (an interrupt, memory, an I/O error) propagates and leaves the entry alone.
One computed under other torch or transformers versions is served with a warning. Files are read with
safetensors, never pickle. A cache that may not be written serves what it holds and refuses to scan.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from lafusion_st.files import (
    CorruptEntryError,
    atomic_path,
    cache_root,
    entry_lock,
    file_sha256,
    read_json_object,
    remove_entry_files,
    write_text_atomic,
)

VECTOR_RULES = 2
"""Version of how lafusion turns texts into scanned vectors (tokenization rules such as the empty-text and
zero-token substitutes, which inputs reach the backbone, pooling arithmetic). Bump it by hand in the same
commit as any such change: entries computed under other rules then get another key and are recomputed.
History: 1 = first release; 2 = zero-token texts get the empty text's vector, pooling sums in float32,
only the inputs the backbone's forward accepts are passed."""
TENSOR_NAME = "layers"
CHECKED_VERSIONS = ("torch", "transformers")
"""Libraries whose recorded version is compared on every cache hit (a mismatch warns, see :class:`ScanKey`)."""


class ScanCacheWarning(UserWarning):
    """A cached scan was unreadable or did not match its sidecar and is being recomputed."""


class ScanVersionWarning(UserWarning):
    """A cached scan was computed under other torch/transformers versions; it is served as stored."""


@dataclass(frozen=True)
class ScanKey:
    """Everything that determines a scanned vector: two scans with equal keys must give equal vectors.

    This is the one place to extend when a new setting changes vectors (a dtype, a partial depth): add a
    field here and every entry written before it gets a different digest. Library versions are deliberately
    not part of it: a torch or transformers upgrade rarely changes vectors beyond float rounding, and
    recomputing every cache on each upgrade would be costly, so a mismatch warns instead (see
    :meth:`ScanCacheEntry.load`).

    Attributes:
        model_fingerprint: :func:`model_fingerprint` of the model folder.
        pooling: The pooling mode.
        max_seq_length: Token limit per text.
        texts_sha256: :func:`texts_sha256` of the text list.
        shape: ``[L + 1, N, H]`` of the stored tensor.
        vector_rules: :data:`VECTOR_RULES` of the code that computed the vectors.
        dtype: Compute precision of the forward pass; left out of the fields (and so of the digest) at its
            default ``fp32``, so entries written before precision was a setting keep their keys.
        num_layers: Depth of a truncated forward pass (layers ``0..num_layers`` scanned, as a coarse-to-fine
            scan does); ``None`` for the whole model, and then left out of the fields so that full scans keep
            their keys. Stated even though ``shape`` implies it, so that the key says what was computed.
    """

    model_fingerprint: str
    pooling: str
    max_seq_length: int
    texts_sha256: str
    shape: tuple[int, int, int]
    vector_rules: int = field(default_factory=lambda: VECTOR_RULES)  # read when a key is made
    dtype: str = "fp32"
    num_layers: int | None = None

    def fields(self) -> dict[str, Any]:
        """The key as JSON-ready fields, as stored in (and compared against) the sidecar."""
        fields = asdict(self)
        fields["shape"] = list(self.shape)
        if self.dtype == "fp32":
            del fields["dtype"]
        if self.num_layers is None:
            del fields["num_layers"]
        return fields

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()[:24]


def default_scan_cache_dir() -> Path:
    """``scans/`` under :func:`lafusion_st.files.cache_root` (``$LAFUSION_CACHE/scans`` or
    ``~/.cache/lafusion/scans``)."""
    return cache_root() / "scans"


def texts_sha256(texts: Sequence[str]) -> str:
    """Hash of a text list that changes with any text, its position, or the list's length."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def model_fingerprint(folder: str | Path) -> str:
    """sha256 over the names and contents of every top-level file of a model folder (hidden files skipped).

    Why the full bytes and not sizes or the safetensors header: a fine-tuned copy has the same config and
    header, and a cache keyed on them would silently return the old model's vectors. Hashing runs at about
    0.7 GB/s here (SmolLM2's 538 MB in 0.8 s) and is memoised per process on the files' size and mtime.
    """
    files = sorted(path for path in Path(folder).iterdir() if path.is_file() and not path.name.startswith("."))
    signature = tuple((path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    return _hash_files(str(Path(folder).resolve()), signature)


@lru_cache(maxsize=32)
def _hash_files(folder: str, signature: tuple[tuple[str, int, int], ...]) -> str:
    listing = [(name, file_sha256(Path(folder, name))) for name, _, _ in signature]
    return hashlib.sha256(json.dumps(listing).encode("utf-8")).hexdigest()


class ScanCacheEntry:
    """The files of one cached scan.

    Args:
        cache_dir: Root of the scan cache.
        model_name: Readable model name for the file names (the folder's name).
        key: What the stored vectors must have been computed from.
    """

    def __init__(self, cache_dir: Path, model_name: str, key: ScanKey) -> None:
        stem = Path(cache_dir) / f"{model_name}.{key.pooling}.{key.digest}"
        self.key = key
        self.data_file = stem.with_name(stem.name + ".safetensors")
        self.sidecar_file = stem.with_name(stem.name + ".json")
        self.partial_dir = stem.with_name(stem.name + ".partial")
        self.lock_file = stem.with_name(stem.name + ".lock")
        self._lock = FileLock(str(self.lock_file))

    def lock(self) -> FileLock:
        """An inter-process lock on this entry, held while computing it (a second process scanning the same
        texts waits, then reads the finished entry) and while reading it (never a half-replaced entry).
        The same reentrant object on every call, so :meth:`load` works while the caller holds it. Take it
        with :func:`~lafusion_st.files.entry_lock`, which creates the folder and tells a read-only cache."""
        return self._lock

    def load(self) -> np.ndarray | None:
        """The cached vectors, or ``None`` if absent; an entry found corrupt is warned about, removed and ``None``.

        Reads under the entry's lock. A cache this process may not write (a shared read-only folder or mount,
        where the lock file cannot be created) is read without it, and a corrupt entry there is left in place
        (:func:`~lafusion_st.files.entry_lock`, :func:`~lafusion_st.files.remove_entry_files`).

        Raises:
            BaseException: Whatever reading raises other than the corruption it detects (``KeyboardInterrupt``,
                ``MemoryError``, ``OSError``), with the entry left in place.
        """
        if not self.sidecar_file.exists():
            return None
        with entry_lock(self.lock()):
            return self._load()

    def _load(self) -> np.ndarray | None:
        if not self.sidecar_file.exists():  # removed as corrupt by the process this one waited for
            return None
        try:
            sidecar = read_json_object(self.sidecar_file, CorruptEntryError)
            for name, value in self.key.fields().items():
                if sidecar.get(name) != value:
                    raise CorruptEntryError(f"sidecar field {name!r} is {sidecar.get(name)!r}, expected {value!r}")
            vectors = _read_checked(self.data_file, list(self.key.shape), sidecar.get("sha256"))
        except CorruptEntryError as error:
            warnings.warn(
                f"Scan cache entry {self.data_file} is unusable ({error}); recomputing it.",
                ScanCacheWarning,
                stacklevel=4,
            )
            remove_entry_files(self.sidecar_file, self.data_file)
            return None
        self._warn_on_other_versions(sidecar.get("versions") or {})
        return vectors

    def _warn_on_other_versions(self, recorded: dict[str, Any]) -> None:
        current = library_versions()
        differing = {name: recorded.get(name) for name in CHECKED_VERSIONS if recorded.get(name) != current[name]}
        if differing:
            warnings.warn(
                f"Scan cache entry {self.data_file} was computed with "
                + ", ".join(f"{name} {version}" for name, version in differing.items())
                + " but "
                + ", ".join(f"{name} {current[name]}" for name in differing)
                + " is installed; serving it as stored. Delete the entry to recompute it with these versions.",
                ScanVersionWarning,
                stacklevel=4,
            )

    def chunk_file(self, start: int, end: int) -> Path:
        """File of texts ``[start, end)`` in the scan's length-sorted order (``LayerScanner.plan``); the name
        differs from that of chunks of consecutive texts, which older versions left, so those are never read."""
        return self.partial_dir / f"sorted_{start:09d}_{end:09d}.safetensors"

    def has_chunk(self, start: int, end: int, shape: tuple[int, ...]) -> bool:
        """Whether chunk ``[start, end)`` is on disk and intact (a broken chunk is removed, with a warning)."""
        path = self.chunk_file(start, end)
        if not path.exists():
            return False
        try:
            _read_checked(path, list(shape), None)
            return True
        except CorruptEntryError as error:
            warnings.warn(f"Scan chunk {path} is unusable ({error}); recomputing it.", ScanCacheWarning, stacklevel=3)
            remove_entry_files(path)
            return False

    def write_chunk(self, start: int, end: int, vectors: np.ndarray) -> None:
        _write_checked(self.chunk_file(start, end), vectors)

    def finalize(self, plan: Sequence[np.ndarray], extra: dict[str, Any]) -> np.ndarray:
        """Join the chunks into the data file in input order, write the sidecar last, and drop the chunks.

        Args:
            plan: The text positions of each chunk, in the scan's order (see ``LayerScanner.plan``).
            extra: More sidecar fields.
        """
        layers, count, hidden = self.key.shape
        vectors = np.empty((layers, count, hidden), dtype=np.float32)
        start = 0
        for positions in plan:
            end = start + len(positions)
            vectors[:, positions] = _read_checked(self.chunk_file(start, end), [layers, end - start, hidden], None)
            start = end
        if start != count:
            raise ValueError(f"The chunks hold {start} texts, expected {count}.")
        checksum = _write_checked(self.data_file, vectors)
        sidecar = {
            **self.key.fields(),
            **extra,
            "versions": library_versions(),
            "dtype": "float32",
            "sha256": checksum,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_text_atomic(self.sidecar_file, json.dumps(sidecar, indent=2))
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        return vectors


def library_versions() -> dict[str, str]:
    """Versions recorded with every entry (torch and transformers are compared on each hit)."""
    import sentence_transformers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").data).hexdigest()


def _write_checked(path: Path, vectors: np.ndarray) -> str:
    """Write ``vectors`` atomically with their sha256 in the safetensors metadata; return the checksum."""
    checksum = _array_sha256(vectors)
    with atomic_path(path) as temporary:
        save_file(
            {TENSOR_NAME: np.ascontiguousarray(vectors, dtype=np.float32)},
            str(temporary),
            metadata={"sha256": checksum},
        )
    return checksum


def _read_checked(path: Path, shape: list[int], sha256: str | None) -> np.ndarray:
    """Read a scan tensor, checking its shape and its checksum (``sha256`` or, if None, the file's own).

    Raises:
        CorruptEntryError: The file is missing, not safetensors holding the tensor, or fails a check.
    """
    if not path.is_file():
        raise CorruptEntryError(f"{path.name} is missing")
    try:
        with safe_open(str(path), framework="np") as handle:
            stored = (handle.metadata() or {}).get("sha256")
            vectors = handle.get_tensor(TENSOR_NAME)
    except SafetensorError as error:
        raise CorruptEntryError(f"not a readable scan tensor: {error}") from error
    if list(vectors.shape) != list(shape) or vectors.dtype != np.float32:
        raise CorruptEntryError(f"holds {vectors.dtype} {list(vectors.shape)}, expected float32 {list(shape)}")
    wanted = sha256 or stored
    if wanted is None or _array_sha256(vectors) != wanted:
        raise CorruptEntryError("checksum mismatch")
    return vectors
