"""LayerSelect: construction checks, forward on hand-made hidden states, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from lafusion_st.modules import LayerSelect


def test_layers_resolved_sorted_and_dimension_known_up_front() -> None:
    module = LayerSelect([-1, 12, 0], source_num_layers=30, hidden_size=576, fusion="concat")
    assert module.layers == [0, 12, 30]
    assert module.deepest_layer == 30
    assert module.get_embedding_dimension() == 3 * 576
    assert LayerSelect([3, 4], 30, 576, fusion="mean").get_embedding_dimension() == 576


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([31], "out of range"),
        ([-32], "out of range"),
        ([30, -1], "more than once"),
        ([], "at least one"),
        ([1.5], "integers"),
    ],
)
def test_invalid_layers_fail_at_construction(layers: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LayerSelect(layers, source_num_layers=30, hidden_size=8)


def test_unknown_modes_list_valid_choices() -> None:
    with pytest.raises(ValueError, match="'mean', 'last', 'max'"):
        LayerSelect([1], 4, 8, pooling="cls")
    with pytest.raises(ValueError, match="'concat', 'mean', 'sum', 'weighted'"):
        LayerSelect([1], 4, 8, fusion="product")
    with pytest.raises(ValueError, match="only used with fusion='weighted'"):
        LayerSelect([1], 4, 8, fusion="mean", layer_weights=[1.0])


def hidden_states(num_layers: int = 4) -> tuple[list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    states = [torch.randn(2, 3, 8) for _ in range(num_layers + 1)]
    return states, torch.tensor([[1, 1, 1], [0, 1, 1]])


def test_forward_pools_each_layer_then_fuses() -> None:
    states, mask = hidden_states()
    module = LayerSelect([1, 3], 4, 8, pooling="last", fusion="weighted", layer_weights=[0.3, 0.7])
    out = module({"all_layer_embeddings": states, "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(out, 0.3 * states[1][:, -1] + 0.7 * states[3][:, -1])


def test_missing_hidden_states_raise_instead_of_doing_nothing() -> None:
    with pytest.raises(ValueError, match="output_hidden_states"):
        LayerSelect([1], 4, 8)({"token_embeddings": torch.zeros(1, 2, 8), "attention_mask": torch.ones(1, 2)})


def test_too_few_hidden_states_raise() -> None:
    states, mask = hidden_states(num_layers=2)
    with pytest.raises(ValueError, match="returned only 3 hidden states"):
        LayerSelect([4], 4, 8)({"all_layer_embeddings": states, "attention_mask": mask})


def test_save_load_round_trip_with_weights(tmp_path) -> None:
    module = LayerSelect([1, 2], 4, 8, fusion="weighted", layer_weights=[0.2, 0.9])
    module.save(str(tmp_path))
    assert (tmp_path / "model.safetensors").is_file()
    loaded = LayerSelect.load(str(tmp_path))
    assert loaded.get_config_dict() == module.get_config_dict()
    torch.testing.assert_close(loaded.layer_weights, module.layer_weights)


def test_tampered_or_missing_config_fails_clearly(tmp_path) -> None:
    LayerSelect([1, 2], 4, 8).save(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "layers": [9]}))
    with pytest.raises(ValueError, match="out of range"):
        LayerSelect.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"layers": [1]}))
    with pytest.raises(ValueError, match="missing keys"):
        LayerSelect.load(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        LayerSelect.load(str(tmp_path))
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        LayerSelect.load(str(tmp_path))
