"""ORTFusedEncoder: a lafusion ONNX export served by ONNX Runtime, with ``SentenceTransformer.encode``'s API.

Why its own class and not Optimum's ``ORTModelForFeatureExtraction``: that one needs torch and
transformers at run time, and the point of the export is a deployment that has neither. This module
imports only numpy, onnxruntime and tokenizers (tqdm and torch only if the caller asks for a progress bar
or tensors), so ``pip install --no-deps lafusion onnxruntime numpy tokenizers`` is enough to serve.

Multi-model exports hold one graph per member (each with its own tokenizer) and a tiny ``fusion.onnx``; the
encoder runs the members' graphs on the same texts and feeds their vectors to the fusion graph, so ONNX
Runtime alone produces the final vector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile

from lafusion_st.errors import InvalidArgumentError
from lafusion_st.modes import BATCH_SIZE
from onnx_export.errors import ExportedModelError, NonFiniteEmbeddingError
from onnx_export.manifest import DTYPES, read_manifest, spec_of, verify_files, verify_tokenizer
from onnx_export.providers import PROVIDERS, check_session_providers, requested_providers
from onnx_export.tokenization import MemberTokenizer

OUTPUT_NAME = "sentence_embedding"


@dataclass
class _Member:
    name: str
    tokenizer: MemberTokenizer
    session: ort.InferenceSession


class ORTFusedEncoder:
    """Encode texts with an exported fused embedder on ONNX Runtime (CUDA or CPU).

    Example::

        encoder = ORTFusedEncoder("smollm2-l16.onnx", provider="cpu")
        vectors = encoder.encode(["a great movie", "stocks fell"], batch_size=32, normalize_embeddings=True)

    Args:
        path: Folder written by :func:`onnx_export.export`.
        provider: ``auto`` (CUDA when ONNX Runtime can really use it, else CPU), ``cuda`` (raise
            :class:`~onnx_export.errors.ProviderUnavailableError` instead of falling back to CPU) or ``cpu``.
        dtype: Graph variant: ``fp32`` (validated against PyTorch at export), ``fp16`` or ``int8``; the
            variant must have been exported (``export(..., dtypes=(...))``). Its measured deviation from
            PyTorch is in ``encoder.manifest["variants"]``.
        num_threads: ONNX Runtime intra-op threads on CPU; ``None`` lets ONNX Runtime decide.

    Raises:
        ExportedModelError: Manifest, graph or external-data file missing, truncated or corrupted.
        TokenizerMismatchError: A tokenizer file is not the one exported with its graph.
        ProviderUnavailableError: ``provider="cuda"`` on a machine where CUDA cannot run.
        NonFiniteEmbeddingError: From :meth:`encode`, when a graph yields NaN or infinite coordinates.
    """

    def __init__(
        self, path: str | Path, provider: str = "auto", dtype: str = "fp32", num_threads: int | None = None
    ) -> None:
        if provider not in PROVIDERS:
            raise InvalidArgumentError(f"Unknown provider {provider!r}; choose one of {list(PROVIDERS)}.")
        if dtype not in DTYPES:
            raise InvalidArgumentError(f"Unknown dtype {dtype!r}; choose one of {list(DTYPES)}.")
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if dtype not in self.manifest["dtypes"]:
            raise InvalidArgumentError(
                f"{self.path} has no {dtype} graphs (exported: {self.manifest['dtypes']}); re-export with "
                f"onnx_export.export(..., dtypes=('fp32', '{dtype}')) or `lafusion export --dtype {dtype}`."
            )
        self.dtype = dtype
        self.provider = provider
        self._num_threads = num_threads
        self.members = [self._load_member(spec) for spec in self.manifest["members"]]
        fusion = self.manifest["model_fusion"]
        self.fusion_session = self._session(self.path, fusion) if fusion is not None else None
        self.embedding_dimension = int(self.manifest["embedding_dimension"])
        self.spec = spec_of(self.manifest)

    # ------------------------------------------------------------------------------------- loading
    def _load_member(self, spec: dict[str, Any]) -> _Member:
        folder = self.path / spec["folder"]
        tokenizer = MemberTokenizer(verify_tokenizer(folder, spec["tokenizer"]), spec["tokenizer"], spec["inputs"])
        return _Member(spec["name"], tokenizer, self._session(folder, spec["graphs"][self.dtype]))

    def _session(self, folder: Path, graph: dict[str, Any]) -> ort.InferenceSession:
        verify_files(folder, graph["files"])
        options = ort.SessionOptions()
        if self.dtype == "fp16":
            # ORT 1.31's level-3 (ENABLE_ALL) rewrites of fp16 graphs on CPU broke a Gemma-3 graph here (max abs
            # error 1.87 vs 0.015 at ENABLE_EXTENDED); the levels below it keep every transformer fusion.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        if self._num_threads is not None:
            options.intra_op_num_threads = self._num_threads
        graph_path = folder / graph["file"]
        try:
            session = ort.InferenceSession(str(graph_path), options, providers=requested_providers(self.provider))
        except (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile) as error:
            raise ExportedModelError(f"ONNX Runtime cannot load {graph_path}: {error}") from error
        check_session_providers(session, self.provider)
        return session

    # ------------------------------------------------------------------------------------ inference
    @property
    def providers(self) -> list[str]:
        """Execution providers the sessions really use (first = where the graphs run)."""
        return self.members[0].session.get_providers()

    @property
    def max_seq_length(self) -> int:
        return min(member.tokenizer.max_seq_length for member in self.members)

    @property
    def num_parameters(self) -> int:
        """Parameters of the exported (truncated) members, counted at export time."""
        return sum(int(spec["num_parameters"]) for spec in self.manifest["members"])

    @property
    def revision(self) -> str:
        """First 16 hex digits of a SHA-256 over the checksums of the graphs in use: same graphs, same revision."""
        graphs = [spec["graphs"][self.dtype]["files"] for spec in self.manifest["members"]]
        if self.manifest["model_fusion"] is not None:
            graphs.append(self.manifest["model_fusion"]["files"])
        checksums = "".join(record["sha256"] for files in graphs for _, record in sorted(files.items()))
        return hashlib.sha256(checksums.encode()).hexdigest()[:16]

    framework: tuple[str, ...] = ("ONNX",)
    """MTEB's framework name for this encoder (read by ``lafusion_st.evaluation.make_model_meta``)."""

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    get_sentence_embedding_dimension = get_embedding_dimension

    def tokenize(self, texts: list[str], prompt: str | None = None) -> list[dict[str, np.ndarray]]:
        """Graph inputs of every member for ``texts`` (each member has its own tokenizer)."""
        return [member.tokenizer(texts, prompt) for member in self.members]

    def run(self, member_inputs: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
        """Fused ``[batch, dim]`` float32 vectors from already tokenized inputs, one dict per member."""
        vectors = [
            member.session.run([OUTPUT_NAME], dict(inputs))[0]
            for member, inputs in zip(self.members, member_inputs, strict=True)
        ]
        if self.fusion_session is None:
            return vectors[0].astype(np.float32, copy=False)
        feeds = {f"member_{index}": vector.astype(np.float32, copy=False) for index, vector in enumerate(vectors)}
        return self.fusion_session.run([OUTPUT_NAME], feeds)[0]

    def encode(
        self,
        sentences: str | Sequence[str],
        prompt: str | None = None,
        batch_size: int = BATCH_SIZE,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
    ) -> Any:
        """Embed texts, with the arguments and return types of ``SentenceTransformer.encode``.

        Args:
            sentences: One text or a list of texts.
            prompt: Text prepended to every input (as sentence-transformers does for a plain prompt).
            batch_size: Texts per ONNX Runtime call; texts are sorted by length first, as in
                sentence-transformers, so batches pad little.
            show_progress_bar: Show a tqdm bar over batches (``None``: no bar).
            convert_to_numpy: Return one ``[n, dim]`` array (default); ``False`` returns a list of 1-D arrays.
            convert_to_tensor: Return a torch tensor (imports torch).
            normalize_embeddings: Scale each vector to unit L2 norm.

        Returns:
            ``[n, dim]`` (or ``[dim]`` for a single string) float32 embeddings.
        """
        single = isinstance(sentences, str)
        texts = [sentences] if single else sentences
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"encode() takes a string or a list of strings, got {type(sentences).__name__}.")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Input {index} is {type(text).__name__} ({text!r}); lafusion embeds strings only.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")

        vectors = np.empty((len(texts), self.embedding_dimension), dtype=np.float32)
        order = np.argsort([-len(text) for text in texts], kind="stable")  # prompt adds the same to every length
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Batches")
        for start in starts:
            batch = order[start : start + batch_size]
            vectors[batch] = self.run(self.tokenize([texts[index] for index in batch], prompt))
        if not np.isfinite(vectors).all():
            bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
            raise NonFiniteEmbeddingError(
                f"The {self.dtype} graphs of {self.path} gave NaN or infinite coordinates for input(s) "
                f"{bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}. This is an overflow of a reduced-precision "
                "variant or a damaged graph; use dtype='fp32' (validated against PyTorch at export)."
            )
        if normalize_embeddings:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

        if single:
            vectors = vectors[0]
        if convert_to_tensor:
            import torch

            return torch.from_numpy(vectors)
        if convert_to_numpy:
            return vectors
        return list(vectors)

    def __repr__(self) -> str:
        names = [member.name for member in self.members]
        return (
            f"ORTFusedEncoder(path={str(self.path)!r}, members={names}, dtype={self.dtype!r}, "
            f"providers={self.providers})"
        )
