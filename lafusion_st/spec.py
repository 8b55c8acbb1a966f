"""What defines an embedder (``EmbedderSpec``) and what defines a search (``ScanSettings``, ``RunSettings``).

Why one home: the CLI, the builder, reports, the eval scripts and the ONNX manifest all describe the same
few settings. Each is declared here once, with its default, and passed around as one frozen object, as
setfit passes its ``TrainingArguments``. Standard library only (no torch, no transformers), so the command
line can build its parser and a deployment can read a spec without the training stack.

A saved embedder folder records its spec in ``lafusion_spec.json`` (:func:`write_spec_file`), and
``EmbedderSpec.name`` is the configuration's MTEB name: it changes whenever a setting that changes the
vectors changes, while settings at their default are left out, so that adding a field with a default keeps
every existing name.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lafusion_st.errors import InvalidArgumentError
from lafusion_st.files import read_versioned_json
from lafusion_st.modes import (
    BATCH_SIZE,
    DTYPES,
    FUSION_MODES,
    POOLING_MODES,
    STANDARD_ERRORS,
    Dtype,
    FusionMode,
    PoolingMode,
)

if TYPE_CHECKING:
    from lafusion_st.model import FusedSentenceTransformer
    from lafusion_st.probe import ProbeConfig

SPEC_FILE = "lafusion_spec.json"
SPEC_FORMAT = "lafusion-spec"
SPEC_FORMAT_VERSION = 1
NAMESPACE = "lafusion"
"""The organisation part of every configuration's MTEB name."""


