"""Run the configurations of ``eval/configs.json``: MTEB results and cost figures, one entry each.

Used by ``eval/make_tables.py`` (the one command); run as a script only for its ``cost`` mode, which
``make_tables.py`` starts in a fresh process per configuration so that the peak memory it measures
belongs to that configuration alone.

Configuration file (JSON)::

    {
      "results_folder": "eval/results",           # relative to the repository root
      "datasets": ["sst2", "mr", "r8", "r52"],
      "protocols": ["standard", "paper"],
      "subsample": {"max_train": 1000, "max_test": 500, "seed": 0,    # or null: full splits
                    "r8": {"max_train": 300, "max_test": 200}},         # per-dataset sizes override
      "batch_size": 32, "max_seq_length": 256, "cost_texts": 128,
      "configurations": [
        {"role": "last layer", "models": ["smollm2-135m"], "layers": [[-1]]},
        {"role": "best single layer", "models": ["smollm2-135m"],
         "layers": {"default": [[15]], "r8": [[12]]}},             # per dataset, "default" for the rest
        {"role": "multi-model fusion", "models": ["smollm2-135m", "gemma3-270m"], "layers": [[15], [9]],
         "datasets": ["sst2", "mr"]},                              # optional: run on these only
        {"role": "baseline", "sentence_transformer": "minilm-l6", "name": "sentence-transformers/all-MiniLM-L6-v2"}
      ]
    }

``layers`` holds one list per model (``hidden_states`` numbering, negative from the end), or the string
``"best layer"`` / ``"greedy layers"`` to take, per dataset and model, what ``eval/selection_runs.py`` chose
by cross-validation on the training split (reports under ``"selection_folder"``, default
``eval/selection``); ``pooling``
(default ``mean``), ``fusion`` and ``model_fusion`` (default ``concat``) are optional per configuration.

Speed: every configuration of one model is computed from a single forward pass. A :class:`LayerBank`
runs the model once per text for the union of the layers that any configuration needs (pooled vectors,
cached by text), and a :class:`FusedView` fuses the layers of one configuration from it. Before a view
is evaluated it is checked against the real fused model built for that configuration (the model the
cost columns measure): the largest difference, relative to the largest coordinate, must stay below
``PARITY_TOLERANCE``; only batch composition separates the two.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoConfig

from lafusion_st import build_fused_model
from lafusion_st.data import load_bundled
from lafusion_st.evaluation import CachedEncoder, configuration_name, evaluate_encoder, make_model_meta, measure_cost
from lafusion_st.fusion import fuse
from lafusion_st.layers import resolve_layers
from lafusion_st.mteb_tasks import PROTOCOLS, TASKS, get_tasks
from lafusion_st.registry import resolve_model

REPOSITORY = Path(__file__).resolve().parent.parent
PARITY_TOLERANCE = 1e-4
SELECTION_CHOICES = ("best layer", "greedy layers")

# Original releases of the offline models (the weights here are their 4-bit GGUF approximations).
SOURCES = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "gemma3-270m": ("google/gemma-3-270m", "gemma"),
    "minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
}


@dataclass(frozen=True)
class Configuration:
    """One embedder on one dataset: a row of the results tables.

    Attributes:
        dataset: Bundled dataset name.
        role: Row label (``last layer``, ``best single layer``, ``fused layers``, ...).
        name: MTEB model name; the same embedder on several datasets has one name.
        models: Model short names or folders (empty for a ready SentenceTransformer).
        layers: Resolved layers per model.
        pooling, fusion, model_fusion: As in :func:`lafusion_st.build_fused_model`.
        sentence_transformer: Short name or folder of a ready SentenceTransformer (the baseline).
    """

    dataset: str
    role: str
    name: str
    models: tuple[str, ...] = ()
    layers: tuple[tuple[int, ...], ...] = ()
    pooling: str = "mean"
    fusion: str = "concat"
    model_fusion: str = "concat"
    sentence_transformer: str | None = None


@dataclass(frozen=True)
class Plan:
    """Everything a run needs, read from the configuration file."""

    results_folder: Path
    datasets: tuple[str, ...]
    protocols: tuple[str, ...]
    subsample: dict[str, tuple[int | None, int | None]]  # dataset -> (max_train, max_test)
    seed: int
    batch_size: int
    max_seq_length: int
    cost_texts: int
    configurations: tuple[Configuration, ...] = field(default_factory=tuple)

    def tasks(self, dataset: str) -> list:
        max_train, max_test = self.subsample[dataset]
        return [
            task
            for protocol in self.protocols
            for task in get_tasks([dataset], protocol=protocol, max_train=max_train, max_test=max_test, seed=self.seed)
        ]

    def missing(self, configuration: Configuration) -> bool:
        """Whether some protocol's result of the configuration is not on disk yet."""
        return not all(
            self.result_path(configuration.name, task.metadata.name) for task in self.tasks(configuration.dataset)
        )

    def result_path(self, name: str, task_name: str) -> Path | None:
        """The newest result file of a configuration on a task, whatever the revision, or ``None``."""
        found = list((self.results_folder / "results" / name.replace("/", "__")).glob(f"*/{task_name}.json"))
        return max(found, key=lambda path: path.stat().st_mtime) if found else None

    def cost_path(self, name: str) -> Path:
        return self.results_folder / "costs" / f"{name.replace('/', '__')}.json"


