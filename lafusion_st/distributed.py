"""Ray Data engine: the same scans and encodes as one process, spread over an actor pool on a Ray cluster.

Why Ray Data: it already solves what a home-made multi-machine runner would have to (scheduling, object
transfer, actor restarts, GPUs per actor), and its batch-inference pattern fits this work exactly: a
callable class whose ``__init__`` loads the model once per actor and whose ``__call__`` maps a batch, run by
``Dataset.map_batches(..., compute=ActorPoolStrategy(size=n), num_gpus=...)``.

Same answers: each actor runs the code of the single-process path on the same units of work (a scan batch
of :class:`~lafusion_st.scan.LayerScanner`, an output shard of :mod:`lafusion_st.embed_files`), so with the
same threads the vectors are equal bit for bit. The driver is the only writer: it files results as they
arrive and writes a shard or scan chunk only once every row of it is in, so a failed or killed worker can
never leave a partial shard that a resumed run would trust.

Ray is an optional extra (``pip install lafusion[ray]``); nothing here imports it before it is needed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from lafusion_st.pooling import PoolingMode
from lafusion_st.ray_options import INSTALL_HINT, RayOptions
from lafusion_st.scan import LayerScanner

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""How long an explicit ``--address`` may stay silent before the run stops (ray.init alone retries for minutes)."""


def require_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] extra, not only ray core
    except ImportError as error:
        raise ImportError(
            f"The Ray engine needs Ray Data, which is not installed ({error}); install it with `{INSTALL_HINT}`."
        ) from error
    return ray


def connect(address: str | None = None) -> Any:
    """Join the cluster at ``address`` (or start a local one), unless this process is connected already.

    Raises:
        ImportError: If Ray is not installed (naming ``pip install lafusion[ray]``).
        ConnectionError: If nothing answers at ``address`` within :data:`CONNECT_TIMEOUT_S` seconds.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address not in (None, "auto", "local"):
        check_reachable(address)
    ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=False)
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast when no process listens at a ``[ray://]host:port`` address."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not host:port (or ray://host:port, or auto).")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(
            f"No Ray cluster answers at {address} ({error}). Start one with `ray start --head` on the head node "
            "and pass the address it prints, or leave --address out to run on a local cluster."
        ) from error


def _configure_data_context(show_progress_bar: bool) -> None:
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = show_progress_bar


# --------------------------------------------------------------------------------------------- embed
class EmbedActor:
    """Ray Data callable class: loads the embedder once per actor, then embeds batches of rows.

    A batch is split at output-shard boundaries (``row // shard_rows``) and each part is one ``encode`` call,
    exactly as the single-process engine embeds a shard, so both give the same vectors.
    """

    def __init__(self, load_model: Callable[[], Any], batch_size: int, shard_rows: int) -> None:
        self.model = load_model()
        self.batch_size = batch_size
        self.shard_rows = shard_rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["row"], dtype=np.int64)
        texts = [str(text) for text in batch["text"]]
        shard = rows // self.shard_rows
        parts = np.flatnonzero(np.diff(shard)) + 1
        vectors = [
            self.model.encode(
                texts[start:end], batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
            )
            for start, end in zip(np.r_[0, parts], np.r_[parts, len(rows)], strict=True)
        ]
        return {"row": rows, "embedding": np.concatenate(vectors).astype(np.float32, copy=False)}


def embed_shards_ray(
    load_model: Callable[[], Any],
    table: Any,
    shards: Sequence[tuple[int, int]],
    *,
    batch_size: int,
    shard_rows: int,
    options: RayOptions,
    show_progress_bar: bool = False,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, end, vectors)`` for each ``[start, end)`` row range of ``table``, each as soon as it is complete.

    Args:
        load_model: Called once in each actor; returns an object with SentenceTransformer's ``encode``. It
            travels by cloudpickle, so a ``functools.partial`` of a builder or loader is the natural choice.
        table: Arrow table with ``row`` and ``text`` columns (see :func:`~lafusion_st.text_files.read_text_table`).
        shards: The row ranges still to embed, each within one ``shard_rows``-aligned shard.
        batch_size: Texts per forward pass inside each actor.
        shard_rows: Rows per output shard (an actor's batch never mixes shards).
        options: Cluster address and actor pool.
    """
    if not shards:
        return
    ray = connect(options.address)
    _configure_data_context(show_progress_bar)
    # One block per shard: a map batch then holds one shard, the unit the single-process engine encodes.
    dataset = ray.data.from_arrow([table.slice(start, end - start).select(["row", "text"]) for start, end in shards])
    embedded = dataset.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"load_model": load_model, "batch_size": batch_size, "shard_rows": shard_rows},
        batch_size=shard_rows,
        batch_format="numpy",
        **options.map_batches_kwargs(),
    )
    starts = np.array([start for start, _ in shards])
    pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        rows, vectors = batch["row"], batch["embedding"]
        for index in np.unique(np.searchsorted(starts, rows, side="right") - 1):
            start, end = shards[index]
            if index not in pending:
                pending[index] = (np.empty((end - start, vectors.shape[1]), np.float32), np.zeros(end - start, bool))
            buffer, filled = pending[index]
            inside = (rows >= start) & (rows < end)
            buffer[rows[inside] - start] = vectors[inside]
            filled[rows[inside] - start] = True
            if filled.all():
                del pending[index]
                yield start, end, buffer
    if pending:
        raise RuntimeError(f"Ray returned incomplete shards {[shards[index] for index in pending]}; none was written.")


