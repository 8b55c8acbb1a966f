"""eval/selection_runs.py's SUMMARY.md: rebuilt from each dataset's summary.json, which datasets may write in
separate runs (one full-data dataset per session), so it must not need the scans again."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from runner import REPOSITORY, load_data_plan
from selection_runs import (
    chosen_rows,
    comparison_rows,
    llm_pair,
    oracle_rows,
    record_test_scores,
    reusable_report,
    score_on_test,
    single_layers,
    write_summary,
)

from lafusion_st.data import LabeledTexts
from lafusion_st.pipeline import ALL_MODELS, BEST_LAYER, FUSED_LAYERS, GREEDY_MODELS, LAST_LAYER
from lafusion_st.probe import ProbeConfig, ProbeScore, fit_and_test, fit_and_test_every_C
from lafusion_st.scan import LayerVectors, TaskScan, fused_from_scan
from lafusion_st.spec import RunSettings
from lafusion_st.stats import holm, mcnemar

ROW = "| r8 | smollm2-135m last layer [30] | mean | 90.0 | 89.0 [88.0, 90.0] | 80.0 | 0.01 |"


def write_dataset_summary(folder: Path, before_after: list[str]) -> None:
    folder.mkdir(parents=True)
    summary = {
        "size": "5485/2189", "models": ["smollm2-135m"], "rows": [ROW], "comparisons": [], "oracle": [],
        "before_after": before_after, "kept_simpler": 2, "seconds": 1234.0,
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def config_file(tmp_path: Path) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"selection_folder": str(tmp_path / "full"), "datasets": ["r8", "r52"]}))
    return config


def hand_made_score(accuracy_folds: list[float]) -> ProbeScore:
    folds = tuple(accuracy_folds)
    mean, std = float(np.mean(folds)), float(np.std(folds))
    return ProbeScore(mean, std, mean, std, len(folds), 150, 6, True, "tuned", folds, folds, (1.0,) * len(folds))


def test_summary_only_rebuilds_from_the_datasets_run_and_names_those_not_run(tmp_path: Path) -> None:
    write_dataset_summary(tmp_path / "full" / "r8", before_after=[])
    command = [sys.executable, "eval/selection_runs.py", "--config", str(config_file(tmp_path)), "--summary-only"]
    done = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "full" / "SUMMARY.md").read_text(encoding="utf-8")
    assert ROW in text
    assert "Train/test texts: r8 5485/2189" in text and "r8 1234 s" in text
    assert "Not run yet with the tuned probe: r52." in text
    assert "Former probe" not in text  # no dataset kept a former summary: no empty table


def test_the_former_probe_table_appears_when_a_dataset_kept_one(tmp_path: Path) -> None:
    former = "| r8 | smollm2-135m last layer | [30] 88.0 | mean [30] 89.0 |"
    write_dataset_summary(tmp_path / "full" / "r8", before_after=[former])
    config = config_file(tmp_path)
    text = write_summary(load_data_plan(config), config, RunSettings())
    assert "## Former probe" in text and former in text


# The test scoring after the selection, on hand-made scans of three models (no model is loaded): what a
# resumed run computes from a kept report.json.
MODELS = ["smollm2-135m", "gemma3-270m", "minilm-l6"]
SETTINGS = RunSettings()  # mean and last-token pooling, as selection_runs.py searches


def scanned(rng: np.random.Generator, labels: np.ndarray, strengths: list[float]) -> dict[str, LayerVectors]:
    """One model's layers: layer ``l`` carries the class signal with strength ``strengths[l]`` in noise."""
    centres = rng.normal(size=(labels.max() + 1, 6))
    layers = np.stack([strength * centres[labels] + rng.normal(size=(len(labels), 6)) for strength in strengths])
    return {pooling: LayerVectors(MODELS[0], pooling, layers.astype(np.float32)) for pooling in SETTINGS.poolings}


def task_scan() -> tuple[TaskScan, LabeledTexts, LabeledTexts]:
    train_labels, test_labels = np.arange(150) % 3, np.arange(120) % 3
    strengths = {"smollm2-135m": [0.1, 0.6, 0.9, 0.4], "gemma3-270m": [0.2, 0.8, 0.5], "minilm-l6": [0.1, 0.3, 0.5]}
    scans = TaskScan(test={})
    for model, by_layer in strengths.items():
        scans.train[model] = scanned(np.random.default_rng(len(model)), train_labels, by_layer)
        scans.test[model] = scanned(np.random.default_rng(len(model)), test_labels, by_layer)  # same centres
    texts = lambda labels: LabeledTexts([f"text {i}" for i in range(len(labels))], labels.tolist())  # noqa: E731
    return scans, texts(train_labels), texts(test_labels)