def load_plan(path: str | Path, datasets: Sequence[str] | None = None, only: Sequence[str] | None = None) -> Plan:
    """Read a configuration file, resolving every configuration's layers on every dataset it runs on.

    Args:
        path: The JSON file.
        datasets: Run only these datasets (default: the file's).
        only: Keep only the configurations with these MTEB names.

    Raises:
        ValueError: An unknown dataset or protocol, layers missing for a dataset, or an invalid layer.
    """
    raw = json.loads(Path(path).read_text())
    chosen = tuple(datasets or raw["datasets"])
    for name in chosen:
        if name not in TASKS:
            raise ValueError(f"Unknown dataset {name!r}; choose from {list(TASKS)}.")
    protocols = tuple(raw.get("protocols", PROTOCOLS))
    if not set(protocols) <= set(PROTOCOLS):
        raise ValueError(f"Unknown protocols {sorted(set(protocols) - set(PROTOCOLS))}; choose from {list(PROTOCOLS)}.")
    subsample = raw.get("subsample") or {}
    sizes = {
        dataset: tuple(subsample.get(dataset, {}).get(key, subsample.get(key)) for key in ("max_train", "max_test"))
        for dataset in chosen
    }
    # Dataset by dataset, so that a run stopped early has whole tables for the first datasets.
    configurations = tuple(
        configuration
        for dataset in chosen
        for entry in raw["configurations"]
        if dataset in entry.get("datasets", chosen)
        for configuration in [
            _configuration(entry, dataset, REPOSITORY / raw.get("selection_folder", "eval/selection"))
        ]
        if only is None or configuration.name in only
    )
    if only is not None and not configurations:
        raise ValueError(f"No configuration is named {list(only)} on datasets {list(chosen)}.")
    return Plan(
        results_folder=REPOSITORY / raw.get("results_folder", "eval/results"),
        datasets=chosen,
        protocols=protocols,
        subsample=sizes,
        seed=subsample.get("seed", 0),
        batch_size=raw.get("batch_size", 32),
        max_seq_length=raw.get("max_seq_length", 256),
        cost_texts=raw.get("cost_texts", 128),
        configurations=configurations,
    )


def selected_layers(selection_folder: Path, dataset: str, model: str, choice: str) -> list[int]:
    """Layers chosen for ``model`` on ``dataset`` by ``eval/selection_runs.py`` (CV on the training split).

    Args:
        selection_folder: Output folder of ``selection_runs.py`` (one ``<dataset>/report.json`` each).
        choice: ``"best layer"`` (highest CV accuracy) or ``"greedy layers"`` (the greedy fusion).

    Raises:
        ValueError: An unknown choice, or no selection report for the dataset and model.
    """
    if choice not in SELECTION_CHOICES:
        raise ValueError(f"Unknown layer choice {choice!r}; give a list of layers or one of {list(SELECTION_CHOICES)}.")
    path = selection_folder / dataset / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    if model not in report.get("models", {}):
        raise ValueError(
            f"No layer selection of {model} on {dataset} in {path}: run "
            f"`python eval/selection_runs.py --datasets {dataset}` first, or give the layers."
        )
    if choice == "best layer":
        return [report["models"][model]["best_layer"]]
    return list(report["selections"][model]["chosen"])


