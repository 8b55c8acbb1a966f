"""The ``lafusion`` CLI end to end on tiny models and the user's own files."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from mteb.results import TaskResult

from lafusion_st.classifier import FusedClassifier
from lafusion_st.cli import main
from lafusion_st.data import DataFormatError, load_task
from lafusion_st.model import FusedSentenceTransformer
from lafusion_st.probe import ProbeConfig, fit_and_test
from lafusion_st.spec import EmbedderSpec
from onnx_export import ORTFusedEncoder

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
    start = time.perf_counter()
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
            "--standard-errors",
            "1",
            "--max-layers",
            "2",
            "-o",
            str(out),
        ]
    )
    elapsed = time.perf_counter() - start
    printed, progress = capsys.readouterr()
    assert "last layer [4]" in printed and "multi-model" in printed
    report = json.loads((out / "report.json").read_text())
    # Where the time went, stage by stage, within the command's wall time (each stage rounded to 0.1 s); printed
    # as recorded. The layer search's CVs take seconds even here.
    stages = report["stage_seconds"]
    assert list(stages) == ["scan", "layer search", "model search", "test fits", "build and save"]
    assert sum(stages.values()) <= elapsed + 0.05 * len(stages) and stages["layer search"] > 0
    assert "wall time: " + ", ".join(f"{stage} {seconds:g} s" for stage, seconds in stages.items()) in printed
    # The long stretches after the layer searches name themselves (on full R52 they were 18 quiet minutes): one
    # fit per fusion and fold, then the head's fit.
    fusions = [cv for label, cv in report["cv"].items() if label.startswith(("multi-model", "greedy models"))]
    fits = sum(cv["folds"] for cv in fusions)
    assert f"tuned CV of the {len(fusions)} model fusion(s): 100%|██████████| {fits}/{fits} " in progress
    assert "fit the saved classifier's head (tuned probe): 100%|██████████| 1/1 " in progress
    assert set(report["models"]) == {tiny_models["llama"], tiny_models["bert"]}
    assert (out / "layer_curves.png").read_bytes()[:4] == b"\x89PNG"
    # The reported test score of the chosen embedder is what a probe on the saved model's vectors scores.
    chosen = EmbedderSpec.from_dict(report["settings"]["chosen"])
    # The report names the saved model relative to its own folder, so the run folder can move.
    model = FusedSentenceTransformer(str(out / report["settings"]["model_path"]))
    assert report["settings"]["model_path"] == "model" and model.spec == chosen
    prefix = "greedy models" if len(chosen.models) < 2 else "multi-model"
    (label,) = [label for label in report["test"] if label.startswith(prefix)]
    train_data, test_data = load_task(None, str(train), str(test))
    vectors = {split: model.encode(data.texts) for split, data in (("train", train_data), ("test", test_data))}
    expected = fit_and_test(vectors["train"], train_data.labels, vectors["test"], test_data.labels, ProbeConfig())
    accuracy = report["test"][label]["accuracy"]
    assert accuracy == pytest.approx(expected.accuracy, abs=1e-12)
    assert accuracy * len(test_data) == pytest.approx(round(accuracy * len(test_data)), abs=1e-9)  # k of 12 right
    assert f"| {label} |" in printed
    # every tested configuration records the C its tuned probe chose, and its interval is printed
    assert set(report["chosen_C"]) == set(report["test"]) and set(report["chosen_C"].values()) <= set(ProbeConfig().Cs)
    low, high = (report["test"][label]["accuracy_interval"][key] for key in ("low", "high"))
    assert low <= accuracy <= high and f"{accuracy:.4f} [{low:.3f}, {high:.3f}]" in printed
    assert set(report["kept_simpler"]) == {tiny_models["llama"], tiny_models["bert"], "models"}
    for model in (tiny_models["llama"], tiny_models["bert"]):
        search = report["selections"][model]
        assert f"{model}: pooling {search['pooling']}, layers {search['chosen']}" in printed
        assert search["pooling"] in ("mean", "last") and search["score"]["probe"] == "tuned"
    # model/ is the classifier whose test accuracy was printed: the tuned probe's settings (test_heads checks
    # that LogisticHead with them is fit_tuned_probe), its C, and right on exactly the texts the probe got right
    classifier = FusedClassifier.load(out / "model")
    probe = ProbeConfig()
    settings = (probe.Cs, probe.inner_folds, probe.max_iter, probe.tol, probe.seed, None)
    head = classifier.head_
    assert (tuple(head.Cs), head.folds, head.max_iter, head.tol, head.seed, head.C) == settings
    assert head.C_ == report["chosen_C"][label] == expected.C
    right = classifier.predict(test_data.texts) == np.asarray(test_data.labels)
    np.testing.assert_array_equal(right, expected.correct)
    assert main(["predict", str(out / "model"), "great fun movie", "terrible boring movie"]) == 0
    labels = [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert labels == classifier.predict(["great fun movie", "terrible boring movie"]).tolist()
    assert classifier.classes_.tolist() == ["neg", "pos"]


def test_user_errors_print_one_line_and_exit_2_debug_shows_the_traceback(tiny_models, task_files, capsys) -> None:
    train, _ = task_files
    select = [
        "select",
        "--train",
        str(train),
        "--test",
        str(train),
        "--label-col",
        "sentiment",
        "-m",
        tiny_models["llama"],
    ]
    assert main(select) == 2
    error = capsys.readouterr().err
    assert error == (
        f"lafusion select: error: {train}: line 1: no 'sentiment' field; fields present: ['text', 'label']\n"
    )
    with pytest.raises(DataFormatError, match="no 'sentiment' field") as raised:
        main(["--debug", *select])
    assert isinstance(raised.value, ValueError)  # existing ``except ValueError`` handlers still catch it
    for argv, message in (
        (["select", "--task", "sst2", "--train", str(train), "-m", tiny_models["llama"]], "either --task"),
        (["build", "-m", tiny_models["llama"], "-l", "9", "-o", "x"], "Layer 9 is out of range"),
        (["build", "-m", "no-such-model", "-l", "1", "-o", "x"], "Not a known model: 'no-such-model'"),
        (["embed", "--input", str(train) + ".missing", "-m", tiny_models["llama"], "-l", "1"], "No such file"),
        (["eval", str(train) + ".missing"], "No such folder"),
        (["embed", "text"], "give --saved FOLDER, or --model and --layers"),
        (["select", "--task", "sst2", "--jobs", "0", "-m", tiny_models["llama"]], "--jobs: n_jobs must be a process"),
    ):
        assert main(argv) == 2, argv
        printed = capsys.readouterr().err
        assert printed.startswith(f"lafusion {argv[0]}: error: ") and message in printed and printed.count("\n") == 1


def test_embed_and_predict_read_input_files_alike(tiny_models, tmp_path, capsys) -> None:
    """`predict --input` is `embed --input`: the same reader, so the same one-line errors (exit status 2)."""
    (tmp_path / "texts.csv").write_text("body,score\nfun,1\n")
    (tmp_path / "broken.jsonl").write_text('{"text": "fun"}\n{"text": \n')
    (tmp_path / "numbers.jsonl").write_text('{"text": 1}\n')
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    cases = {
        "missing.txt": "No such file: ",
        "texts.csv": "has no column 'text'; its columns are ['body', 'score']",
        "broken.jsonl": "cannot be read as JSONL",
        "numbers.jsonl": "holds int64, not text",
        "latin1.txt": "is not UTF-8 text",
    }
    for name, message in cases.items():
        errors = []
        for verb in (["embed", "-m", tiny_models["llama"], "-l", "1"], ["predict", str(tmp_path / "no-model")]):
            assert main([*verb, "--input", str(tmp_path / name)]) == 2, (verb, name)
            printed = capsys.readouterr().err
            assert printed.startswith(f"lafusion {verb[0]}: error: ") and printed.count("\n") == 1
            errors.append(printed.removeprefix(f"lafusion {verb[0]}: error: "))
        assert errors[0] == errors[1] and message in errors[0], name


def test_other_exceptions_keep_their_traceback(tiny_models, monkeypatch) -> None:
    monkeypatch.setattr(EmbedderSpec, "build", lambda self: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["build", "-m", tiny_models["llama"], "-l", "1", "-o", "x"])


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
    spec_name = FusedSentenceTransformer(str(saved)).spec.name  # eval names results from the recorded spec
    assert spec_name == EmbedderSpec(tiny_models["llama"], [1, 4]).name
    assert ORTFusedEncoder(exported).spec == FusedSentenceTransformer(str(saved)).spec  # the manifest records it
    for folder, name in ((saved, spec_name), (exported, "tiny/onnx")):
        arguments = ["eval", str(folder), "--task", "sst2", "--protocol", "paper", "--max-train", "40"]
        arguments += ["--max-test", "20", "--results-folder", str(results)]
        assert main(arguments + (["--name", name] if folder == exported else [])) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if "main score" in line)
        scores[name] = float(line.split("main score ")[1].split()[0])
        assert "(accuracy 95% CI [" in line  # the paper protocol's interval, from MTEB's per-text predictions
        (result_file,) = (results / "results" / name.replace("/", "__")).rglob("SST2*.json")
        assert scores[name] == round(TaskResult.from_disk(result_file).get_score(), 4)
    metas = {
        name: json.loads(next((results / "results" / name.replace("/", "__")).rglob("model_meta.json")).read_text())
        for name in scores
    }
    assert metas["tiny/onnx"]["framework"] == ["ONNX"] and "PyTorch" in metas[spec_name]["framework"]
    assert metas["tiny/onnx"]["n_parameters"] == metas[spec_name]["n_parameters"] > 0
    assert scores["tiny/onnx"] == scores[spec_name]  # vectors equal to 1e-5: every prediction is the same
    with pytest.raises(ValueError, match="has no fp16 graphs"):
        main(["--debug", "eval", str(exported), "--dtype", "fp16", "--task", "sst2", "--results-folder", str(results)])


def test_help_answers_without_importing_torch_or_mteb() -> None:
    """``lafusion --help`` must be instant: building the parser imports no heavy library."""
    code = (
        "import sys; from lafusion_st.cli import build_parser; build_parser(); "
        "print(sorted(name for name in ('torch', 'mteb', 'sentence_transformers', 'optimum') if name in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def test_select_with_seeds_reports_how_often_each_layer_is_chosen(tiny_models, task_files, tmp_path, capsys) -> None:
    train, _ = task_files
    out = tmp_path / "select"
    arguments = ["--train", str(train), "--test", str(train), "-m", tiny_models["llama"], "--pooling", "mean"]
    assert main(["select", *arguments, "--seeds", "2", "-o", str(out)]) in (None, 0)
    printed, progress = capsys.readouterr()
    assert "search under each fold seed: 100%" in progress and "| 2/2 " in progress
    stability = json.loads((out / "report.json").read_text())["stability"][tiny_models["llama"]]
    assert stability["seeds"] == [0, 1] and sum(stability["pooling_counts"].values()) == 2
    assert all(1 <= count <= 2 for count in stability["layer_counts"].values())
    counts = ", ".join(f"{layer}: {count}/2" for layer, count in stability["layer_counts"].items())
    assert f"layers chosen across fold seeds [0, 1]: {counts}" in printed
    # The probes' fits in 2 worker processes: the same report (each fit is single-threaded either way).
    parallel = tmp_path / "select-2-jobs"
    assert main(["select", *arguments, "--seeds", "2", "--jobs", "2", "-o", str(parallel)]) in (None, 0)
    one, two = (json.loads((folder / "report.json").read_text()) for folder in (out, parallel))
    assert two["probe"].pop("n_jobs") == 2 and one["probe"].pop("n_jobs") == 1
    assert two.pop("created") and one.pop("created")
    assert "fold seeds" in two.pop("stage_seconds") and "fold seeds" in one.pop("stage_seconds")  # wall times differ
    assert two == one


def test_embed_a_file_into_resumable_shards_and_npy(tiny_models, tmp_path, capsys) -> None:
    texts = [*POSITIVE, *NEGATIVE]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"key": f"k{i}", "body": text}) + "\n" for i, text in enumerate(texts)))
    model = ["-m", tiny_models["llama"], "-l", "2,4", "--batch-size", "4", "--shard-rows", "5"]
    common = ["embed", "--input", str(source), "--text-col", "body", *model]
    assert main([*common, "--id-col", "key", "--output", str(tmp_path / "shards")]) == 0
    assert main([*common, "--output", str(tmp_path / "all.npy")]) == 0
    vectors = np.load(tmp_path / "all.npy", allow_pickle=False)
    spec = EmbedderSpec(tiny_models["llama"], [2, 4])
    encoded = spec.build().encode(texts, batch_size=4)
    np.testing.assert_allclose(vectors, encoded, atol=1e-5, rtol=1e-4)
    shards = sorted((tmp_path / "shards").glob("part-*.parquet"))
    assert [path.name[5:-8] for path in shards] == [
        "000000000000-000000000005",
        "000000000005-000000000010",
        "000000000010-000000000012",
    ]
    (shards[1]).unlink()
    before = {path: path.stat().st_mtime_ns for path in (shards[0], shards[2])}
    assert main([*common, "--id-col", "key", "--output", str(tmp_path / "shards")]) == 0
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in before.items()) and shards[1].exists()
    assert main(["embed", "--engine", "ray", "good film", *model]) == 2
    assert "--engine ray embeds files" in capsys.readouterr().err


class Captured(Exception):
    """Raised by a library stand-in once it has recorded what the CLI passed."""


def test_ray_options_and_dtype_reach_the_library(tiny_models, task_files, tmp_path, monkeypatch) -> None:
    seen = {}

    def record(name):
        def stand_in(*args, **kwargs):
            seen[name] = kwargs
            raise Captured

        return stand_in

    monkeypatch.setattr("lafusion_st.embed_files.embed_file", record("embed"))
    monkeypatch.setattr("lafusion_st.scan.scan_task", record("scan"))
    ray = ["--engine", "ray", "--address", "head:6379", "--num-actors", "3", "--gpus-per-actor", "0.5"]
    embed = ["embed", "--input", str(task_files[0]), "--output", str(tmp_path / "x"), "-m", tiny_models["llama"]]
    with pytest.raises(Captured):
        main([*embed, "-l", "1", "--dtype", "bf16", *ray])
    options = seen["embed"]["ray_options"]
    assert (options.address, options.num_actors, options.cpus_per_actor, options.gpus_per_actor) == (
        "head:6379",
        3,
        1,
        0.5,
    )
    assert seen["embed"]["embedder"]["dtype"] == "bf16" and seen["embed"]["engine"] == "ray"
    scan = ["scan", "--train", str(task_files[0]), "--test", str(task_files[1]), "-m", "tiny", "--dtype", "bf16"]
    with pytest.raises(Captured):
        main([*scan, *ray])
    assert seen["scan"]["dtype"] == "bf16" and seen["scan"]["ray_options"].num_actors == 3
