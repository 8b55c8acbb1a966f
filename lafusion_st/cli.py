"""The ``lafusion`` command line: one verb a job, each a thin layer over the library.

Why argparse: it ships with Python, and every verb only parses arguments and calls one library function,
so the CLI never holds logic that the Python API lacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from lafusion_st.fusion import FUSION_MODES
from lafusion_st.pooling import POOLING_MODES

Command = Callable[[argparse.Namespace], int | None]


def parse_layers(text: str) -> list[int]:
    """``"12,16,20"`` or ``"-1"`` -> a list of ints (argparse type)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers, got {text!r}") from error


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", action="append", required=True, dest="models",
                        help="model short name (see `lafusion models`), local folder or cached hub id; repeat for multi-model fusion")
    parser.add_argument("--layers", "-l", action="append", type=parse_layers, required=True,
                        help="comma-separated hidden_states indices (0 = embeddings, -1 = last); once, or once per --model")
    parser.add_argument("--pooling", choices=POOLING_MODES, default="mean", help="token pooling per layer (default: mean)")
    parser.add_argument("--fusion", choices=FUSION_MODES, default="concat", help="how a model's layers are fused (default: concat)")
    parser.add_argument("--model-fusion", choices=FUSION_MODES, default="concat", help="how several models are fused (default: concat)")
    parser.add_argument("--max-seq-length", type=int, default=256, help="token limit per text (default: 256)")


def build_from_args(args: argparse.Namespace):
    from lafusion_st.builders import build_fused_model

    layers = args.layers[0] if len(args.layers) == 1 else args.layers
    return build_fused_model(args.models, layers=layers, pooling=args.pooling, fusion=args.fusion,
                             model_fusion=args.model_fusion, max_seq_length=args.max_seq_length)


def cmd_models(args: argparse.Namespace) -> None:
    """List the offline models known by short name and whether they are ready."""
    from lafusion_st.registry import default_cache_dir, is_materialised, list_offline_models

    for model in list_offline_models():
        if model.source == "folder":
            state = "in package"
        else:
            state = "materialised" if is_materialised(default_cache_dir() / model.name, model) else "materialised on first use"
        print(f"{model.name:<14} {model.architecture:<40} {state:<26} {model.pip_command}")


def cmd_build(args: argparse.Namespace) -> None:
    """Build a fused embedder and save it as a SentenceTransformer folder."""
    model = build_from_args(args)
    model.save(args.output)
    print(f"saved {args.output}: embedding dimension {model.get_embedding_dimension()}")


def cmd_embed(args: argparse.Namespace) -> None:
    """Embed texts (arguments, or one per line of --input) with a saved or freshly built embedder."""
    import numpy as np

    texts = list(args.texts)
    if args.input:
        with open(args.input, encoding="utf-8") as handle:
            texts += [line.rstrip("\n") for line in handle]
    if not texts:
        raise SystemExit("lafusion embed: give texts as arguments or --input FILE")
    if args.saved:
        from lafusion_st.model import FusedSentenceTransformer

        model = FusedSentenceTransformer(args.saved, local_files_only=True)
    else:
        model = build_from_args(args)
    embeddings = model.encode(texts, batch_size=args.batch_size, show_progress_bar=len(texts) > args.batch_size)
    if args.output:
        np.save(args.output, embeddings, allow_pickle=False)
        print(f"wrote {embeddings.shape} float32 embeddings to {args.output}")
    else:
        for text, vector in zip(texts, embeddings):
            preview = ", ".join(f"{value:+.3f}" for value in vector[:4])
            print(f"{vector.shape[0]}-d [{preview}, ...]  {text[:60]!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lafusion",
        description="Layer-aware embedding fusion: score every hidden layer of decoder LLMs on a classification "
        "task, fuse the best layers (and models), ship the result as a SentenceTransformer.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    models = verbs.add_parser("models", help="list the offline models known by short name")
    models.set_defaults(run=cmd_models)

    build = verbs.add_parser("build", help="build a fused embedder from models + layers and save it")
    add_model_arguments(build)
    build.add_argument("--output", "-o", required=True, help="folder to save the SentenceTransformer to")
    build.set_defaults(run=cmd_build)

    embed = verbs.add_parser("embed", help="embed texts with a saved (--saved) or freshly built (--model ...) embedder")
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--input", help="file with one text per line")
    embed.add_argument("--saved", help="saved embedder folder (instead of --model/--layers)")
    embed.add_argument("--output", help=".npy file to write the embeddings to")
    embed.add_argument("--batch-size", type=int, default=32)
    embed_model = embed.add_argument_group("or build one")
    embed_model.add_argument("--model", "-m", action="append", dest="models")
    embed_model.add_argument("--layers", "-l", action="append", type=parse_layers)
    embed_model.add_argument("--pooling", choices=POOLING_MODES, default="mean")
    embed_model.add_argument("--fusion", choices=FUSION_MODES, default="concat")
    embed_model.add_argument("--model-fusion", choices=FUSION_MODES, default="concat")
    embed_model.add_argument("--max-seq-length", type=int, default=256)
    embed.set_defaults(run=cmd_embed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verb == "embed" and not args.saved and not (args.models and args.layers):
        raise SystemExit("lafusion embed: give --saved FOLDER, or --model and --layers")
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