def _configuration(entry: dict, dataset: str, selection_folder: Path) -> Configuration:
    if "sentence_transformer" in entry:
        return Configuration(dataset, entry["role"], entry["name"], sentence_transformer=entry["sentence_transformer"])
    layers = entry["layers"]
    if isinstance(layers, str):
        layers = [selected_layers(selection_folder, dataset, model, layers) for model in entry["models"]]
    if isinstance(layers, dict):
        if dataset not in layers and "default" not in layers:
            raise ValueError(
                f"Configuration {entry['role']!r} of {entry['models']} has no layers for {dataset!r} and no 'default'."
            )
        layers = layers.get(dataset, layers.get("default"))
    if len(layers) != len(entry["models"]):
        raise ValueError(
            f"Configuration {entry['role']!r}: give one layer list per model {entry['models']}, got {layers}."
        )
    resolved = tuple(
        tuple(resolve_layers(model_layers, _depth(model)))
        for model, model_layers in zip(entry["models"], layers, strict=True)
    )
    settings = {key: entry[key] for key in ("pooling", "fusion", "model_fusion") if key in entry}
    if "weighted" in settings.values():
        raise ValueError("Weighted fusion needs trained weights; evaluate a saved model for it instead.")
    configuration = Configuration(dataset, entry["role"], "", tuple(entry["models"]), resolved, **settings)
    name = configuration_name(
        configuration.models,
        configuration.layers,
        configuration.pooling,
        configuration.fusion,
        configuration.model_fusion,
    )
    return Configuration(**{**asdict(configuration), "name": name})


def _depth(model: str) -> int:
    config = AutoConfig.from_pretrained(resolve_model(model))
    return (getattr(config, "text_config", None) or config).num_hidden_layers


def build_embedder(configuration: Configuration, max_seq_length: int) -> SentenceTransformer:
    """The real embedder of a configuration: what a user would build, and what the cost columns measure."""
    if configuration.sentence_transformer is not None:
        return SentenceTransformer(resolve_model(configuration.sentence_transformer))
    layers = [list(model_layers) for model_layers in configuration.layers]
    return build_fused_model(
        list(configuration.models),
        layers=layers if len(layers) > 1 else layers[0],
        pooling=configuration.pooling,
        fusion=configuration.fusion,
        model_fusion=configuration.model_fusion,
        max_seq_length=max_seq_length,
    )


class LayerBank:
    """One model pass per text for every layer the plan needs; pooled vectors cached by text.

    Args:
        model: Model short name or folder.
        layers: The union of the layers of every configuration that uses this model and pooling.
        pooling: Pooling mode.
        max_seq_length: Token limit.
    """

    def __init__(self, model: str, layers: Sequence[int], pooling: str, max_seq_length: int) -> None:
        self.layers = sorted(set(layers))
        embedder = build_fused_model(
            model, layers=self.layers, pooling=pooling, fusion="concat", max_seq_length=max_seq_length
        )
        self.hidden_size = embedder.get_embedding_dimension() // len(self.layers)
        self.cache = CachedEncoder(embedder)

    def pooled(self, texts: Sequence[str], batch_size: int) -> dict[int, torch.Tensor]:
        vectors = torch.from_numpy(self.cache.encode(texts, batch_size=batch_size))
        return {
            layer: vectors[:, i * self.hidden_size : (i + 1) * self.hidden_size] for i, layer in enumerate(self.layers)
        }


class FusedView:
    """A configuration's vectors fused from layer banks: ``fuse`` per model, then across models.

    Args:
        members: One ``(bank, layers)`` pair per model.
        fusion: Fusion of each model's layers.
        model_fusion: Fusion across models.
    """

    def __init__(self, members: Sequence[tuple[LayerBank, Sequence[int]]], fusion: str, model_fusion: str) -> None:
        self.members = list(members)
        self.fusion = fusion
        self.model_fusion = model_fusion

    def encode(self, sentences: Sequence[str], batch_size: int = 32, **_) -> np.ndarray:
        per_model = []
        for bank, layers in self.members:
            pooled = bank.pooled(sentences, batch_size)
            per_model.append(fuse([pooled[layer] for layer in layers], self.fusion))
        vectors = per_model[0] if len(per_model) == 1 else fuse(per_model, self.model_fusion)
        return vectors.numpy()


def run_evaluations(plan: Plan, overwrite: bool = False, log=print) -> None:
    """Evaluate every configuration of the plan whose results are missing (all of them with ``overwrite``)."""
    metas: dict[str, object] = {}
    pending = [configuration for configuration in plan.configurations if overwrite or plan.missing(configuration)]
    dataset = None
    for configuration in plan.configurations:
        if configuration not in pending:
            log(f"cached   {configuration.name} on {configuration.dataset}")
            continue
        if configuration.dataset != dataset:  # texts differ between datasets: free the last dataset's banks
            banks: dict[tuple[str, str], LayerBank | CachedEncoder] = {}
            dataset = configuration.dataset
        tasks = plan.tasks(configuration.dataset)
        encoder = _encoder(plan, configuration, pending, banks)
        if configuration.name not in metas:
            metas[configuration.name] = _checked_meta(plan, configuration, encoder)
        start = time.perf_counter()
        result = evaluate_encoder(
            encoder,
            tasks,
            plan.results_folder,
            meta=metas[configuration.name],
            batch_size=plan.batch_size,
            overwrite=overwrite,
        )
        scores = ", ".join(f"{r.task_name}={r.get_score():.4f}" for r in result.task_results)
        log(
            f"done     {configuration.name} on {configuration.dataset} in {time.perf_counter() - start:.0f} s: {scores}"
        )


