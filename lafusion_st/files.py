"""File helpers shared by every cache and output writer: the cache root, cache entries' locks and removal,
atomic writes, file hashes, versioned JSON.

Why one place: the scan cache, the reports and the ONNX manifest each wrote files "atomically" and hashed
files in their own way (and one used a per-process temporary name that two threads, or two processes
sharing a PID namespace, could collide on); the spec file, the head config and the two ONNX manifests each
checked their ``format``/``format_version`` with their own copy of the same code; the scan and fit caches
each handled a read-only cache folder in their own (differently incomplete) way. Standard library only, so
the ONNX encoder can import it where torch is absent.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lafusion_st.errors import InvalidArgumentError, LafusionError, MissingFileError

if TYPE_CHECKING:
    from filelock import BaseFileLock

_BLOCK = 1 << 20
CACHE_ENV = "LAFUSION_CACHE"


class CorruptEntryError(ValueError):
    """A cache file that exists but is not what its entry says (scans, fits): the only reason a reader removes
    an entry."""


@contextmanager
def entry_lock(lock: BaseFileLock) -> Iterator[OSError | None]:
    """Hold a cache entry's inter-process lock for the block; yield ``None``, or, where the cache folder may not
    be written, the error that says so, without holding the lock.

    Why: a shared cache can be read-only to some users (permissions: ``PermissionError``; a read-only mount:
    ``OSError`` ``EROFS``). Such a process can neither lock an entry nor change it, so it reads what is there
    without the lock and stores nothing (each cache decides what that means for a missing entry), and leaves
    entries it finds corrupt (:func:`remove_entry_files`). The folder's own write permission is checked too,
    since a lock file left writable by another user would otherwise let the lock through. Any other error
    (no file handles left, a file system without locks, a lock that is only busy) propagates: reading without
    the lock in a writable cache could see, and remove, an entry another process is replacing.
    """
    folder = Path(lock.lock_file).parent
    refused: OSError | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied (the folder is not writable)", str(folder))
        lock.acquire()
    except OSError as error:
        if not (isinstance(error, PermissionError) or error.errno == errno.EROFS):
            raise
        refused = error  # yielded outside the except block: the caller's errors must not chain to this one
    if refused is not None:
        yield refused
        return
    try:
        yield None
    finally:
        lock.release()


def remove_entry_files(*paths: Path) -> None:
    """Delete a cache entry's files (missing ones are fine), each one that can be; where the folder may not be
    written they stay. Give the sidecar first: an entry without it is unfinished, never served.

    Why: an entry found corrupt is removed so that the next reader does not check it again; in a read-only
    cache it stays, and the reader goes on without it instead of failing on the removal.
    """
    for path in paths:
        with suppress(OSError):
            path.unlink(missing_ok=True)


def cache_root() -> Path:
    """The lafusion cache root: ``$LAFUSION_CACHE`` if set, else ``~/.cache/lafusion``.

    Materialised models live in ``<root>/models`` and layer scans in ``<root>/scans``: one variable moves
    both (it once meant the models folder to the registry and the parent of ``scans/`` to the scan cache).
    """
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lafusion"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (graphs, weights and caches can be several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; on success it replaces ``path`` in one rename.

    Readers therefore see the old file or the new one, never a half-written one, and two writers of the
    same file never share a temporary (each gets its own ``mkstemp`` name). On an exception the temporary
    is removed and ``path`` is untouched. ``mode`` is applied because ``mkstemp`` and safetensors create
    private (0600) files while the caches are meant to be shared like the model cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_component(name: object, what: str, root: str | Path | None = None) -> str:
    """Return ``name`` if it is one relative path component that stays inside ``root``, else raise.

    Why: names read from a saved folder (member names, module paths, exported file names) become paths
    that lafusion writes to or reads from; ``../x``, ``/etc``, ``a/b`` or a symlink leading out of the folder
    would make a saved folder write or read outside itself.

    Raises:
        InvalidArgumentError: (a ``ValueError``) ``name`` is not a string, is empty, ``.``/``..``, absolute,
            holds a path separator, or (when ``root`` is given) names a symlink that resolves outside ``root``.
    """
    separators = {sep for sep in (os.sep, os.altsep, "/", "\\") if sep}
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or any(sep in name for sep in separators)
        or "\0" in name
        or Path(name).is_absolute()
    ):
        raise InvalidArgumentError(
            f"{what} {name!r} is not allowed: it must be a single folder or file name (no '/', '\\', '..', "
            "absolute paths or empty names), so that it stays inside the saved folder."
        )
    if root is not None:
        resolved_root = Path(root).resolve()
        if not Path(root, name).resolve().is_relative_to(resolved_root):
            raise InvalidArgumentError(f"{what} {name!r} in {root} leads outside that folder (a symlink?).")
    return name


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def read_json_object(
    path: Path, error_cls: type[Exception] = InvalidArgumentError, *, remedy: str = ""
) -> dict[str, Any]:
    """Read a file that must hold one JSON object.

    Why: every JSON file lafusion reads back (its own formats, cache sidecars) may have been truncated or
    edited; a bad one must raise ``error_cls`` naming the file, never a bare ``JSONDecodeError`` or a
    ``KeyError`` further on.

    Raises:
        error_cls: Not UTF-8 JSON, or not an object (``remedy`` is appended to the message).
    """
    suffix = f" {remedy}" if remedy else ""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise error_cls(f"{path} is not valid JSON ({error}).{suffix}") from error
    if not isinstance(document, dict):
        raise error_cls(f"{path} must hold a JSON object, got {type(document).__name__}.{suffix}")
    return document


def read_versioned_json(
    path: str | Path,
    format_name: str,
    versions: int | Collection[int],
    error_cls: type[LafusionError] = InvalidArgumentError,
    *,
    missing: str = "",
    missing_cls: type[LafusionError] = MissingFileError,
    remedy: str = "",
) -> dict[str, Any]:
    """Read a JSON object that names its ``format`` and ``format_version``, and check both.

    Why: lafusion's own files (spec, head config, ONNX manifests) are read by later versions and by the
    torch-free encoder; a file of another kind or version must fail with a message that names the file and
    what is wrong, never with a ``KeyError`` or ``AttributeError`` further on.

    Args:
        path: The file.
        format_name: The value its ``format`` field must have (e.g. ``lafusion-spec``).
        versions: The ``format_version`` (or versions) this reader understands.
        error_cls: Raised for a file that exists but is not readable as this format.
        missing: Why a missing file matters, appended to ``"<path> is missing: "``.
        missing_cls: Raised for a missing file.
        remedy: A sentence appended to every ``error_cls`` message (e.g. ``"Re-export the model."``).

    Raises:
        missing_cls: ``path`` is not a file.
        error_cls: Not UTF-8 JSON, not an object, another ``format``, or a ``format_version`` not in ``versions``.
    """
    path = Path(path)
    allowed = (versions,) if isinstance(versions, int) else tuple(versions)
    suffix = f" {remedy}" if remedy else ""
    if not path.is_file():
        raise missing_cls(f"{path} is missing: {missing}" if missing else f"{path} is missing.")
    document = read_json_object(path, error_cls, remedy=remedy)
    if document.get("format") != format_name:
        raise error_cls(f"{path} is not a {format_name} file (format {document.get('format')!r}).{suffix}")
    version = document.get("format_version")
    if type(version) is not int or version not in allowed:  # JSON true and 1.0 equal 1 in Python
        raise error_cls(
            f"{path} has format_version {version!r}; this lafusion reads "
            f"{format_name} version {' or '.join(str(version) for version in allowed)}.{suffix}"
        )
    return document
