"""ONNX export and ONNX Runtime encoding: parity with PyTorch, self-describing folders, bad input.

Tiny random models of every family are exported once per session (a few seconds each); each test then
compares ONNX Runtime with the PyTorch embedder on real computations.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import MambaConfig, MambaModel

from conftest import DECODER_FAMILIES, SENTENCES
from lafusion_st import build_fused_model
from lafusion_st.fusion import FUSION_MODES, fuse
from lafusion_st.modules import TruncatedTransformer
from onnx_export import (
    ExportedModelError,
    NonFiniteEmbeddingError,
    ORTFusedEncoder,
    ParityError,
    ProviderUnavailableError,
    TokenizerMismatchError,
    UnsupportedArchitectureError,
    add_export_arguments,
    compare_with_pytorch,
    export,
    export_command,
    validate_export,
)
from onnx_export.fusion_graph import build_fusion_graph
from onnx_export.manifest import MANIFEST_FILE
from onnx_export.validation import GRIDS

REPO_ROOT = Path(__file__).resolve().parents[1]
FP32_ATOL = 1e-4
# Documented fp16 tolerance: cosine to PyTorch >= 0.999 and max abs diff <= 1% of the largest coordinate.
FP16_MIN_COSINE, FP16_MAX_RELATIVE = 0.999, 1e-2
INT8_MIN_COSINE = 0.99
LAYERS = [1, 3]  # of 4: the graph must hold layers 0..2 only
POOLING = {"llama": "mean", "qwen2": "last", "gemma3": "max", "gpt2": "last", "bert": "mean"}
LAYER_SCOPE = re.compile(r"/(?:layers|h|layer)\.(\d+)/")


def tiny_embedder(folder: str, family: str) -> SentenceTransformer:
    return build_fused_model(folder, layers=LAYERS, pooling=POOLING[family])


@pytest.fixture(scope="session")
def exported(tiny_models, tmp_path_factory):
    """family -> (PyTorch embedder, folder of its fp32 export), exported on first use."""
    cache: dict[str, tuple[SentenceTransformer, Path]] = {}

    def get(family: str) -> tuple[SentenceTransformer, Path]:
        if family not in cache:
            model = tiny_embedder(tiny_models[family], family)
            cache[family] = (model, export(model, tmp_path_factory.mktemp(f"onnx_{family}") / "export"))
        return cache[family]

    return get


def damaged_copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


# ------------------------------------------------------------------------------------------- parity
def test_fp32_parity_on_every_grid(family, exported):
    model, folder = exported(family)
    results = compare_with_pytorch(model, ORTFusedEncoder(folder, provider="cpu"))
    assert [result.grid for result in results] == [f"batch={b} padding={p}" for b, p in GRIDS] + ["encode"]
    for result in results:
        assert result.max_abs_diff < FP32_ATOL, result
        assert result.min_cosine > 0.99999, result


def test_graph_holds_only_the_kept_layers_and_derives_positions_from_the_mask(family, exported):
    model, folder = exported(family)
    graph = onnx.load(str(folder / "model.onnx")).graph
    layer_indices = {int(match) for node in graph.node for match in LAYER_SCOPE.findall(node.name)}
    assert layer_indices == {0, 1, 2}
    inputs = [value.name for value in graph.input]
    assert inputs[:2] == ["input_ids", "attention_mask"] and "position_ids" not in inputs
    assert [value.name for value in graph.output] == ["sentence_embedding"]
    cumsum_sources = {node.input[0] for node in graph.node if node.op_type == "CumSum"}
    casts_of_mask = {
        node.output[0] for node in graph.node if node.op_type == "Cast" and node.input[0] == "attention_mask"
    }
    assert cumsum_sources & casts_of_mask, "position ids are not computed from the attention mask in the graph"


def left_padded(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same batch with every row's pad positions moved to the front (stable, so token order is kept)."""
    order = np.argsort(inputs["attention_mask"], axis=1, kind="stable")
    return {name: np.take_along_axis(values, order, axis=1) for name, values in inputs.items()}


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_left_padding_gives_the_unpadded_vectors(family, exported):
    # GPT-2 has absolute positions: without mask-derived position ids in the graph, left padding shifts them.
    _, folder = exported(family)
    encoder = ORTFusedEncoder(folder, provider="cpu")
    inputs = encoder.tokenize(SENTENCES)[0]
    padded_left = left_padded(inputs)
    assert (padded_left["attention_mask"][:, 0] == 0).any()
    alone = np.stack([encoder.run(encoder.tokenize([text]))[0] for text in SENTENCES])
    np.testing.assert_allclose(encoder.run([padded_left]), alone, atol=FP32_ATOL)
    np.testing.assert_allclose(encoder.run([inputs]), alone, atol=FP32_ATOL)