def kept_report(train: LabeledTexts) -> dict:
    """A report.json as run_task writes it, reduced to what the test scoring reads."""
    choices = {  # model: (chosen layers, pooling, best single layer, last layer)
        "smollm2-135m": ([1, 2], "mean", 2, 3), "gemma3-270m": ([1], "last", 1, 2), "minilm-l6": ([1, 2], "mean", 2, 2),
    }  # fmt: skip
    cv, score = {}, lambda accuracy: hand_made_score([accuracy] * 5).to_dict()  # noqa: E731
    for model, (chosen, _, best, last) in choices.items():
        cv |= {
            f"{model} last layer [{last}]": score(0.6),
            f"{model} best layer [{best}]": score(0.7),
            f"{model} fused layers {chosen}": score({"gemma3-270m": 0.9}.get(model, 0.8)),
        }
    cv[f"{ALL_MODELS} " + " + ".join(f"{model} {choices[model][0]}" for model in MODELS)] = score(0.85)
    cv[f"{GREEDY_MODELS} smollm2-135m + gemma3-270m"] = score(0.86)
    return {
        "task": "r8",
        "created": "2026-12-06T17:14:19+00:00",
        "probe": json.loads(json.dumps(vars(SETTINGS.probe))),
        "settings": {
            "poolings": ["mean", "last"],
            "max_seq_length": 256,
            "standard_errors": 1.0,
            "num_train": len(train),
            "train_sha256": train.fingerprint(),
            "max_layers": 4,
            "seeds": 1,
            "models": MODELS,
            "chosen_models": ["smollm2-135m", "gemma3-270m"],
            "chosen": {"dtype": "fp32"},
            "coarse_to_fine": None,
        },  # fmt: skip
        "selections": {
            model: {"chosen": layers, "pooling": pooling, "best_single": {pooling: {"layer": best}}}
            for model, (layers, pooling, best, _) in choices.items()
        },
        "models": {model: {"last_layer": last} for model, (_, _, _, last) in choices.items()},
        "cv": cv,
        "kept_simpler": {model: [] for model in MODELS},
    }


def test_a_kept_selection_is_reused_only_under_the_same_data_size_settings_and_probe(tmp_path: Path) -> None:
    _, train, _ = task_scan()
    path = tmp_path / "report.json"
    assert reusable_report(path, "r8", train, MODELS, SETTINGS) is None  # nothing kept yet
    path.write_text(json.dumps(kept_report(train)))
    assert reusable_report(path, "r8", train, MODELS, SETTINGS) is not None
    assert reusable_report(path, "r8", train, MODELS, replace(SETTINGS, probe=ProbeConfig(n_jobs=2))) is not None
    changed = [
        ("r52", train, MODELS, SETTINGS),
        ("r8", LabeledTexts(train.texts[:-1], train.labels[:-1]), MODELS, SETTINGS),
        ("r8", LabeledTexts(["another text", *train.texts[1:]], train.labels), MODELS, SETTINGS),  # same size
        ("r8", LabeledTexts(train.texts, [*train.labels[1:], train.labels[0]]), MODELS, SETTINGS),
        ("r8", train, MODELS, replace(SETTINGS, max_layers=2)),
        ("r8", train, MODELS, replace(SETTINGS, dtype="bf16")),
        ("r8", train, MODELS, replace(SETTINGS, max_seq_length=128)),
        ("r8", train, MODELS[:2], SETTINGS),
        ("r8", train, MODELS, RunSettings(poolings=("mean",))),
        ("r8", train, MODELS, replace(SETTINGS, standard_errors=0.5)),
        ("r8", train, MODELS, replace(SETTINGS, probe=ProbeConfig(max_iter=100))),
    ]
    assert [reusable_report(path, *arguments) for arguments in changed] == [None] * len(changed)
    for written_before_it_was_recorded in ("train_sha256", "max_layers"):
        report = kept_report(train)
        del report["settings"][written_before_it_was_recorded]
        path.write_text(json.dumps(report))
        assert reusable_report(path, "r8", train, MODELS, SETTINGS) is None  # redone, not trusted
    path.write_text(json.dumps(kept_report(train) | {"probe": None}))
    assert reusable_report(path, "r8", train, MODELS, SETTINGS) is None


