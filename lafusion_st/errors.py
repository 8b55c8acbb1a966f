"""lafusion's exceptions for mistakes a user can fix: one base class, ``LafusionError``.

Each subclass also derives from the built-in exception callers already catch (``ValueError`` for a bad
setting or data, ``FileNotFoundError`` for a missing file or model), so existing ``except ValueError``
handlers keep working, while the ``lafusion`` command tells a user error (one line, exit status 2) from a
bug (a traceback). Standard library only: the command line and the ONNX encoder import it without torch.
"""

from __future__ import annotations

from pathlib import Path


class LafusionError(Exception):
    """Base class of every error a user causes and can fix (bad input, unknown name, missing file)."""

    def __str__(self) -> str:
        # KeyError's own __str__ quotes its message; a user error reads as plain text.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InvalidArgumentError(LafusionError, ValueError):
    """A setting outside its allowed set or range: unknown pooling/fusion, bad layer, bad size."""


class DataFormatError(InvalidArgumentError):
    """A data file that cannot be read as the expected table: bad column, field, label or encoding."""


class MissingFileError(LafusionError, FileNotFoundError):
    """A file or folder the user named does not exist or is incomplete."""


class UnwritableCacheError(LafusionError, PermissionError):
    """A cache folder lafusion must store a result in (a scan or model missing from it) but may not write: a
    shared read-only folder or mount. Reading what such a cache holds needs no writing."""

    @classmethod
    def missing(cls, cache: str, folder: Path, absent: str, refused: OSError) -> UnwritableCacheError:
        """The error for ``absent`` (what is not in the ``cache`` at ``folder``) where ``refused`` says why the
        folder may not be written. One wording for every cache: what is missing, why, and the way out."""
        return cls(
            f"The {cache} {folder} cannot be written ({refused.strerror}), and {absent}. Point LAFUSION_CACHE "
            "(or cache_dir) to a folder you may write; a read-only cache serves only what it holds."
        )


class UnknownModelError(MissingFileError, KeyError):
    """A model name that is neither a short name, a local folder nor a cached hub id (a ``KeyError`` too,
    since the short names are a registry's keys)."""
