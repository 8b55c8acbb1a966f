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
      "batch_size": 32, "cost_texts": 128,                 # optional "max_seq_length": EmbedderSpec's default
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
``eval/selection``). The other keys of an entry (``pooling``, ``fusion``, ``model_fusion``) and a
file-wide ``max_seq_length`` are :class:`lafusion_st.spec.EmbedderSpec` settings, defaults included: each
configuration is a spec, named by ``EmbedderSpec.name``.

Speed: every configuration is evaluated from the scan cache (``lafusion_st.scan``): each model reads every
layer of the dataset's (subsampled) train and test texts once, and ``fused_from_scan`` fuses a
configuration's layers from it, with the modules' own fusion, so no configuration costs another model pass
(and the scans of ``eval/selection_runs.py`` are reused). Before a view is evaluated, it is checked
against the real fused model built from the spec (the model the cost columns measure) with
``lafusion_st.scan.check_reproduces_scan``; only batch composition separates the two. Results are reused
only when they belong to the configuration's own weights revision (MTEB's revision folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from costs import measure_cost, rss_mib
from joblib import Parallel, delayed
from mteb.models import ModelMeta
from sentence_transformers import SentenceTransformer

from lafusion_st.data import LabeledTexts, load_bundled
from lafusion_st.evaluation import CachedEncoder, evaluate_encoder, make_model_meta
from lafusion_st.mteb_tasks import PROTOCOLS, TASKS, get_tasks
from lafusion_st.registry import resolve_model
from lafusion_st.scan import check_reproduces_scan, fused_from_scan, scan_task
from lafusion_st.spec import EmbedderSpec

