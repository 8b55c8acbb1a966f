"""Embed a file of texts into sharded Parquet or one ``.npy``, here or on a Ray cluster, resumably.

Why shards: an input of millions of texts takes hours, and a run that dies near the end must not start
over. The input is cut into row ranges of ``shard_rows`` texts; each range becomes one Parquet file
``part-<start>-<end>.parquet`` (columns ``row``, ``id``, ``embedding``), written to a temporary name and
renamed when complete, so a file that exists is whole. A rerun with the same arguments skips every range
whose file exists. A ``_lafusion_manifest.json`` records what the folder holds (embedder, input, shard size): a rerun
with other settings is refused instead of mixing two embedders' vectors.

Output: a folder (any name, ``.parquet`` included) keeps the shards; a path ending in ``.npy`` gets one
float32 array in input order, assembled from shards kept beside it (``<name>.npy.parts/``) until it is
written, whatever the engine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lafusion_st.modes import BATCH_SIZE, DEFAULT_SHARD_ROWS, ENGINES, Engine
from lafusion_st.text_files import read_text_table

logger = logging.getLogger(__name__)

MANIFEST = "_lafusion_manifest.json"
"""Underscore first: Parquet readers (pyarrow, Spark, Ray Data) skip such files when reading the folder."""


class EmbeddingShards:
    """A folder of Parquet shards, one per ``[start, end)`` row range of the input.

    Args:
        folder: The folder (created when missing).
        manifest: What the folder holds; must equal the manifest of an existing folder.
    """

    def __init__(self, folder: str | Path, manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest_file = self.folder / MANIFEST
        if manifest_file.exists():
            stored = json.loads(manifest_file.read_text(encoding="utf-8"))
            if stored != manifest:
                changed = sorted(key for key in set(stored) | set(manifest) if stored.get(key) != manifest.get(key))
                raise ValueError(
                    f"{self.folder} holds shards of another run (differs in {changed}); "
                    "choose another output or delete it."
                )
        else:
            _write_text_atomic(manifest_file, json.dumps(manifest, indent=2))
        self.manifest = manifest

    def path(self, start: int, end: int) -> Path:
        return self.folder / f"part-{start:012d}-{end:012d}.parquet"

    def is_done(self, start: int, end: int) -> bool:
        """Whether shard ``[start, end)`` is on disk with all of its rows (a damaged one is removed)."""
        path = self.path(start, end)
        if not path.exists():
            return False
        try:
            if pq.read_metadata(path).num_rows == end - start:
                return True
        except (OSError, pa.ArrowException):
            pass
        logger.warning("Shard %s is damaged; embedding its rows again.", path)
        path.unlink(missing_ok=True)
        return False

    def write(self, start: int, end: int, ids: pa.Array, vectors: np.ndarray) -> None:
        """Write one complete shard under a temporary name, then rename it into place."""
        if vectors.shape[0] != end - start or len(ids) != end - start:
            raise ValueError(f"Shard [{start}, {end}) needs {end - start} rows, got {vectors.shape[0]}.")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
        table = pa.table({"row": pa.array(range(start, end), pa.int64()), "id": ids, "embedding": embedding})
        path = self.path(start, end)
        temporary = path.with_name(path.name + f".tmp{os.getpid()}")
        pq.write_table(table, temporary)
        os.replace(temporary, path)

    def read_vectors(self, ranges: Sequence[tuple[int, int]]) -> np.ndarray:
        """``[rows, dim]`` float32 of the given shards, in row order."""
        parts = []
        for start, end in ranges:
            column = pq.read_table(self.path(start, end), columns=["embedding"]).column("embedding").combine_chunks()
            parts.append(column.flatten().to_numpy().reshape(end - start, column.type.list_size))
        return np.concatenate(parts).astype(np.float32, copy=False)


def shard_ranges(num_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """``[start, end)`` row ranges of at most ``shard_rows`` rows, aligned on multiples of it."""
    return [(start, min(start + shard_rows, num_rows)) for start in range(0, num_rows, shard_rows)]


def embed_file(
    load_model: Callable[[], Any],
    input_path: str | Path,
    output: str | Path,
    *,
    embedder: dict[str, Any],
    text_col: str = "text",
    id_col: str | None = None,
    batch_size: int = BATCH_SIZE,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    engine: Engine = "local",
    ray_options: Any = None,
    show_progress_bar: bool = False,
) -> Path:
    """Embed every text of ``input_path`` into ``output``, skipping shards a previous run finished.

    Args:
        load_model: Returns the embedder (anything with SentenceTransformer's ``encode``); called once here,
            or once per Ray actor, and only if some shard is left to embed.
        input_path: JSONL/CSV/TSV/Parquet or plain text (see :func:`~lafusion_st.text_files.read_text_table`).
        output: A folder for Parquet shards, or a ``.npy`` path for one array in input order.
        embedder: JSON-able description of the embedder, stored in the manifest so that a resumed run
            cannot mix two embedders.
        text_col: Text column of the input.
        id_col: Column copied to the output's ``id`` (default: the row number).
        batch_size: Texts per forward pass.
        shard_rows: Texts per shard.
        engine: ``local`` (this process) or ``ray`` (see :mod:`lafusion_st.distributed`).
        ray_options: :class:`~lafusion_st.distributed.RayOptions` for ``engine="ray"``.
        show_progress_bar: Progress of shards (local) or of Ray Data's operators.

    Returns:
        The output path.
    """
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; choose one of {list(ENGINES)}.")
    for name, value in (("batch_size", batch_size), ("shard_rows", shard_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    table = read_text_table(input_path, text_col=text_col, id_col=id_col)
    if table.num_rows == 0:
        raise ValueError(f"{input_path} holds no texts.")
    output = Path(output)
    to_npy = output.suffix.lower() == ".npy"
    manifest = {
        "embedder": embedder,
        "input": str(Path(input_path).resolve()),
        "num_rows": table.num_rows,
        "text_col": text_col,
        "id_col": id_col,
        "shard_rows": shard_rows,
    }
    shards = EmbeddingShards(output.with_name(output.name + ".parts") if to_npy else output, manifest)
    ranges = shard_ranges(table.num_rows, shard_rows)
    todo = [(start, end) for start, end in ranges if not shards.is_done(start, end)]
    if len(todo) < len(ranges):
        logger.info("Resuming: %d of %d shards are done.", len(ranges) - len(todo), len(ranges))
    if engine == "ray":
        from lafusion_st.distributed import RayOptions, embed_shards_ray

        results = embed_shards_ray(
            load_model,
            table,
            todo,
            batch_size=batch_size,
            shard_rows=shard_rows,
            options=ray_options or RayOptions(),
            show_progress_bar=show_progress_bar,
        )
    else:
        if ray_options is not None:
            raise ValueError("ray_options only apply to engine='ray'.")
        results = _embed_shards_local(load_model, table, todo, batch_size, show_progress_bar)
    ids = table.column("id")
    for start, end, vectors in results:
        shards.write(start, end, ids.slice(start, end - start).combine_chunks(), vectors)
    if not to_npy:
        return output
    temporary = output.with_name(output.name + f".tmp{os.getpid()}")
    with open(temporary, "wb") as handle:
        np.save(handle, shards.read_vectors(ranges), allow_pickle=False)
    os.replace(temporary, output)
    shutil.rmtree(shards.folder)
    return output


def _embed_shards_local(
    load_model: Callable[[], Any],
    table: pa.Table,
    todo: Sequence[tuple[int, int]],
    batch_size: int,
    show_progress_bar: bool,
) -> Iterator[tuple[int, int, np.ndarray]]:
    if not todo:
        return
    from tqdm.auto import tqdm

    model = load_model()
    texts = table.column("text")
    for start, end in tqdm(todo, desc="embed", unit="shard", disable=not show_progress_bar):
        batch = texts.slice(start, end - start).to_pylist()
        vectors = model.encode(batch, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        yield start, end, np.asarray(vectors, dtype=np.float32)


def _write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
