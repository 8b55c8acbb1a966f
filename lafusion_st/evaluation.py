"""Evaluate any embedder on classification tasks through MTEB.

One entry point, :func:`evaluate_encoder`, for everything with SentenceTransformer's
``encode(sentences, batch_size=..., show_progress_bar=..., convert_to_numpy=...)``: a fused lafusion
model, a plain SentenceTransformer (all-MiniLM-L6-v2), or the ONNX Runtime encoder. MTEB does the
evaluation (its own logistic-regression loop and result files); this module adds what MTEB leaves out:

- a :class:`~mteb.models.ModelMeta` per configuration (:func:`make_model_meta`, named by
  :attr:`lafusion_st.spec.EmbedderSpec.name`), so the results of variants (layers, pooling, fusion) are
  filed under different names and never overwrite each other;
- an in-memory embedding cache keyed by text (:class:`CachedEncoder`): both protocols and all tasks
  share one model pass per distinct text, which matters when an LLM embeds 7 to 28 sentences a second;
- checks on every embedding (shape and finiteness), and a results folder that is checked for writing
  before any text is embedded, so a bad encoder or folder fails early and leaves no result file behind.

Results land where MTEB's ``ResultCache`` puts them:
``<results_folder>/results/<name with "/" as "__">/<revision>/<TaskName>.json`` plus ``model_meta.json``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import mteb
import numpy as np
import torch
from mteb.abstasks.abstask import AbsTask
from mteb.abstasks.classification import AbsTaskClassification
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction
from sentence_transformers import SentenceTransformer
from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning
from threadpoolctl import threadpool_limits

from lafusion_st.modes import BATCH_SIZE
from lafusion_st.mteb_tasks import get_tasks

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import BatchedInput, PromptType
    from torch.utils.data import DataLoader

STANDARD_PROTOCOL_STOPPED = f"lbfgs failed to converge after {AbsTaskClassification.evaluator_model.max_iter} iteration"
"""Start of scikit-learn's warning when MTEB's standard-protocol classifier stops at MTEB's iteration cap."""
NEVER_PREDICTED = "Precision is ill-defined and being set to 0.0 in labels with no predicted samples"
"""Start of scikit-learn's warning when MTEB's macro precision meets a class its classifier never predicted."""

__all__ = [
    "CachedEncoder",
    "MTEBEncoder",
    "ResultsFolderError",
    "TextEncoder",
    "evaluate_encoder",
    "make_model_meta",
]


class TextEncoder(Protocol):
    """What :func:`evaluate_encoder` needs: SentenceTransformer's ``encode`` for a list of texts."""

    def encode(self, sentences: list[str], **kwargs: Any) -> Any: ...


class ResultsFolderError(OSError):
    """The results folder cannot be created or written; raised before any text is embedded."""


