"""``lafusion export``: the command-line face of :func:`onnx_export.export`.

Kept here, not in ``lafusion_st.cli``, so the export options live next to the function they mirror; the
main CLI only wires them in::

    export_parser = subparsers.add_parser("export", help=EXPORT_HELP)
    add_export_arguments(export_parser)
    export_parser.set_defaults(run=export_command)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_export.classifier import HEAD_DIR, HEAD_GRAPH, read_head_manifest
from onnx_export.manifest import DTYPES, read_manifest
from onnx_export.tolerances import DEFAULT_ATOL, DEFAULT_RTOL

EXPORT_HELP = "Export a saved fused embedder or classifier to ONNX (Optimum), checked against PyTorch."


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lafusion export`` arguments to ``parser``."""
    parser.add_argument(
        "model", help="Folder of a saved lafusion embedder (SentenceTransformer format) or FusedClassifier."
    )
    parser.add_argument("out_dir", help="New or empty folder for the ONNX export.")
    parser.add_argument(
        "--dtype", dest="dtypes", action="append", choices=DTYPES, default=None,
        help="Graph variant to write besides fp32 (repeatable): fp16, int8.",
    )  # fmt: skip
    parser.add_argument("--optimize", action="store_true", help="Apply ONNX Runtime transformer fusions to the graphs.")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: Optimum's for text encoders).")
    parser.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL, help="fp32 absolute tolerance (default %(default)s)."
    )
    parser.add_argument(
        "--rtol", type=float, default=DEFAULT_RTOL, help="fp32 relative tolerance (default %(default)s)."
    )
    parser.add_argument(
        "--no-validate", dest="validate", action="store_false", help="Skip the ONNX Runtime vs PyTorch check."
    )
    parser.add_argument(
        "--allow-unknown-architecture", action="store_true",
        help="Trace a backbone Optimum has no ONNX config for; accepted only if parity holds.",
    )  # fmt: skip


def export_command(args: argparse.Namespace) -> int:
    """Run ``lafusion export`` from parsed arguments; print where the export went and its parity; return 0."""
    from onnx_export.exporter import export  # torch and Optimum: imported only when exporting

    out_dir = export(
        args.model,
        args.out_dir,
        dtypes=["fp32", *(args.dtypes or [])],
        optimize=args.optimize,
        opset=args.opset,
        validate=args.validate,
        atol=args.atol,
        rtol=args.rtol,
        allow_unknown_architecture=args.allow_unknown_architecture,
    )
    manifest = read_manifest(out_dir)
    print(f"Exported to {out_dir} (opset {manifest['opset']}, dimension {manifest['embedding_dimension']}).")
    for dtype, figures in manifest["variants"].items():
        if "max_abs_diff" in figures:
            print(
                f"  {dtype}: max abs diff vs PyTorch {figures['max_abs_diff']:.3g}, "
                f"min cosine {figures['min_cosine']:.6f}"
            )
    if Path(out_dir, HEAD_DIR).is_dir():
        parity = read_head_manifest(out_dir).get("parity")
        figures = (
            f": max probability diff vs PyTorch {parity['max_abs_diff']:.3g}, label agreement "
            f"{parity['label_agreement']:.0%}"
            if parity
            else ""
        )
        print(f"  classifier head {HEAD_DIR}/{HEAD_GRAPH}{figures}")
    return 0