REPOSITORY = Path(__file__).resolve().parent.parent
SELECTION_CHOICES = ("best layer", "greedy layers")
SPEC_KEYS = ("pooling", "fusion", "model_fusion")

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
        name: MTEB model name (``spec.name``, or the baseline's own); one embedder has one name on every dataset.
        spec: The fused embedder, layers resolved (``None`` for a ready SentenceTransformer).
        sentence_transformer: Short name or folder of a ready SentenceTransformer (the baseline).
    """

    dataset: str
    role: str
    name: str
    spec: EmbedderSpec | None = None
    sentence_transformer: str | None = None

    @property
    def models(self) -> tuple[str, ...]:
        return self.spec.models if self.spec is not None else ()

    @property
    def layers(self) -> tuple[tuple[int, ...], ...]:
        return self.spec.layers if self.spec is not None else ()


@dataclass(frozen=True)
class Plan:
    """Everything a run needs, read from the configuration file."""

    results_folder: Path
    datasets: tuple[str, ...]
    protocols: tuple[str, ...]
    subsample: dict[str, tuple[int | None, int | None]]  # dataset -> (max_train, max_test)
    seed: int
    batch_size: int
    cost_texts: int
    selection_folder: Path
    configurations: tuple[Configuration, ...] = field(default_factory=tuple)

    def tasks(self, dataset: str) -> list:
        max_train, max_test = self.subsample[dataset]
        return [
            task
            for protocol in self.protocols
            for task in get_tasks([dataset], protocol=protocol, max_train=max_train, max_test=max_test, seed=self.seed)
        ]

    def splits(self, dataset: str) -> tuple[LabeledTexts, LabeledTexts]:
        """The (subsampled) train and test texts the dataset's tasks embed, subsampled as the tasks do."""
        sizes = self.subsample[dataset]
        return tuple(
            data.subsample(size, self.seed) if size is not None else data
            for data, size in zip((load_bundled(dataset, "train"), load_bundled(dataset, "test")), sizes, strict=True)
        )

    def missing(self, configuration: Configuration, revision: str) -> bool:
        """Whether some protocol's result of the configuration's own revision is not on disk yet, or the
        per-text predictions of a single-experiment (paper) task, which its interval and tests need."""
        return not all(
            self.result_path(configuration.name, revision, task.metadata.name)
            and (task.n_experiments > 1 or self.prediction_path(configuration.name, revision, task))
            for task in self.tasks(configuration.dataset)
        )

    def result_path(self, name: str, revision: str, task_name: str) -> Path | None:
        """The result file of a configuration's revision on a task, or ``None``: results of other weights
        revisions (another build of the same name) are never taken for this one."""
        path = self.results_folder / "results" / name.replace("/", "__") / revision / f"{task_name}.json"
        return path if path.is_file() else None

    def prediction_folder(self, name: str, revision: str) -> Path:
        """Where MTEB writes a configuration's per-text test predictions (one folder per configuration and
        revision: MTEB names the files by task only)."""
        return self.results_folder / "predictions" / name.replace("/", "__") / revision

    def prediction_path(self, name: str, revision: str, task) -> Path | None:
        """The per-text predictions of a configuration's revision on a task, or ``None``."""
        path = self.prediction_folder(name, revision) / task.prediction_file_name
        return path if path.is_file() else None

    def cost_path(self, name: str) -> Path:
        return self.results_folder / "costs" / f"{name.replace('/', '__')}.json"


def load_data_plan(path: str | Path, datasets: Sequence[str] | None = None) -> Plan:
    """Read a configuration file's data settings (datasets, sizes, folders) without its configurations, which
    need the layer selection that ``eval/selection_runs.py`` makes from these same settings.

    Raises:
        ValueError: An unknown dataset or protocol.
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
    return Plan(
        results_folder=REPOSITORY / raw.get("results_folder", "eval/results"),
        datasets=chosen,
        protocols=protocols,
        subsample=sizes,
        seed=subsample.get("seed", 0),
        batch_size=raw.get("batch_size", 32),
        cost_texts=raw.get("cost_texts", 128),
        selection_folder=REPOSITORY / raw.get("selection_folder", "eval/selection"),
    )


def load_plan(path: str | Path, datasets: Sequence[str] | None = None, only: Sequence[str] | None = None) -> Plan:
    """Read a configuration file, resolving every configuration's layers on every dataset it runs on.

    Args:
        path: The JSON file.
        datasets: Run only these datasets (default: the file's).
        only: Keep only the configurations with these MTEB names.

    Raises:
        ValueError: An unknown dataset or protocol, layers missing for a dataset, or an invalid layer.
    """
    plan = load_data_plan(path, datasets)
    raw = json.loads(Path(path).read_text())
    common = {"max_seq_length": raw["max_seq_length"]} if "max_seq_length" in raw else {}
    # Dataset by dataset, so that a run stopped early has whole tables for the first datasets.
    configurations = tuple(
        configuration
        for dataset in plan.datasets
        for entry in raw["configurations"]
        if dataset in entry.get("datasets", plan.datasets)
        for configuration in [_configuration(entry, dataset, plan.selection_folder, common)]
        if only is None or configuration.name in only
    )
    if only is not None and not configurations:
        raise ValueError(f"No configuration is named {list(only)} on datasets {list(plan.datasets)}.")
    return dataclasses.replace(plan, configurations=configurations)


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


def selected_pooling(selection_folder: Path, dataset: str, model: str) -> str:
    """The pooling the selection chose for ``model`` on ``dataset`` (``mean`` in reports of before the pooling
    search; its ``best layer`` and ``greedy layers`` are of this pooling)."""
    report = json.loads((selection_folder / dataset / "report.json").read_text())
    return report["selections"][model].get("pooling", "mean")


def _configuration(entry: dict, dataset: str, selection_folder: Path, common: dict) -> Configuration:
    if "sentence_transformer" in entry:
        return Configuration(dataset, entry["role"], entry["name"], sentence_transformer=entry["sentence_transformer"])
    layers = entry["layers"]
    chosen_poolings = None
    if isinstance(layers, str):
        layers = [selected_layers(selection_folder, dataset, model, layers) for model in entry["models"]]
        chosen_poolings = [selected_pooling(selection_folder, dataset, model) for model in entry["models"]]
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
    settings = {**common, **{key: entry[key] for key in SPEC_KEYS if key in entry}}
    if chosen_poolings is not None and "pooling" not in entry:  # the pooling the selection chose with the layers
        settings["pooling"] = chosen_poolings
    if "weighted" in settings.values():
        raise ValueError("Weighted fusion needs trained weights; evaluate a saved model for it instead.")
    spec = EmbedderSpec(tuple(entry["models"]), tuple(tuple(ls) for ls in layers), **settings).resolved()
    return Configuration(dataset, entry["role"], spec.name, spec=spec)


def build_embedder(configuration: Configuration) -> SentenceTransformer:
    """The real embedder of a configuration: what a user would build, and what the cost columns measure."""
    if configuration.spec is None:
        return SentenceTransformer(resolve_model(configuration.sentence_transformer))
    return configuration.spec.build()


def model_meta(configuration: Configuration, embedder: SentenceTransformer, known: dict[str, ModelMeta]) -> ModelMeta:
    """The configuration's ModelMeta (its revision fingerprints the embedder's weights), once per name."""
    if configuration.name not in known:
        sources = [SOURCES.get(model) for model in (configuration.models or (configuration.sentence_transformer,))]
        single = sources[0] if len(sources) == 1 else None
        known[configuration.name] = make_model_meta(
            embedder,
            configuration.name,
            license=single[1] if single else "multiple",
            adapted_from=single[0] if single else None,
            open_weights=True,
        )
    return known[configuration.name]


def revisions(plan: Plan) -> dict[str, str]:
    """``name -> revision`` of every configuration of the plan (builds each distinct embedder once)."""
    known: dict[str, ModelMeta] = {}
    for configuration in plan.configurations:
        if configuration.name not in known:
            model_meta(configuration, build_embedder(configuration), known)
    return {name: meta.revision for name, meta in known.items()}


def run_evaluations(plan: Plan, overwrite: bool = False, log=print, workers: int = 1) -> None:
    """Evaluate every configuration of the plan whose results of its own revision are missing (all with
    ``overwrite``), in ``workers`` processes.

    Why processes: MTEB's probe fits run in one BLAS thread (see ``evaluate_encoder``) and they are most of
    this step (on full R52 the paper protocol's tuned fits of the fused rows take minutes each), so on a
    2-core machine two configurations at a time use the second core. Each configuration's fits are
    single-threaded whatever the worker count, so its results do not depend on it.

    An embedder that fills two rows of one dataset is evaluated once: its results are filed under its name,
    not its role, so a second evaluation only redid them (on full MR Gemma3's best single layer is also its
    fusion, layer 11), and in two processes both wrote the same files at the same time.
    """
    distinct: dict[tuple[str, str], Configuration] = {}
    for configuration in plan.configurations:
        distinct.setdefault((configuration.dataset, configuration.name), configuration)
    jobs = (delayed(_evaluate)(plan, configuration, overwrite) for configuration in distinct.values())
    with warnings.catch_warnings():
        # Each configuration loads a model of more than 300 MB, so loky replaces the worker after it, on purpose,
        # and reports that with this generic warning (joblib/joblib#869, fixed in loky#641, not yet released).
        warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given", category=UserWarning)
        for line in Parallel(n_jobs=workers, return_as="generator")(jobs):
            log(line)


def _evaluate(plan: Plan, configuration: Configuration, overwrite: bool) -> str:
    """Run one configuration's missing results (all protocols) and say what was done.

    The scans come from the scan cache (seconds; a scan that is missing is computed once, by the first process
    that needs it, under the cache's lock), not from another configuration's memory, so that configurations
    can run in separate processes.
    """
    embedder = build_embedder(configuration)
    meta = model_meta(configuration, embedder, {})
    if not overwrite and not plan.missing(configuration, meta.revision):
        return f"cached   {configuration.name} on {configuration.dataset}"
    # Something is missing: all protocols are recomputed (from the scans, in seconds) so that the results
    # and the per-text predictions always come from the same run.
    start = time.perf_counter()
    result = evaluate_encoder(
        _encoder(plan, configuration, embedder),
        plan.tasks(configuration.dataset),
        plan.results_folder,
        meta=meta,
        batch_size=plan.batch_size,
        overwrite=True,
        prediction_folder=plan.prediction_folder(configuration.name, meta.revision),
    )
    scores = ", ".join(f"{r.task_name}={r.get_score():.4f}" for r in result.task_results)
    return f"done     {configuration.name} on {configuration.dataset} in {time.perf_counter() - start:.0f} s: {scores}"


def _encoder(plan: Plan, configuration: Configuration, embedder: SentenceTransformer) -> CachedEncoder:
    """The configuration's encoder: the embedder, its vectors of the dataset's texts read from the scan cache
    (each model's scan holds every pooling the dataset's rows take from it: one forward pass for all)."""
    encoder = CachedEncoder(embedder)
    spec = configuration.spec
    if spec is None:
        return encoder
    train, test = plan.splits(configuration.dataset)
    train_view, test_view = {}, {}
    for model in spec.models:
        poolings = _poolings(plan, configuration.dataset, model, spec.max_seq_length)
        scanned = scan_task(model, train.texts, test.texts, poolings=poolings, max_seq_length=spec.max_seq_length)
        train_view[model], test_view[model] = scanned.train[model], scanned.test[model]
    expected = fused_from_scan(test_view, spec)
    _check_parity(configuration, embedder, test.texts[:8], expected[:8], plan.batch_size)
    encoder.remember(train.texts, fused_from_scan(train_view, spec))
    encoder.remember(test.texts, expected)
    return encoder


def _poolings(plan: Plan, dataset: str, model: str, max_seq_length: int) -> list[str]:
    """The poolings of ``model`` that the plan's configurations on ``dataset`` use (a scan cached for some of
    them only is completed, all of them from one forward pass: before, each pooling cost a pass of its own)."""
    return sorted(
        {
            pooling
            for configuration in plan.configurations
            if configuration.dataset == dataset
            and configuration.spec is not None
            and configuration.spec.max_seq_length == max_seq_length
            for name, pooling in zip(configuration.spec.models, configuration.spec.pooling, strict=True)
            if name == model
        }
    )


def _check_parity(
    configuration: Configuration, embedder: SentenceTransformer, texts: list[str], view: np.ndarray, batch_size: int
) -> None:
    """The scanned view must give the real embedder's vectors (see ``check_reproduces_scan``)."""
    real = embedder.encode(texts, batch_size=batch_size, convert_to_numpy=True)
    check_reproduces_scan(real, view, configuration.name)


def run_costs(plan: Plan, overwrite: bool = False, log=print) -> None:
    """Measure each distinct embedder of the plan in a fresh process (see :func:`measure_one`)."""
    done: set[str] = set()
    for configuration in plan.configurations:
        path = plan.cost_path(configuration.name)
        if configuration.name in done or (path.exists() and not overwrite):
            continue
        done.add(configuration.name)
        job = {
            "configuration": {
                **dataclasses.asdict(configuration),
                "spec": configuration.spec.to_dict() if configuration.spec is not None else None,
            },
            "batch_size": plan.batch_size,
            "cost_texts": plan.cost_texts,
        }
        subprocess.run([sys.executable, __file__, "cost", json.dumps(job), str(path)], check=True)
        log(f"cost     {configuration.name}: {json.loads(path.read_text())}")


def measure_one(job: dict, output: Path) -> None:
    """Build one embedder and measure it on the first ``cost_texts`` SST-2 test sentences.

    Records the process's resident memory before the model is built too, so that the tables can show
    the peak above that runtime floor: the memory the embedder itself (weights + activations) needs.
    """
    fields = dict(job["configuration"])
    recorded = fields.pop("spec")
    configuration = Configuration(**fields, spec=EmbedderSpec.from_dict(recorded) if recorded is not None else None)
    runtime_rss = rss_mib()  # Python + torch + imports, before any weights
    embedder = build_embedder(configuration)
    texts = load_bundled("sst2", "test").texts[: job["cost_texts"]]
    cost = measure_cost(embedder, texts, batch_size=job["batch_size"])
    record = {
        **dataclasses.asdict(cost),
        "runtime_rss_mb": round(runtime_rss, 1),
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
    parser.add_argument("job", help="the configuration and settings as JSON")
    parser.add_argument("output", type=Path)
    arguments = parser.parse_args()
    measure_one(json.loads(arguments.job), arguments.output)