def test_encode_options_match_sentence_transformers(exported):
    model, folder = exported("llama")
    encoder = ORTFusedEncoder(folder, provider="cpu")
    texts = [*SENTENCES, "", "movie"]
    for kwargs in ({}, {"normalize_embeddings": True, "batch_size": 2}, {"prompt": "the ", "batch_size": 1}):
        np.testing.assert_allclose(encoder.encode(texts, **kwargs), model.encode(texts, **kwargs), atol=FP32_ATOL)
    assert encoder.encode("fun").shape == (encoder.get_embedding_dimension(),)
    as_list = encoder.encode(texts, convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == len(texts) and as_list[0].shape == (64,)
    assert torch.is_tensor(encoder.encode(texts, convert_to_tensor=True))
    assert encoder.encode([]).shape == model.encode([]).shape == (0, 64)
    with pytest.raises(TypeError, match="Input 1 is int"):
        encoder.encode(["fine", 3])
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(texts, batch_size=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_zero_token_texts_match_pytorch_alone_and_in_a_batch(exported, family):
    """Item 6: a text the tokenizer drops entirely is the empty text in ONNX Runtime too (alone it crashed)."""
    model, folder = exported(family)
    encoder = ORTFusedEncoder(folder, provider="cpu")
    empty = model.encode([""])[0]
    for texts in ([" \t "], ["the movie was very good", " \t ", "fun"]):
        observed = encoder.encode(texts, batch_size=len(texts))
        np.testing.assert_allclose(observed, model.encode(texts), atol=FP32_ATOL)
        np.testing.assert_allclose(observed[texts.index(" \t ")], empty, atol=FP32_ATOL)


def test_non_finite_output_raises_instead_of_returning_it(exported, monkeypatch):
    """Item 9: an overflowing graph (fp16 typically) must not hand NaN/inf to the caller."""
    _, folder = exported("llama")
    encoder = ORTFusedEncoder(folder, provider="cpu")
    session = encoder.members[0].session
    real_run = session.run

    class Overflowing:
        def run(self, names, feeds):
            outputs = real_run(names, feeds)
            outputs[0][-1, 0] = np.inf
            return outputs

    monkeypatch.setattr(encoder.members[0], "session", Overflowing())
    with pytest.raises(NonFiniteEmbeddingError, match=r"input\(s\) \[1\].*dtype='fp32'"):
        encoder.encode(["the movie was very good", "fun"], batch_size=2)


def test_long_texts_and_large_batches_match_pytorch(exported):
    """Item 9: texts beyond max_seq_length (truncated) and batches beyond the seven validation texts."""
    model, folder = exported("qwen2")
    texts = [" ".join(["the movie was fun"] * model.max_seq_length), *SENTENCES * 4]
    observed = ORTFusedEncoder(folder, provider="cpu").encode(texts, batch_size=len(texts))
    np.testing.assert_allclose(observed, model.encode(texts, batch_size=len(texts)), atol=FP32_ATOL)
    assert max(batch for batch, _ in GRIDS) > 7


def test_multi_model_export_one_graph_per_member_and_a_fusion_graph(tiny_models, tmp_path):
    model = build_fused_model([tiny_models["llama"], tiny_models["bert"]], layers=[[1, 2], [2]], model_fusion="concat")
    folder = export(model, tmp_path / "multi")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert [member["folder"] for member in manifest["members"]] == ["members/0_llama", "members/1_bert"]
    assert manifest["model_fusion"]["mode"] == "concat" and (folder / "fusion.onnx").is_file()
    assert manifest["embedding_dimension"] == 96
    for result in compare_with_pytorch(model, ORTFusedEncoder(folder, provider="cpu")):
        assert result.max_abs_diff < FP32_ATOL, result


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_fusion_graph_matches_torch_fusion(mode):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=(3, 8)).astype(np.float32) for _ in range(3)]
    weights = [0.2, 0.5, -1.5] if mode == "weighted" else None
    graph = build_fusion_graph([8, 8, 8], mode, weights, opset=18)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    observed = session.run(None, {f"member_{index}": vector for index, vector in enumerate(vectors)})[0]
    expected = fuse([torch.from_numpy(v) for v in vectors], mode, torch.tensor(weights) if weights else None).numpy()
    np.testing.assert_allclose(observed, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------- variants
def test_fp16_and_int8_variants_within_documented_tolerance(tiny_models, tmp_path):
    model = tiny_embedder(tiny_models["gemma3"], "gemma3")  # Gemma: the family whose fp16 needs fp32 norms
    folder = export(model, tmp_path / "variants", dtypes=("fp16", "int8"))
    variants = json.loads((folder / MANIFEST_FILE).read_text())["variants"]
    assert set(variants) == {"fp32", "fp16", "int8"}
    for dtype, min_cosine in (("fp16", FP16_MIN_COSINE), ("int8", INT8_MIN_COSINE)):
        results = compare_with_pytorch(model, ORTFusedEncoder(folder, provider="cpu", dtype=dtype))
        for result in results:
            assert result.min_cosine >= min_cosine, (dtype, result)
        assert variants[dtype]["max_abs_diff"] == pytest.approx(
            max(result.max_abs_diff for result in results), rel=1e-6
        )
    assert variants["fp16"]["max_abs_diff"] <= FP16_MAX_RELATIVE * variants["fp16"]["max_abs_reference"]


def test_optimized_graph_keeps_left_padding_parity(exported, tmp_path, tiny_models):
    # ORT's BERT attention / embedding fusions assume right padding; they must stay off.
    model = tiny_embedder(tiny_models["bert"], "bert")
    folder = export(model, tmp_path / "optimized", optimize=True)
    graph = onnx.load(str(folder / "model.onnx")).graph
    _, plain = exported("bert")
    assert len(graph.node) < len(onnx.load(str(plain / "model.onnx")).graph.node)
    assert any(node.domain == "com.microsoft" for node in graph.node)
    for result in compare_with_pytorch(model, ORTFusedEncoder(folder, provider="cpu")):
        assert result.max_abs_diff < FP32_ATOL, result


# ------------------------------------------------------------------------------ self-describing
def test_manifest_describes_the_export(exported):
    _, folder = exported("gpt2")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    member = manifest["members"][0]
    assert (member["layers"], member["pooling"], member["fusion"]) == (LAYERS, "last", "concat")
    assert (member["num_layers"], member["source_num_layers"]) == (3, 4)
    assert member["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]  # the tiny tokenizer emits them
    assert member["tokenizer"]["pad_token"] == "</s>"  # GPT-2 has none: TruncatedTransformer set EOS
    assert manifest["opset"] == onnx.load(str(folder / "model.onnx")).opset_import[0].version
    assert {"onnxruntime-gpu", "optimum", "optimum-onnx", "torch", "transformers"} <= set(manifest["versions"])
    assert all((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "config.json"))
    assert manifest["variants"]["fp32"]["max_abs_diff"] < FP32_ATOL
    model, _ = exported("gpt2")
    assert manifest["spec"] == model.spec.to_dict() and ORTFusedEncoder(folder).spec == model.spec


def test_export_written_before_specs_were_recorded_still_loads(exported, tmp_path):
    model, folder = exported("llama")
    old = damaged_copy(folder, tmp_path)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    del manifest["spec"]
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    encoder = ORTFusedEncoder(old, provider="cpu")
    assert encoder.spec is None
    np.testing.assert_allclose(encoder.encode(SENTENCES), model.encode(SENTENCES), atol=FP32_ATOL, rtol=1e-5)


BLOCK_TORCH = """
import importlib.abc, json, sys
BLOCKED = {"torch", "transformers", "sentence_transformers", "optimum", "onnx", "sklearn"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from onnx_export import ORTFusedEncoder
encoder = ORTFusedEncoder(sys.argv[1], provider="cpu")
vectors = encoder.encode(json.loads(sys.argv[2]), normalize_embeddings=True)
print(json.dumps({"vectors": vectors.tolist(), "providers": encoder.providers,
                  "loaded": sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED),
                  "lafusion_st": sorted(name for name in sys.modules if name.split(".")[0] == "lafusion_st")}))
"""


def test_export_loads_and_encodes_without_torch(exported):
    model, folder = exported("qwen2")
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, str(folder), json.dumps(SENTENCES)],
        capture_output=True, text=True, env=environment, check=True, cwd=REPO_ROOT,
    )  # fmt: skip
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [] and report["providers"] == ["CPUExecutionProvider"]
    # Only lafusion's standard-library modules: the error classes, file helpers, the lazy-export helper, the spec
    # the manifest records, and the numpy-only label codec of ORTFusedClassifier (lafusion_st.heads is lazy).
    torch_free = {"lafusion_st", "lafusion_st.errors", "lafusion_st.files", "lafusion_st.lazy", "lafusion_st.modes"}
    torch_free |= {"lafusion_st.spec", "lafusion_st.heads", "lafusion_st.heads.labels"}
    assert set(report["lafusion_st"]) <= torch_free
    np.testing.assert_allclose(report["vectors"], model.encode(SENTENCES, normalize_embeddings=True), atol=FP32_ATOL)