# ---------------------------------------------------------------------------------------------- scan
class ScanActor:
    """Ray Data callable class: one :class:`~lafusion_st.scan.LayerScanner` per actor, one scan batch per row.

    The actor checks that its copy of the model has the driver's fingerprint: a node with other weights
    under the same name would otherwise fill the driver's cache with another model's vectors.
    """

    def __init__(self, model: str, poolings: list[str], fingerprint: str, scanner_kwargs: dict[str, Any]) -> None:
        self.scanner = LayerScanner(model, poolings, show_progress_bar=False, **scanner_kwargs)
        if self.scanner.fingerprint != fingerprint:
            raise RuntimeError(
                f"The worker's copy of {model} ({self.scanner.model_path}) differs from the driver's "
                f"(fingerprint {self.scanner.fingerprint[:12]} vs {fingerprint[:12]})."
            )
        self.poolings = poolings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pooled = []
        for texts in batch["texts"]:
            vectors = self.scanner.embed_batch([str(text) for text in texts], self.poolings)
            pooled.append(np.stack([vectors[pooling] for pooling in self.poolings]).tobytes())
        return {"job": np.asarray(batch["job"], dtype=np.int64), "pooled": np.array(pooled, dtype=object)}


class RayLayerScanner(LayerScanner):
    """A :class:`~lafusion_st.scan.LayerScanner` whose forward passes run on a Ray actor pool.

    Batches, cache entries and chunk files are those of the single-process scanner, so the vectors are equal
    and either scanner resumes the other's unfinished scan. The driver writes the cache; the model is loaded
    only in the actors.

    Args:
        model: As for :class:`~lafusion_st.scan.LayerScanner`; each worker resolves it itself (a short name is
            materialised on each node, a folder must exist on every node).
        poolings: Pooling modes.
        ray_options: Cluster address and actor pool.
        **scanner_kwargs: As for :class:`~lafusion_st.scan.LayerScanner`.
    """

    def __init__(
        self,
        model: str,
        poolings: Sequence[PoolingMode] = ("mean",),
        *,
        ray_options: RayOptions | None = None,
        **scanner_kwargs: Any,
    ) -> None:
        super().__init__(model, poolings, **scanner_kwargs)
        self.ray_options = ray_options or RayOptions()
        self._actor_kwargs = {
            "max_seq_length": self.max_seq_length,
            "batch_size": self.batch_size,
            "device": scanner_kwargs.get("device"),
            "model_cache_dir": scanner_kwargs.get("model_cache_dir"),
            "dtype": self.dtype,
            "num_layers": self.num_layers,
        }

    def _embed_jobs(
        self, texts: list[str], batches: list[np.ndarray], poolings: list[str]
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        if not batches:
            return
        ray = connect(self.ray_options.address)
        _configure_data_context(self.show_progress_bar)
        jobs = [
            {"job": job, "texts": [texts[position] for position in positions]} for job, positions in enumerate(batches)
        ]
        pooled = ray.data.from_items(jobs).map_batches(
            ScanActor,
            fn_constructor_kwargs={
                "model": self.model,
                "poolings": list(poolings),
                "fingerprint": self.fingerprint,
                "scanner_kwargs": self._actor_kwargs,
            },
            batch_size=1,
            batch_format="numpy",
            **self.ray_options.map_batches_kwargs(),
        )
        for row in pooled.iter_rows():
            job = int(row["job"])
            shape = (len(poolings), self.num_layers + 1, len(batches[job]), self.hidden_size)
            stacked = np.frombuffer(row["pooled"], dtype=np.float32).reshape(shape)
            yield job, dict(zip(poolings, stacked, strict=True))
