"""MLPHead: the paper's MLP classifier on fused embeddings, trained with early stopping on training data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch

from lafusion_st.errors import InvalidArgumentError
from lafusion_st.heads.base import Head
from lafusion_st.heads.network import HeadNetwork, Residual, TrainingSettings, train_network

PREDICT_BATCH = 1024


class MLPHead(Head):
    """``Linear(d, 1024) - ReLU - Dropout(0.5) - Linear(1024, 256) - ReLU - Dropout(0.3) - Linear(256, k)`` on
    standardised features, trained with Adam (see :mod:`lafusion_st.heads.network`).

    Args:
        hidden_sizes: Widths of the hidden layers (the paper's ``(1024, 256)``).
        dropout: Dropout after each hidden layer (the paper's ``(0.5, 0.3)``).
        learning_rate: Adam's learning rate.
        weight_decay: Adam's L2 penalty.
        batch_size: Texts per optimisation step.
        max_epochs: Upper bound on epochs.
        patience: Stop after this many epochs without a lower validation loss.
        validation_fraction: Share of each class's training examples held out for early stopping.
        class_weight: ``None``, ``"balanced"`` or ``{label: weight}`` (weights of the cross-entropy).
        seed: Seeds initialisation, validation split, batch order and dropout.
    """

    RESIDUAL: Residual | None = None

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (1024, 256),
        dropout: Sequence[float] = (0.5, 0.3),
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 32,
        max_epochs: int = 100,
        patience: int = 10,
        validation_fraction: float = 0.1,
        class_weight: str | dict | None = None,
        seed: int = 0,
    ) -> None:
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.seed = seed

    def _network(self) -> HeadNetwork:
        if len(self.hidden_sizes) != len(self.dropout):
            raise InvalidArgumentError(
                f"Give one dropout rate per hidden layer: {self.hidden_sizes} vs {self.dropout}."
            )
        return HeadNetwork(self.member_dims_, self.hidden_sizes, self.dropout, len(self.classes_), self.RESIDUAL)

    def _fit(self, X: np.ndarray, y_index: np.ndarray) -> None:
        for name in ("batch_size", "max_epochs", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}.")
        settings = TrainingSettings(
            self.learning_rate,
            self.weight_decay,
            self.batch_size,
            self.max_epochs,
            self.patience,
            self.validation_fraction,
            self.seed,
        )
        self.network_, record = train_network(self._network, X, y_index, self._class_weights(y_index), settings)
        for name, value in asdict(record).items():
            setattr(self, f"{name}_", value)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = torch.cat([self.network_(torch.from_numpy(part)) for part in _batches(X)]) if len(X) else None
        if logits is None:
            return np.empty((0, len(self.classes_)), dtype=np.float32)
        return torch.softmax(logits, dim=1).numpy()

    def _tensors(self) -> dict[str, np.ndarray]:
        return {name: tensor.detach().numpy() for name, tensor in self.network_.state_dict().items()}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.network_ = self._network()
        self.network_.load_state_dict({name: torch.from_numpy(array) for name, array in tensors.items()})
        self.network_.eval()

    def _tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(tensor.shape) for name, tensor in self._network().state_dict().items()}

    def _fitted_summary(self) -> dict[str, float | int]:
        return {
            "best_epoch": self.best_epoch_,
            "epochs_run": self.epochs_run_,
            "best_validation_loss": self.best_validation_loss_,
            "validation_size": self.validation_size_,
        }


def _batches(X: np.ndarray) -> list[np.ndarray]:
    return [X[start : start + PREDICT_BATCH] for start in range(0, len(X), PREDICT_BATCH)]