def test_cli_exports_a_saved_folder(tiny_models, tmp_path, capsys):
    tiny_embedder(tiny_models["llama"], "llama").save(str(tmp_path / "saved"))
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args([str(tmp_path / "saved"), str(tmp_path / "out"), "--dtype", "int8"])
    assert export_command(args) == 0
    assert "fp32: max abs diff" in capsys.readouterr().out
    assert ORTFusedEncoder(tmp_path / "out", provider="cpu", dtype="int8").encode("fun").shape == (64,)


# ------------------------------------------------------------------------------------- bad input
def test_unknown_architecture_names_it_and_the_route(tiny_models, tmp_path):
    folder = tmp_path / "mamba"
    torch.manual_seed(0)
    MambaModel(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=4)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(tiny_models["llama"], name), folder / name)
    model = SentenceTransformer(modules=[TruncatedTransformer(str(folder))])
    with pytest.raises(UnsupportedArchitectureError, match=r"'mamba' \(MambaModel\).*allow_unknown_architecture=True"):
        export(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="needs validate=True"):
        export(model, tmp_path / "out", allow_unknown_architecture=True, validate=False)


def test_first_module_must_be_a_lafusion_backbone(tiny_models, tmp_path):
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    plain = SentenceTransformer(modules=[Transformer(tiny_models["bert"]), Pooling(32)])
    with pytest.raises(ValueError, match="TruncatedTransformer"):
        export(plain, tmp_path / "out")