@dataclass(frozen=True)
class EmbedderSpec:
    """One fused embedder: which models, which layers, how they are pooled and fused, at what length.

    Single settings are broadcast to every model: ``EmbedderSpec("smollm2-135m", [12, 16])`` and
    ``EmbedderSpec(["smollm2-135m", "gemma3-270m"], [[15], [9]], pooling="last")`` are both valid; the
    stored fields are always one tuple entry per model.

    Attributes:
        models: Model short names, local folders or cached hub ids.
        layers: ``hidden_states`` indices per model (0 = embeddings, negative from the end until
            :meth:`resolved`).
        pooling: Token pooling per model (``mean``, ``last``, ``max``).
        fusion: How each model's layers are fused.
        model_fusion: How the models' vectors are fused (several models only).
        max_seq_length: Token limit per text (longer texts are truncated, with one warning).
        dtype: Compute precision of the forward pass (``fp32``, ``bf16``, ``fp16``; see
            :mod:`lafusion_st.precision`); weights stay float32. An embedder chosen from a scan uses the
            scan's dtype, so it reproduces the scanned vectors.
    """

    models: tuple[str, ...]
    layers: tuple[tuple[int, ...], ...]
    pooling: tuple[PoolingMode, ...] = "mean"
    fusion: FusionMode = "concat"
    model_fusion: FusionMode = "concat"
    max_seq_length: int = 256
    dtype: Dtype = "fp32"

    def __post_init__(self) -> None:
        models = (self.models,) if isinstance(self.models, str) else tuple(self.models)
        if not models or not all(isinstance(model, str) and model for model in models):
            raise InvalidArgumentError(f"Give at least one model name, got {self.models!r}.")
        if len(set(models)) != len(models):
            raise InvalidArgumentError(f"Models are named more than once: {list(models)}.")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "layers", _per_model(self.layers, models, "layers", _is_layer_list))
        for model_layers in self.layers:
            if not model_layers:
                raise InvalidArgumentError(f"Select at least one layer per model, got {self.layers}.")
        object.__setattr__(self, "layers", tuple(tuple(layers) for layers in self.layers))
        object.__setattr__(self, "pooling", _per_model(self.pooling, models, "pooling", lambda v: isinstance(v, str)))
        for pooling in self.pooling:
            _check_choice("pooling", pooling, POOLING_MODES)
        _check_choice("fusion", self.fusion, FUSION_MODES)
        _check_choice("model_fusion", self.model_fusion, FUSION_MODES)
        if isinstance(self.max_seq_length, bool) or not isinstance(self.max_seq_length, int) or self.max_seq_length < 1:
            raise InvalidArgumentError(f"max_seq_length must be a positive integer, got {self.max_seq_length!r}.")
        _check_choice("dtype", self.dtype, DTYPES)

    @property
    def name(self) -> str:
        """The MTEB model name, e.g. ``lafusion/smollm2-135m__L12-16-20__mean__concat``.

        Layers are named in ascending order (the order fusion uses), models are joined with ``+``, and
        several models get the model fusion as a last part; a model's pooling is named per model only when
        the models differ in it. A short name is kept as given, a hub id by its last part, a local folder by
        its name plus a hash of its resolved path (:func:`model_label`: ``/a/model`` and ``/b/model`` get two
        names). Settings added later appear only when they differ from their default (``__len128`` for
        ``max_seq_length=128``), so old names stay valid.

        Raises:
            InvalidArgumentError: If a layer index is still negative (``-1`` and ``30`` of a 30-layer model
                must not give two names): use :meth:`resolved` first.
        """
        if any(layer < 0 for layers in self.layers for layer in layers):
            raise InvalidArgumentError(
                f"Layers {[list(layers) for layers in self.layers]} count from the end; name the resolved "
                "spec (spec.resolved()) so that one configuration has one name."
            )
        uniform = len(set(self.pooling)) == 1
        members = "+".join(
            f"{model_label(model)}__L{'-'.join(str(layer) for layer in sorted(layers))}"
            + ("" if uniform else f"__{pooling}")
            for model, layers, pooling in zip(self.models, self.layers, self.pooling, strict=True)
        )
        parts = [members, self.pooling[0] if uniform else "mixed", self.fusion]
        if len(self.models) > 1:
            parts.append(self.model_fusion)
        parts += [f"{_NAME_TAGS[key]}{value}" for key, value in self._changed_optional_settings().items()]
        return f"{NAMESPACE}/{'__'.join(parts)}"

    def resolved(self, cache_dir: str | Path | None = None) -> EmbedderSpec:
        """The same spec with every layer index non-negative and sorted (reads each model's config)."""
        from lafusion_st.builders import model_depth
        from lafusion_st.layers import resolve_layers

        layers = tuple(
            tuple(resolve_layers(model_layers, model_depth(model, cache_dir)))
            for model, model_layers in zip(self.models, self.layers, strict=True)
        )
        return dataclasses.replace(self, layers=layers)

    def build(self, device: str | None = None, cache_dir: str | Path | None = None) -> FusedSentenceTransformer:
        """The fused ``SentenceTransformer`` this spec describes (see :func:`lafusion_st.builders.build`)."""
        from lafusion_st.builders import build

        return build(self, device=device, cache_dir=cache_dir)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; a single pooling is written once."""
        return {
            "models": list(self.models),
            "layers": [list(layers) for layers in self.layers],
            "pooling": self.pooling[0] if len(set(self.pooling)) == 1 else list(self.pooling),
            "fusion": self.fusion,
            "model_fusion": self.model_fusion,
            "max_seq_length": self.max_seq_length,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderSpec:
        """Inverse of :meth:`to_dict`; missing optional settings take their defaults, unknown keys fail."""
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"An embedder spec is a JSON object, got {type(data).__name__}.")
        known = {spec_field.name for spec_field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgumentError(f"Unknown embedder spec keys {unknown}; known: {sorted(known)}.")
        missing = [key for key in ("models", "layers") if key not in data]
        if missing:
            raise InvalidArgumentError(f"The embedder spec lacks {missing}.")
        return cls(**data)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
        """The CLI argument group of a spec (``--model``, ``--layers``, ``--pooling``, ...)."""
        group = parser.add_argument_group("embedder")
        group.add_argument(
            "--model", "-m", action="append", dest="models", required=required,
            help="model short name (see `lafusion models`), local folder or cached hub id; repeat for "
            "multi-model fusion",
        )  # fmt: skip
        group.add_argument(
            "--layers", "-l", action="append", type=parse_layers, required=required,
            help="comma-separated hidden_states indices (0 = embeddings, -1 = last); once, or once per --model",
        )  # fmt: skip
        group.add_argument(
            "--pooling", action="append", choices=POOLING_MODES,
            help=f"token pooling per layer; once, or once per --model (default: {EmbedderSpec.pooling})",
        )  # fmt: skip
        group.add_argument(
            "--fusion", choices=FUSION_MODES, help=f"how a model's layers are fused (default: {EmbedderSpec.fusion})"
        )
        group.add_argument(
            "--model-fusion",
            choices=FUSION_MODES,
            help=f"how several models are fused (default: {EmbedderSpec.model_fusion})",
        )
        add_max_seq_length_argument(group)
        add_dtype_argument(group)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EmbedderSpec:
        """The spec of parsed :meth:`add_arguments` arguments; options not given keep the defaults."""
        settings = {
            "pooling": args.pooling[0] if args.pooling and len(args.pooling) == 1 else args.pooling,
            "fusion": args.fusion,
            "model_fusion": args.model_fusion,
            "max_seq_length": args.max_seq_length,
            "dtype": args.dtype,
        }
        layers = args.layers[0] if len(args.layers) == 1 else args.layers
        return cls(args.models, layers, **{key: value for key, value in settings.items() if value is not None})

    def _changed_optional_settings(self) -> dict[str, Any]:
        """Settings named only when they differ from their default (see :attr:`name`)."""
        defaults = {spec_field.name: spec_field.default for spec_field in dataclasses.fields(self)}
        return {key: getattr(self, key) for key in _NAME_TAGS if getattr(self, key) != defaults[key]}


_NAME_TAGS = {"max_seq_length": "len", "dtype": ""}
"""Settings added to the name only when not at their default, with the tag that precedes the value."""


@dataclass(frozen=True)
class ScanSettings:
    """What ``lafusion scan`` does: poolings computed from one forward pass, token limit, batch size, precision,
    and whether to scan coarse-to-fine.

    Attributes:
        coarse_to_fine: Score every layer on a stratified sample of ``coarse_sample_size`` training texts first,
            then scan all texts only up to the deepest layer that can still win under the noise rule (see
            :mod:`lafusion_st.coarse_to_fine`).
        coarse_sample_size: Texts in that sample (all of them, if the training split has fewer).
    """

    poolings: tuple[PoolingMode, ...] = (EmbedderSpec.pooling,)
    max_seq_length: int = EmbedderSpec.max_seq_length
    batch_size: int = BATCH_SIZE
    dtype: Dtype = EmbedderSpec.dtype
    coarse_to_fine: bool = False
    coarse_sample_size: int = 2000

    def __post_init__(self) -> None:
        object.__setattr__(self, "poolings", tuple(self.poolings))
        for pooling in self.poolings:
            _check_choice("pooling", pooling, POOLING_MODES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_coarse_to_fine(self.coarse_to_fine, self.coarse_sample_size)

    @property
    def scanner_arguments(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lafusion_st.scan.make_scanner` these settings fix: one place, so every
        caller scans (and finds in the scan cache) with the same ones."""
        return {"max_seq_length": self.max_seq_length, "batch_size": self.batch_size, "dtype": self.dtype}


