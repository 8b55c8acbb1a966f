"""Compute precision: bf16 as a run setting over float32 weights, refused where it cannot pay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import SENTENCES
from lafusion_st import FusedSentenceTransformer, build_fused_model
from lafusion_st import precision as precision_module
from lafusion_st.modes import DTYPES
from lafusion_st.modules.truncated_transformer import float32_forward
from lafusion_st.precision import check_dtype, check_dtype_on_device
from lafusion_st.scan import LayerScanner


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this CPU has native bf16 (torch then runs bf16 autocast emulated: same numbers, slower)."""
    monkeypatch.setattr(precision_module, "native_bf16", lambda device_type: True)


def test_dtype_names_are_checked() -> None:
    assert [check_dtype(name) for name in DTYPES] == list(DTYPES)
    with pytest.raises(ValueError, match=r"Unknown dtype 'float16'; choose one of \['fp32', 'bf16', 'fp16'\]"):
        check_dtype("float16")
    with pytest.raises(ValueError, match="Unknown dtype"):
        build_fused_model("unused", layers=[1], dtype="half")


def test_fp16_on_cpu_and_bf16_without_native_support_are_refused(tiny_models, monkeypatch, tmp_path) -> None:
    with pytest.raises(ValueError, match="'fp16' is refused on CPU"):
        check_dtype_on_device("fp16", "cpu")
    monkeypatch.setattr(precision_module, "native_bf16", lambda device_type: False)
    with pytest.raises(ValueError, match="'bf16' needs native bf16"):
        LayerScanner(tiny_models["llama"], dtype="bf16", device="cpu", cache_dir=tmp_path)
    model = build_fused_model(tiny_models["llama"], layers=[2], dtype="bf16", device="cpu")
    with pytest.raises(ValueError, match="'bf16' needs native bf16"):
        model.encode(SENTENCES)
    check_dtype_on_device("fp32", "cpu")  # always allowed


def test_bf16_computes_in_bf16_over_float32_weights_and_saves_float32(tiny_models, native_bf16, tmp_path) -> None:
    fp32 = build_fused_model(tiny_models["llama"], layers=[2, 4], dtype="fp32").encode(SENTENCES)
    model = build_fused_model(tiny_models["llama"], layers=[2, 4], dtype="bf16")
    bf16 = model.encode(SENTENCES)
    assert bf16.dtype == np.float32
    assert not np.array_equal(bf16, fp32)  # the low precision is really used ...
    np.testing.assert_allclose(bf16, fp32, rtol=0.05, atol=0.05)  # ... and stays close (8-bit mantissa)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())

    model.save(str(tmp_path / "saved"))
    config = json.loads(next(Path(tmp_path, "saved").glob("**/sentence_bert_config.json")).read_text())
    assert config["dtype"] == "bf16"
    weights = next(Path(tmp_path, "saved").glob("**/model.safetensors"))
    with safe_open(str(weights), framework="pt") as handle:
        assert {handle.get_slice(name).get_dtype() for name in handle.keys()} == {"F32"}
    reloaded = FusedSentenceTransformer(str(tmp_path / "saved"))
    assert reloaded[0].dtype == "bf16"
    np.testing.assert_array_equal(reloaded.encode(SENTENCES), bf16)

    with float32_forward(reloaded):  # what ONNX export traces and validates against
        np.testing.assert_array_equal(reloaded.encode(SENTENCES), fp32)
    assert reloaded[0].dtype == "bf16"


def test_scan_precision_is_part_of_the_cache_key(tiny_models, native_bf16, tmp_path) -> None:
    common = {"cache_dir": tmp_path, "show_progress_bar": False}
    fp32 = LayerScanner(tiny_models["llama"], **common)
    bf16 = LayerScanner(tiny_models["llama"], dtype="bf16", **common)
    assert "dtype" not in fp32.cache_entry(SENTENCES, "mean").key.fields()  # fp32 keys are unchanged
    assert fp32.cache_entry(SENTENCES, "mean").data_file != bf16.cache_entry(SENTENCES, "mean").data_file
    vectors = bf16.scan(SENTENCES)["mean"].vectors
    encoded = build_fused_model(tiny_models["llama"], layers=[3], dtype="bf16").encode(SENTENCES, batch_size=32)
    np.testing.assert_allclose(vectors[3], encoded, atol=1e-5)  # scan and embedder agree at the same precision
    assert not np.allclose(vectors, fp32.scan(SENTENCES)["mean"].vectors, atol=1e-5)
