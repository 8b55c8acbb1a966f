"""Layer scans: exact agreement with the fused embedder, caching, resuming, corruption handling."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SENTENCES
from lafusion_st import build_fused_model, scan_cache
from lafusion_st.errors import UnwritableCacheError
from lafusion_st.fusion import fuse
from lafusion_st.modules import TruncatedTransformer
from lafusion_st.pooling import POOLING_MODES
from lafusion_st.scan import LayerScanner, ScanCacheWarning, ScanVersionWarning, fused_from_scan, scan, scan_task
from lafusion_st.spec import EmbedderSpec

TEXTS = [*SENTENCES, "", "good", "the stock market rose and the company reported a profit", "bad film"]


def _scanner(model: str, cache_dir, **kwargs) -> LayerScanner:
    return LayerScanner(
        model, kwargs.pop("poolings", ("mean",)), cache_dir=cache_dir, show_progress_bar=False, **kwargs
    )


class ForwardCounter(list):
    """Batch sizes of the backbone forward passes seen so far; with ``fail_after = n`` pass n + 1 raises
    ``KeyboardInterrupt`` (a simulated Ctrl-C in the middle of a scan)."""

    fail_after: int | None = None


@pytest.fixture
def forward_calls(monkeypatch: pytest.MonkeyPatch) -> ForwardCounter:
    calls = ForwardCounter()
    original = TruncatedTransformer.forward

    def counting_forward(self, features, **kwargs):
        if calls.fail_after is not None and len(calls) >= calls.fail_after:
            raise KeyboardInterrupt("simulated interrupt")
        calls.append(len(features["input_ids"]))
        return original(self, features, **kwargs)

    monkeypatch.setattr(TruncatedTransformer, "forward", counting_forward)
    return calls


def test_scanned_layer_equals_fused_model_encode(tiny_models: dict[str, str], family: str, tmp_path) -> None:
    scanned = scan(
        tiny_models[family],
        TEXTS,
        POOLING_MODES,
        cache_dir=tmp_path,
        batch_size=3,
        chunk_size=5,
        show_progress_bar=False,
    )
    for pooling in POOLING_MODES:
        vectors = scanned[pooling].vectors
        assert vectors.shape == (5, len(TEXTS), 32) and vectors.dtype == np.float32
        for layer in range(vectors.shape[0]):
            encoded = build_fused_model(tiny_models[family], layers=[layer], pooling=pooling).encode(
                TEXTS, batch_size=4
            )
            np.testing.assert_allclose(vectors[layer], encoded, atol=1e-5, err_msg=f"{pooling} layer {layer}")
    assert not np.allclose(scanned["mean"].vectors, scanned["max"].vectors)


def test_concat_lays_layers_out_like_layer_select(tiny_models: dict[str, str], tmp_path) -> None:
    vectors = scan(tiny_models["llama"], TEXTS, cache_dir=tmp_path, show_progress_bar=False)["mean"]
    encoded = build_fused_model(tiny_models["llama"], layers=[3, 1], fusion="concat").encode(TEXTS)
    np.testing.assert_allclose(vectors.concat([3, 1]), encoded, atol=1e-5)
    np.testing.assert_array_equal(vectors.concat([-1]), vectors.vectors[4])


def test_second_scan_is_a_cache_hit_without_forward(tiny_models: dict[str, str], tmp_path, forward_calls) -> None:
    first = _scanner(tiny_models["qwen2"], tmp_path, batch_size=4).scan(TEXTS)["mean"]
    assert len(forward_calls) == 3
    scanner = _scanner(tiny_models["qwen2"], tmp_path, batch_size=4)
    second = scanner.scan(TEXTS)["mean"]
    assert len(forward_calls) == 3
    assert scanner._module is None  # the model was never even loaded
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert second.cache_file.exists() and second.cache_file.with_suffix(".json").exists()


def test_new_pooling_on_cached_texts_reuses_nothing_but_keeps_cached_one(tiny_models, tmp_path, forward_calls) -> None:
    _scanner(tiny_models["llama"], tmp_path, batch_size=4).scan(TEXTS)
    assert len(forward_calls) == 3
    both = _scanner(tiny_models["llama"], tmp_path, batch_size=4, poolings=("mean", "last")).scan(TEXTS)
    assert len(forward_calls) == 6  # one pass for "last"; "mean" came from the cache
    assert set(both) == {"mean", "last"}


def test_interrupted_scan_resumes_from_finished_chunks(tiny_models: dict[str, str], tmp_path, forward_calls) -> None:
    reference = scan(
        tiny_models["gemma3"],
        TEXTS,
        cache_dir=tmp_path / "reference",
        batch_size=2,
        chunk_size=4,
        show_progress_bar=False,
    )["mean"].vectors
    forward_calls.clear()
    forward_calls.fail_after = 4  # chunks of 4 texts = 2 batches: chunks 1 and 2 finish, chunk 3 does not
    with pytest.raises(KeyboardInterrupt):
        scan(
            tiny_models["gemma3"],
            TEXTS,
            cache_dir=tmp_path / "cache",
            batch_size=2,
            chunk_size=4,
            show_progress_bar=False,
        )
    partial = next((tmp_path / "cache").glob("*.partial"))
    assert len(list(partial.glob("sorted_*.safetensors"))) == 2

    forward_calls.clear()
    forward_calls.fail_after = None
    resumed = scan(
        tiny_models["gemma3"], TEXTS, cache_dir=tmp_path / "cache", batch_size=2, chunk_size=4, show_progress_bar=False
    )["mean"]
    assert forward_calls == [1]  # only the third chunk (text 9 of 9) was computed again
    np.testing.assert_array_equal(resumed.vectors, reference)
    assert not partial.exists()


def _corrupt_data_bytes(entry) -> None:
    raw = bytearray(entry.data_file.read_bytes())
    raw[-8:] = b"\x7f" * 8
    entry.data_file.write_bytes(bytes(raw))


def _truncate_data(entry) -> None:
    entry.data_file.write_bytes(entry.data_file.read_bytes()[:100])


def _garble_sidecar(entry) -> None:
    entry.sidecar_file.write_text("{not json")


def _wrong_shape_in_sidecar(entry) -> None:
    sidecar = json.loads(entry.sidecar_file.read_text())
    sidecar["shape"][1] += 1
    entry.sidecar_file.write_text(json.dumps(sidecar))


@pytest.mark.parametrize("corrupt", [_corrupt_data_bytes, _truncate_data, _garble_sidecar, _wrong_shape_in_sidecar])
def test_corrupt_cache_is_recomputed(tiny_models: dict[str, str], tmp_path, forward_calls, corrupt) -> None:
    scanner = _scanner(tiny_models["bert"], tmp_path, batch_size=4)
    original = scanner.scan(TEXTS)["mean"].vectors
    corrupt(scanner.cache_entry(TEXTS, "mean"))
    forward_calls.clear()
    with pytest.warns(ScanCacheWarning, match="recomputing"):
        again = _scanner(tiny_models["bert"], tmp_path, batch_size=4).scan(TEXTS)["mean"].vectors
    assert len(forward_calls) == 3
    np.testing.assert_array_equal(again, original)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _scanner(tiny_models["bert"], tmp_path, batch_size=4).scan(TEXTS)  # repaired: a clean hit now


def test_corrupt_chunk_is_recomputed(tiny_models: dict[str, str], tmp_path, forward_calls) -> None:
    forward_calls.fail_after = 2
    with pytest.raises(KeyboardInterrupt):
        scan(tiny_models["llama"], TEXTS, cache_dir=tmp_path, batch_size=2, chunk_size=4, show_progress_bar=False)
    chunk = next(tmp_path.glob("*.partial/sorted_*.safetensors"))
    chunk.write_bytes(b"garbage")
    forward_calls.clear()
    forward_calls.fail_after = None
    with pytest.warns(ScanCacheWarning, match="chunk"):
        scan(tiny_models["llama"], TEXTS, cache_dir=tmp_path, batch_size=2, chunk_size=4, show_progress_bar=False)
    assert len(forward_calls) == 5


def test_a_read_only_cache_serves_its_scans_and_names_what_it_lacks(tiny_models, tmp_path, forward_calls, monkeypatch):
    _scanner(tiny_models["llama"], tmp_path, batch_size=4).scan(TEXTS)
    assert len(forward_calls) == 3

    def read_only_mount(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(scan_cache.FileLock, "acquire", read_only_mount)
    served = _scanner(tiny_models["llama"], tmp_path, batch_size=4).scan(TEXTS)["mean"]
    assert len(forward_calls) == 3 and served.vectors.shape[1] == len(TEXTS)
    both = _scanner(tiny_models["llama"], tmp_path, batch_size=4, poolings=("mean", "last"))
    with pytest.raises(UnwritableCacheError, match=r"cannot be written .*Read-only.*the last scan.*LAFUSION_CACHE"):
        both.scan(TEXTS)
    assert len(forward_calls) == 3  # refused before any forward pass, not after a scan it could not keep


def test_cache_key_follows_texts_order_pooling_length_and_weights(tiny_models: dict[str, str], tmp_path) -> None:
    scanner = _scanner(tiny_models["llama"], tmp_path)
    key = scanner.cache_entry(TEXTS, "mean").data_file
    assert scanner.cache_entry(list(TEXTS), "mean").data_file == key
    assert scanner.cache_entry([*TEXTS[:-1], TEXTS[-1] + " "], "mean").data_file != key
    assert scanner.cache_entry(TEXTS[::-1], "mean").data_file != key
    assert scanner.cache_entry(TEXTS, "last").data_file != key
    assert _scanner(tiny_models["llama"], tmp_path, max_seq_length=8).cache_entry(TEXTS, "mean").data_file != key

    changed = tmp_path / "changed_model"
    shutil.copytree(tiny_models["llama"], changed)
    weights = changed / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-4:] = bytes(byte ^ 0xFF for byte in raw[-4:])  # one weight changes: same config and header, new model
    weights.write_bytes(bytes(raw))
    assert (
        _scanner(str(changed), tmp_path).cache_entry(TEXTS, "mean").data_file.name.split(".")[-2]
        != key.name.split(".")[-2]
    )


def test_scan_task_keeps_train_and_test_apart(tiny_models: dict[str, str], tmp_path, forward_calls) -> None:
    result = scan_task(
        [tiny_models["llama"], tiny_models["bert"]],
        TEXTS[:6],
        TEXTS[6:],
        poolings=["mean", "last"],
        cache_dir=tmp_path,
        show_progress_bar=False,
    )
    assert set(result.train) == set(result.test) == {tiny_models["llama"], tiny_models["bert"]}
    assert result.train[tiny_models["bert"]]["last"].vectors.shape[1] == 6
    assert result.test[tiny_models["bert"]]["last"].vectors.shape[1] == 3
    assert len(forward_calls) == 4  # one batch per model and split, both poolings from the same pass
    assert scan_task(tiny_models["llama"], TEXTS, show_progress_bar=False, cache_dir=tmp_path).test is None


@pytest.mark.parametrize(
    ("texts", "poolings", "error", "match"),
    [
        ([], ("mean",), ValueError, "empty"),
        (["fine", 3], ("mean",), TypeError, "Text 1 is int"),
        ("a single string", ("mean",), TypeError, "list of strings"),
        (["fine"], ("median",), ValueError, "median"),
    ],
)
def test_scan_rejects_bad_input(tiny_models: dict[str, str], tmp_path, texts, poolings, error, match) -> None:
    with pytest.raises(error, match=match):
        scan(tiny_models["llama"], texts, poolings, cache_dir=tmp_path, show_progress_bar=False)


def test_scan_rejects_bad_sizes(tiny_models: dict[str, str], tmp_path) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        _scanner(tiny_models["llama"], tmp_path, batch_size=0)


@pytest.mark.parametrize(
    ("fusion", "model_fusion", "pooling"),
    [("concat", "concat", "mean"), ("mean", "sum", "last"), ("sum", "mean", "max")],
)
def test_fused_view_of_a_scan_equals_the_built_embedder(tiny_models, tmp_path, fusion, model_fusion, pooling) -> None:
    spec = EmbedderSpec([tiny_models["llama"], tiny_models["qwen2"]], [[1, 3], [2, 4]], pooling, fusion, model_fusion)
    scanned = scan_task(spec.models, TEXTS, poolings=[pooling], cache_dir=tmp_path, show_progress_bar=False).train
    view = fused_from_scan(scanned, spec)
    np.testing.assert_allclose(view, spec.build().encode(TEXTS, batch_size=len(TEXTS)), atol=1e-5, rtol=1e-5)
    single = dataclasses.replace(spec, models=spec.models[:1], layers=((-1, 0),), pooling=(pooling,))
    expected = fuse([torch.from_numpy(scanned[spec.models[0]][pooling].vectors[layer]) for layer in (0, 4)], fusion)
    np.testing.assert_array_equal(fused_from_scan(scanned, single), expected.numpy())
    with pytest.raises(ValueError, match="weighted fusion needs trained weights"):
        fused_from_scan(scanned, dataclasses.replace(spec, fusion="weighted"))


def test_changed_vector_rules_recompute_and_other_versions_warn(tiny_models, tmp_path, forward_calls, monkeypatch):
    """Item 5: the key carries lafusion's vector rules; other torch/transformers versions warn, not recompute."""
    first = _scanner(tiny_models["llama"], tmp_path, batch_size=4).scan(TEXTS)["mean"].vectors
    entry = _scanner(tiny_models["llama"], tmp_path).cache_entry(TEXTS, "mean")
    sidecar = json.loads(entry.sidecar_file.read_text())
    assert sidecar["vector_rules"] == scan_cache.VECTOR_RULES
    sidecar["versions"]["torch"] = "0.0.1"
    entry.sidecar_file.write_text(json.dumps(sidecar))
    forward_calls.clear()
    with pytest.warns(ScanVersionWarning, match=r"torch 0\.0\.1 but torch .* is installed"):
        served = _scanner(tiny_models["llama"], tmp_path, batch_size=4).scan(TEXTS)["mean"].vectors
    assert forward_calls == []
    np.testing.assert_array_equal(served, first)

    monkeypatch.setattr(scan_cache, "VECTOR_RULES", scan_cache.VECTOR_RULES + 1)
    assert _scanner(tiny_models["llama"], tmp_path).cache_entry(TEXTS, "mean").data_file != entry.data_file
    _scanner(tiny_models["llama"], tmp_path, batch_size=4).scan(TEXTS)
    assert len(forward_calls) == 3


