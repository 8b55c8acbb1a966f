"""Embeddings cached per (embedder fingerprint, text), and the fingerprint of each kind of embedder.

Why: cross-validation and grid search fit a classifier many times on the same texts with the same frozen
embedder; embedding is the expensive part (an LLM forward pass), fitting a head is cheap. A process-wide
cache keyed by *what the embedder is* (not by object identity) serves every clone, fold and candidate, so
``GridSearchCV`` embeds each text once per embedder. The fingerprint:

* an ``EmbedderSpec`` (anything with ``to_dict()`` and ``build()``): SHA-256 of its JSON (a short name
  stands for fixed, registered weights) and of the files of every model it names by a local folder;
* a saved folder: SHA-256 over the names and bytes of every file below it, except a classifier's
  ``head/`` (memoised on the files' sizes and mtimes, as the scan cache does);
* a ``SentenceTransformer`` object: SHA-256 of its module configuration and every weight's bytes
  (memoised per object: lafusion never trains an embedder, so its weights do not change under it).

The loaded models of specs and folders are kept too (the last :data:`MAX_LOADED_MODELS`), so clones do
not reload an LLM either.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lafusion_st.errors import MissingFileError
from lafusion_st.scan_cache import _hash_files  # the scan cache's memoised file hasher: one home for it

HEAD_FOLDER = "head"
MAX_LOADED_MODELS = 2
"""Loaded embedders kept per process: two LLM pairs at most, about 2.5 GB, fit a small machine's memory."""


DEFAULT_MAX_BYTES = 1 << 30
"""Vectors kept per cache: 1 GiB holds about 100,000 texts of a 2,304-d (four SmolLM2 layers) embedder, far
more than a grid search over a training set needs, and keeps a long-running ``predict`` from growing."""


class EmbeddingCache:
    """Vectors keyed by (fingerprint, text), and the block layout (``member_dims``) of each fingerprint.

    The oldest vectors are dropped once the cache holds more than ``max_bytes``. Thread-safe; not shared
    across processes (``GridSearchCV(n_jobs=1)`` or a thread backend shares it).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._member_dims: dict[str, tuple[int, ...]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.computed = 0
        """Texts embedded so far (cache misses); tests and users can watch it."""

    def embed(
        self,
        fingerprint: str,
        texts: Sequence[str],
        compute: Callable[[list[str]], tuple[np.ndarray, tuple[int, ...]]],
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """``[len(texts), d]`` vectors and the member dims, computing only texts not cached yet (each once).

        Args:
            fingerprint: Identity of the embedder (see the module docstring).
            texts: The texts, duplicates allowed.
            compute: Embeds a list of distinct texts; returns their vectors and the embedder's member dims.
        """
        with self._lock:
            found = {text: self._vectors[(fingerprint, text)] for text in texts if (fingerprint, text) in self._vectors}
            missing = [text for text in dict.fromkeys(texts) if text not in found]
            dims = self._member_dims.get(fingerprint)
        if missing or dims is None:
            vectors, dims = compute(missing)
            vectors = np.asarray(vectors, dtype=np.float32)
            found.update(zip(missing, vectors, strict=True))
            with self._lock:
                self._member_dims[fingerprint] = tuple(dims)
                self.computed += len(missing)
                for text, vector in zip(missing, vectors, strict=True):
                    self._vectors[(fingerprint, text)] = vector
                    self._bytes += vector.nbytes
                while self._bytes > self.max_bytes and self._vectors:
                    self._bytes -= self._vectors.popitem(last=False)[1].nbytes
        rows = [found[text] for text in texts]
        return (np.stack(rows) if rows else np.empty((0, sum(dims)), dtype=np.float32)), tuple(dims)

    def clear(self) -> None:
        with self._lock:
            self._vectors.clear()
            self._member_dims.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._vectors)


DEFAULT_CACHE = EmbeddingCache()
"""The cache every ``FusedClassifier`` uses unless given its own."""

_object_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_loaded: OrderedDict[str, Any] = OrderedDict()
_loaded_lock = threading.Lock()


def is_spec(embedder: Any) -> bool:
    """An ``EmbedderSpec`` (or anything built the same way: ``to_dict()`` plus ``build()``)."""
    return callable(getattr(embedder, "to_dict", None)) and callable(getattr(embedder, "build", None))


def fingerprint(embedder: Any) -> str:
    """The identity of an embedder given as a spec, a saved folder or a ``SentenceTransformer``.

    Raises:
        TypeError: For anything else.
        FileNotFoundError: A folder that is not a saved SentenceTransformer.
    """
    from sentence_transformers import SentenceTransformer

    if is_spec(embedder):
        description = json.dumps(embedder.to_dict(), sort_keys=True, default=str)
        folders = [folder_fingerprint(Path(m)) for m in getattr(embedder, "models", ()) if Path(m).is_dir()]
        return "spec:" + _sha256_text(description + "".join(folders))
    if isinstance(embedder, (str, Path)):
        folder = Path(embedder)
        if not (folder / "modules.json").is_file():
            raise MissingFileError(f"{folder} is not a saved SentenceTransformer folder (no modules.json).")
        return "folder:" + folder_fingerprint(folder)
    if isinstance(embedder, SentenceTransformer):
        if embedder not in _object_fingerprints:
            _object_fingerprints[embedder] = "model:" + _model_fingerprint(embedder)
        return _object_fingerprints[embedder]
    raise TypeError(
        "embedder must be an EmbedderSpec, a saved SentenceTransformer folder or a SentenceTransformer, got "
        f"{type(embedder).__name__}."
    )


def load_model(embedder: Any, fingerprint_: str) -> Any:
    """The ``SentenceTransformer`` behind ``embedder`` (built, loaded, or itself), kept per fingerprint."""
    from sentence_transformers import SentenceTransformer

    if isinstance(embedder, SentenceTransformer):
        return embedder
    with _loaded_lock:
        if fingerprint_ in _loaded:
            _loaded.move_to_end(fingerprint_)
            return _loaded[fingerprint_]
    if is_spec(embedder):
        model = embedder.build()
    else:
        from lafusion_st.model import FusedSentenceTransformer

        model = FusedSentenceTransformer(str(embedder), local_files_only=True)
    remember_model(fingerprint_, model)
    return model


def remember_model(fingerprint_: str, model: Any) -> None:
    with _loaded_lock:
        _loaded[fingerprint_] = model
        _loaded.move_to_end(fingerprint_)
        while len(_loaded) > MAX_LOADED_MODELS:
            _loaded.popitem(last=False)


def member_dims(model: Any) -> tuple[int, ...]:
    """Column blocks of the model's vectors: one per member of a concat ``MultiModelFuse``, else one."""
    from lafusion_st.modules import MultiModelFuse

    first = model[0]
    if isinstance(first, MultiModelFuse) and first.fusion == "concat":
        return tuple(member.get_embedding_dimension() for member in first.members)
    return (model.get_embedding_dimension(),)


def folder_fingerprint(folder: Path) -> str:
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.relative_to(folder).parts[0] != HEAD_FOLDER
    )  # a classifier's head does not change the vectors
    signature = tuple((str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    return _hash_files(str(folder.resolve()), signature)


def _model_fingerprint(model: Any) -> str:
    import torch

    digest = hashlib.sha256(repr(model).encode("utf-8"))
    for index, module in enumerate(model):
        config = {key: getattr(module, key, None) for key in getattr(module, "config_keys", [])}
        digest.update(f"{index}:{type(module).__qualname__}:{json.dumps(config, sort_keys=True, default=str)}".encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(name.encode("utf-8") + b"\0")
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
