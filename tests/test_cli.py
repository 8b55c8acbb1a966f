"""The ``lafusion`` CLI end to end on tiny models and the user's own files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from lafusion_st.cli import main

POSITIVE = ["good film", "great fun movie", "i loved the story", "very good actors", "fun plot", "really great film"]
NEGATIVE = ["bad film", "terrible boring movie", "i hated the story", "very bad actors", "boring plot", "really terrible film"]


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
    main(["run", "--train", str(train), "--test", str(test), "--label-col", "label", "-m", tiny_models["llama"],
          "-m", tiny_models["bert"], "--threshold", "0.05", "--max-layers", "2", "-o", str(out)])
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
        main(["select", "--train", str(train), "--test", str(train), "--label-col", "sentiment",
              "-m", tiny_models["llama"], "-o", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="either --task"):
        main(["select", "--task", "sst2", "--train", str(train), "-m", tiny_models["llama"]])


def test_build_and_embed(tiny_models, tmp_path, capsys) -> None:
    main(["build", "-m", tiny_models["gpt2"], "-l", "1,-1", "--pooling", "last", "-o", str(tmp_path / "m")])
    main(["embed", "--saved", str(tmp_path / "m"), "good film", "", "--output", str(tmp_path / "e.npy")])
    assert np.load(tmp_path / "e.npy", allow_pickle=False).shape == (2, 64)
    with pytest.raises(SystemExit):
        main(["build", "-m", tiny_models["gpt2"], "-l", "1,x", "-o", str(tmp_path / "m2")])
