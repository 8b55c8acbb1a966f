"""The Ray Data engine in local mode: the same vectors as one process, resumable shards, clear errors.

One local Ray cluster serves the whole test run (starting one costs seconds): two CPUs, one *logical* GPU
(no device needed; it lets a fractional ``gpus_per_actor`` schedule) and a small object store. Every pool
has one actor with one CPU, leaving the other CPU to Ray Data's own tasks.
"""

from __future__ import annotations

import functools
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from conftest import SENTENCES
from lafusion_st import build_fused_model
from lafusion_st.distributed import RayOptions, check_reachable, connect, require_ray
from lafusion_st.embed_files import embed_file
from lafusion_st.scan import LayerScanner, make_scanner

TEXTS = [*SENTENCES, "", "good", "the stock market rose and the company reported a profit", "bad film", "fun plot"]
SHARD_ROWS = 4  # 10 texts -> shards of 4, 4 and 2 rows
BATCH_SIZE = 2

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors unpickle this module's loaders by value


@pytest.fixture(scope="session")
def ray_options() -> RayOptions:
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=128 * 1024**2, log_to_driver=False)
    yield RayOptions(num_actors=1, cpus_per_actor=1)
    ray.shutdown()


@pytest.fixture
def one_thread():
    """The actors run torch on one thread (one CPU each); exact equality needs the same here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _per_shard_encode(model, texts: list[str]) -> np.ndarray:
    """What the engines compute: one ``encode`` call per output shard."""
    return np.concatenate(
        [
            model.encode(texts[start : start + SHARD_ROWS], batch_size=BATCH_SIZE)
            for start in range(0, len(texts), SHARD_ROWS)
        ]
    )


def test_ray_embed_equals_single_process(tiny_models, ray_options, one_thread, tmp_path, monkeypatch) -> None:
    load_model = functools.partial(build_fused_model, tiny_models["llama"], layers=[1, 3], pooling="mean")
    source = tmp_path / "input.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    seen: list[dict] = []
    original = ray.data.Dataset.map_batches

    def spying_map_batches(self, fn, **kwargs):
        seen.append(kwargs)
        return original(self, fn, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", spying_map_batches)
    common = {"embedder": {"model": "llama"}, "batch_size": BATCH_SIZE, "shard_rows": SHARD_ROWS}
    options = RayOptions(num_actors=1, cpus_per_actor=1, gpus_per_actor=0.5)
    embed_file(load_model, source, tmp_path / "ray.npy", engine="ray", ray_options=options, **common)
    embed_file(load_model, source, tmp_path / "local.npy", engine="local", **common)

    assert [(call["num_gpus"], call["num_cpus"], call["compute"].min_size) for call in seen] == [(0.5, 1, 1)]
    from_ray, from_local = np.load(tmp_path / "ray.npy"), np.load(tmp_path / "local.npy")
    model = load_model()
    assert from_ray.shape == (len(TEXTS), model.get_embedding_dimension())
    np.testing.assert_array_equal(from_ray, from_local)
    np.testing.assert_array_equal(from_ray, _per_shard_encode(model, TEXTS))
    # Other batch compositions than one encode() over all texts: equal up to float rounding.
    np.testing.assert_allclose(from_ray, model.encode(TEXTS, batch_size=BATCH_SIZE), atol=1e-5, rtol=1e-4)
    assert not (tmp_path / "ray.npy.parts").exists()


def test_ray_embed_of_a_multi_model_embedder_writes_parquet_shards_with_ids(
    tiny_models, ray_options, one_thread, tmp_path
) -> None:
    load_model = functools.partial(build_fused_model, [tiny_models["gemma3"], tiny_models["bert"]], layers=[1, 3])
    rows = [{"doc": f"d{index}", "body": text} for index, text in enumerate(TEXTS)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "input.parquet")
    common = {
        "embedder": {"models": ["gemma3", "bert"]},
        "text_col": "body",
        "id_col": "doc",
        "batch_size": BATCH_SIZE,
        "shard_rows": SHARD_ROWS,
    }
    output = tmp_path / "vectors.parquet"
    embed_file(load_model, tmp_path / "input.parquet", output, engine="ray", ray_options=ray_options, **common)
    embed_file(load_model, tmp_path / "input.parquet", tmp_path / "local", engine="local", **common)

    assert sorted(path.name for path in output.glob("part-*.parquet")) == [
        "part-000000000000-000000000004.parquet",
        "part-000000000004-000000000008.parquet",
        "part-000000000008-000000000010.parquet",
    ]
    table = pq.read_table(output).sort_by("row")
    assert table.column("id").to_pylist() == [row["doc"] for row in rows]
    assert table.equals(pq.read_table(tmp_path / "local").sort_by("row"))
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(vectors, _per_shard_encode(load_model(), TEXTS))


def test_ray_scan_equals_local_scan_and_shares_its_cache(tiny_models, ray_options, one_thread, tmp_path) -> None:
    common = {"cache_dir": tmp_path / "ray", "batch_size": 3, "chunk_size": 4, "show_progress_bar": False}
    scanner = make_scanner(tiny_models["llama"], ("mean", "last"), engine="ray", ray_options=ray_options, **common)
    from_ray = scanner.scan(TEXTS)
    assert scanner._module is None  # the driver plans with the tokenizer alone; only the actor loads the model
    local = LayerScanner(tiny_models["llama"], ("mean", "last"), **{**common, "cache_dir": tmp_path / "local"})
    from_local = local.scan(TEXTS)
    for pooling in ("mean", "last"):
        assert from_ray[pooling].vectors.shape == (5, len(TEXTS), 32)
        np.testing.assert_array_equal(from_ray[pooling].vectors, from_local[pooling].vectors)
    # The Ray scan filled the ordinary cache: a local scanner over it finds everything, loading no model.
    reader = LayerScanner(tiny_models["llama"], ("mean", "last"), **common)
    again = reader.scan(TEXTS)
    assert reader._module is None
    np.testing.assert_array_equal(again["last"].vectors, from_local["last"].vectors)


class FailingModel:
    """An embedder that fails on a poisoned text, as a worker would when it dies mid-shard."""

    def __init__(self, load_model, poison: str) -> None:
        self.model = load_model()
        self.poison = poison

    def encode(self, texts, **kwargs):
        if self.poison in texts:
            raise RuntimeError("worker lost")
        return self.model.encode(texts, **kwargs)


def test_failed_worker_marks_no_partial_shard_and_a_rerun_resumes(
    tiny_models, ray_options, one_thread, tmp_path
) -> None:
    load_model = functools.partial(build_fused_model, tiny_models["llama"], layers=[2])
    texts = [f"text {index} {SENTENCES[index % len(SENTENCES)]}" for index in range(12)]
    source = tmp_path / "input.txt"
    source.write_text("\n".join(texts), encoding="utf-8")
    output = tmp_path / "out"
    common = {"embedder": {"model": "llama"}, "batch_size": BATCH_SIZE, "shard_rows": SHARD_ROWS}
    failing = functools.partial(FailingModel, load_model, texts[9])  # row 9: the third shard [8, 12)
    with pytest.raises(Exception, match="worker lost"):
        embed_file(failing, source, output, engine="ray", ray_options=ray_options, **common)
    written = {path.name: path.stat().st_mtime_ns for path in output.glob("part-*")}
    assert "part-000000000008-000000000012.parquet" not in written
    assert not list(output.glob("*.tmp*"))

    embed_file(load_model, source, output, engine="local", **common)  # either engine resumes the other's shards
    after = {path.name: path.stat().st_mtime_ns for path in output.glob("part-*")}
    assert len(after) == 3 and all(after[name] == mtime for name, mtime in written.items())
    vectors = np.array(pq.read_table(output).sort_by("row").column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(vectors, _per_shard_encode(load_model(), texts))


def test_unreachable_address_fails_within_seconds() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="ray start --head"):
        check_reachable("127.0.0.1:9", timeout=5)
    assert time.monotonic() - started < 6
    with pytest.raises(ValueError, match="host:port"):
        check_reachable("no-port-here")


def test_missing_ray_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install lafusion\[ray\]"):
        require_ray()
    with pytest.raises(ImportError, match=r"pip install lafusion\[ray\]"):
        connect(None)


@pytest.mark.parametrize(
    "kwargs", [{"num_actors": 0}, {"num_actors": 1.5}, {"cpus_per_actor": 0}, {"gpus_per_actor": -0.5}]
)
def test_ray_options_are_checked(kwargs) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RayOptions(**kwargs)
