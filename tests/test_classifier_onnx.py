"""A FusedClassifier exported to ONNX: the same labels from ONNX Runtime alone, and clear errors."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from test_heads import SMALL, blobs

from lafusion_st import FusedClassifier, HadamardResidualHead, LogisticHead, MLPHead, SumResidualHead, build_fused_model
from lafusion_st.cli import main
from lafusion_st.data import load_bundled
from onnx_export import ExportedModelError, ORTFusedClassifier, add_export_arguments, export, export_command
from onnx_export.classifier import HEAD_DIR, HEAD_GRAPH, HEAD_MANIFEST
from onnx_export.classifier_export import classifier_parts
from onnx_export.head_graph import build_head_graph

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sst2():
    """A bundled SST-2 subsample: 60 training texts, 40 test texts (stratified, seed 0)."""
    return load_bundled("sst2", "train").subsample(60, seed=0), load_bundled("sst2", "test").subsample(40, seed=0)


@pytest.fixture(scope="module")
def exported_pair(tiny_models, sst2, tmp_path_factory):
    """A two-model classifier (Hadamard residual head, string labels), saved, and exported by `lafusion export`."""
    root = tmp_path_factory.mktemp("onnx_classifier")
    train, _ = sst2
    embedder = build_fused_model([tiny_models["llama"], tiny_models["bert"]], layers=[[2, 4], [3]])
    classifier = FusedClassifier(embedder, head=HadamardResidualHead(hidden_sizes=(16, 8), max_epochs=10))
    classifier.fit(train.texts, np.array(["negative", "positive"])[np.asarray(train.labels)]).save(root / "saved")
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert export_command(parser.parse_args([str(root / "saved"), str(root / "onnx")])) == 0
    assert "classifier head head/head.onnx: max probability diff" in printed.getvalue()
    return classifier, root / "onnx"


def test_predict_verb_serves_saved_and_exported_classifiers(exported_pair, sst2, tmp_path, capsys):
    classifier, folder = exported_pair
    texts = sst2[1].texts[:6]
    saved = classifier.save(tmp_path / "saved")
    assert main(["predict", str(saved), *texts[:2], "--proba"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = classifier.predict(texts[:2]).tolist()
    assert [line.split("\t")[0] for line in lines] == expected
    assert lines[0].split("\t")[2] == texts[0] and lines[0].split("\t")[1].startswith("negative=")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"review": text}) + "\n" for text in texts))
    assert main(["predict", str(folder), "--input", str(source), "--text-col", "review", "--output",
                 str(tmp_path / "out.csv"), "--proba"]) == 0  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "out.csv").read_text().splitlines()))
    assert [row["text"] for row in rows] == texts
    assert [row["label"] for row in rows] == classifier.predict(texts).tolist()
    np.testing.assert_allclose(
        [[float(row["p_negative"]), float(row["p_positive"])] for row in rows],
        classifier.predict_proba(texts),
        atol=1e-5,
    )
    (tmp_path / "in.csv").write_text("text\nfun\n")
    for arguments, message in [
        ([str(tmp_path), "a text"], "neither a saved classifier"),
        ([str(folder), "--input", str(tmp_path / "in.csv"), "--text-col", "body"], "no column 'body'"),
        ([str(folder), "fun", "--output", str(tmp_path / "out.npy")], "--output must end"),
        ([str(folder)], "give texts"),
        ([str(folder), "--input", str(tmp_path / "missing.txt")], "No such file"),
    ]:
        assert main(["predict", *arguments]) == 2  # a user error: one line, exit status 2
        assert message in capsys.readouterr().err


def test_two_model_classifier_gives_the_same_labels_from_onnx_runtime(exported_pair, sst2):
    classifier, folder = exported_pair
    _, test = sst2
    served = ORTFusedClassifier(folder, provider="cpu")
    assert served.classes_.tolist() == ["negative", "positive"]
    assert served.predict(test.texts).tolist() == classifier.predict(test.texts).tolist()
    np.testing.assert_allclose(served.predict_proba(test.texts), classifier.predict_proba(test.texts), atol=1e-5)
    manifest = json.loads((folder / HEAD_DIR / HEAD_MANIFEST).read_text())
    assert manifest["head_class"] == "HadamardResidualHead" and manifest["member_dims"] == [64, 32]
    assert manifest["parity"]["label_agreement"] == 1.0 and manifest["parity"]["max_abs_diff"] < 1e-4
    assert (folder / "members").is_dir()  # member graphs + fusion graph + head graph


def test_a_fitted_classifier_object_is_exported_as_its_embedder_and_head(exported_pair):
    classifier, _ = exported_pair
    model, head = classifier_parts(classifier)
    assert model is classifier.embedder and head is classifier.head_
    assert classifier_parts(classifier.embedder) is None  # a plain embedder exports as before


@pytest.mark.parametrize(
    ("head_class", "dims"),
    [(LogisticHead, (12, 8)), (MLPHead, (12, 8)), (HadamardResidualHead, (12, 8)), (HadamardResidualHead, (8, 12)),
     (SumResidualHead, (8, 12))],
)  # fmt: skip
def test_head_graph_computes_predict_proba(head_class, dims):
    X, y = blobs(n=90, dims=dims)
    settings = {} if head_class is LogisticHead else {**SMALL, "max_epochs": 2}  # any weights will do
    head = head_class(**settings).fit(X, y, member_dims=dims)
    session = onnxruntime.InferenceSession(
        build_head_graph(head, opset=17).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(session.run(None, {"sentence_embedding": X})[0], head.predict_proba(X), atol=1e-6)


BLOCK_TORCH = """
import importlib.abc, json, sys
BLOCKED = {"torch", "transformers", "sentence_transformers", "optimum", "onnx", "sklearn", "scipy"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from onnx_export import ORTFusedClassifier
classifier = ORTFusedClassifier(sys.argv[1], provider="cpu")
print(json.dumps({"labels": classifier.predict(json.loads(sys.argv[2])).tolist(),
                  "loaded": sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)}))
"""


def test_onnx_classifier_predicts_without_torch_or_sklearn(exported_pair, sst2):
    classifier, folder = exported_pair
    texts = sst2[1].texts[:12]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, str(folder), json.dumps(texts)],
        capture_output=True, text=True, env=environment, check=True, cwd=REPO_ROOT,
    )  # fmt: skip
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [] and report["labels"] == classifier.predict(texts).tolist()


def test_damaged_or_partial_exports_are_refused(exported_pair, tmp_path):
    _, folder = exported_pair
    embedder_only = Path(shutil.copytree(folder, tmp_path / "embedder"))
    shutil.rmtree(embedder_only / HEAD_DIR)
    with pytest.raises(ExportedModelError, match="without a classifier"):
        ORTFusedClassifier(embedder_only)
    damaged = Path(shutil.copytree(folder, tmp_path / "damaged"))
    graph = damaged / HEAD_DIR / HEAD_GRAPH
    graph.write_bytes(graph.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ExportedModelError, match="SHA-256"):
        ORTFusedClassifier(damaged)
    with pytest.raises(ValueError, match="not fitted"):
        export(FusedClassifier(str(tmp_path / "x")), tmp_path / "unfitted")
