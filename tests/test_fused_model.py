"""Fused embedders on tiny models of every family: truncation parity, padding, save/load, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import sentence_transformers
import torch
from safetensors import safe_open
from sentence_transformers import SentenceTransformer

from conftest import DECODER_FAMILIES, NUM_LAYERS, SENTENCES, reference_embeddings
from lafusion_st import FusedSentenceTransformer, build_fused_model
from lafusion_st.modules import TruncatedTransformer, truncated_transformer
from lafusion_st.pooling import POOLING_MODES

# sentence-transformers 6 imports module classes from outside its own package only with trust_remote_code=True,
# even from a local folder; FusedSentenceTransformer reads lafusion folders without it on every release.
ST6 = int(sentence_transformers.__version__.split(".")[0]) >= 6
PLAIN_LOAD_KWARGS = {"trust_remote_code": True} if ST6 else {}


@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_truncated_embedder_equals_pooling_the_full_model(tiny_models, family, pooling) -> None:
    layers = [1, 2]
    model = build_fused_model(tiny_models[family], layers=layers, pooling=pooling)
    assert len(truncated_transformer.find_layer_list(model[0].auto_model)) == 2
    np.testing.assert_allclose(
        model.encode(SENTENCES), reference_embeddings(tiny_models[family], layers, pooling), atol=2e-5
    )


def test_last_layer_keeps_the_final_norm(tiny_models, family) -> None:
    model = build_fused_model(tiny_models[family], layers=[-1], pooling="mean")
    assert model[0].num_layers == NUM_LAYERS
    np.testing.assert_allclose(
        model.encode(SENTENCES), reference_embeddings(tiny_models[family], [NUM_LAYERS], "mean"), atol=2e-5
    )


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_left_and_right_padding_give_the_same_vectors(tiny_models, family) -> None:
    model = build_fused_model(tiny_models[family], layers=[1, 3], pooling="last")
    model[0].tokenizer.padding_side = "right"
    right = model.encode(SENTENCES, batch_size=7)
    model[0].tokenizer.padding_side = "left"
    left = model.encode(SENTENCES, batch_size=7)
    np.testing.assert_allclose(left, right, atol=2e-5)


def test_truncation_check_catches_an_unknown_final_norm(tiny_models, monkeypatch) -> None:
    monkeypatch.setattr(truncated_transformer, "FINAL_NORM_NAMES", ())
    with pytest.raises(RuntimeError, match="final norm"):
        TruncatedTransformer(tiny_models["llama"], num_layers=2)


def test_num_layers_out_of_range(tiny_models) -> None:
    with pytest.raises(ValueError, match="1..4"):
        TruncatedTransformer(tiny_models["llama"], num_layers=5)


def test_missing_pad_token_is_set_to_eos_and_said(tiny_models, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=truncated_transformer.__name__):
        module = TruncatedTransformer(tiny_models["gpt2"])
    assert module.tokenizer.pad_token == module.tokenizer.eos_token
    assert "no pad token" in caplog.text


@pytest.mark.parametrize("fusion", ["concat", "weighted"])
def test_save_and_load_give_identical_embeddings(tiny_models, tmp_path, fusion) -> None:
    model = build_fused_model(tiny_models["llama"], layers=[1, 2], fusion=fusion)
    before = model.encode(SENTENCES)
    model.save(str(tmp_path))
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as weights:
        assert not any(".2." in name or ".3." in name for name in weights.keys()), "layers above 2 were saved"
    for reloaded in (SentenceTransformer(str(tmp_path), **PLAIN_LOAD_KWARGS), FusedSentenceTransformer(str(tmp_path))):
        assert isinstance(reloaded[0], TruncatedTransformer)
        assert np.abs(reloaded.encode(SENTENCES) - before).max() == 0.0


def test_multi_model_fusion_save_load_and_values(tiny_models, tmp_path) -> None:
    folders = [tiny_models["llama"], tiny_models["bert"], tiny_models["gpt2"]]
    model = build_fused_model(folders, layers=[[1, -1], [2], [3]], pooling=["last", "mean", "max"])
    assert model.get_embedding_dimension() == 4 * 32
    fused = model.encode(SENTENCES)
    singles = [
        build_fused_model(folder, layers=layers, pooling=pooling).encode(SENTENCES)
        for folder, layers, pooling in zip(folders, [[1, -1], [2], [3]], ["last", "mean", "max"], strict=True)
    ]
    np.testing.assert_allclose(fused, np.concatenate(singles, axis=1), atol=1e-6)
    model.save(str(tmp_path))
    assert json.loads((tmp_path / "multi_model_fuse_config.json").read_text())["member_names"] == [
        "0_llama",
        "1_bert",
        "2_gpt2",
    ]
    for reloaded in (SentenceTransformer(str(tmp_path), **PLAIN_LOAD_KWARGS), FusedSentenceTransformer(str(tmp_path))):
        assert np.abs(reloaded.encode(SENTENCES) - fused).max() == 0.0


def test_lafusion_loader_needs_no_flag_and_plain_load_follows_the_release(tiny_models, tmp_path) -> None:
    """FusedSentenceTransformer reads lafusion folders without trust_remote_code on every release; a plain
    SentenceTransformer(path) asks for it on sentence-transformers 6 and (outside lafusion's control) trusts
    local folders on 5.x."""
    model = build_fused_model([tiny_models["llama"], tiny_models["bert"]], layers=[1])
    model.save(str(tmp_path))
    expected = model.encode(SENTENCES)
    assert np.abs(FusedSentenceTransformer(str(tmp_path)).encode(SENTENCES) - expected).max() == 0.0
    if ST6:
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            SentenceTransformer(str(tmp_path))
    else:
        assert np.abs(SentenceTransformer(str(tmp_path)).encode(SENTENCES) - expected).max() == 0.0


def test_multi_model_mean_needs_equal_dimensions(tiny_models) -> None:
    model = build_fused_model([tiny_models["llama"], tiny_models["qwen2"]], layers=[2], model_fusion="mean")
    assert model.get_embedding_dimension() == 32
    with pytest.raises(ValueError, match=r"dimensions differ: \[64, 32\]"):
        build_fused_model([tiny_models["llama"], tiny_models["qwen2"]], layers=[[1, 2], [2]], model_fusion="mean")


def test_missing_member_folder_fails_clearly(tiny_models, tmp_path) -> None:
    build_fused_model([tiny_models["llama"], tiny_models["bert"]], layers=[1]).save(str(tmp_path))
    (tmp_path / "members" / "1_bert" / "modules.json").unlink()
    with pytest.raises(FileNotFoundError, match="Member '1_bert'"):
        FusedSentenceTransformer(str(tmp_path))


def test_per_model_settings_must_match_model_count(tiny_models) -> None:
    with pytest.raises(ValueError, match="layers must be one setting"):
        build_fused_model([tiny_models["llama"], tiny_models["bert"]], layers=[[1], [2], [3]])


class TestBadInput:
    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, tiny_models) -> FusedSentenceTransformer:
        return build_fused_model(tiny_models["llama"], layers=[1, 2], max_seq_length=6)

    def test_empty_list_gives_zero_rows(self, model) -> None:
        assert model.encode([]).shape == (0, 64)
        assert model.encode([], convert_to_tensor=True).shape == (0, 64)

    def test_empty_string_is_the_bos_token_and_whitespace_is_defined(self, model) -> None:
        empty, bos, space = model.encode(["", "<s>", "   "])
        np.testing.assert_array_equal(empty, bos)
        assert np.isfinite(space).all() and np.isfinite(empty).all()

    def test_non_string_names_its_index(self, model) -> None:
        with pytest.raises(TypeError, match="Input 2 is int"):
            model.encode(["fine", "also fine", 7])
        with pytest.raises(TypeError, match="Input 0 is NoneType"):
            SentenceTransformer.encode(model, [None, "x"])

    def test_long_texts_are_truncated_with_one_warning(self, model, caplog) -> None:
        long_text = " ".join(["good"] * 40)
        with caplog.at_level(logging.WARNING):
            first = model.encode([long_text, "fun"])
            model.encode([long_text])
        assert caplog.text.count("longer than max_seq_length=6") == 1
        np.testing.assert_allclose(first[0], model.encode([" ".join(["good"] * 6)])[0], atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_zero_token_texts_get_the_empty_text_vector_alone_and_in_a_batch(tiny_models, family) -> None:
    """Item 6: these tokenizers drop whitespace entirely; such a text is the empty text (BOS, else EOS)."""
    model = build_fused_model(tiny_models[family], layers=[1, 2], pooling="mean")
    assert model.tokenizer(" \t ")["input_ids"] == [] and model.tokenizer("")["input_ids"] == []
    empty = model.encode([""])[0]
    np.testing.assert_array_equal(empty, model.encode([model.tokenizer.bos_token])[0])
    assert np.abs(empty).max() > 0
    for text in (" \t ", "\n"):
        np.testing.assert_allclose(model.encode([text])[0], empty, atol=1e-6)
        batch = model.encode(["the movie was very good", text, "fun"], batch_size=3)
        np.testing.assert_allclose(batch[1], empty, atol=1e-5)  # batching moves gemma3 by 2e-6
        with_prompt = model.encode([text, ""], prompt="the ")
        np.testing.assert_allclose(with_prompt[0], with_prompt[1], atol=1e-6)


def test_encode_options_and_multi_process_pool(tiny_models) -> None:
    model = build_fused_model(tiny_models["llama"], layers=[1, 2])
    plain = model.encode(SENTENCES, batch_size=2, show_progress_bar=False)
    normalized = model.encode(SENTENCES, normalize_embeddings=True, convert_to_tensor=True)
    assert isinstance(normalized, torch.Tensor)
    torch.testing.assert_close(normalized.norm(dim=1), torch.ones(len(SENTENCES)))
    np.testing.assert_allclose(normalized.numpy(), plain / np.linalg.norm(plain, axis=1, keepdims=True), atol=1e-6)
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    try:
        pooled = model.encode(SENTENCES, pool=pool, batch_size=2)
    finally:
        model.stop_multi_process_pool(pool)
    np.testing.assert_allclose(pooled, plain, atol=1e-6)
