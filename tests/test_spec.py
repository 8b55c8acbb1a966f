"""EmbedderSpec: validation, names that stay stable, files, the CLI group, and the built/saved embedder's record."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lafusion_st.errors import InvalidArgumentError, LafusionError
from lafusion_st.model import FusedSentenceTransformer
from lafusion_st.spec import (
    SPEC_FILE,
    EmbedderSpec,
    RunSettings,
    ScanSettings,
    model_label,
    read_spec_file,
    write_spec_file,
)

REPOSITORY = Path(__file__).resolve().parent.parent


def test_names_match_the_committed_result_folders() -> None:
    assert EmbedderSpec("smollm2-135m", [12, 16, 20]).name == "lafusion/smollm2-135m__L12-16-20__mean__concat"
    pair = EmbedderSpec(["smollm2-135m", "gemma3-270m"], [[15], [9]], pooling="last", model_fusion="mean")
    assert pair.name == "lafusion/smollm2-135m__L15+gemma3-270m__L9__last__concat__mean"
    committed = {path.name for path in (REPOSITORY / "eval/results/results").iterdir()}
    assert EmbedderSpec("smollm2-135m", [30]).name.replace("/", "__") in committed
    layers = [[9, 15, 17, 19], [6, 7]]
    assert EmbedderSpec(["smollm2-135m", "gemma3-270m"], layers).name.replace("/", "__") in committed


def test_local_folders_of_one_name_get_two_names_short_names_and_hub_ids_keep_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a" / "model", tmp_path / "b" / "model"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    names = {EmbedderSpec(str(folder), [1]).name for folder in (first, second)}
    assert len(names) == 2 and all(name.startswith("lafusion/model-") for name in names)
    digest = hashlib.sha256(str(first.resolve()).encode()).hexdigest()[:8]
    assert EmbedderSpec(str(first), [1]).name == f"lafusion/model-{digest}__L1__mean__concat"
    monkeypatch.chdir(tmp_path / "a")  # one folder, however it is written, has one name
    assert EmbedderSpec("model", [1]).name == EmbedderSpec("./model", [1]).name == EmbedderSpec(str(first), [1]).name
    assert EmbedderSpec(".", [1]).name == EmbedderSpec(str(tmp_path / "a"), [1]).name
    (tmp_path / "a" / "smollm2-135m").mkdir()  # a short name still means the registry model, as in resolve_model
    assert EmbedderSpec("smollm2-135m", [1]).name == "lafusion/smollm2-135m__L1__mean__concat"
    assert EmbedderSpec("org/encoder", [1]).name == "lafusion/encoder__L1__mean__concat"  # a hub id, as before
    labels = [model_label(str(folder)) for folder in (first, second)]
    assert labels[0] != labels[1]
    pair = EmbedderSpec([str(first), str(second)], [[1], [2]])
    assert pair.name == f"lafusion/{labels[0]}__L1+{labels[1]}__L2__mean__concat__concat"


def test_a_setting_that_changes_vectors_changes_the_name_defaults_stay_out() -> None:
    base = EmbedderSpec("m", [1, 3])
    assert EmbedderSpec("m", [3, 1]).name == base.name  # the fusion order is ascending whatever the order given
    assert EmbedderSpec("m", [1, 3], max_seq_length=128).name == base.name + "__len128"
    variants = {
        dataclasses.replace(base, **change).name
        for change in ({"pooling": "max"}, {"fusion": "mean"}, {"layers": [[1, 2]]}, {"max_seq_length": 64})
    }
    assert len(variants) == 4 and base.name not in variants
    mixed = EmbedderSpec(["a", "b"], [[1], [2]], pooling=["last", "mean"])
    assert mixed.name == "lafusion/a__L1__last+b__L2__mean__mixed__concat__concat"
    with pytest.raises(InvalidArgumentError, match="spec.resolved"):
        EmbedderSpec("m", [-1]).name  # noqa: B018


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"models": [], "layers": [1]}, "at least one model"),
        ({"models": ["a", "a"], "layers": [1]}, "more than once"),
        ({"models": ["a", "b"], "layers": [[1], [2], [3]]}, "layers must be one setting for all 2 models"),
        ({"models": "a", "layers": []}, "at least one layer"),
        ({"models": "a", "layers": [1.5]}, "layers must be one setting"),
        ({"models": "a", "layers": [1], "pooling": "median"}, r"Unknown pooling 'median'.*'mean', 'last', 'max'"),
        ({"models": "a", "layers": [1], "fusion": "product"}, "Unknown fusion 'product'"),
        ({"models": "a", "layers": [1], "max_seq_length": 0}, "positive integer"),
    ],
)
def test_bad_settings_fail_naming_the_value(arguments: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match) as error:
        EmbedderSpec(**arguments)
    assert isinstance(error.value, ValueError) and isinstance(error.value, LafusionError)


def test_dict_and_file_round_trip_and_reject_what_they_cannot_read(tmp_path: Path) -> None:
    spec = EmbedderSpec(["a", "b"], [[1, 2], [3]], pooling=["last", "max"], model_fusion="mean", max_seq_length=64)
    assert EmbedderSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert EmbedderSpec.from_dict({"models": ["a"], "layers": [[1]]}) == EmbedderSpec("a", [1])  # defaults fill in
    with pytest.raises(InvalidArgumentError, match=r"Unknown embedder spec keys \['colour'\]"):
        EmbedderSpec.from_dict({"models": ["a"], "layers": [[1]], "colour": "red"})
    write_spec_file(tmp_path, spec)
    assert read_spec_file(tmp_path) == spec
    assert read_spec_file(tmp_path / "elsewhere") is None
    document = json.loads((tmp_path / SPEC_FILE).read_text())
    for broken, match in (({**document, "format_version": 9}, "format_version 9"), ("[1", "not valid JSON")):
        (tmp_path / SPEC_FILE).write_text(broken if isinstance(broken, str) else json.dumps(broken))
        with pytest.raises(InvalidArgumentError, match=match):
            read_spec_file(tmp_path)


def test_cli_group_gives_the_spec_and_its_defaults() -> None:
    parser = argparse.ArgumentParser()
    EmbedderSpec.add_arguments(parser)
    args = parser.parse_args(["-m", "a", "-m", "b", "-l", "1,2", "-l", "3", "--pooling", "last"])
    assert EmbedderSpec.from_args(args) == EmbedderSpec(["a", "b"], [[1, 2], [3]], pooling="last")
    default = EmbedderSpec.from_args(parser.parse_args(["-m", "a", "-l", "-1"]))
    assert (default.pooling, default.fusion, default.max_seq_length) == (("mean",), "concat", 256)
    settings = RunSettings()
    assert (settings.poolings, settings.max_seq_length) == (("mean", "last"), default.max_seq_length)
    assert settings.scan.poolings == ("mean", "last") and settings.spec(["a"], [[1]]).pooling == ("mean",)
    assert ScanSettings().poolings == ("mean",) and settings.scan.max_seq_length == ScanSettings().max_seq_length


def test_spec_module_imports_no_torch_or_transformers() -> None:
    code = "import sys, lafusion_st.spec; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def test_built_and_saved_embedder_records_its_resolved_spec(tiny_models: dict[str, str], tmp_path: Path) -> None:
    spec = EmbedderSpec(tiny_models["llama"], [-1, 1], pooling="last", max_seq_length=16)
    model = spec.build()
    assert model.spec == spec.resolved() == dataclasses.replace(spec, layers=((1, 4),))
    model.save(str(tmp_path / "m"))
    loaded = FusedSentenceTransformer(str(tmp_path / "m"))
    assert loaded.spec == model.spec and loaded.max_seq_length == 16
    np.testing.assert_array_equal(loaded.encode(["good film"]), model.encode(["good film"]))
    # A folder saved before specs were recorded (no lafusion_spec.json) still loads, with no spec.
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "m", old)
    (old / SPEC_FILE).unlink()
    previous = FusedSentenceTransformer(str(old))
    assert previous.spec is None
    np.testing.assert_array_equal(previous.encode(["good film"]), model.encode(["good film"]))


def test_dtype_is_named_only_when_not_fp32_and_reaches_scan_and_run_settings() -> None:
    base = EmbedderSpec("m", [1, 3])
    assert base.dtype == "fp32" and "fp32" not in base.name
    assert EmbedderSpec("m", [1, 3], dtype="bf16").name == base.name + "__bf16"
    assert EmbedderSpec.from_dict({**base.to_dict(), "dtype": "bf16"}).dtype == "bf16"
    assert EmbedderSpec.from_dict({"models": ["m"], "layers": [[1]]}).dtype == "fp32"  # specs written before dtype
    with pytest.raises(InvalidArgumentError, match="dtype"):
        EmbedderSpec("m", [1], dtype="int8")
    settings = RunSettings(dtype="bf16")
    assert settings.scan.dtype == "bf16" and settings.spec(["m"], [[1]]).dtype == "bf16"
    with pytest.raises(InvalidArgumentError, match="dtype"):
        ScanSettings(dtype="half")
