"""Saved folders that cannot run foreign code, point outside themselves or contradict their backbone."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SENTENCES
from lafusion_st import FusedSentenceTransformer, build_fused_model
from lafusion_st.cli import main as cli_main
from lafusion_st.errors import InvalidArgumentError
from lafusion_st.modules import MultiModelFuse
from lafusion_st.registry import resolve_model
from lafusion_st.saved_folder import UntrustedModuleError
from lafusion_st.scan import LayerScanner
from onnx_export import export

EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("foreign code ran")
from sentence_transformers.sentence_transformer.modules import Normalize as Evil
"""


@pytest.fixture(scope="module")
def saved_single(tiny_models, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "llama"
    build_fused_model(tiny_models["llama"], layers=[1, 2]).save(str(folder))
    return folder


@pytest.fixture(scope="module")
def saved_multi(tiny_models, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "multi"
    build_fused_model([tiny_models["llama"], tiny_models["bert"]], layers=[[2], [1]]).save(str(folder))
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _plant_evil_module(folder: Path) -> None:
    (folder / "evil_module.py").write_text(EVIL_MODULE.format(marker=str(folder / "RAN")))
    entries = json.loads((folder / "modules.json").read_text())
    entries[-1]["type"] = "evil_module.Evil"
    (folder / "modules.json").write_text(json.dumps(entries))


def _edit_json(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


# ------------------------------------------------------------------------------------------- item 1
def test_module_class_outside_the_allow_list_is_refused_by_every_loader(
    saved_single, saved_multi, tmp_path, capsys
) -> None:
    single = _copy(saved_single, tmp_path)
    _plant_evil_module(single)
    multi = _copy(saved_multi, tmp_path)
    _plant_evil_module(multi / "members" / "1_bert")
    loaders = {
        "FusedSentenceTransformer": lambda: FusedSentenceTransformer(str(single)),
        "MultiModelFuse member": lambda: FusedSentenceTransformer(str(multi)),
        "export": lambda: export(single, tmp_path / "onnx"),
    }
    refused = r"module class 'evil_module\.Evil'.*trust_remote_code=True"
    for name, load in loaders.items():
        with pytest.raises(UntrustedModuleError, match=refused):
            load()
        assert not (single / "RAN").exists() and not (multi / "members" / "1_bert" / "RAN").exists(), name
    assert cli_main(["embed", "--saved", str(single), "a text"]) == 2  # a user error: one line, exit status 2
    assert re.search(refused, capsys.readouterr().err)
    assert not (single / "RAN").exists()


def test_trust_remote_code_lets_the_caller_decide(saved_single, tmp_path) -> None:
    single = _copy(saved_single, tmp_path)
    _plant_evil_module(single)
    FusedSentenceTransformer(str(single), trust_remote_code=True)
    assert (single / "RAN").read_text() == "foreign code ran"


# ------------------------------------------------------------------------------------------- item 2
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", "a/b", "..", ""])
def test_member_names_must_be_single_components(tiny_models, tmp_path, name) -> None:
    members = [build_fused_model(tiny_models["llama"], layers=[1]), build_fused_model(tiny_models["bert"], layers=[1])]
    with pytest.raises(ValueError, match="Member name"):
        MultiModelFuse(members, member_names=[name, "ok"])
    assert not (tmp_path.parent / "escaped").exists()


def test_saved_names_that_leave_the_folder_are_refused_on_load(saved_single, saved_multi, tmp_path) -> None:
    multi = _copy(saved_multi, tmp_path)
    outside = tmp_path / "outside_member"
    shutil.copytree(multi / "members" / "1_bert", outside)
    _edit_json(multi / "multi_model_fuse_config.json", member_names=["0_llama", str(outside)])
    with pytest.raises(ValueError, match="Member name"):
        FusedSentenceTransformer(str(multi))
    _edit_json(multi / "multi_model_fuse_config.json", member_names=["0_llama", "../../outside_member"])
    with pytest.raises(ValueError, match="Member name"):
        FusedSentenceTransformer(str(multi))

    single = _copy(saved_single, tmp_path)
    shutil.copytree(single / "1_LayerSelect", tmp_path / "outside_module")
    for path in (str(tmp_path / "outside_module"), "../outside_module"):
        entries = json.loads((single / "modules.json").read_text())
        entries[1]["path"] = path
        (single / "modules.json").write_text(json.dumps(entries))
        with pytest.raises(ValueError, match="Module path"):
            FusedSentenceTransformer(str(single))
    (single / "link").symlink_to(tmp_path / "outside_module")
    entries[1]["path"] = "link"
    (single / "modules.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="leads outside"):
        FusedSentenceTransformer(str(single))


def test_malformed_modules_json_is_a_user_error(saved_single, tmp_path) -> None:
    """A LafusionError, so the command prints one line instead of a traceback."""
    single = _copy(saved_single, tmp_path)
    for text, match in (("[{", "not valid JSON"), ('{"path": ""}', "must hold a list of module entries")):
        (single / "modules.json").write_text(text)
        with pytest.raises(InvalidArgumentError, match=match):
            FusedSentenceTransformer(str(single))


# ------------------------------------------------------------------------------------------- item 3
@pytest.mark.parametrize(
    ("file", "field", "value", "match"),
    [
        ("sentence_bert_config.json", "source_num_layers", 2, "field source_num_layers is 4, but .* is 2"),
        ("1_LayerSelect/config.json", "hidden_size", 999, "field hidden_size is 999, but the backbone's hidden size"),
        ("1_LayerSelect/config.json", "source_num_layers", 3, "field source_num_layers is 3"),
        ("1_LayerSelect/config.json", "layers", [1, 4], r"needs layer 4, but .* keeps only 2"),
    ],
)
def test_edited_derived_fields_fail_naming_file_and_field(saved_single, tmp_path, file, field, value, match) -> None:
    folder = _copy(saved_single, tmp_path)
    _edit_json(folder / file, **{field: value})
    with pytest.raises(ValueError, match=match) as error:
        FusedSentenceTransformer(str(folder))
    assert str(folder / file) in str(error.value)


def test_folders_of_the_previous_version_still_load(saved_single, tmp_path) -> None:
    """The original depth was called num_hidden_layers in LayerSelect, and source_model was not recorded."""
    folder = _copy(saved_single, tmp_path)
    config = json.loads((folder / "1_LayerSelect" / "config.json").read_text())
    config["num_hidden_layers"] = config.pop("source_num_layers")
    (folder / "1_LayerSelect" / "config.json").write_text(json.dumps(config))
    backbone = json.loads((folder / "sentence_bert_config.json").read_text())
    del backbone["source_model"]
    (folder / "sentence_bert_config.json").write_text(json.dumps(backbone))
    old = FusedSentenceTransformer(str(folder)).encode(SENTENCES)
    assert np.abs(old - FusedSentenceTransformer(str(saved_single)).encode(SENTENCES)).max() == 0.0


# ------------------------------------------------------------------------------------------- item 4
def test_saved_embedder_is_refused_as_a_model_source(tiny_models, saved_single, saved_multi, tmp_path) -> None:
    source = str(Path(tiny_models["llama"]).resolve())
    for use in (
        lambda folder: build_fused_model(str(folder), layers=[1]),
        lambda folder: LayerScanner(str(folder), cache_dir=tmp_path),
        resolve_model,
    ):
        with pytest.raises(ValueError, match=f"saved lafusion embedder.*instead: {source}"):
            use(saved_single)
    with pytest.raises(ValueError, match=f"instead: {source}, {Path(tiny_models['bert']).resolve()}"):
        resolve_model(str(saved_multi))
    assert resolve_model(tiny_models["llama"]) == source  # a plain model folder is still a model
