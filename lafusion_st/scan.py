"""Scan: the pooled vector of *every* hidden layer of a model, from one forward pass, cached on disk.

Why: choosing layers, fusions and model combinations needs each layer's sentence vector for every
training text. Running the model once per candidate layer would cost ``L + 1`` passes; a forward pass
already computes every hidden state, so one pass with ``output_hidden_states`` gives them all, and
pooling them is cheap next to the transformer layers. The vectors are cached, so every later
selection step costs no model pass at all.

Exactness: tokenization, the forward pass and pooling are those of the final embedder (an untruncated
:class:`~lafusion_st.modules.TruncatedTransformer` and :func:`lafusion_st.pooling.pool`), so the
scanned vector of layer ``l`` equals ``build_fused_model(model, layers=[l], pooling=p).encode(texts)``
up to float rounding of different batch compositions.

Cache layout (one entry per model, pooling, ``max_seq_length`` and text list)::

    <cache_dir>/<model>.<pooling>.<key>.safetensors   tensor "layers" [L + 1, N, H], float32
    <cache_dir>/<model>.<pooling>.<key>.json          sidecar: what was scanned, shape, sha256 of the data
    <cache_dir>/<model>.<pooling>.<key>.partial/      chunk files of an unfinished scan (resume point)

``key`` hashes the model's fingerprint (the bytes of every top-level file of its folder: config,
tokenizer, weights), the pooling, ``max_seq_length`` and the texts. The sidecar is written last, so an
entry without one is unfinished. An entry that cannot be read, has the wrong shape or fails its
checksum is reported with a warning and recomputed. Files are read with safetensors, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import sentence_transformers
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm
from transformers import AutoConfig

from lafusion_st.fusion import fuse
from lafusion_st.layers import resolve_layers
from lafusion_st.modules import TruncatedTransformer
from lafusion_st.pooling import PoolingMode, check_pooling_mode, pool
from lafusion_st.registry import CACHE_ENV, resolve_model
from lafusion_st.spec import EmbedderSpec, ScanSettings

logger = logging.getLogger(__name__)

SCAN_FORMAT = 1
"""Bumped whenever cached vectors would no longer match what the code computes."""
TENSOR_NAME = "layers"
DEFAULT_BATCH_SIZE = ScanSettings.batch_size
DEFAULT_CHUNK_SIZE = 512
"""Texts per resumable chunk: an interrupted scan loses at most this many texts of work."""
DEFAULT_MAX_SEQ_LENGTH = ScanSettings.max_seq_length


class ScanCacheWarning(UserWarning):
    """A cached scan was unreadable or did not match its sidecar and is being recomputed."""


@dataclass(frozen=True)
class LayerVectors:
    """Pooled vectors of every layer of one model for one list of texts.

    Attributes:
        model: The model as the caller named it (short name or folder).
        pooling: The pooling mode used.
        vectors: ``[L + 1, N, H]`` float32; ``vectors[l]`` holds layer ``l`` in ``hidden_states``
            numbering (0 = embedding output, ``L`` = last layer), rows in the order of the texts.
        cache_file: The safetensors file holding them.
    """

    model: str
    pooling: str
    vectors: np.ndarray
    cache_file: Path | None = None

    @property
    def num_hidden_layers(self) -> int:
        """Depth ``L`` of the model (``vectors`` has ``L + 1`` layers)."""
        return self.vectors.shape[0] - 1

    def concat(self, layers: Sequence[int]) -> np.ndarray:
        """``[N, len(layers) * H]``: the chosen layers side by side, in ascending layer order, which is how
        ``LayerSelect`` with ``fusion="concat"`` lays them out. Negative indices count from the end."""
        resolved = resolve_layers(layers, self.num_hidden_layers)
        return np.concatenate([self.vectors[index] for index in resolved], axis=1)


@dataclass
class TaskScan:
    """Scans of a task's train and test texts, kept apart so that selection only ever sees ``train``.

    Attributes:
        train: ``model -> pooling -> LayerVectors`` for the training texts.
        test: The same for the test texts, or ``None`` when no test texts were given.
    """

    train: dict[str, dict[str, LayerVectors]] = field(default_factory=dict)
    test: dict[str, dict[str, LayerVectors]] | None = None


def fused_from_scan(scanned: dict[str, dict[str, LayerVectors]], spec: EmbedderSpec) -> np.ndarray:
    """``[N, dim]``: the vectors the embedder ``spec`` gives for the scanned texts, fused from cached layers.

    The same :func:`~lafusion_st.fusion.fuse` as ``LayerSelect`` and ``MultiModelFuse``, in the same order
    (layers ascending, models as listed), so a view of a scan needs no further model pass: how the search
    scores configurations and how eval evaluates many of them over one scan.

    Args:
        scanned: ``model -> pooling -> LayerVectors`` of one text list (``TaskScan.train`` or ``.test``).
        spec: The embedder; ``weighted`` fusion is refused (its weights live in a built model).
    """
    if "weighted" in (spec.fusion, spec.model_fusion):
        raise ValueError(f"{spec.name}: weighted fusion needs trained weights; encode with the built model.")
    per_model = [
        fuse(
            [torch.from_numpy(vectors.vectors[layer]) for layer in resolve_layers(layers, vectors.num_hidden_layers)],
            spec.fusion,
        )
        for model, layers, pooling in zip(spec.models, spec.layers, spec.pooling, strict=True)
        for vectors in [scanned[model][pooling]]
    ]
    return (per_model[0] if len(per_model) == 1 else fuse(per_model, spec.model_fusion)).numpy()


def default_scan_cache_dir() -> Path:
    """``$LAFUSION_CACHE/scans`` if that variable is set, else ``~/.cache/lafusion/scans``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "lafusion") / "scans"