def make_model_meta(
    encoder: TextEncoder,
    name: str,
    *,
    revision: str | None = None,
    n_parameters: int | None = None,
    embed_dim: int | None = None,
    framework: Sequence[str] | None = None,
    max_tokens: int | None = None,
    license: str | None = None,
    reference: str | None = None,
    adapted_from: str | None = None,
    open_weights: bool | None = None,
) -> ModelMeta:
    """An MTEB ``ModelMeta`` for one configuration of an encoder.

    What a torch model can tell is read from it; an encoder that is not a torch module must be told its
    ``revision``, ``n_parameters`` and ``framework``, or expose them as attributes of those names (with
    ``num_parameters`` for the count), as the ONNX Runtime encoder does.

    Args:
        encoder: The encoder.
        name: ``organisation/model`` name that identifies the configuration (see ``EmbedderSpec.name``).
        revision: Version of the weights; default: the first 16 hex digits of a SHA-256 over the module
            structure and every parameter and buffer, so the same weights and settings give the same revision.
        n_parameters: Parameter count; default: counted on the torch module.
        embed_dim: Embedding dimension; default: asked from the encoder, else measured on one text.
        framework: MTEB framework names; default ``["Sentence Transformers", "PyTorch"]`` for a
            SentenceTransformer, ``["PyTorch"]`` for another torch module.
        max_tokens: Token limit; default: the encoder's ``max_seq_length`` if it has one.
        license: License of the weights (an MTEB license name or a URL).
        reference: URL describing the model.
        adapted_from: Name of the model this configuration is built from.
        open_weights: Whether the weights are openly available.

    Raises:
        ValueError: If a field that cannot be read from a non-torch encoder is neither given nor exposed.
    """
    if "/" not in name:
        raise ValueError(f"Model name {name!r} must look like 'organisation/model' (MTEB's convention).")
    is_torch = isinstance(encoder, torch.nn.Module)
    if not is_torch:  # e.g. ORTFusedEncoder, which describes its graphs itself
        revision = revision or getattr(encoder, "revision", None)
        n_parameters = n_parameters if n_parameters is not None else getattr(encoder, "num_parameters", None)
        framework = framework or getattr(encoder, "framework", None)
    missing = [
        field
        for field, value in (("revision", revision), ("n_parameters", n_parameters), ("framework", framework))
        if value is None
    ]
    if not is_torch and missing:
        raise ValueError(
            f"{type(encoder).__name__} is not a torch module: pass {', '.join(missing)} to make_model_meta."
        )
    if framework is None:
        framework = ["Sentence Transformers", "PyTorch"] if isinstance(encoder, SentenceTransformer) else ["PyTorch"]
    parameters = list(encoder.parameters()) if is_torch else []
    return ModelMeta.create_empty(
        overwrites=dict(
            name=name,
            revision=revision or _fingerprint(encoder),
            n_parameters=n_parameters if n_parameters is not None else sum(p.numel() for p in parameters),
            memory_usage_mb=round(sum(p.numel() * p.element_size() for p in parameters) / 2**20, 1)
            if is_torch
            else None,
            embed_dim=embed_dim if embed_dim is not None else _embedding_dimension(encoder),
            framework=list(framework),
            max_tokens=max_tokens if max_tokens is not None else getattr(encoder, "max_seq_length", None),
            similarity_fn_name=ScoringFunction.COSINE,
            use_instructions=False,
            license=license,
            reference=reference,
            adapted_from=adapted_from,
            open_weights=open_weights,
        )
    )