def _encoder(plan: Plan, configuration: Configuration, pending: Sequence[Configuration], banks: dict) -> CachedEncoder:
    """The configuration's encoder, from ``banks`` (those of its dataset), filled on first use.

    A model's bank covers the layers of its pending configurations on this dataset only, so a dataset whose
    last-layer results exist is not run through the layers above its deepest pending layer.
    """
    if configuration.sentence_transformer is not None:
        key = (configuration.sentence_transformer, "")
        if key not in banks:
            banks[key] = CachedEncoder(build_embedder(configuration, plan.max_seq_length))
        return banks[key]
    members = []
    for model, layers in zip(configuration.models, configuration.layers, strict=True):
        key = (model, configuration.pooling)
        if key not in banks:
            needed = {
                layer
                for other in pending
                if other.dataset == configuration.dataset
                for other_model, other_layers in zip(other.models, other.layers, strict=True)
                if (other_model, other.pooling) == key
                for layer in other_layers
            }
            banks[key] = LayerBank(model, needed, configuration.pooling, plan.max_seq_length)
        members.append((banks[key], layers))
    return CachedEncoder(FusedView(members, configuration.fusion, configuration.model_fusion))


def _checked_meta(plan: Plan, configuration: Configuration, encoder: CachedEncoder):
    """ModelMeta from the real embedder, after checking that the encoder gives its vectors."""
    embedder = build_embedder(configuration, plan.max_seq_length)
    texts = load_bundled("sst2", "test").texts[:6] + load_bundled("r8", "test").texts[:2]  # short and long
    expected = embedder.encode(texts, batch_size=plan.batch_size, convert_to_numpy=True)
    got = encoder.encode(texts, batch_size=plan.batch_size)
    deviation = float(np.abs(got - expected).max() / np.abs(expected).max())
    if deviation > PARITY_TOLERANCE:
        raise RuntimeError(
            f"{configuration.name}: evaluated vectors differ from the real embedder's by {deviation:.2e} (relative)."
        )
    sources = [SOURCES.get(model) for model in (configuration.models or (configuration.sentence_transformer,))]
    single = sources[0] if len(sources) == 1 else None
    return make_model_meta(
        embedder,
        configuration.name,
        license=single[1] if single else "multiple",
        adapted_from=single[0] if single else None,
        open_weights=True,
    )


def run_costs(plan: Plan, overwrite: bool = False, log=print) -> None:
    """Measure each distinct embedder of the plan in a fresh process (see :func:`measure_one`)."""
    done: set[str] = set()
    for configuration in plan.configurations:
        path = plan.cost_path(configuration.name)
        if configuration.name in done or (path.exists() and not overwrite):
            continue
        done.add(configuration.name)
        spec = json.dumps(
            {
                **asdict(configuration),
                "max_seq_length": plan.max_seq_length,
                "batch_size": plan.batch_size,
                "cost_texts": plan.cost_texts,
            }
        )
        subprocess.run([sys.executable, __file__, "cost", spec, str(path)], check=True)
        log(f"cost     {configuration.name}: {json.loads(path.read_text())}")


def measure_one(spec: dict, output: Path) -> None:
    """Build one embedder and measure it on the first ``cost_texts`` SST-2 test sentences.

    Records the process's resident memory before the model is built too, so that the tables can show
    the peak above that runtime floor: the memory the embedder itself (weights + activations) needs.
    """
    settings = {key: spec.pop(key) for key in ("max_seq_length", "batch_size", "cost_texts")}
    spec["models"], spec["layers"] = tuple(spec["models"]), tuple(tuple(layers) for layers in spec["layers"])
    runtime_rss = psutil.Process().memory_info().rss  # Python + torch + imports, before any weights
    embedder = build_embedder(Configuration(**spec), settings["max_seq_length"])
    texts = load_bundled("sst2", "test").texts[: settings["cost_texts"]]
    cost = measure_cost(embedder, texts, batch_size=settings["batch_size"])
    record = {
        **asdict(cost),
        "runtime_rss_mb": round(runtime_rss / 2**20, 1),
        "texts": f"first {len(texts)} SST-2 test sentences",
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Internal: measure one configuration's cost (started by make_tables.py)."
    )
    parser.add_argument("mode", choices=["cost"])
    parser.add_argument("spec", help="the configuration as JSON")
    parser.add_argument("output", type=Path)
    arguments = parser.parse_args()
    measure_one(json.loads(arguments.spec), arguments.output)
