"""The ``lafusion`` command line: one verb a job, each a thin layer over the library.

Why argparse: it ships with Python, and every verb only parses arguments and calls one library function,
so the CLI never holds logic that the Python API lacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lafusion_st.data import BUNDLED_DATASETS
from lafusion_st.errors import InvalidArgumentError, LafusionError, MissingFileError
from lafusion_st.modes import BATCH_SIZE, DEFAULT_SHARD_ROWS, POOLING_MODES, PROTOCOLS
from lafusion_st.predict_cli import PREDICT_HELP, add_predict_arguments, predict_command
from lafusion_st.ray_options import add_ray_arguments
from lafusion_st.spec import (
    EmbedderSpec,
    RunSettings,
    ScanSettings,
    add_coarse_to_fine_arguments,
    add_dtype_argument,
    add_max_seq_length_argument,
)
from onnx_export.cli import EXPORT_HELP, add_export_arguments, export_command
from onnx_export.manifest import DTYPES
from onnx_export.providers import PROVIDERS

Command = Callable[[argparse.Namespace], int | None]
DEFAULT_MODELS = ["smollm2-135m"]
DEFAULT_RUN_TASK = "sst2"


def cmd_models(args: argparse.Namespace) -> None:
    """List the offline models known by short name and whether they are ready."""
    from lafusion_st.registry import default_cache_dir, is_materialised, list_offline_models

    for model in list_offline_models():
        if model.source == "folder":
            state = "in package"
        else:
            state = (
                "materialised"
                if is_materialised(default_cache_dir() / model.name, model)
                else "materialised on first use"
            )
        print(f"{model.name:<14} {model.architecture:<40} {state:<26} {model.pip_command}")


def cmd_build(args: argparse.Namespace) -> None:
    """Build a fused embedder and save it as a SentenceTransformer folder."""
    model = EmbedderSpec.from_args(args).build()
    model.save(args.output)
    print(f"saved {args.output}: embedding dimension {model.get_embedding_dimension()}")


def cmd_embed(args: argparse.Namespace) -> None:
    """Embed texts (arguments, or --input FILE) with a saved or freshly built embedder; --input with --output
    goes through the resumable, sharded file path (here or on Ray)."""
    import functools

    import numpy as np

    if args.saved:
        from lafusion_st.model import FusedSentenceTransformer

        load_model = functools.partial(FusedSentenceTransformer, args.saved, local_files_only=True)
        embedder = {"saved": str(Path(args.saved).resolve())}
    elif args.models and args.layers:
        spec = EmbedderSpec.from_args(args)
        load_model, embedder = spec.build, spec.to_dict()
    else:
        raise InvalidArgumentError("give --saved FOLDER, or --model and --layers")
    if args.input and args.output:
        if args.texts:
            raise InvalidArgumentError("give texts as arguments or --input FILE, not both")
        from lafusion_st.embed_files import embed_file
        from lafusion_st.ray_options import RayOptions

        output = embed_file(
            load_model,
            args.input,
            args.output,
            embedder=embedder,
            text_col=args.text_col,
            id_col=args.id_col,
            batch_size=args.batch_size,
            shard_rows=args.shard_rows,
            engine=args.engine,
            ray_options=RayOptions.from_args(args) if args.engine == "ray" else None,
            show_progress_bar=True,
        )
        print(f"wrote the embeddings of {args.input} to {output}")
        return
    if args.engine != "local":
        raise InvalidArgumentError("--engine ray embeds files: give --input FILE and --output")
    texts = list(args.texts)
    if args.input:
        from lafusion_st.text_files import read_text_table

        texts += read_text_table(args.input, text_col=args.text_col).column("text").to_pylist()
    if not texts:
        raise InvalidArgumentError("give texts as arguments or --input FILE")
    model = load_model()
    embeddings = model.encode(texts, batch_size=args.batch_size, show_progress_bar=len(texts) > args.batch_size)
    if args.output:
        np.save(args.output, embeddings, allow_pickle=False)
        print(f"wrote {embeddings.shape} float32 embeddings to {args.output}")
    else:
        for text, vector in zip(texts, embeddings, strict=True):
            preview = ", ".join(f"{value:+.3f}" for value in vector[:4])
            print(f"{vector.shape[0]}-d [{preview}, ...]  {text[:60]!r}")


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("task data: a bundled dataset, or your own train/test files (CSV, TSV, JSONL)")
    data.add_argument("--task", choices=BUNDLED_DATASETS, help="bundled dataset")
    data.add_argument("--train", help="your training file")
    data.add_argument("--test", help="your test file")
    data.add_argument("--text-col", default="text", help="text column/field of your files (default: text)")
    data.add_argument("--label-col", default="label", help="label column/field of your files (default: label)")
    data.add_argument("--max-train", type=int, help="stratified subsample of the training split (default: all)")
    data.add_argument("--max-test", type=int, help="stratified subsample of the test split (default: all)")
    data.add_argument("--seed", type=int, default=0, help="seed of the subsamples and CV folds (default: 0)")


def load_task_from_args(args: argparse.Namespace):
    from lafusion_st.data import load_task

    if bool(args.task) == bool(args.train or args.test):
        raise InvalidArgumentError("give either --task NAME or --train FILE --test FILE")
    train, test = load_task(args.task, args.train, args.test, text_col=args.text_col, label_col=args.label_col)
    if args.max_train:
        train = train.subsample(args.max_train, seed=args.seed)
    if args.max_test:
        test = test.subsample(args.max_test, seed=args.seed)
    return args.task or args.train, train, test


def add_selection_arguments(parser: argparse.ArgumentParser, default_models: list[str] | None = None) -> None:
    parser.add_argument(
        "--model",
        "-m",
        action="append",
        dest="models",
        help="model to scan (repeat for several); default: " + ", ".join(default_models or []),
    )
    RunSettings.add_arguments(parser)
    parser.add_argument(
        "--jobs",
        type=int,
        help="worker processes for the probes' fits (default: ProbeConfig's, 1); each fit is single-threaded, so "
        "the results do not depend on it: use the idle cores",
    )
    parser.add_argument(
        "--output", "-o", default="lafusion-run", help="folder for report.json, layer_curves.png, model/"
    )


def cmd_scan(args: argparse.Namespace) -> None:
    """Scan every layer of each model over a task's texts into the cache (no selection); coarse-to-fine, only
    the layers up to the deepest that can win on a sample."""
    from lafusion_st.scan import scan_task

    _, train, test = load_task_from_args(args)
    settings = ScanSettings(
        **{
            key: value
            for key, value in (
                ("poolings", args.poolings),  # argparse's "append" would add to a list default
                ("max_seq_length", args.max_seq_length),
                ("batch_size", args.batch_size),
                ("dtype", args.dtype),
                ("coarse_to_fine", args.coarse_to_fine),
                ("coarse_sample_size", args.coarse_sample_size),
            )
            if value is not None
        }
    )
    engine = {}
    if args.engine == "ray":
        from lafusion_st.ray_options import RayOptions

        engine = {"engine": "ray", "ray_options": RayOptions.from_args(args)}
    scanner_settings = {**settings.scanner_arguments, **engine}
    if settings.coarse_to_fine:
        from lafusion_st.coarse_to_fine import describe, scan_task_coarse_to_fine
        from lafusion_st.probe import ProbeConfig

        scans, coarse = scan_task_coarse_to_fine(
            args.models,
            train,
            test.texts,
            settings.poolings,
            sample_size=settings.coarse_sample_size,
            config=ProbeConfig(seed=args.seed),
            **scanner_settings,
        )
        for stage in coarse.values():
            print(describe(stage))
    else:
        scans = scan_task(args.models, train.texts, test.texts, poolings=settings.poolings, **scanner_settings)
    for split, by_model in (("train", scans.train), ("test", scans.test)):
        for model, by_pooling in by_model.items():
            for pooling, vectors in by_pooling.items():
                print(f"{split:<6}{model:<16}{pooling:<6}{str(vectors.vectors.shape):<22}{vectors.cache_file}")


def _run(args: argparse.Namespace, with_test: bool) -> None:
    from lafusion_st.pipeline import format_table, run_task
    from lafusion_st.probe import ProbeConfig

    args.models = args.models or list(DEFAULT_MODELS)
    task, train, test = load_task_from_args(args)
    try:
        probe = ProbeConfig(seed=args.seed, **({} if args.jobs is None else {"n_jobs": args.jobs}))
    except ValueError as error:  # ProbeConfig's own checks, said as a user error
        raise InvalidArgumentError(f"--jobs: {error}") from error
    settings = RunSettings.from_args(args, probe=probe)
    print(
        f"task {task}: {len(train)} train / {len(test)} test texts, {len(train.classes)} classes; models {args.models}"
    )
    result = run_task(str(task), train, test if with_test else None, args.models, args.output, settings)
    print(format_table(result))
    chosen_layers = {model: result.layers(model) for model in args.models}
    print(f"\nchosen layers {chosen_layers}; models {list(result.chosen.models)}")
    print(f"embedder {result.chosen.name}")
    print(
        f"report {result.report_path}\nplot   {result.plot_path}\nmodel "
        f" {result.model_path}  (classifier: SentenceTransformer embedder + head/; `lafusion predict` takes it)"
    )


def cmd_select(args: argparse.Namespace) -> None:
    """Scan, score every layer by CV on the training split, choose layers (and models), build the embedder."""
    _run(args, with_test=False)


def cmd_run(args: argparse.Namespace) -> None:
    """select, then evaluate last layer / best layer / fused / multi-model on the test split."""
    if not (args.task or args.train or args.test):  # the embedded default of `make demo`
        args.task, args.max_train, args.max_test = DEFAULT_RUN_TASK, args.max_train or 1000, args.max_test or 500
    _run(args, with_test=True)


def cmd_eval(args: argparse.Namespace) -> None:
    """Evaluate a saved embedder (SentenceTransformer folder, or an ONNX export) on MTEB tasks."""
    from lafusion_st.evaluation import evaluate_encoder, per_text_correctness
    from lafusion_st.mteb_tasks import get_tasks
    from lafusion_st.stats import accuracy_interval

    if not Path(args.model).is_dir():
        raise MissingFileError(f"No such folder: {args.model}")
    if (Path(args.model) / "modules.json").is_file():
        from lafusion_st.model import FusedSentenceTransformer

        encoder = FusedSentenceTransformer(args.model, local_files_only=True)
    else:
        from onnx_export import ORTFusedEncoder

        encoder = ORTFusedEncoder(args.model, provider=args.provider, dtype=args.dtype)
    protocols = args.protocols or ["standard"]  # argparse's "append" would add to a list default
    tasks = [
        task
        for protocol in protocols
        for task in get_tasks(args.tasks, protocol=protocol, max_train=args.max_train, max_test=args.max_test)
    ]
    name = args.name or (encoder.spec.name if encoder.spec is not None else f"lafusion/{Path(args.model).name}")
    predictions = Path(args.results_folder) / "predictions" / name.replace("/", "__")
    result = evaluate_encoder(
        encoder,
        tasks,
        args.results_folder,
        name=name,
        batch_size=args.batch_size,
        show_progress_bar=True,
        prediction_folder=predictions,
    )
    by_name = {task.metadata.name: task for task in tasks}
    for task_result in result.task_results:
        task = by_name[task_result.task_name]
        line = f"{task_result.task_name:<28} main score {task_result.get_score():.4f}"
        if task.n_experiments == 1 and (predictions / task.prediction_file_name).is_file():
            interval = accuracy_interval(per_text_correctness(task, predictions))
            line += f" (accuracy 95% CI [{interval.low:.4f}, {interval.high:.4f}] over test texts)"
        elif task.n_experiments > 1:
            line += f" (mean of {task.n_experiments} experiments; sd in the result JSON)"
        print(line)
    print(f"MTEB result JSON under {args.results_folder}; per-text predictions under {predictions}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lafusion",
        description="Layer-aware embedding fusion: score every hidden layer of decoder LLMs on a classification "
        "task, fuse the best layers (and models), ship the result as a SentenceTransformer.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error too")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    models = verbs.add_parser("models", help="list the offline models known by short name")
    models.set_defaults(run=cmd_models)

    build = verbs.add_parser("build", help="build a fused embedder from models + layers and save it")
    EmbedderSpec.add_arguments(build)
    build.add_argument("--output", "-o", required=True, help="folder to save the SentenceTransformer to")
    build.set_defaults(run=cmd_build)

    embed = verbs.add_parser("embed", help="embed texts with a saved (--saved) or freshly built (--model ...) embedder")
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument(
        "--input",
        help="file of texts: .jsonl/.ndjson, .csv, .tsv, .parquet (see --text-col), or plain text, one a line",
    )
    embed.add_argument("--saved", help="saved embedder folder (instead of --model/--layers)")
    embed.add_argument(
        "--output",
        help="with --input: a .npy file (one array in input order) or a folder of Parquet shards (row, id, "
        "embedding); a rerun skips finished shards",
    )
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument("--text-col", default="text", help="text column of --input (default: text)")
    embed.add_argument("--id-col", help="column of --input copied to the output's id (default: the row number)")
    embed.add_argument(
        "--shard-rows", type=int, default=DEFAULT_SHARD_ROWS, help=f"texts per shard (default: {DEFAULT_SHARD_ROWS})"
    )
    add_ray_arguments(embed)
    EmbedderSpec.add_arguments(embed, required=False)
    embed.set_defaults(run=cmd_embed)
    scan = verbs.add_parser("scan", help="cache every layer's pooled vectors of each model over a task")
    add_task_arguments(scan)
    scan.add_argument("--model", "-m", action="append", dest="models", required=True)
    scan.add_argument(
        "--pooling",
        action="append",
        dest="poolings",
        choices=POOLING_MODES,
        help=f"pooling mode(s), all from one forward pass (default: {', '.join(ScanSettings.poolings)})",
    )
    add_max_seq_length_argument(scan)
    scan.add_argument("--batch-size", type=int, help=f"default: {ScanSettings.batch_size}")
    add_dtype_argument(scan)
    add_coarse_to_fine_arguments(scan)
    add_ray_arguments(scan)
    scan.set_defaults(run=cmd_scan)

    select = verbs.add_parser(
        "select", help="choose layers (and models) by CV on the training split, build the embedder"
    )
    add_task_arguments(select)
    add_selection_arguments(select, DEFAULT_MODELS)
    select.set_defaults(run=cmd_select)

    run = verbs.add_parser(
        "run",
        help="scan -> select -> build -> test: the result table and the layer-curve plot",
        description="Default: SmolLM2-135M (4-bit-derived) on a 1000/500 stratified subsample of SST-2.",
    )
    add_task_arguments(run)
    add_selection_arguments(run, DEFAULT_MODELS)
    run.set_defaults(run=cmd_run)

    evaluate = verbs.add_parser(
        "eval",
        help="evaluate a saved embedder on the MTEB tasks (standard and/or paper protocol)",
        description="The results tables of eval/RESULTS.md: `python eval/make_tables.py`.",
    )
    evaluate.add_argument("model", help="saved SentenceTransformer folder or ONNX export folder")
    evaluate.add_argument(
        "--task",
        action="append",
        dest="tasks",
        metavar="TASK",
        help=f"{', '.join(BUNDLED_DATASETS)}, or an MTEB classification task whose data is in the local HF cache "
        "(repeatable; default: the four bundled ones)",
    )
    evaluate.add_argument(
        "--protocol",
        action="append",
        dest="protocols",
        choices=PROTOCOLS,
        help="standard (MTEB, leaderboard-comparable; the default) and/or paper (probe on the full training split)",
    )
    evaluate.add_argument("--max-train", type=int, help="stratified training subsample for the paper protocol")
    evaluate.add_argument("--max-test", type=int, help="stratified test subsample")
    evaluate.add_argument(
        "--results-folder", default="lafusion-results", help="MTEB result cache (default: lafusion-results)"
    )
    evaluate.add_argument(
        "--name",
        help="configuration name for ModelMeta (default: the name of the spec recorded in the folder; "
        "lafusion/<folder name> for a folder saved without one)",
    )
    evaluate.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"default: {BATCH_SIZE}")
    onnx = evaluate.add_argument_group("ONNX exports only")
    onnx.add_argument(
        "--provider",
        choices=PROVIDERS,
        default="auto",
        help="ONNX Runtime execution provider (cuda never falls back to CPU; default: auto)",
    )
    onnx.add_argument("--dtype", choices=DTYPES, default="fp32", help="exported graph variant (default: fp32)")
    evaluate.set_defaults(run=cmd_eval)

    predict = verbs.add_parser("predict", help=PREDICT_HELP)
    add_predict_arguments(predict)
    predict.set_defaults(run=predict_command)

    export = verbs.add_parser("export", help=EXPORT_HELP)
    add_export_arguments(export)
    export.set_defaults(run=export_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args) or 0
    except LafusionError as error:
        if args.debug:
            raise
        print(f"lafusion {args.verb}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