def test_out_dir_must_be_new_or_empty(exported, tmp_path):
    model, _ = exported("llama")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        export(model, tmp_path / "busy")


def test_parity_failure_is_typed_and_leaves_no_servable_folder(exported, tiny_models, tmp_path):
    llama, llama_folder = exported("llama")
    qwen2 = tiny_embedder(tiny_models["qwen2"], "qwen2")  # same dimension, different weights
    with pytest.raises(ParityError) as caught:
        validate_export(qwen2, ORTFusedEncoder(llama_folder, provider="cpu"))
    assert caught.value.max_abs_diff > FP32_ATOL and caught.value.grid == "batch=1 padding=right"
    gemma3 = tiny_embedder(tiny_models["gemma3"], "gemma3")  # ORT differs from torch by ~1e-6 here
    with pytest.raises(ParityError):
        export(gemma3, tmp_path / "strict", atol=1e-12, rtol=0.0)
    assert (tmp_path / "strict" / "model.onnx").is_file() and not (tmp_path / "strict" / MANIFEST_FILE).exists()


def test_external_data_and_damaged_files(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")  # what Optimum does on its own above 2 GB
    model = tiny_embedder(tiny_models["llama"], "llama")
    folder = export(model, tmp_path / "external")
    graph_files = json.loads((folder / MANIFEST_FILE).read_text())["members"][0]["graphs"]["fp32"]["files"]
    assert set(graph_files) == {"model.onnx", "model.onnx_data"}
    np.testing.assert_allclose(
        ORTFusedEncoder(folder, provider="cpu").encode(SENTENCES), model.encode(SENTENCES), atol=FP32_ATOL
    )

    missing = Path(shutil.copytree(folder, tmp_path / "missing"))
    (missing / "model.onnx_data").unlink()
    with pytest.raises(ExportedModelError, match=r"model\.onnx_data is missing"):
        ORTFusedEncoder(missing, provider="cpu")
    truncated = Path(shutil.copytree(folder, tmp_path / "truncated"))
    data = (truncated / "model.onnx_data").read_bytes()
    (truncated / "model.onnx_data").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportedModelError, match="truncated or replaced"):
        ORTFusedEncoder(truncated, provider="cpu")
    corrupt = Path(shutil.copytree(folder, tmp_path / "corrupt"))
    graph = bytearray((corrupt / "model.onnx").read_bytes())
    graph[len(graph) // 2] ^= 0xFF
    (corrupt / "model.onnx").write_bytes(bytes(graph))
    with pytest.raises(ExportedModelError, match=r"model\.onnx does not match .* corrupted"):
        ORTFusedEncoder(corrupt, provider="cpu")


def test_missing_graph_or_manifest(exported, tmp_path):
    _, folder = exported("llama")
    no_graph = damaged_copy(folder, tmp_path)
    (no_graph / "model.onnx").unlink()
    with pytest.raises(ExportedModelError, match=r"model\.onnx is missing"):
        ORTFusedEncoder(no_graph, provider="cpu")
    (no_graph / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ExportedModelError, match="not valid JSON"):
        ORTFusedEncoder(no_graph, provider="cpu")
    (no_graph / MANIFEST_FILE).unlink()
    with pytest.raises(ExportedModelError, match="not a lafusion ONNX export"):
        ORTFusedEncoder(no_graph, provider="cpu")


def test_manifest_names_that_leave_the_folder_are_refused(exported, tmp_path):
    """Item 2: a manifest may name only files inside its folder, even intact ones with the right checksum."""
    _, folder = exported("llama")
    copy = damaged_copy(folder, tmp_path)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    graph = manifest["members"][0]["graphs"]["fp32"]
    shutil.move(copy / graph["file"], tmp_path / "outside.onnx")
    graph["files"] = {"../outside.onnx": graph["files"].pop(graph["file"])}
    graph["file"] = "../outside.onnx"
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ExportedModelError, match="names files it may not use: Graph file '../outside.onnx'"):
        ORTFusedEncoder(copy, provider="cpu")
    for field, value, match in (("folder", "../copy", "member folder '../copy'"), ("folder", "/", "member folder")):
        edited = json.loads(json.dumps(manifest))
        edited["members"][0][field] = value
        (copy / MANIFEST_FILE).write_text(json.dumps(edited))
        with pytest.raises(ExportedModelError, match=match):
            ORTFusedEncoder(copy, provider="cpu")


