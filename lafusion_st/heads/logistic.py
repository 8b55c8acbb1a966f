"""LogisticHead: the tuned probe of ``lafusion run`` as a classifier you keep.

Standardised features -> logistic regression (softmax over classes), with ``C`` chosen by stratified inner
cross-validation on the training data unless given. With ``C=None`` the fit *is*
:func:`lafusion_st.probe.fit_tuned_probe` (one implementation of the grid, the inner folds and the solver
settings, whose defaults live in :class:`~lafusion_st.probe.ProbeConfig`), so the test accuracy ``lafusion
run`` reports is the accuracy of the head it saves in ``model/``. The fitted scaler statistics and
coefficients are kept as plain arrays: inference is a standardisation, one matrix product and a softmax,
which is also its ONNX graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from lafusion_st.errors import InvalidArgumentError
from lafusion_st.heads.base import Head
from lafusion_st.probe import ProbeConfig, fit_tuned_probe


class LogisticHead(Head):
    """Standardise, then logistic regression (softmax over classes).

    Args:
        C: Inverse L2 regularisation strength; ``None`` chooses it from ``Cs`` by ``folds``-fold stratified
            CV on the training data (accuracy): the tuned probe of ``lafusion run``.
        Cs: Candidate values of ``C`` for that inner CV (default: the probe's, ``ProbeConfig.Cs``).
        folds: Inner CV folds (default: the probe's ``ProbeConfig.inner_folds``; lowered, as the probe does,
            when no class has that many members).
        class_weight: ``None``, ``"balanced"`` or ``{label: weight}``, as in scikit-learn.
        max_iter: L-BFGS iteration cap (default ``ProbeConfig.max_iter``).
        tol: L-BFGS tolerance (default ``ProbeConfig.tol``).
        seed: Seed of the inner CV's fold shuffling (``ProbeConfig.seed``; ``lafusion run`` passes its own).
    """

    def __init__(
        self,
        C: float | None = None,
        Cs: Sequence[float] = ProbeConfig.Cs,
        folds: int = ProbeConfig.inner_folds,
        class_weight: str | dict | None = None,
        max_iter: int = ProbeConfig.max_iter,
        tol: float = ProbeConfig.tol,
        seed: int = ProbeConfig.seed,
    ) -> None:
        self.C = C
        self.Cs = Cs
        self.folds = folds
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed

    def _fit(self, X: np.ndarray, y_index: np.ndarray) -> None:
        if self.C is not None and not self.C > 0:
            raise InvalidArgumentError(f"C must be positive or None (chosen by CV), got {self.C!r}.")
        weights = self._class_weights(y_index)
        class_weight = None if self.class_weight is None else dict(enumerate(weights.tolist()))
        if self.C is None:
            config = ProbeConfig(
                seed=self.seed, max_iter=self.max_iter, tol=self.tol, Cs=tuple(self.Cs), inner_folds=self.folds
            )
            probe, self.C_ = fit_tuned_probe(X, y_index, config, class_weight=class_weight)
        else:
            probe = Pipeline(
                [
                    ("scale", StandardScaler()),
                    (
                        "classify",
                        LogisticRegression(C=self.C, class_weight=class_weight, max_iter=self.max_iter, tol=self.tol),
                    ),
                ]
            )
            with warnings.catch_warnings(), threadpool_limits(limits=1):
                warnings.simplefilter("ignore", ConvergenceWarning)
                probe.fit(X, y_index)
            self.C_ = float(self.C)
        scaler, model = probe[0], probe[-1]
        self.n_iter_ = int(np.max(model.n_iter_))
        coef, intercept = model.coef_, model.intercept_
        if len(self.classes_) == 2:  # sigmoid(z) == softmax([0, z])[1]: one form for every class count
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        self.mean_ = scaler.mean_.astype(np.float32)
        self.scale_ = scaler.scale_.astype(np.float32)
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = intercept.astype(np.float32)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Class scores ``[n, k]`` (``[n]`` for two classes: the score of ``classes_[1]``), as in scikit-learn."""
        scores = self._scores(self._check_features(X))
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def _scores(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_

    def _proba(self, X: np.ndarray) -> np.ndarray:
        scores = self._scores(X)
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "scale": self.scale_, "coef": self.coef_, "intercept": self.intercept_}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.mean_, self.scale_ = tensors["mean"], tensors["scale"]
        self.coef_, self.intercept_ = tensors["coef"], tensors["intercept"]

    def _tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        d, k = self.n_features_in_, len(self.classes_)
        return {"mean": (d,), "scale": (d,), "coef": (k, d), "intercept": (k,)}

    def _fitted_summary(self) -> dict[str, float]:
        return {"C": self.C_}
