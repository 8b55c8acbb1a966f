"""FusedClassifier: texts in, labels out; a fused embedder plus a head, as one scikit-learn estimator.

``FusedClassifier(embedder, head)`` is a ``BaseEstimator`` whose input is a list of texts: ``fit``,
``predict``, ``predict_proba``, ``decision_function`` (when the head has it) and ``score`` behave as in
scikit-learn, ``get_params``/``set_params``/``clone`` expose the head's parameters (``head__C``) and the
embedder itself (``{"embedder": [spec_a, spec_b]}`` in a grid), and learned state has trailing
underscores. Embeddings come from a process-wide cache keyed by the embedder's fingerprint and the text
(:mod:`lafusion_st.embedding_cache`), so folds and grid candidates embed each text once.

``clone`` shares the embedder object and the cache instead of deep-copying them: the embedder is frozen
(nothing here trains it) and a deep copy of an LLM per fold would cost memory and the cache.

Saved layout (no pickle): the embedder's SentenceTransformer folder, as ``lafusion build`` writes it, plus
``head/`` (``head_config.json`` + ``head.safetensors``, see :mod:`lafusion_st.heads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from lafusion_st import embedding_cache as caching
from lafusion_st.errors import InvalidArgumentError, MissingFileError
from lafusion_st.heads import Head, load_head, make_head
from lafusion_st.modes import BATCH_SIZE

HEAD_FOLDER = caching.HEAD_FOLDER


def _head_has(method: str):
    def check(self: FusedClassifier) -> bool:
        head = self.head_ if hasattr(self, "head_") else make_head(self.head)
        return hasattr(head, method)

    return check


class FusedClassifier(ClassifierMixin, BaseEstimator):
    """A text classifier: a (fused, frozen) embedder and a trainable head.

    Example::

        from lafusion_st import EmbedderSpec, FusedClassifier, LogisticHead

        clf = FusedClassifier("runs/mr/model", head=LogisticHead(class_weight="balanced"))
        clf.fit(train_texts, train_labels)
        clf.predict(["a gripping film"])
        clf.save("mr-classifier")
        FusedClassifier.load("mr-classifier").predict_proba(["a gripping film"])

    Args:
        embedder: An ``EmbedderSpec``, a saved embedder folder, or a ``SentenceTransformer``.
        head: A head object (``LogisticHead``, ``MLPHead``, ``HadamardResidualHead``, ``SumResidualHead``) or
            the name of one with default parameters: ``logistic``, ``mlp``, ``hadamard``, ``sum``. The
            residual heads need a two-model embedder with concat model fusion.
        batch_size: Texts per embedder forward pass.
        embedding_cache: Where embeddings are cached; ``None``: the process-wide
            :data:`~lafusion_st.embedding_cache.DEFAULT_CACHE`.
    """

    def __init__(
        self,
        embedder: Any,
        head: str | Head = "logistic",
        batch_size: int = BATCH_SIZE,
        embedding_cache: caching.EmbeddingCache | None = None,
    ) -> None:
        self.embedder = embedder
        self.head = head
        self.batch_size = batch_size
        self.embedding_cache = embedding_cache

    # ------------------------------------------------------------------------------------ sklearn API
    def fit(self, X: Sequence[str], y: Sequence) -> FusedClassifier:
        """Embed ``X`` (cached) and fit a fresh copy of ``head`` on the vectors and ``y``."""
        texts = _check_texts(X)
        if len(np.asarray(y)) != len(texts):
            raise InvalidArgumentError(f"Got {len(texts)} texts but {len(np.asarray(y))} labels.")
        head = make_head(self.head)
        vectors, member_dims = self.embed(texts)
        head.fit(vectors, y, member_dims=member_dims)
        self.head_ = head
        self.classes_ = head.classes_
        self.embedding_dimension_ = vectors.shape[1]
        return self

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """``[n, k]`` probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "head_")
        return self.head_.predict_proba(self.embed(_check_texts(X))[0])

    def predict(self, X: Sequence[str]) -> np.ndarray:
        check_is_fitted(self, "head_")
        return self.head_.predict(self.embed(_check_texts(X))[0])

    @available_if(_head_has("decision_function"))
    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        check_is_fitted(self, "head_")
        return self.head_.decision_function(self.embed(_check_texts(X))[0])

    def __sklearn_clone__(self) -> FusedClassifier:
        """Same parameters, a fresh unfitted head; the (frozen) embedder and the cache are shared."""
        params = self.get_params(deep=False)
        if isinstance(params["head"], Head):
            params["head"] = clone(params["head"])
        return type(self)(**params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------------------------ embedding
    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, tuple[int, ...]]:
        """``([n, d] vectors, member_dims)`` of ``texts`` from the cache, embedding only what it lacks."""
        texts = _check_texts(texts)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        key = caching.fingerprint(self.embedder)
        cache = self.embedding_cache if self.embedding_cache is not None else caching.DEFAULT_CACHE

        def compute(missing: list[str]) -> tuple[np.ndarray, tuple[int, ...]]:
            model = caching.load_model(self.embedder, key)
            dims = caching.member_dims(model)
            if not missing:
                return np.empty((0, sum(dims)), dtype=np.float32), dims
            vectors = model.encode(missing, batch_size=self.batch_size, convert_to_numpy=True)
            return vectors, dims

        return cache.embed(key, texts, compute)

    def embedder_model(self) -> Any:
        """The ``SentenceTransformer`` behind ``embedder`` (built or loaded once per process)."""
        return caching.load_model(self.embedder, caching.fingerprint(self.embedder))

    # ------------------------------------------------------------------------------------ saving
    def save(self, path: str | Path) -> Path:
        """Save the embedder (a SentenceTransformer folder) and the fitted head in ``path/head/``."""
        check_is_fitted(self, "head_")
        path = Path(path)
        self.embedder_model().save(str(path))
        self.head_.save(path / HEAD_FOLDER)
        return path

    @classmethod
    def load(cls, path: str | Path, **params: Any) -> FusedClassifier:
        """A fitted classifier from a folder written by :meth:`save` (no pickle; the head class comes from an
        allow-list). ``params`` are further constructor arguments (``batch_size``, ``embedding_cache``).

        Raises:
            FileNotFoundError: No embedder or no ``head/`` in ``path``.
            ValueError: The head is damaged or does not fit the embedder (dimension, member layout).
        """
        path = Path(path)
        if not (path / HEAD_FOLDER).is_dir():
            raise MissingFileError(
                f"{path} has no {HEAD_FOLDER}/ folder: it is not a saved FusedClassifier (an embedder alone "
                "has no labels; fit a FusedClassifier on it)."
            )
        return cls.from_parts(str(path), load_head(path / HEAD_FOLDER), **params)

    @classmethod
    def from_parts(cls, embedder: Any, head: Head, **params: Any) -> FusedClassifier:
        """A fitted classifier from an embedder and a head already fitted on its vectors (for example on vectors
        read from the scan cache, as ``lafusion run`` does), after checking that they fit together.

        Raises:
            ValueError: The head was fitted on another width or block layout than the embedder gives.
        """
        check_is_fitted(head, "classes_")
        classifier = cls(embedder=embedder, head=clone(head), **params)
        dims = caching.member_dims(classifier.embedder_model())
        if sum(dims) != head.n_features_in_ or (len(head.member_dims_) > 1 and dims != head.member_dims_):
            raise InvalidArgumentError(
                f"The head was fitted on {head.n_features_in_} features in blocks {list(head.member_dims_)}, but the "
                f"embedder {embedder} gives {sum(dims)} in blocks {list(dims)}: the head belongs to another embedder."
            )
        classifier.head_ = head
        classifier.classes_ = head.classes_
        classifier.embedding_dimension_ = head.n_features_in_
        return classifier


def _check_texts(X: Any) -> list[str]:
    if isinstance(X, str):
        raise TypeError("Expected a list of texts, got a single string; wrap it in a list.")
    try:
        texts = list(X)
    except TypeError as error:
        raise TypeError(f"Expected a list of texts, got {type(X).__name__}.") from error
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Input {index} is {type(text).__name__} ({text!r}); a FusedClassifier takes texts.")
    return texts