_CONCURRENT_SCAN = """
import sys, time
from pathlib import Path
import numpy as np
from lafusion_st.scan import scan
model, cache, out, texts = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
(out.parent / (out.name + ".ready")).touch()
while not (out.parent / "go").exists():
    time.sleep(0.02)
vectors = scan(model, texts, ("mean", "last"), cache_dir=cache, batch_size=4, chunk_size=8, show_progress_bar=False)
np.save(out, np.stack([vectors["mean"].vectors, vectors["last"].vectors]))
"""
CONCURRENT_TEXTS = [f"the movie {index} was good" for index in range(48)]


def test_two_processes_scanning_the_same_texts_both_finish(tiny_models: dict[str, str], tmp_path) -> None:
    """Item 10: a lock per entry; the second process waits and reads the first one's entry.

    The second process is this one: only one interpreter has to import torch and sentence-transformers."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    out = tmp_path / "out.npy"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CONCURRENT_SCAN,
            tiny_models["llama"],
            str(tmp_path / "cache"),
            str(out),
            *CONCURRENT_TEXTS,
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not out.with_name(out.name + ".ready").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    vectors = scan(
        tiny_models["llama"],
        CONCURRENT_TEXTS,
        ("mean", "last"),
        cache_dir=tmp_path / "cache",
        batch_size=4,
        chunk_size=8,
        show_progress_bar=False,
    )
    errors = process.communicate(timeout=180)[1]
    assert process.returncode == 0, errors
    np.testing.assert_array_equal(np.load(out), np.stack([vectors["mean"].vectors, vectors["last"].vectors]))
    assert not list((tmp_path / "cache").glob("*.partial")) and not list((tmp_path / "cache").glob("*.tmp"))


def test_batches_sort_the_whole_input_by_token_count(tiny_models: dict[str, str], tmp_path) -> None:
    texts = [*TEXTS, *reversed(TEXTS)]  # 18 texts: 5 chunks of 4, the long ones spread over all of them
    scanner = _scanner(tiny_models["llama"], tmp_path, batch_size=3, chunk_size=4)
    lengths = np.array([len(ids) for ids in scanner.module.tokenizer(texts)["input_ids"]])
    batches = scanner.batches(texts)
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(len(texts)))
    assert (np.diff(lengths[order]) <= 0).all()  # longest first across chunk boundaries
    assert [len(batch) for batch in batches] == [3, 1, 3, 1, 3, 1, 3, 1, 2]  # batches never straddle chunks


def test_reproduction_check_allows_padding_noise_but_not_another_layer() -> None:
    from lafusion_st.scan import REPRODUCTION_TOLERANCE, check_reproduces_scan

    rng = np.random.default_rng(0)
    expected = rng.normal(size=(4, 64)).astype(np.float32)
    expected[:, 0] = 50.0  # one large activation sets the scale, as in Gemma3's pooled vectors
    scale = np.abs(expected).max(axis=1, keepdims=True)
    noise = expected + 0.9 * REPRODUCTION_TOLERANCE * scale * np.sign(rng.normal(size=expected.shape))
    assert check_reproduces_scan(noise, expected, "noise") == pytest.approx(0.9 * REPRODUCTION_TOLERANCE, rel=1e-3)
    beyond = expected.copy()
    beyond[2, 5] += 1.1 * REPRODUCTION_TOLERANCE * scale[2, 0]  # one element of one text is enough to fail
    with pytest.raises(RuntimeError, match="differs from the scanned vectors"):
        check_reproduces_scan(beyond, expected, "one element")
    with pytest.raises(RuntimeError, match="differs"):
        check_reproduces_scan(np.full_like(expected, np.nan), expected, "NaN")
