"""Embedding files in one process: every input format, sharded and .npy output, resuming, refused mixes."""

from __future__ import annotations

import functools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SENTENCES
from lafusion_st import build_fused_model
from lafusion_st.embed_files import MANIFEST, embed_file, shard_ranges
from lafusion_st.errors import DataFormatError, MissingFileError
from lafusion_st.text_files import read_text_table

TEXTS = [*SENTENCES, "", "NA", "12", 'a "quoted", text']


def _write_inputs(folder) -> dict[str, object]:
    rows = [{"key": f"k{index}", "text": text} for index, text in enumerate(TEXTS)]
    paths = {suffix: folder / f"input{suffix}" for suffix in (".jsonl", ".csv", ".tsv", ".parquet", ".txt")}
    paths[".jsonl"].write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    pa_table = pa.Table.from_pylist(rows)
    pq.write_table(pa_table, paths[".parquet"])
    from pyarrow import csv

    csv.write_csv(pa_table, paths[".csv"])
    csv.write_csv(pa_table, paths[".tsv"], csv.WriteOptions(delimiter="\t", quoting_style="all_valid"))
    paths[".txt"].write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return paths


def test_every_format_reads_the_same_texts_ids_and_rows(tmp_path) -> None:
    paths = _write_inputs(tmp_path)
    for suffix, path in paths.items():
        table = read_text_table(path, id_col=None if suffix == ".txt" else "key")
        assert table.column("text").to_pylist() == TEXTS, suffix
        assert table.column("row").to_pylist() == list(range(len(TEXTS)))
        expected_ids = list(range(len(TEXTS))) if suffix == ".txt" else [f"k{i}" for i in range(len(TEXTS))]
        assert table.column("id").to_pylist() == expected_ids, suffix


def test_bad_inputs_get_clear_errors(tmp_path) -> None:
    paths = _write_inputs(tmp_path)
    with pytest.raises(DataFormatError, match=r"no column 'body'; its columns are \['key', 'text'\]"):
        read_text_table(paths[".jsonl"], text_col="body")
    with pytest.raises(DataFormatError, match="plain text"):
        read_text_table(paths[".txt"], id_col="key")
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "gap.parquet")
    with pytest.raises(DataFormatError, match="row 1 has no text"):
        read_text_table(tmp_path / "gap.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "numbers.parquet")
    with pytest.raises(DataFormatError, match="not text"):
        read_text_table(tmp_path / "numbers.parquet")
    with pytest.raises(MissingFileError, match="No such file"):
        read_text_table(tmp_path / "missing.jsonl")


def test_shard_ranges_cover_the_input_once() -> None:
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]


def test_npy_output_is_in_input_order_and_resume_skips_finished_shards(tiny_models, tmp_path, monkeypatch) -> None:
    paths = _write_inputs(tmp_path)
    load_model = functools.partial(build_fused_model, tiny_models["qwen2"], layers=[2, 4])
    model = load_model()
    common = {"embedder": {"model": "qwen2", "layers": [2, 4]}, "batch_size": 2, "shard_rows": 3}
    output = embed_file(load_model, paths[".txt"], tmp_path / "out.npy", **common)
    vectors = np.load(output)
    expected = np.concatenate([model.encode(TEXTS[start : start + 3], batch_size=2) for start in range(0, 9, 3)])
    np.testing.assert_array_equal(vectors, expected)
    np.testing.assert_allclose(vectors, model.encode(TEXTS), atol=1e-5, rtol=1e-4)

    folder = tmp_path / "shards"
    embed_file(load_model, paths[".jsonl"], folder, id_col="key", **common)
    (folder / "part-000000000003-000000000006.parquet").unlink()
    kept = {path.name: path.stat().st_mtime_ns for path in folder.glob("part-*")}
    encoded: list[list[str]] = []

    def counting_loader():
        loaded = load_model()
        original = loaded.encode
        loaded.encode = lambda texts, **kwargs: encoded.append(texts) or original(texts, **kwargs)
        return loaded

    embed_file(counting_loader, paths[".jsonl"], folder, id_col="key", **common)
    assert encoded == [TEXTS[3:6]]  # only the missing shard
    assert all(path.stat().st_mtime_ns == kept[path.name] for path in folder.glob("part-*") if path.name in kept)
    table = pq.read_table(folder).sort_by("row")
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), dtype=np.float32), expected)

    encoded.clear()
    embed_file(counting_loader, paths[".jsonl"], folder, id_col="key", **common)
    assert encoded == []  # everything done: the model is not even loaded


def test_a_folder_of_another_run_is_refused(tiny_models, tmp_path) -> None:
    paths = _write_inputs(tmp_path)
    load_model = functools.partial(build_fused_model, tiny_models["llama"], layers=[1])
    embed_file(load_model, paths[".txt"], tmp_path / "out", embedder={"layers": [1]}, shard_rows=4)
    assert (tmp_path / "out" / MANIFEST).is_file()
    with pytest.raises(ValueError, match=r"another run \(differs in \['embedder'\]\)"):
        embed_file(load_model, paths[".txt"], tmp_path / "out", embedder={"layers": [2]}, shard_rows=4)
    with pytest.raises(ValueError, match="engine"):
        embed_file(load_model, paths[".txt"], tmp_path / "other", embedder={}, engine="spark")
