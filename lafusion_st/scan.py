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

Caching (keys, files, locks, checksums) lives in :mod:`lafusion_st.scan_cache`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

from lafusion_st.errors import InvalidArgumentError, UnwritableCacheError
from lafusion_st.files import entry_lock
from lafusion_st.fusion import fuse
from lafusion_st.layers import resolve_layers
from lafusion_st.modes import ENGINES, Dtype, Engine
from lafusion_st.modules import TruncatedTransformer
from lafusion_st.pooling import PoolingMode, check_pooling_mode, pool
from lafusion_st.precision import check_dtype, check_dtype_on_device
from lafusion_st.registry import resolve_model
from lafusion_st.scan_cache import (
    ScanCacheEntry,
    ScanCacheWarning,
    ScanKey,
    ScanVersionWarning,
    default_scan_cache_dir,
    model_fingerprint,
    texts_sha256,
)
from lafusion_st.spec import EmbedderSpec, ScanSettings

__all__ = [
    "LayerScanner",
    "LayerVectors",
    "ScanCacheWarning",
    "ScanVersionWarning",
    "TaskScan",
    "default_scan_cache_dir",
    "fused_from_scan",
    "scan",
    "scan_task",
]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = ScanSettings.batch_size
DEFAULT_CHUNK_SIZE = 512
"""Texts per resumable chunk: an interrupted scan loses at most this many texts of work."""
DEFAULT_MAX_SEQ_LENGTH = ScanSettings.max_seq_length


@dataclass(frozen=True)
class LayerVectors:
    """Pooled vectors of every layer of one model for one list of texts.

    Attributes:
        model: The model as the caller named it (short name or folder).
        pooling: The pooling mode used.
        vectors: ``[D + 1, N, H]`` float32; ``vectors[l]`` holds layer ``l`` in ``hidden_states``
            numbering (0 = embedding output), rows in the order of the texts. ``D`` is the model's depth ``L``,
            or less for a truncated scan (coarse-to-fine, see :mod:`lafusion_st.coarse_to_fine`).
        cache_file: The safetensors file holding them.
        model_num_layers: Depth ``L`` of the model when the scan stopped before its last layer (``None``: the
            scan holds every layer).
    """

    model: str
    pooling: str
    vectors: np.ndarray
    cache_file: Path | None = None
    model_num_layers: int | None = None

    @property
    def source_num_layers(self) -> int:
        """Depth ``L`` of the model (what ``-1`` means), whether or not the scan reached its last layer."""
        return self.model_num_layers if self.model_num_layers is not None else self.scanned_num_layers

    @property
    def scanned_num_layers(self) -> int:
        """Deepest layer held (``vectors`` has this many layers + 1); below :attr:`source_num_layers` for a
        truncated scan."""
        return self.vectors.shape[0] - 1

    def resolve(self, layers: Sequence[int]) -> list[int]:
        """Resolve ``layers`` against the model's depth, refusing any the scan does not hold.

        Why: a truncated scan must never stand in for a full one. Asking it for the last layer (``-1``) is an
        error that names the depth scanned, not layer ``D`` served as if it were the last.
        """
        resolved = resolve_layers(layers, self.source_num_layers)
        missing = [layer for layer in resolved if layer > self.scanned_num_layers]
        if missing:
            raise InvalidArgumentError(
                f"Layer(s) {missing} of {self.model} were not scanned: this scan stops at layer "
                f"{self.scanned_num_layers} of {self.source_num_layers} (coarse-to-fine keeps only layers that can "
                "win on the sample); scan without coarse-to-fine to get them."
            )
        return resolved

    def concat(self, layers: Sequence[int]) -> np.ndarray:
        """``[N, len(layers) * H]``: the chosen layers side by side, in ascending layer order, which is how
        ``LayerSelect`` with ``fusion="concat"`` lays them out. Negative indices count from the end."""
        return np.concatenate([self.vectors[index] for index in self.resolve(layers)], axis=1)


@dataclass
class TaskScan:
    """Scans of a task's train and test texts, kept apart so that selection only ever sees ``train``.

    Attributes:
        train: ``model -> pooling -> LayerVectors`` for the training texts.
        test: The same for the test texts, or ``None`` when no test texts were given.
    """

    train: dict[str, dict[str, LayerVectors]] = field(default_factory=dict)
    test: dict[str, dict[str, LayerVectors]] | None = None