def _default_probe() -> ProbeConfig:
    from lafusion_st.probe import ProbeConfig  # scikit-learn: imported only when a search runs

    return ProbeConfig()


@dataclass
class RunSettings:
    """What ``lafusion select`` / ``run`` search over and how; the defaults are those of the CLI.

    Attributes:
        poolings: Candidate poolings, all scanned in one pass; the first is the default that another must
            beat under the noise rule.
        max_seq_length: Token limit, of the scan and of the built embedder.
        batch_size: Scan batch size.
        standard_errors: The noise rule's margin: a more complex choice must gain more than this many
            standard errors of its paired per-fold CV gain (see :mod:`lafusion_st.selection`).
        max_layers: Most layers fused per model.
        seeds: How many CV fold seeds (from ``probe.seed`` on) the search is repeated with to report how
            stable its choice is (1: no repetition).
        probe: The probes' settings (CV folds, seed, C grids, ...).
        dtype: Precision of the scan and of the built embedder (the same, so the embedder reproduces the scan).
        coarse_to_fine: Scan coarse-to-fine (see :class:`ScanSettings`): layers that lose to the sample's best
            under the noise rule are never scanned on all texts, if they lie past every layer that can win.
        coarse_sample_size: Texts in the coarse sample.
    """

    poolings: tuple[PoolingMode, ...] = (EmbedderSpec.pooling, "last")
    max_seq_length: int = EmbedderSpec.max_seq_length
    batch_size: int = ScanSettings.batch_size
    standard_errors: float = STANDARD_ERRORS
    max_layers: int = 4
    seeds: int = 1
    probe: ProbeConfig = field(default_factory=_default_probe)
    dtype: Dtype = EmbedderSpec.dtype
    coarse_to_fine: bool = ScanSettings.coarse_to_fine
    coarse_sample_size: int = ScanSettings.coarse_sample_size

    def __post_init__(self) -> None:
        self.poolings = tuple(dict.fromkeys(self.poolings))
        if not self.poolings:
            raise InvalidArgumentError("Give at least one candidate pooling.")
        for pooling in self.poolings:
            _check_choice("pooling", pooling, POOLING_MODES)
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise InvalidArgumentError(f"seeds must be a positive integer, got {self.seeds!r}.")
        if self.standard_errors < 0:
            raise InvalidArgumentError(f"standard_errors must be >= 0, got {self.standard_errors!r}.")
        _check_coarse_to_fine(self.coarse_to_fine, self.coarse_sample_size)

    @property
    def scan(self) -> ScanSettings:
        return ScanSettings(
            self.poolings,
            self.max_seq_length,
            self.batch_size,
            self.dtype,
            coarse_to_fine=self.coarse_to_fine,
            coarse_sample_size=self.coarse_sample_size,
        )

    def spec(
        self, models: Sequence[str], layers: Sequence[Sequence[int]], poolings: Sequence[PoolingMode] | None = None
    ) -> EmbedderSpec:
        """The embedder of chosen ``layers`` of ``models`` with ``poolings`` (one per model; default: the
        first candidate pooling) under these settings."""
        return EmbedderSpec(
            tuple(models),
            tuple(tuple(ls) for ls in layers),
            tuple(poolings) if poolings is not None else self.poolings[0],
            max_seq_length=self.max_seq_length,
            dtype=self.dtype,
        )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """``--pooling``, ``--max-seq-length``, ``--batch-size``, ``--standard-errors``, ``--max-layers``,
        ``--seeds``, ``--coarse-to-fine``, ``--coarse-sample-size``."""
        parser.add_argument(
            "--pooling", action="append", dest="poolings", choices=POOLING_MODES,
            help="candidate pooling, repeat for several; the first is the default another must beat "
            f"(default: {' '.join(RunSettings.poolings)})",
        )  # fmt: skip
        add_max_seq_length_argument(parser)
        add_dtype_argument(parser)
        parser.add_argument(
            "--batch-size", type=int, default=RunSettings.batch_size, help=f"default: {RunSettings.batch_size}"
        )
        parser.add_argument(
            "--standard-errors", type=float, default=RunSettings.standard_errors,
            help="noise rule: a layer, model or pooling must gain more than this many standard errors of the "
            f"paired per-fold CV difference (default: {RunSettings.standard_errors:g})",
        )  # fmt: skip
        parser.add_argument(
            "--max-layers", type=int, default=RunSettings.max_layers,
            help=f"most layers fused per model (default: {RunSettings.max_layers})",
        )  # fmt: skip
        parser.add_argument(
            "--seeds", type=int, default=RunSettings.seeds,
            help="repeat the search with this many CV fold seeds and report how often each layer is chosen "
            f"(default: {RunSettings.seeds})",
        )  # fmt: skip
        add_coarse_to_fine_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace, probe: ProbeConfig | None = None) -> RunSettings:
        return cls(
            poolings=tuple(args.poolings or cls.poolings),
            max_seq_length=args.max_seq_length or cls.max_seq_length,
            batch_size=args.batch_size,
            standard_errors=args.standard_errors,
            max_layers=args.max_layers,
            seeds=args.seeds,
            probe=probe if probe is not None else _default_probe(),
            dtype=args.dtype or cls.dtype,
            coarse_to_fine=args.coarse_to_fine,
            coarse_sample_size=args.coarse_sample_size,
        )


