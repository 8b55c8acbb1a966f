"""File helpers shared by every cache and output writer: atomic writes and file hashes.

Why one place: the scan cache, the reports and the ONNX manifest each wrote files "atomically" and hashed
files in their own way (and one used a per-process temporary name that two threads, or two processes
sharing a PID namespace, could collide on). Standard library only, so the ONNX encoder can import it
where torch is absent.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lafusion_st.errors import InvalidArgumentError

_BLOCK = 1 << 20


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