def test_swapped_tokenizer_is_refused(exported, tiny_models, tmp_path):
    _, folder = exported("llama")
    swapped = damaged_copy(folder, tmp_path)
    shutil.copy(Path(tiny_models["bert"], "tokenizer.json"), swapped / "tokenizer.json")
    with pytest.raises(TokenizerMismatchError, match="not the one this graph was exported with"):
        ORTFusedEncoder(swapped, provider="cpu")


def test_providers_and_variants_are_checked(exported):
    _, folder = exported("llama")
    try:
        cuda = ORTFusedEncoder(folder, provider="cuda").providers
    except ProviderUnavailableError as error:
        assert "provider='cuda' was asked for" in str(error) and "CPUExecutionProvider" in str(error)
        cuda = None
    if cuda is not None:  # a machine with a working GPU
        assert cuda[0] == "CUDAExecutionProvider"
    assert ORTFusedEncoder(folder, provider="auto").providers[0] == (cuda or ["CPUExecutionProvider"])[0]
    assert ORTFusedEncoder(folder, provider="cpu").providers == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="Unknown provider 'tpu'"):
        ORTFusedEncoder(folder, provider="tpu")
    with pytest.raises(ValueError, match="Unknown dtype 'bf16'"):
        ORTFusedEncoder(folder, dtype="bf16")
    with pytest.raises(ValueError, match="has no fp16 graphs"):
        ORTFusedEncoder(folder, provider="cpu", dtype="fp16")


# ------------------------------------------------------------------------------------ real model
@pytest.mark.slow
def test_smollm2_parity(tmp_path):
    model = build_fused_model("smollm2-135m", layers=[4, 8])
    folder = export(model, tmp_path / "smollm2", dtypes=("fp16",))  # raises ParityError if fp32 is off
    encoder = ORTFusedEncoder(folder, provider="cpu")
    texts = ["A gripping, beautifully shot film.", "Shares of the oil company fell 3% on Tuesday.", ""]
    torch_features = model.preprocess(texts)  # transformers tokenizer, with the empty-text rule
    for name in ("input_ids", "attention_mask"):
        assert (encoder.tokenize(texts)[0][name] == torch_features[name].numpy()).all()
    # export() measured every grid (compare_with_pytorch) and wrote the figures; measuring again would double
    # the test's cost and prove nothing more.
    variants = json.loads((folder / MANIFEST_FILE).read_text())["variants"]
    for grid in variants["fp32"]["grids"]:
        assert grid["min_cosine"] > 0.999999, grid
    assert len(variants["fp16"]["grids"]) == len(variants["fp32"]["grids"])
    for grid in variants["fp16"]["grids"]:
        assert grid["min_cosine"] >= FP16_MIN_COSINE, grid
        assert grid["max_abs_diff"] <= FP16_MAX_RELATIVE * grid["max_abs_reference"], grid