def test_the_test_scoring_fits_each_configuration_once_and_builds_the_tables_from_those_fits(
    tmp_path: Path, capsys
) -> None:
    scans, train, test = task_scan()
    rows = chosen_rows(kept_report(train), MODELS, SETTINGS)
    assert [row.label for row in rows.values()] == list(kept_report(train)["cv"])  # run_task's rows, in its order
    # the last layer in the default (first) pooling, the best single layer in the pooling the search chose
    assert rows[("gemma3-270m", LAST_LAYER)].spec.pooling == ("mean",)
    assert rows[("gemma3-270m", BEST_LAYER)].spec == rows[("gemma3-270m", FUSED_LAYERS)].spec
    assert rows[("gemma3-270m", BEST_LAYER)].spec.pooling == ("last",)
    pair = llm_pair(rows, MODELS)
    candidates = [spec for model in MODELS for spec in single_layers(model, scans, SETTINGS)]
    assert len(candidates) == 2 * (4 + 3 + 3)
    scores = score_on_test([*(row.spec for row in rows.values()), pair], scans, train, test, SETTINGS.probe)
    # one fit per configuration: MiniLM's last layer is its best single layer, Gemma3's best single layer is its
    # choice, and the LLM pair is the greedy models' row here
    assert pair == rows[("smollm2-135m+gemma3-270m", GREEDY_MODELS)].spec
    assert len(scores) == len(rows) - 2
    path_scores = score_on_test(
        candidates, scans, train, test, SETTINGS.probe, fit=fit_and_test_every_C, description="oracle fits"
    )
    assert "oracle fits: 100%|██████████| 20/20 " in capsys.readouterr().err  # its own bar, not "test fits"
    assert [len(path) for path in path_scores.values()] == [len(SETTINGS.probe.Cs)] * len(candidates)
    last = rows[("smollm2-135m", LAST_LAYER)].spec
    direct = fit_and_test(
        fused_from_scan(scans.train, last), train.labels, fused_from_scan(scans.test, last), test.labels, SETTINGS.probe
    )
    assert np.array_equal(scores[last].correct, direct.correct) and scores[last].C == direct.C
    rows = {key: replace(row, test=scores[row.spec]) for key, row in rows.items()}
    # the report keeps its choices and gains each row's test fit at full precision (what test_tables_agree reads)
    report_path, report = tmp_path / "report.json", kept_report(train)
    record_test_scores(report_path, report, rows)
    written = json.loads(report_path.read_text(encoding="utf-8"))
    kept = json.loads(json.dumps(kept_report(train)))
    assert {key: value for key, value in written.items() if key != "test"} == kept
    assert written["test"] == {row.label: row.test.to_dict() for row in rows.values()}
    assert written["test"]["smollm2-135m last layer [3]"]["accuracy"] == direct.accuracy

    oracle = oracle_rows("r8", rows, MODELS, scans, SETTINGS, path_scores)
    for model, line in zip(MODELS, oracle, strict=True):  # the best (layer, C) on test, the first of ties
        ceiling = max(
            ((spec, score) for spec in single_layers(model, scans, SETTINGS) for score in path_scores[spec]),
            key=lambda pair: pair[1].accuracy,
        )
        spec, score = ceiling
        assert f"| {spec.pooling[0]} [{spec.layers[0][0]}], C = {score.C:g}: {100 * score.accuracy:.1f} |" in line
        gap = 100 * (rows[(model, FUSED_LAYERS)].test.accuracy - score.accuracy)
        assert line.endswith(f"| {gap:+.1f} |")

    comparisons = comparison_rows("r8", rows, MODELS, scores[pair])
    names = [line.split(" | ")[1] for line in comparisons]
    assert names == [
        "smollm2-135m: choice vs last layer",
        "smollm2-135m: choice vs best single layer",
        "gemma3-270m: choice vs last layer",  # its best single layer is its choice: no second test
        "minilm-l6: choice vs last layer (also the best single layer on CV)",  # one test, not two
        "two LLMs vs the better (gemma3-270m)",  # better by CV
        "gemma3-270m choice vs MiniLM choice",
    ]
    pairs = [
        (("smollm2-135m", FUSED_LAYERS), ("smollm2-135m", LAST_LAYER)),
        (("smollm2-135m", FUSED_LAYERS), ("smollm2-135m", BEST_LAYER)),
        (("gemma3-270m", FUSED_LAYERS), ("gemma3-270m", LAST_LAYER)),
        (("minilm-l6", FUSED_LAYERS), ("minilm-l6", LAST_LAYER)),
    ]
    tests = [mcnemar(rows[a].test.correct, rows[b].test.correct) for a, b in pairs]
    tests += [
        mcnemar(scores[pair].correct, rows[("gemma3-270m", FUSED_LAYERS)].test.correct),
        mcnemar(rows[("gemma3-270m", FUSED_LAYERS)].test.correct, rows[("minilm-l6", FUSED_LAYERS)].test.correct),
    ]
    adjusted = holm([test.p_value for test in tests])
    assert [line.split(" | ")[7] for line in comparisons] == [f"{p:.3g}" for p in adjusted]  # Holm over all six