def add_max_seq_length_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--max-seq-length`` (``None`` when not given, so the spec's default applies)."""
    parser.add_argument(
        "--max-seq-length", type=int, help=f"token limit per text (default: {EmbedderSpec.max_seq_length})"
    )


def add_dtype_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--dtype`` (``None`` when not given, so the spec's default applies)."""
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help=f"compute precision; bf16 needs native support (CPU with AVX512-BF16/AMX, or a GPU); fp16 is "
        f"GPU only (default: {EmbedderSpec.dtype})",
    )


def add_coarse_to_fine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--coarse-to-fine`` and ``--coarse-sample-size`` (defaults from :class:`ScanSettings`)."""
    parser.add_argument(
        "--coarse-to-fine", action="store_true",
        help="score every layer on a stratified sample of the training texts first, then scan all texts only up "
        "to the deepest layer that can still win under the noise rule (a truncated forward)",
    )  # fmt: skip
    parser.add_argument(
        "--coarse-sample-size", type=int, default=ScanSettings.coarse_sample_size,
        help=f"training texts in the coarse sample (default: {ScanSettings.coarse_sample_size}, or all if fewer)",
    )  # fmt: skip


def _check_coarse_to_fine(enabled: Any, sample_size: Any) -> None:
    if not isinstance(enabled, bool):
        raise InvalidArgumentError(f"coarse_to_fine must be True or False, got {enabled!r}.")
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
        raise InvalidArgumentError(f"coarse_sample_size must be a positive integer, got {sample_size!r}.")


def parse_layers(text: str) -> list[int]:
    """``"12,16,20"`` or ``"-1"`` -> a list of ints (argparse type)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers, got {text!r}") from error


def write_spec_file(folder: str | Path, spec: EmbedderSpec) -> Path:
    """Record ``spec`` in a saved embedder folder as ``lafusion_spec.json``."""
    path = Path(folder, SPEC_FILE)
    document = {"format": SPEC_FORMAT, "format_version": SPEC_FORMAT_VERSION, "spec": spec.to_dict()}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def read_spec_file(folder: str | Path) -> EmbedderSpec | None:
    """The spec recorded in a saved folder, or ``None`` for a folder saved before specs were recorded.

    Raises:
        InvalidArgumentError: The file exists but is not a valid spec of a format this version reads.
    """
    path = Path(folder, SPEC_FILE)
    if not path.is_file():
        return None
    document = read_versioned_json(path, SPEC_FORMAT, SPEC_FORMAT_VERSION)
    try:
        return EmbedderSpec.from_dict(document.get("spec"))
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"{path}: {error}") from error


