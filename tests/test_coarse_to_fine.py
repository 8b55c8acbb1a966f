"""Coarse-to-fine scans: truncated scans equal full ones, candidates follow the noise rule, runs say what they did."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import WORDS, hand_made_score
from lafusion_st.cli import build_parser, main
from lafusion_st.coarse_to_fine import coarse_candidates, coarse_scan, scan_task_coarse_to_fine
from lafusion_st.data import LabeledTexts
from lafusion_st.errors import InvalidArgumentError
from lafusion_st.modules.truncated_transformer import find_layer_list
from lafusion_st.pipeline import LAST_LAYER, format_table, run_task
from lafusion_st.pooling import POOLING_MODES
from lafusion_st.probe import ProbeConfig
from lafusion_st.scan import LayerScanner, fused_from_scan
from lafusion_st.scan_cache import ScanKey
from lafusion_st.selection import noise_rule, search_layers
from lafusion_st.spec import EmbedderSpec, RunSettings, ScanSettings

FAST = ProbeConfig(folds=4, max_iter=200, Cs=(0.01, 0.1, 1.0))


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])  # rotary, per-layer attention types, absolute
def test_truncated_scan_equals_the_first_layers_of_a_full_scan(tiny_models, family, tmp_path) -> None:
    texts = [f"{a} {b} film" for a in WORDS[:6] for b in WORDS[9:11]]
    options = {"cache_dir": tmp_path, "batch_size": 5, "chunk_size": 8, "show_progress_bar": False}
    full = LayerScanner(tiny_models[family], POOLING_MODES, **options).scan(texts)
    scanner = LayerScanner(tiny_models[family], POOLING_MODES, num_layers=2, **options)
    truncated = scanner.scan(texts)
    assert len(find_layer_list(scanner.module.auto_model)) == 2  # the deeper layers are not even loaded
    for pooling in POOLING_MODES:
        np.testing.assert_array_equal(truncated[pooling].vectors, full[pooling].vectors[:3], err_msg=pooling)
        assert truncated[pooling].cache_file != full[pooling].cache_file
        assert (truncated[pooling].scanned_num_layers, truncated[pooling].source_num_layers) == (2, 4)
    sidecar = json.loads(truncated["mean"].cache_file.with_suffix(".json").read_text())
    assert sidecar["num_layers"] == 2 and sidecar["shape"][0] == 3
    assert "num_layers" not in json.loads(full["mean"].cache_file.with_suffix(".json").read_text())
    # a rerun is a cache hit on the truncated entry; the last layer is refused, never served as layer 2
    again = LayerScanner(tiny_models[family], ["mean"], num_layers=2, **options)
    np.testing.assert_array_equal(again.scan(texts)["mean"].vectors, truncated["mean"].vectors)
    assert again._module is None
    with pytest.raises(InvalidArgumentError, match=r"Layer\(s\) \[4\] .* not scanned: this scan stops at layer 2 of 4"):
        truncated["mean"].concat([-1])
    scanned = {tiny_models[family]: truncated}
    with pytest.raises(InvalidArgumentError, match="not scanned"):
        fused_from_scan(scanned, EmbedderSpec(tiny_models[family], [1, 3]))
    np.testing.assert_array_equal(
        fused_from_scan(scanned, EmbedderSpec(tiny_models[family], [0, 2])), full["mean"].concat([0, 2])
    )


def test_candidates_are_the_layers_the_best_does_not_beat_under_the_noise_rule() -> None:
    curves = {
        "mean": [
            hand_made_score([0.70, 0.72, 0.68, 0.71]),  # 0: far below the best in every fold
            hand_made_score([0.86, 0.80, 0.90, 0.84]),  # 1: 0.01 lower on average, by fold noise (0.6 SE)
            hand_made_score([0.88, 0.84, 0.86, 0.86]),  # 2: the best (0.86)
            hand_made_score([0.87, 0.82, 0.86, 0.85]),  # 3: 0.01 lower on average, 2.4 SE: out at 1 SE, in at 3
            hand_made_score([0.80, 0.82, 0.78, 0.80]),  # 4 (last): far below
        ],
        "last": [hand_made_score([0.86, 0.84, 0.88, 0.86])] + [hand_made_score([0.5] * 4)] * 4,  # ties the best: kept
    }
    best, candidates, decisions = coarse_candidates(curves)
    assert best == ("mean", 2)  # the tie goes to the first pooling
    assert candidates == {"mean": [1, 2], "last": [0]}
    expected = {
        (pooling, layer): noise_rule(curves["mean"][2], curves[pooling][layer], kind="coarse", names=("a", "b"))
        for pooling in curves
        for layer in range(5)
        if (pooling, layer) != best
    }
    assert [(d.gain, d.standard_error, d.accepted) for d in decisions] == [
        (d.gain, d.standard_error, d.accepted) for d in expected.values()
    ]
    assert decisions[0].kind == "coarse" and (decisions[0].incumbent, decisions[0].challenger) == (
        "mean [0]",
        "mean [2]",
    )
    # a wider margin keeps more layers; no margin keeps only ties
    assert coarse_candidates(curves, standard_errors=3.0)[1]["mean"] == [1, 2, 3]
    assert coarse_candidates(curves, standard_errors=0.0)[1] == {"mean": [2], "last": [0]}


def test_coarse_scan_truncates_after_the_deepest_candidate(tiny_models, good_or_not, scan_cache_dir) -> None:
    model = tiny_models["llama"]
    options = {"show_progress_bar": False}
    train = good_or_not
    scans, coarse = scan_task_coarse_to_fine(
        model, train, train.texts[:40], ["mean"], sample_size=80, config=FAST, **options
    )
    stage = coarse[model]
    sample = train.subsample(80, seed=FAST.seed)
    assert (stage.sample_size, stage.num_texts, stage.source_num_layers) == (80, 120, 4)
    full_sample = LayerScanner(model, ["mean"], **options).scan(sample.texts)["mean"]
    assert stage.curves["mean"][0].num_samples == 80 and full_sample.vectors.shape[0] == 5
    _, candidates, _ = coarse_candidates(stage.curves)
    assert stage.candidates == candidates and stage.depth == max(1, max(candidates["mean"]))
    assert not stage.last_layer_scanned and stage.depth < 4  # the curve falls: the last layer lost on the sample
    assert stage.incumbent == max(range(stage.depth + 1), key=lambda layer: stage.curves["mean"][layer].accuracy_mean)
    full = LayerScanner(model, ["mean"], **options).scan(train.texts)["mean"]
    for split in ("train", "test"):
        vectors = getattr(scans, split)[model]["mean"]
        assert vectors.scanned_num_layers == stage.depth and vectors.source_num_layers == 4
        expected = full.vectors[: stage.depth + 1, : len(vectors.vectors[0])]
        np.testing.assert_allclose(vectors.vectors, expected, atol=1e-5)  # test: other batches, same texts
    np.testing.assert_array_equal(scans.train[model]["mean"].vectors, full.vectors[: stage.depth + 1])
    # a sample as large as the split is the full scan itself
    whole = coarse_scan(model, train, ["mean"], sample_size=500, config=FAST, **options)
    assert whole.sample_size == 120 and whole.depth == 4 and whole.last_layer_scanned and whole.incumbent is None


def test_run_reports_coarse_to_fine_and_never_shows_a_last_layer_it_did_not_scan(
    tiny_models, good_or_not, tmp_path, scan_cache_dir
) -> None:
    model = tiny_models["llama"]
    settings = RunSettings(poolings=("mean",), probe=FAST, max_layers=2, coarse_to_fine=True, coarse_sample_size=80)
    test = LabeledTexts(good_or_not.texts[:40], good_or_not.labels[:40])
    result = run_task("good", good_or_not, test, [model], tmp_path / "run", settings)
    stage = result.coarse[model]
    search = result.searches[model]
    assert search.incumbent == stage.incumbent and max(search.layers) <= stage.depth < 4
    assert (model, LAST_LAYER) not in result.rows and len(search.curves["mean"]) == stage.depth + 1
    report = json.loads(result.report_path.read_text())
    recorded = report["settings"]["coarse_to_fine"][model]
    assert (recorded["sample_size"], recorded["depth_scanned"], recorded["last_layer_scanned"]) == (
        80,
        stage.depth,
        False,
    )
    assert recorded["candidates"] == {"mean": stage.candidates["mean"]}
    assert report["models"][model]["last_layer"] == 4 and report["models"][model]["scored_layers"] == stage.depth
    assert report["selections"][model]["incumbent"] == stage.incumbent
    assert all(d["kind"] != "against last layer" for d in report["selections"][model]["decisions"])
    assert result.model_path.is_dir()
    assert f"scanned in full up to layer {stage.depth} of 4; last layer not scanned" in format_table(result)


@pytest.mark.parametrize("size", [0, -3, 1.5, True, "2000"])
def test_bad_coarse_sample_sizes_are_refused(tiny_models, good_or_not, tmp_path, size) -> None:
    for make in (
        lambda: ScanSettings(coarse_to_fine=True, coarse_sample_size=size),
        lambda: RunSettings(coarse_to_fine=True, coarse_sample_size=size),
        lambda: coarse_scan(tiny_models["llama"], good_or_not, sample_size=size, cache_dir=tmp_path),
    ):
        with pytest.raises(InvalidArgumentError, match=r"sample_size must be a positive integer, got"):
            make()


def test_scan_select_and_run_take_coarse_to_fine_from_the_command_line(
    tiny_models, good_or_not, tmp_path, scan_cache_dir, capsys
) -> None:
    train = tmp_path / "train.jsonl"
    rows = zip(good_or_not.texts, good_or_not.labels, strict=True)
    train.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    arguments = ["--train", str(train), "--test", str(train), "-m", tiny_models["llama"], "--coarse-to-fine"]
    assert main(["scan", *arguments, "--coarse-sample-size", "80"]) in (None, 0)
    printed = capsys.readouterr().out
    assert f"{tiny_models['llama']}: coarse-to-fine on 80 of 120 training texts; candidates mean [" in printed
    depth = int(printed.split("scanned in full up to layer ")[1].split(" ")[0])
    assert f"({depth + 1}, 120, 32)" in printed
    for verb in ("select", "run"):
        settings = RunSettings.from_args(build_parser().parse_args([verb, *arguments, "--coarse-sample-size", "80"]))
        assert (settings.coarse_to_fine, settings.scan.coarse_to_fine, settings.scan.coarse_sample_size) == (
            True,
            True,
            80,
        )
    assert not RunSettings.from_args(build_parser().parse_args(["select", "--task", "sst2"])).coarse_to_fine
    assert main(["scan", *arguments, "--coarse-sample-size", "0"]) == 2
    assert "coarse_sample_size must be a positive integer, got 0" in capsys.readouterr().err


def test_other_bad_coarse_to_fine_input_is_refused(tiny_models, good_or_not, tmp_path) -> None:
    with pytest.raises(InvalidArgumentError, match="coarse_to_fine must be True or False"):
        RunSettings(coarse_to_fine="yes")
    for depth in (0, 5, 2.0):
        with pytest.raises(InvalidArgumentError, match=r"num_layers must be an integer in 1\.\.4"):
            LayerScanner(tiny_models["llama"], cache_dir=tmp_path, num_layers=depth)
    with pytest.raises(ValueError, match="cannot keep all 2 classes in a subsample of 1"):
        coarse_scan(tiny_models["llama"], good_or_not, sample_size=1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="at least one pooling"):
        coarse_candidates({})
    vectors = np.zeros((5, len(good_or_not), 4), np.float32)
    for bad in (5, -1, True):
        with pytest.raises(ValueError, match=r"incumbent must be a layer index in 0\.\.4"):
            search_layers({"mean": vectors}, good_or_not.labels, incumbent=bad, config=FAST)


def test_scan_key_names_the_truncation_depth() -> None:
    key = ScanKey("f" * 8, "mean", 256, "t" * 8, (31, 10, 576))
    truncated = ScanKey("f" * 8, "mean", 256, "t" * 8, (31, 10, 576), num_layers=30)
    assert "num_layers" not in key.fields() and truncated.fields()["num_layers"] == 30
    assert key.digest != truncated.digest