class CachedEncoder:
    """Embeds each distinct text once, checks every new vector, and remembers it.

    Keyed by the text itself, so repeated texts (the training rows shared by MTEB's ten experiments and
    the paper protocol, the same test split under both protocols) cost one model pass. One instance per
    model configuration: the cache is only valid for the encoder it wraps.

    A whole block given to :meth:`remember` (a split's rows as a scan computed them) is also returned as it
    is when exactly its texts are asked for, in its order (the paper protocol asks for every training row,
    then every test row). Why: a text's vector depends, in the last digits, on the batch it was computed in,
    so a split's repeated texts (82 on R52's training split, and texts shared with its test split) have
    vectors that differ by ~1e-6, and one vector per text moved the tuned probe's choice of ``C`` across a
    near-tie (SmolLM2's last layer on full R52: C 1.0 and 92.3% instead of the selection's C 0.1 and 92.2%).
    Returned as remembered, MTEB's paper-protocol fit is the selection's own test fit (and the standard
    protocol's test rows are the scan's too).

    Args:
        encoder: Anything with SentenceTransformer's ``encode``.
        embedding_dimension: Expected width of every vector; default: that of the first batch.
    """

    def __init__(self, encoder: TextEncoder, embedding_dimension: int | None = None) -> None:
        self.encoder = encoder
        self.embedding_dimension = embedding_dimension
        self._vectors: dict[str, np.ndarray] = {}
        self._blocks: dict[tuple[str, ...], np.ndarray] = {}

    def __len__(self) -> int:
        """Number of distinct texts embedded so far."""
        return len(self._vectors)

    def encode(
        self, sentences: Sequence[str], batch_size: int = BATCH_SIZE, show_progress_bar: bool = False, **_: Any
    ) -> np.ndarray:
        """``[len(sentences), dim]`` float32 embeddings, computing only texts not seen before.

        Raises:
            ValueError: If the encoder returns the wrong shape or a non-finite value (the message names
                the first offending text); nothing is cached from such a batch.
        """
        block = self._blocks.get(tuple(sentences))
        if block is not None:
            return block.copy()
        missing = list(dict.fromkeys(text for text in sentences if text not in self._vectors))
        if missing:
            vectors = self.encoder.encode(
                missing, batch_size=batch_size, show_progress_bar=show_progress_bar, convert_to_numpy=True
            )
            vectors = self._checked(vectors, missing)
            self._vectors.update(zip(missing, vectors, strict=True))
        if not sentences:
            return np.empty((0, self.embedding_dimension or 0), dtype=np.float32)
        return np.stack([self._vectors[text] for text in sentences])

    def remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Take ``vectors`` (one row per text, computed elsewhere, e.g. read from a scan) as the encoder's: as
        a block for exactly these texts in this order, and per text for any other request.

        Raises:
            ValueError: As :meth:`encode`, for a wrong shape or a non-finite value.
        """
        texts = list(texts)
        vectors = self._checked(np.array(vectors, dtype=np.float32), texts)  # a copy: the caller's array stays theirs
        self._blocks[tuple(texts)] = vectors
        self._vectors.update(zip(texts, vectors, strict=True))  # row views of the block: no second copy

    def _checked(self, vectors: Any, texts: list[str]) -> np.ndarray:
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().cpu().numpy()
        vectors = np.asarray(vectors, dtype=np.float32)
        expected = (len(texts), self.embedding_dimension or (vectors.shape[-1] if vectors.ndim == 2 else "dim"))
        if vectors.shape != expected:
            raise ValueError(
                f"{type(self.encoder).__name__}.encode returned shape "
                f"{vectors.shape} for {len(texts)} texts; expected {expected}."
            )
        bad_rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if bad_rows.size:
            raise ValueError(
                f"{type(self.encoder).__name__}.encode returned NaN or "
                f"infinite values for {bad_rows.size} of {len(texts)} "
                f"texts, the first being {texts[bad_rows[0]][:80]!r}."
            )
        self.embedding_dimension = vectors.shape[1]
        return vectors


class MTEBEncoder(AbsEncoder):
    """MTEB's encoder protocol over a :class:`CachedEncoder`, carrying the configuration's ``ModelMeta``.

    Texts are embedded as they are, without task prompts: lafusion's embedders use none, and the
    literature's protocol embeds the plain text.

    Args:
        encoder: The encoder, or a :class:`CachedEncoder` to share its cache between calls.
        meta: The configuration's metadata (see :func:`make_model_meta`).
    """

    def __init__(self, encoder: TextEncoder, meta: ModelMeta) -> None:
        self.model = encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder, meta.embed_dim)
        self.mteb_model_meta = meta

    def encode(
        self,
        inputs: DataLoader[BatchedInput],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        return self.model.encode(
            texts,
            batch_size=kwargs.get("batch_size", BATCH_SIZE),
            show_progress_bar=kwargs.get("show_progress_bar", False),
        )


def evaluate_encoder(
    encoder: TextEncoder,
    tasks: Sequence[AbsTask | str],
    results_folder: str | Path,
    *,
    meta: ModelMeta | None = None,
    name: str | None = None,
    batch_size: int = BATCH_SIZE,
    overwrite: bool = False,
    show_progress_bar: bool = False,
    prediction_folder: str | Path | None = None,
) -> mteb.results.ModelResult:
    """Evaluate an encoder on tasks with ``mteb.evaluate`` and write MTEB result JSON.

    Example::

        model = build_fused_model("smollm2-135m", layers=[12, 16, 20])
        tasks = get_tasks(["sst2", "r8"]) + get_tasks(["sst2", "r8"], protocol="paper", max_train=2000)
        evaluate_encoder(model, tasks, "eval/results", name=model.spec.name)

    Args:
        encoder: A SentenceTransformer, the ONNX Runtime encoder, a :class:`CachedEncoder` (to reuse its
            embeddings across calls), or anything with SentenceTransformer's ``encode``.
        tasks: Task objects, or names for :func:`lafusion_st.mteb_tasks.get_tasks` (standard protocol).
        results_folder: Root of MTEB's result cache; created if missing.
        meta: The configuration's metadata; default ``make_model_meta(encoder, name)``.
        name: Configuration name, used when ``meta`` is not given.
        batch_size: Encoding batch size.
        overwrite: Re-run tasks whose results already exist (default: MTEB reuses them).
        show_progress_bar: Show MTEB's and the encoder's progress bars.
        prediction_folder: Where MTEB writes each task's per-text test predictions
            (``<task name>_predictions.json``), for :func:`per_text_correctness` and intervals; one folder per
            configuration, since the files are named by task only. Tasks taken from the result cache write none.

    Returns:
        MTEB's ``ModelResult`` (``result.task_results[i].get_score()`` is the main score).

    Raises:
        ValueError: Neither ``meta`` nor ``name``, an invalid task, or a bad embedding (see :class:`CachedEncoder`).
        ResultsFolderError: If ``results_folder`` cannot be created or written.
    """
    if meta is None:
        if name is None:
            raise ValueError("Give the configuration's name (or a ModelMeta) so its results are filed under it.")
        meta = make_model_meta(encoder.encoder if isinstance(encoder, CachedEncoder) else encoder, name)
    task_objects = [task for task in tasks if isinstance(task, AbsTask)]
    task_names = [task for task in tasks if not isinstance(task, AbsTask)]
    task_objects += get_tasks(task_names) if task_names else []
    cache = mteb.ResultCache(_writable_folder(Path(results_folder)))
    # MTEB's classifiers (logistic regressions on a few thousand rows, hundreds of columns) run with one BLAS
    # thread, as the probes do: a tuned fit on full R52 was 3x slower with 2 threads than with 1. Only
    # NumPy/SciPy's BLAS is limited; torch's own thread pool (the encoding) is not.
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        # MTEB's standard protocol fits an unscaled LogisticRegression(max_iter=100), which on LLM features
        # often stops before converging: that is the protocol, not an error, and its 9-line warning per fit
        # buried everything else (57 of them in one full SST-2 MTEB step). Filtered here, in the process that
        # fits, because a filter set by a caller does not reach worker processes (eval/runner.py); only that
        # iteration cap's, so a tuned probe (the paper protocol) that stops at its own cap is still reported.
        warnings.filterwarnings("ignore", message=STANDARD_PROTOCOL_STOPPED, category=ConvergenceWarning)
        # MTEB's scores include macro precision; a class no fit predicted counts as 0 there, which is its
        # definition, not a fault, and on R52 (52 topics) the two-line warning came 52 times in one MTEB step.
        warnings.filterwarnings("ignore", message=NEVER_PREDICTED, category=UndefinedMetricWarning)
        return mteb.evaluate(
            MTEBEncoder(encoder, meta),
            task_objects,
            cache=cache,
            overwrite_strategy="always" if overwrite else "only-missing",
            encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
            show_progress_bar=show_progress_bar,
            raise_error=True,
            co2_tracker=False,
            prediction_folder=Path(prediction_folder) if prediction_folder is not None else None,
        )


def per_text_correctness(task: AbsTask, prediction_folder: str | Path, split: str = "test") -> np.ndarray:
    """Per test text, whether the single experiment of ``task`` (the paper protocol) classified it right,
    from the predictions :func:`evaluate_encoder` wrote to ``prediction_folder``.

    Raises:
        FileNotFoundError: No predictions of the task there (run with ``prediction_folder``, overwriting a
            cached result).
        ValueError: The task ran several experiments (MTEB's standard protocol reports their mean and
            standard deviation instead of one interval).
    """
    path = Path(prediction_folder) / task.prediction_file_name
    if not path.is_file():
        raise FileNotFoundError(f"No predictions of {task.metadata.name} in {path}.")
    experiments = json.loads(path.read_text(encoding="utf-8"))["default"][split]
    if len(experiments) != 1:
        raise ValueError(f"{task.metadata.name} ran {len(experiments)} experiments; intervals need one.")
    if not task.data_loaded:
        task.load_data()
    labels = np.asarray(task.dataset[split][task.label_column_name])
    return np.asarray(experiments[0]) == labels


def _embedding_dimension(encoder: TextEncoder) -> int:
    for method in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        dimension = getattr(encoder, method, lambda: None)()
        if dimension is not None:
            return int(dimension)
    return int(np.asarray(encoder.encode(["dimension probe"], convert_to_numpy=True)).shape[1])


def _fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over the module's printed structure (its settings) and every tensor of its state."""
    digest = hashlib.sha256(repr(module).encode())
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def _writable_folder(folder: Path) -> Path:
    """Create ``folder`` and prove it writable, so a bad path fails before hours of embedding."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ResultsFolderError(f"Cannot write results to {folder}: {err.strerror or err}.") from err
    return folder
