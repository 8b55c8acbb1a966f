"""The ``lafusion`` CLI end to end on tiny models and the user's own files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from lafusion_st.cli import main

POSITIVE = ["good film", "great fun movie", "i loved the story", "very good actors", "fun plot", "really great film"]
NEGATIVE = [
    "bad film",
    "terrible boring movie",
    "i hated the story",
    "very bad actors",
    "boring plot",
    "really terrible film",
]


@pytest.fixture()
def task_files(tmp_path):
    rows = [{"text": text, "label": "pos"} for text in POSITIVE] + [{"text": text, "label": "neg"} for text in NEGATIVE]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.csv"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows * 2))
    test.write_text("text,label\n" + "".join(f"{row['text']},{row['label']}\n" for row in rows))
    return train, test


def test_run_on_user_files_writes_report_plot_and_model(tiny_models, task_files, tmp_path, capsys) -> None:
    train, test = task_files
    out = tmp_path / "run"
    main(
        [
            "run",
            "--train",
            str(train),
            "--test",
            str(test),
            "--label-col",
            "label",
            "-m",
            tiny_models["llama"],
            "-m",
            tiny_models["bert"],
            "--threshold",
            "0.05",
            "--max-layers",
            "2",
            "-o",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "last layer [4]" in printed and "multi-model" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {tiny_models["llama"], tiny_models["bert"]}
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in report["test"].values())
    assert (out / "layer_curves.png").read_bytes()[:4] == b"\x89PNG"
    model = SentenceTransformer(str(out / "model"))
    assert model.encode(["good film"]).shape[1] == model.get_embedding_dimension()


def test_wrong_column_and_conflicting_task_arguments(tiny_models, task_files, tmp_path) -> None:
    train, _ = task_files
    with pytest.raises(ValueError, match=r"line 1: no 'sentiment' field; fields present: \['text', 'label'\]"):
        main(
            [
                "select",
                "--train",
                str(train),
                "--test",
                str(train),
                "--label-col",
                "sentiment",
                "-m",
                tiny_models["llama"],
                "-o",
                str(tmp_path / "x"),
            ]
        )
    with pytest.raises(SystemExit, match="either --task"):
        main(["select", "--task", "sst2", "--train", str(train), "-m", tiny_models["llama"]])


def test_build_and_embed(tiny_models, tmp_path, capsys) -> None:
    main(["build", "-m", tiny_models["gpt2"], "-l", "1,-1", "--pooling", "last", "-o", str(tmp_path / "m")])
    main(["embed", "--saved", str(tmp_path / "m"), "good film", "", "--output", str(tmp_path / "e.npy")])
    assert np.load(tmp_path / "e.npy", allow_pickle=False).shape == (2, 64)
    with pytest.raises(SystemExit):
        main(["build", "-m", tiny_models["gpt2"], "-l", "1,x", "-o", str(tmp_path / "m2")])


def test_eval_scores_a_saved_embedder_and_its_onnx_export_alike(tiny_models, tmp_path, capsys) -> None:
    saved, exported, results = tmp_path / "m", tmp_path / "onnx", tmp_path / "results"
    main(["build", "-m", tiny_models["llama"], "-l", "1,-1", "-o", str(saved)])
    main(["export", str(saved), str(exported)])
    scores = {}
    for folder, name in ((saved, "tiny/torch"), (exported, "tiny/onnx")):
        main(
            [
                "eval",
                str(folder),
                "--task",
                "sst2",
                "--protocol",
                "paper",
                "--max-train",
                "40",
                "--max-test",
                "20",
                "--results-folder",
                str(results),
                "--name",
                name,
            ]
        )
        line = next(line for line in capsys.readouterr().out.splitlines() if "main score" in line)
        scores[name] = float(line.split()[-1])
        result_files = list((results / "results" / name.replace("/", "__")).rglob("*.json"))
        assert any(json.loads(path.read_text()).get("task_name", "").startswith("SST2") for path in result_files)
    metas = {
        name: json.loads(next((results / "results" / name.replace("/", "__")).rglob("model_meta.json")).read_text())
        for name in scores
    }
    assert metas["tiny/onnx"]["framework"] == ["ONNX"] and "PyTorch" in metas["tiny/torch"]["framework"]
    assert metas["tiny/onnx"]["n_parameters"] == metas["tiny/torch"]["n_parameters"] > 0
    assert 0.0 <= scores["tiny/torch"] <= 1.0
    assert scores["tiny/onnx"] == pytest.approx(scores["tiny/torch"], abs=0.051)  # at most one of 20 test texts flips
    with pytest.raises(ValueError, match="has no fp16 graphs"):
        main(["eval", str(exported), "--dtype", "fp16", "--task", "sst2", "--results-folder", str(results)])


def test_help_answers_without_importing_torch_or_mteb() -> None:
    """``lafusion --help`` must be instant: building the parser imports no heavy library."""
    code = (
        "import sys; from lafusion_st.cli import build_parser; build_parser(); "
        "print(sorted(name for name in ('torch', 'mteb', 'sentence_transformers', 'optimum') if name in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"