def texts_sha256(texts: Sequence[str]) -> str:
    """Hash of a text list that changes with any text, its position, or the list's length."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def model_fingerprint(folder: str | Path) -> str:
    """sha256 over the names and bytes of every top-level file of a model folder (hidden files skipped).

    Why the full bytes and not sizes or the safetensors header: a fine-tuned copy has the same config and
    header, and a cache keyed on them would silently return the old model's vectors. Hashing runs at about
    0.7 GB/s here (SmolLM2's 538 MB in 0.8 s) and is memoised per process on the files' size and mtime.
    """
    files = sorted(path for path in Path(folder).iterdir() if path.is_file() and not path.name.startswith("."))
    signature = tuple((path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    return _hash_files(str(Path(folder).resolve()), signature)


@lru_cache(maxsize=32)
def _hash_files(folder: str, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in signature:
        digest.update(name.encode("utf-8") + b"\0")
        with open(Path(folder, name), "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


class LayerScanner:
    """Scans text lists with one model, loading it at most once and only when the cache lacks something.

    Args:
        model: A lafusion short name (``smollm2-135m``, ...), a local folder, or a cached hub id.
        poolings: Pooling modes to compute from the same forward pass.
        max_seq_length: Token limit per text, as in the final embedder (longer texts are truncated).
        batch_size: Texts per forward pass.
        cache_dir: Root of the scan cache; default :func:`default_scan_cache_dir`.
        model_cache_dir: Where short-named models are materialised (see :func:`~lafusion_st.registry.resolve_model`).
        device: Torch device for the forward pass; default CUDA when available, else CPU.
        chunk_size: Texts per resumable chunk file.
        show_progress_bar: Show a tqdm bar over the batches that need a forward pass.
    """

    def __init__(
        self,
        model: str,
        poolings: Sequence[PoolingMode] = ScanSettings.poolings,
        *,
        max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cache_dir: str | Path | None = None,
        model_cache_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        show_progress_bar: bool = True,
    ) -> None:
        if isinstance(poolings, str):
            poolings = [poolings]
        self.poolings = list(dict.fromkeys(check_pooling_mode(mode) for mode in poolings))
        if not self.poolings:
            raise ValueError("Give at least one pooling mode.")
        for name, value in (("max_seq_length", max_seq_length), ("batch_size", batch_size), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        self.model = model
        self.model_path = resolve_model(model, cache_dir=model_cache_dir)
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_scan_cache_dir()
        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        self.show_progress_bar = show_progress_bar
        self.fingerprint = model_fingerprint(self.model_path)
        config = AutoConfig.from_pretrained(self.model_path)
        text_config = getattr(config, "text_config", None) or config
        self.num_hidden_layers = int(text_config.num_hidden_layers)
        self.hidden_size = int(text_config.hidden_size)
        self._module: TruncatedTransformer | None = None

    @property
    def module(self) -> TruncatedTransformer:
        """The untruncated backbone, loaded on first use (a full cache hit never loads it)."""
        if self._module is None:
            module = TruncatedTransformer(self.model_path, max_seq_length=self.max_seq_length)
            self._module = module.to(self.device).eval()
        return self._module

    def cache_entry(self, texts: Sequence[str], pooling: PoolingMode) -> ScanCacheEntry:
        """The cache entry that holds (or will hold) ``pooling`` vectors of ``texts``."""
        expected = {
            "format": SCAN_FORMAT,
            "model_fingerprint": self.fingerprint,
            "pooling": pooling,
            "max_seq_length": self.max_seq_length,
            "texts_sha256": texts_sha256(texts),
            "shape": [self.num_hidden_layers + 1, len(texts), self.hidden_size],
        }
        key = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:24]
        stem = f"{Path(self.model_path).name}.{pooling}.{key}"
        return ScanCacheEntry(self.cache_dir / stem, expected)

    def scan(self, texts: Sequence[str]) -> dict[str, LayerVectors]:
        """Pooled vectors of every layer for ``texts``, from the cache where possible.

        Args:
            texts: Strings; empty strings are allowed and embedded as the final embedder does (as the
                tokenizer's BOS token when it maps ``""`` to no tokens).

        Returns:
            ``pooling -> LayerVectors`` for each of :attr:`poolings`.

        Raises:
            ValueError: If ``texts`` is empty.
            TypeError: If an item is not a string (its index is named).
        """
        texts = _check_texts(texts)
        entries = {pooling: self.cache_entry(texts, pooling) for pooling in self.poolings}
        found = {pooling: entry.load() for pooling, entry in entries.items()}
        missing = {pooling: entries[pooling] for pooling, vectors in found.items() if vectors is None}
        if missing:
            self._compute(texts, missing)
            chunks = self._chunks(len(texts))
            found.update({pooling: entry.finalize(chunks, self._sidecar_extra()) for pooling, entry in missing.items()})
        return {
            pooling: LayerVectors(self.model, pooling, vectors, entries[pooling].data_file)
            for pooling, vectors in found.items()
        }

    def batches(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Text positions of each batch, exactly as :meth:`scan` forms them (public so that benchmarks can
        run other forward passes over the same batches)."""
        return [batch for start, end in self._chunks(len(texts)) for batch in self._chunk_batches(texts, start, end)]

    def preprocess(self, texts: Sequence[str]) -> dict[str, Any]:
        """Tokenize a batch as the final embedder does and move it to the scan device."""
        features = self.module.preprocess(list(texts))
        return {name: value.to(self.device) if torch.is_tensor(value) else value for name, value in features.items()}

    def _chunks(self, count: int) -> list[tuple[int, int]]:
        return [(start, min(start + self.chunk_size, count)) for start in range(0, count, self.chunk_size)]

    def _chunk_batches(self, texts: Sequence[str], start: int, end: int) -> list[np.ndarray]:
        """Batches of chunk ``[start, end)``, texts sorted longest first as ``SentenceTransformer.encode``
        does, so a batch holds texts of similar length and little padding."""
        order = start + np.argsort([-len(texts[index]) for index in range(start, end)], kind="stable")
        return [order[offset : offset + self.batch_size] for offset in range(0, len(order), self.batch_size)]

    def _chunk_shape(self, start: int, end: int) -> tuple[int, int, int]:
        return self.num_hidden_layers + 1, end - start, self.hidden_size

    def _compute(self, texts: list[str], missing: dict[str, ScanCacheEntry]) -> None:
        """Run the model over every chunk some pooling still lacks, writing each chunk when it is done."""
        chunks = self._chunks(len(texts))
        needs = {
            chunk: [
                pooling for pooling, entry in missing.items() if not entry.has_chunk(*chunk, self._chunk_shape(*chunk))
            ]
            for chunk in chunks
        }
        todo = [chunk for chunk in chunks if needs[chunk]]
        if len(todo) < len(chunks):
            logger.info(
                "Resuming the scan of %s: %d of %d chunks are cached.", self.model, len(chunks) - len(todo), len(chunks)
            )
        plan = [(chunk, self._chunk_batches(texts, *chunk)) for chunk in todo]
        progress = tqdm(
            total=sum(len(batches) for _, batches in plan),
            desc=f"scan {self.model}",
            unit="batch",
            disable=not self.show_progress_bar,
        )
        with progress:
            for (start, end), batches in plan:
                buffers = {
                    pooling: np.empty(self._chunk_shape(start, end), dtype=np.float32)
                    for pooling in needs[(start, end)]
                }
                for positions in batches:
                    pooled = self.embed_batch([texts[index] for index in positions], list(buffers))
                    for pooling, buffer in buffers.items():
                        buffer[:, positions - start] = pooled[pooling]
                    progress.update(1)
                for pooling, buffer in buffers.items():
                    missing[pooling].write_chunk(start, end, buffer)

    def embed_batch(self, texts: Sequence[str], poolings: Sequence[PoolingMode] | None = None) -> dict[str, np.ndarray]:
        """One forward pass over one batch, every layer pooled: ``pooling -> [L + 1, len(texts), H]`` float32.

        No cache is involved; :meth:`scan` calls this per batch. ``poolings`` defaults to :attr:`poolings`.
        """
        with torch.inference_mode():
            features = self.module.forward(self.preprocess(texts))
            hidden_states = features["all_layer_embeddings"]
            if len(hidden_states) != self.num_hidden_layers + 1:
                raise RuntimeError(
                    f"{self.model} returned {len(hidden_states)} hidden states, expected {self.num_hidden_layers + 1}."
                )
            # Layer by layer rather than one stacked tensor: the same values without an [L+1, B, T, H] copy.
            return {
                pooling: torch.stack([pool(layer, features["attention_mask"], pooling) for layer in hidden_states])
                .float()
                .cpu()
                .numpy()
                for pooling in (poolings or self.poolings)
            }

    def _sidecar_extra(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_path": self.model_path,
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__,
            },
        }


class ScanCacheEntry:
    """The files of one cached scan (one model, pooling, ``max_seq_length`` and text list).

    Args:
        stem: Path without suffix; ``.safetensors``, ``.json`` and ``.partial/`` are added to it.
        expected: Sidecar fields the stored data must match (format, fingerprint, pooling, length, texts, shape).
    """

    def __init__(self, stem: Path, expected: dict[str, Any]) -> None:
        self.data_file = stem.with_name(stem.name + ".safetensors")
        self.sidecar_file = stem.with_name(stem.name + ".json")
        self.partial_dir = stem.with_name(stem.name + ".partial")
        self.expected = expected

    def load(self) -> np.ndarray | None:
        """The cached vectors, or ``None`` if absent; a broken entry is warned about, removed and ``None``."""
        if not self.sidecar_file.exists():
            return None
        try:
            sidecar = json.loads(self.sidecar_file.read_text(encoding="utf-8"))
            for name, value in self.expected.items():
                if sidecar.get(name) != value:
                    raise ValueError(f"sidecar field {name!r} is {sidecar.get(name)!r}, expected {value!r}")
            return _read_checked(self.data_file, self.expected["shape"], sidecar.get("sha256"))
        except Exception as error:  # noqa: BLE001 - any unreadable entry is recomputed, never trusted
            warnings.warn(
                f"Scan cache entry {self.data_file} is unusable ({error}); recomputing it.",
                ScanCacheWarning,
                stacklevel=3,
            )
            self.data_file.unlink(missing_ok=True)
            self.sidecar_file.unlink(missing_ok=True)
            return None

    def chunk_file(self, start: int, end: int) -> Path:
        return self.partial_dir / f"chunk_{start:09d}_{end:09d}.safetensors"

    def has_chunk(self, start: int, end: int, shape: tuple[int, ...]) -> bool:
        """Whether chunk ``[start, end)`` is on disk and intact (a broken chunk is removed, with a warning)."""
        path = self.chunk_file(start, end)
        if not path.exists():
            return False
        try:
            _read_checked(path, list(shape), None)
            return True
        except Exception as error:  # noqa: BLE001
            warnings.warn(f"Scan chunk {path} is unusable ({error}); recomputing it.", ScanCacheWarning, stacklevel=3)
            path.unlink(missing_ok=True)
            return False

    def write_chunk(self, start: int, end: int, vectors: np.ndarray) -> None:
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.chunk_file(start, end), vectors)

    def finalize(self, chunks: Sequence[tuple[int, int]], extra: dict[str, Any]) -> np.ndarray:
        """Join the ``(start, end)`` chunks into the data file, write the sidecar last, and drop the chunks."""
        layers, count, hidden = self.expected["shape"]
        vectors = np.empty((layers, count, hidden), dtype=np.float32)
        for start, end in chunks:
            vectors[:, start:end] = _read_checked(self.chunk_file(start, end), [layers, end - start, hidden], None)
        checksum = _write_atomic(self.data_file, vectors)
        sidecar = {
            **self.expected,
            **extra,
            "dtype": "float32",
            "sha256": checksum,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        temporary = self.sidecar_file.with_name(self.sidecar_file.name + f".tmp{os.getpid()}")
        temporary.write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
        os.replace(temporary, self.sidecar_file)
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        return vectors


def scan(
    model: str, texts: Sequence[str], poolings: Sequence[PoolingMode] = ScanSettings.poolings, **scanner_kwargs: Any
) -> dict[str, LayerVectors]:
    """Pooled vectors of every layer of ``model`` for ``texts``: ``pooling -> LayerVectors``.

    One forward pass per batch serves every layer and every pooling; results are cached (see the module
    docstring). ``scanner_kwargs`` are those of :class:`LayerScanner` (``max_seq_length``, ``batch_size``,
    ``cache_dir``, ``device``, ...).
    """
    return LayerScanner(model, poolings, **scanner_kwargs).scan(texts)


def scan_task(
    models: str | Sequence[str],
    train_texts: Sequence[str],
    test_texts: Sequence[str] | None = None,
    poolings: Sequence[PoolingMode] = ScanSettings.poolings,
    **scanner_kwargs: Any,
) -> TaskScan:
    """Scan a task's train (and test) texts with each model, loading each model at most once.

    Train and test are separate cache entries and separate fields of the result, so selection code can
    take ``result.train`` alone and the test split is only read for the final evaluation.

    Args:
        models: One model or several (short names or folders).
        train_texts: Training texts.
        test_texts: Test texts, or ``None``.
        poolings: Pooling modes, all from the same forward pass.
        **scanner_kwargs: Passed to :class:`LayerScanner`.
    """
    names = [models] if isinstance(models, str) else list(models)
    if not names:
        raise ValueError("Give at least one model.")
    if len(set(names)) != len(names):
        raise ValueError(f"Models are named more than once: {names}.")
    result = TaskScan(test={} if test_texts is not None else None)
    for name in names:
        scanner = LayerScanner(name, poolings, **scanner_kwargs)
        result.train[name] = scanner.scan(train_texts)
        if test_texts is not None:
            result.test[name] = scanner.scan(test_texts)
    return result


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string.")
    texts = list(texts)
    if not texts:
        raise ValueError("Nothing to scan: the list of texts is empty.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Text {index} is {type(text).__name__} ({text!r}); lafusion embeds strings only.")
    return texts


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").data).hexdigest()


def _write_atomic(path: Path, vectors: np.ndarray) -> str:
    """Write ``vectors`` with their sha256 in the safetensors metadata; readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checksum = _array_sha256(vectors)
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(
        {TENSOR_NAME: np.ascontiguousarray(vectors, dtype=np.float32)}, str(temporary), metadata={"sha256": checksum}
    )
    os.chmod(temporary, 0o644)  # safetensors creates 0600 files; a cache may be shared like the model cache
    os.replace(temporary, path)
    return checksum


def _read_checked(path: Path, shape: list[int], sha256: str | None) -> np.ndarray:
    """Read a scan tensor, checking its shape and its checksum (``sha256`` or, if None, the file's own)."""
    with safe_open(str(path), framework="np") as handle:
        stored = (handle.metadata() or {}).get("sha256")
        vectors = handle.get_tensor(TENSOR_NAME)
    if list(vectors.shape) != list(shape) or vectors.dtype != np.float32:
        raise ValueError(f"holds {vectors.dtype} {list(vectors.shape)}, expected float32 {list(shape)}")
    wanted = sha256 or stored
    if wanted is None or _array_sha256(vectors) != wanted:
        raise ValueError("checksum mismatch")
    return vectors