REPRODUCTION_TOLERANCE = 5e-4
"""How close a built embedder's vectors must come to the scanned vectors it was chosen from, as a fraction
of each vector's largest magnitude. Only batch composition (which texts are padded together) separates the
two, and fp32 rounding differences from it grow with depth and with a model's large activations. Measured on
8 MR test texts (the scan batches them with other texts): Gemma3-270M's deeper layers differ by up to 1.2e-4
of the vector's largest magnitude (5.9e-3 absolute, on values up to 50), SmolLM2-135M by at most 2e-5, MiniLM
by 1e-6. Adjacent layers of those scans differ by at least 1.3e-3 of it (SmolLM2 mean pooling; typically
3-35%), so a wrong layer, pooling or normalisation cannot pass. An element-wise ``atol + rtol * |x|`` fails
on the small elements of large-valued vectors instead."""


def check_reproduces_scan(actual: np.ndarray, expected: np.ndarray, what: str) -> float:
    """Raise ``RuntimeError`` unless ``actual`` reproduces ``expected`` (texts x dimensions) within
    :data:`REPRODUCTION_TOLERANCE` of each expected vector's largest magnitude; return the worst ratio."""
    scale = np.maximum(np.abs(expected).max(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    worst = float((np.abs(np.asarray(actual) - expected) / scale).max())
    if not worst <= REPRODUCTION_TOLERANCE:  # NaN fails too
        raise RuntimeError(
            f"{what} differs from the scanned vectors by up to {worst:.2g} of a vector's largest magnitude, beyond "
            f"{REPRODUCTION_TOLERANCE:g}: it is not the embedder the scan measured."
        )
    return worst


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
            [torch.from_numpy(vectors.vectors[layer]) for layer in vectors.resolve(layers)],
            spec.fusion,
        )
        for model, layers, pooling in zip(spec.models, spec.layers, spec.pooling, strict=True)
        for vectors in [scanned[model][pooling]]
    ]
    return (per_model[0] if len(per_model) == 1 else fuse(per_model, spec.model_fusion)).numpy()


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
        dtype: Compute precision of the forward pass (``fp32``, ``bf16``, ``fp16``; see
            :mod:`lafusion_st.precision`). Part of the cache key, so precisions never share an entry.
        num_layers: Scan only layers ``0..num_layers`` (a truncated forward that never runs the deeper
            layers, as coarse-to-fine does); ``None`` or the model's depth scans every layer. Part of the cache
            key, so a truncated scan is never served as a full one.
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
        dtype: Dtype = "fp32",
        num_layers: int | None = None,
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
        self.dtype = check_dtype(dtype)
        check_dtype_on_device(self.dtype, self.device)
        self.fingerprint = model_fingerprint(self.model_path)
        config = AutoConfig.from_pretrained(self.model_path)
        text_config = getattr(config, "text_config", None) or config
        self.source_num_layers = int(text_config.num_hidden_layers)
        self.hidden_size = int(text_config.hidden_size)
        if num_layers is not None and (
            isinstance(num_layers, bool)
            or not isinstance(num_layers, int)
            or not 1 <= num_layers <= self.source_num_layers
        ):
            raise InvalidArgumentError(
                f"num_layers must be an integer in 1..{self.source_num_layers} (the depth of {model}), got "
                f"{num_layers!r}."
            )
        self.num_layers = self.source_num_layers if num_layers is None else num_layers
        """Deepest layer scanned: the model's depth, or less for a truncated scan."""
        self._module: TruncatedTransformer | None = None
        self._tokenizer: Any = None

    @property
    def module(self) -> TruncatedTransformer:
        """The backbone up to layer :attr:`num_layers` (the whole model by default), loaded on first use (a
        full cache hit never loads it)."""
        if self._module is None:
            module = TruncatedTransformer(
                self.model_path, num_layers=self.num_layers, max_seq_length=self.max_seq_length, dtype=self.dtype
            )
            self._module = module.to(self.device).eval()
        return self._module

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer; loaded alone when the model is not, so that planning a scan whose forward
        passes run elsewhere (:class:`~lafusion_st.distributed.RayLayerScanner`) never loads the model here."""
        if self._module is not None:
            return self._module.tokenizer
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return self._tokenizer

    def cache_entry(self, texts: Sequence[str], pooling: PoolingMode) -> ScanCacheEntry:
        """The cache entry that holds (or will hold) ``pooling`` vectors of ``texts``."""
        key = ScanKey(
            model_fingerprint=self.fingerprint,
            pooling=pooling,
            max_seq_length=self.max_seq_length,
            texts_sha256=texts_sha256(texts),
            shape=(self.num_layers + 1, len(texts), self.hidden_size),
            dtype=self.dtype,
            num_layers=self.num_layers if self.num_layers < self.source_num_layers else None,
        )
        return ScanCacheEntry(self.cache_dir, Path(self.model_path).name, key)

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
            UnwritableCacheError: A scan is missing from a cache folder this process may not write.
        """
        texts = _check_texts(texts)
        entries = {pooling: self.cache_entry(texts, pooling) for pooling in self.poolings}
        found = {pooling: entry.load() for pooling, entry in entries.items()}
        missing = {pooling: entries[pooling] for pooling, vectors in found.items() if vectors is None}
        if missing:
            with ExitStack() as locks:
                for pooling in sorted(missing):  # one order for every process: no deadlock
                    if refused := locks.enter_context(entry_lock(missing[pooling].lock())):
                        raise UnwritableCacheError.missing(
                            "scan cache",
                            self.cache_dir,
                            f"the {pooling} scan of these {len(texts)} texts by {self.model} is not in it (or is "
                            "unusable)",
                            refused,
                        ) from refused
                # Another process may have finished an entry while this one waited for its lock.
                found.update({pooling: entry.load() for pooling, entry in missing.items()})
                missing = {pooling: entries[pooling] for pooling, vectors in found.items() if vectors is None}
                if missing:
                    plan = self.plan(texts)
                    self._compute(texts, missing, plan)
                    extra = {"model": self.model, "model_path": self.model_path}
                    found.update({pooling: entry.finalize(plan, extra) for pooling, entry in missing.items()})
        truncated = self.source_num_layers if self.num_layers < self.source_num_layers else None
        return {
            pooling: LayerVectors(self.model, pooling, vectors, entries[pooling].data_file, truncated)
            for pooling, vectors in found.items()
        }

    def batches(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Text positions of each batch, exactly as :meth:`scan` forms them (public so that benchmarks can
        run other forward passes over the same batches)."""
        return [
            positions[offset : offset + self.batch_size]
            for positions in self.plan(texts)
            for offset in range(0, len(positions), self.batch_size)
        ]

    def plan(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Text positions of each resumable chunk, in the order the scan computes them.

        Why: padded positions cost a forward pass like real ones. Every text is sorted by its token count
        (longest first, ties in input order) and the sorted sequence is cut into chunks of ``chunk_size``
        texts and those into batches, so each batch holds texts of nearly equal length. On R8's training
        split (SmolLM2 tokenizer, 256 tokens) 0.7% of the positions are padding this way, against 16.3% when
        texts were sorted by characters inside chunks of consecutive texts (``eval/bench_padding.py``). The
        longest batch also comes first, so a batch too large for memory fails at once. Chunks are joined
        back into input order by :meth:`ScanCacheEntry.finalize`.
        """
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length)["input_ids"]
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        return [order[start : start + self.chunk_size] for start in range(0, len(order), self.chunk_size)]

    def preprocess(self, texts: Sequence[str]) -> dict[str, Any]:
        """Tokenize a batch as the final embedder does and move it to the scan device."""
        features = self.module.preprocess(list(texts))
        return {name: value.to(self.device) if torch.is_tensor(value) else value for name, value in features.items()}

    def _chunk_shape(self, start: int, end: int) -> tuple[int, int, int]:
        return self.num_layers + 1, end - start, self.hidden_size

    def _compute(self, texts: list[str], missing: dict[str, ScanCacheEntry], plan: list[np.ndarray]) -> None:
        """Run the model over every chunk some pooling still lacks, writing each chunk when it is done.

        A chunk is named by its ``[start, end)`` range in the sorted order of :meth:`plan`.
        """
        starts = np.cumsum([0] + [len(positions) for positions in plan])
        chunks = [(int(start), int(end)) for start, end in zip(starts[:-1], starts[1:], strict=True)]
        chunk_positions = dict(zip(chunks, plan, strict=True))
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
        jobs = [  # (chunk, offset of the batch inside the chunk, text positions of the batch)
            (chunk, offset, chunk_positions[chunk][offset : offset + self.batch_size])
            for chunk in todo
            for offset in range(0, chunk[1] - chunk[0], self.batch_size)
        ]
        remaining = Counter(chunk for chunk, _, _ in jobs)
        poolings = [pooling for pooling in self.poolings if pooling in missing]
        buffers: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        progress = tqdm(total=len(jobs), desc=f"scan {self.model}", unit="batch", disable=not self.show_progress_bar)
        with progress:
            # Batches may come back in any order (see RayLayerScanner): a chunk is written once all of its
            # batches are in, so an interrupted scan never leaves a partly filled chunk file.
            for job, pooled in self._embed_jobs(texts, [positions for _, _, positions in jobs], poolings):
                (start, end), offset, positions = jobs[job]
                chunk_buffers = buffers.setdefault(
                    (start, end),
                    {pooling: np.empty(self._chunk_shape(start, end), np.float32) for pooling in needs[(start, end)]},
                )
                for pooling, buffer in chunk_buffers.items():
                    buffer[:, offset : offset + len(positions)] = pooled[pooling]
                progress.update(1)
                remaining[(start, end)] -= 1
                if remaining[(start, end)] == 0:
                    for pooling, buffer in buffers.pop((start, end)).items():
                        missing[pooling].write_chunk(start, end, buffer)

    def _embed_jobs(
        self, texts: list[str], batches: list[np.ndarray], poolings: list[str]
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(batch index, pooling -> [L + 1, len(batch), H])`` for every batch of text positions, in any order.

        This process computes them one after the other; :class:`~lafusion_st.distributed.RayLayerScanner`
        overrides this to spread them over a Ray actor pool.
        """
        for index, positions in enumerate(batches):
            yield index, self.embed_batch([texts[position] for position in positions], poolings)

    def embed_batch(self, texts: Sequence[str], poolings: Sequence[PoolingMode] | None = None) -> dict[str, np.ndarray]:
        """One forward pass over one batch, every layer pooled: ``pooling -> [L + 1, len(texts), H]`` float32.

        No cache is involved; :meth:`scan` calls this per batch. ``poolings`` defaults to :attr:`poolings`.
        """
        with torch.inference_mode():
            features = self.module.forward(self.preprocess(texts))
            hidden_states = features["all_layer_embeddings"]
            if len(hidden_states) != self.num_layers + 1:
                raise RuntimeError(
                    f"{self.model} returned {len(hidden_states)} hidden states, expected {self.num_layers + 1}."
                )
            # Layer by layer rather than one stacked tensor: the same values without an [L+1, B, T, H] copy.
            return {
                pooling: torch.stack([pool(layer, features["attention_mask"], pooling) for layer in hidden_states])
                .float()
                .cpu()
                .numpy()
                for pooling in (poolings or self.poolings)
            }


def scan(
    model: str, texts: Sequence[str], poolings: Sequence[PoolingMode] = ScanSettings.poolings, **scanner_kwargs: Any
) -> dict[str, LayerVectors]:
    """Pooled vectors of every layer of ``model`` for ``texts``: ``pooling -> LayerVectors``.

    One forward pass per batch serves every layer and every pooling; results are cached (see the module
    docstring). ``scanner_kwargs`` are those of :func:`make_scanner` (``engine``, ``max_seq_length``,
    ``batch_size``, ``cache_dir``, ``device``, ...).
    """
    return make_scanner(model, poolings, **scanner_kwargs).scan(texts)


def make_scanner(
    model: str,
    poolings: Sequence[PoolingMode] = ("mean",),
    *,
    engine: Engine = "local",
    ray_options: Any = None,
    **scanner_kwargs: Any,
) -> LayerScanner:
    """A scanner running here (``engine="local"``) or on a Ray actor pool (``"ray"``, with a
    :class:`~lafusion_st.distributed.RayOptions`); both fill the same cache with the same vectors."""
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; choose one of {list(ENGINES)}.")
    if engine == "ray":
        from lafusion_st.distributed import RayLayerScanner

        return RayLayerScanner(model, poolings, ray_options=ray_options, **scanner_kwargs)
    if ray_options is not None:
        raise ValueError("ray_options only apply to engine='ray'.")
    return LayerScanner(model, poolings, **scanner_kwargs)


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
        **scanner_kwargs: Passed to :func:`make_scanner` (``engine``, ``ray_options`` and those of
            :class:`LayerScanner`).
    """
    names = [models] if isinstance(models, str) else list(models)
    if not names:
        raise ValueError("Give at least one model.")
    if len(set(names)) != len(names):
        raise ValueError(f"Models are named more than once: {names}.")
    result = TaskScan(test={} if test_texts is not None else None)
    for name in names:
        scanner = make_scanner(name, poolings, **scanner_kwargs)
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