def model_label(model: str) -> str:
    """How ``model`` appears in configuration names (:attr:`EmbedderSpec.name`).

    Why a hash for folders: results are filed by name, and two local folders with the same name (two
    fine-tunes saved as ``.../model``) must never share one. Short names and hub ids have no such clash
    and keep the names that committed results are found by.

    Returns:
        A registry short name unchanged; a local folder (an existing directory, or an absolute, ``~`` or
        ``.``-relative path) as ``<folder name>-<first 8 hex of sha256 of its resolved path>``; anything
        else (a hub id) as its last ``/`` part, as before folders were told apart.
    """
    path = Path(model).expanduser()
    if not (path.is_absolute() or model.startswith((".", "~")) or path.is_dir()):
        return path.name
    from lafusion_st.registry import OFFLINE_MODELS  # standard library and filelock only

    if model in OFFLINE_MODELS:  # a short name wins over a folder of that name, as in resolve_model
        return model
    return f"{path.resolve().name}-{hashlib.sha256(str(path.resolve()).encode('utf-8')).hexdigest()[:8]}"


def _is_layer_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(layer, int) and not isinstance(layer, bool) for layer in value
    )


def _per_model(value: Any, models: tuple[str, ...], name: str, is_item) -> tuple:
    """Broadcast a single setting to every model, or check there is one per model."""
    if is_item(value):
        return (value,) * len(models)
    values = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(values) != len(models) or not all(is_item(item) for item in values):
        raise InvalidArgumentError(
            f"{name} must be one setting for all {len(models)} models or a list of {len(models)} settings "
            f"(models {list(models)}), got {value!r}."
        )
    return values


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidArgumentError(f"Unknown {name} {value!r}; choose one of {list(allowed)}.")
