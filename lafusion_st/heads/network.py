"""The paper's MLP head and its two-embedder residual fusions as one torch module, and how it is trained.

``HeadNetwork`` standardises its input (statistics of the training part, stored as buffers so the module is
the whole inference path), optionally builds the residual fusion term from the two embedders' blocks, and
runs ``Linear(d, 1024) - ReLU - Dropout(0.5) - Linear(1024, 256) - ReLU - Dropout(0.3) - Linear(256, k)``.

Residual fusions (Gwak & Jung), for blocks ``x1`` (``d1`` columns) and ``x2`` (``d2``), ``m = min(d1, d2)``:

* ``hadamard``: the larger block is projected to ``m`` by a linear layer (the second one when
  ``d1 == d2``), both are L2-normalised, ``h = x1' * x2'`` element-wise, and the MLP sees ``[x1, x2, h]``;
* ``sum``: both blocks are projected to ``m`` (linear + L2 norm), ``s = x1' + x2'``, the MLP sees
  ``[x1, x2, s]``.

Training (:func:`train_network`) holds out a stratified validation part *of the training data* and keeps
the weights of the epoch with the lowest validation loss, stopping after ``patience`` epochs without
improvement. The paper's released code picks its best epoch on the test split; we never see it here.
Everything random (initialisation, validation split, batch order, dropout) is drawn from ``seed``, in a
forked RNG so the caller's global torch RNG is untouched: on CPU the same seed gives the same weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from lafusion_st.errors import InvalidArgumentError

Residual = Literal["hadamard", "sum"]
TRAINING_THREADS = 1
"""Torch threads while training: the batches are small (32 x a few thousand), and on this project's busy
2-core machine one thread trained a test MLP in 6.4 s where two took 55 s (same weights)."""


class HeadNetwork(nn.Module):
    def __init__(
        self,
        member_dims: Sequence[int],
        hidden_sizes: Sequence[int],
        dropout: Sequence[float],
        num_classes: int,
        residual: Residual | None = None,
    ) -> None:
        super().__init__()
        width = int(sum(member_dims))
        self.member_dims = tuple(int(dim) for dim in member_dims)
        self.residual = residual
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        extra = 0
        if residual is not None:
            d1, d2 = self.member_dims
            extra = min(d1, d2)
            if residual == "hadamard":
                self.project = nn.Linear(max(d1, d2), extra)
            else:
                self.project_1 = nn.Linear(d1, extra)
                self.project_2 = nn.Linear(d2, extra)
        layers: list[nn.Module] = []
        previous = width + extra
        for size, rate in zip(hidden_sizes, dropout, strict=True):
            layers += [nn.Linear(previous, size), nn.ReLU(), nn.Dropout(rate)]
            previous = size
        layers.append(nn.Linear(previous, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[n, k]`` for raw (unstandardised) features ``[n, sum(member_dims)]``."""
        x = (x - self.mean) / self.scale
        if self.residual is not None:
            x1, x2 = torch.split(x, self.member_dims, dim=1)
            if self.residual == "hadamard":
                if x1.shape[1] > x2.shape[1]:
                    a, b = self.project(x1), x2
                else:
                    a, b = x1, self.project(x2)
                term = nn.functional.normalize(a, dim=1) * nn.functional.normalize(b, dim=1)
            else:
                term = nn.functional.normalize(self.project_1(x1), dim=1) + nn.functional.normalize(
                    self.project_2(x2), dim=1
                )
            x = torch.cat([x, term], dim=1)
        return self.mlp(x)


@dataclass(frozen=True)
class TrainingSettings:
    learning_rate: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    patience: int
    validation_fraction: float
    seed: int


@dataclass(frozen=True)
class TrainingRecord:
    best_epoch: int
    epochs_run: int
    best_validation_loss: float
    validation_size: int


def validation_indices(y_index: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified validation part of the training rows: ``round(fraction * n_c)`` rows of each class with at
    least two members (never its last one), so a class with a single example stays in the training part;
    at least one row (from the largest class) when rounding leaves none.

    Raises:
        ValueError: ``fraction`` outside (0, 0.5], or no class with two members to hold one out.
    """
    if not 0 < fraction <= 0.5:
        raise InvalidArgumentError(f"validation_fraction must be in (0, 0.5], got {fraction!r}.")
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(y_index, return_counts=True)
    if counts.max() < 2:
        raise InvalidArgumentError(
            "Every class has a single training example: early stopping needs a validation part, and holding one "
            "out would drop its class from training."
        )
    take = {label: min(int(round(fraction * count)), count - 1) for label, count in zip(labels, counts, strict=True)}
    if sum(take.values()) == 0:
        take[labels[np.argmax(counts)]] = 1
    chosen = [rng.permutation(np.flatnonzero(y_index == label))[:count] for label, count in take.items()]
    return np.sort(np.concatenate(chosen))


def train_network(
    network_factory,
    X: np.ndarray,
    y_index: np.ndarray,
    class_weights: np.ndarray,
    settings: TrainingSettings,
) -> tuple[HeadNetwork, TrainingRecord]:
    """Train ``network_factory()`` with Adam and early stopping on a validation part of ``(X, y_index)``.

    The factory is called inside the seeded RNG, so the initial weights depend on ``settings.seed`` only.
    Returns the network (eval mode, weights of the best validation epoch) and what happened.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    try:
        return _train(network_factory, X, y_index, class_weights, settings)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    network_factory, X: np.ndarray, y_index: np.ndarray, class_weights: np.ndarray, settings: TrainingSettings
) -> tuple[HeadNetwork, TrainingRecord]:
    held_out = validation_indices(y_index, settings.validation_fraction, settings.seed)
    train_rows = np.setdiff1d(np.arange(len(y_index)), held_out)
    x_train, y_train = torch.from_numpy(X[train_rows]), torch.from_numpy(y_index[train_rows]).long()
    x_val, y_val = torch.from_numpy(X[held_out]), torch.from_numpy(y_index[held_out]).long()
    loss_function = nn.CrossEntropyLoss(weight=torch.from_numpy(class_weights).float())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        network = network_factory()
        network.mean.copy_(x_train.mean(dim=0))
        network.scale.copy_(_safe_scale(x_train.std(dim=0, unbiased=False)))
        optimizer = torch.optim.Adam(
            network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        order = torch.Generator().manual_seed(settings.seed)
        best_loss, best_epoch, best_state, epoch = float("inf"), 0, copy.deepcopy(network.state_dict()), 0
        for epoch in range(1, settings.max_epochs + 1):
            network.train()
            for batch in torch.randperm(len(y_train), generator=order).split(settings.batch_size):
                optimizer.zero_grad()
                loss_function(network(x_train[batch]), y_train[batch]).backward()
                optimizer.step()
            network.eval()
            with torch.no_grad():
                loss = float(loss_function(network(x_val), y_val))
            if loss < best_loss:
                best_loss, best_epoch, best_state = loss, epoch, copy.deepcopy(network.state_dict())
            elif epoch - best_epoch >= settings.patience:
                break
    network.load_state_dict(best_state)
    network.eval()
    return network, TrainingRecord(best_epoch, epoch, best_loss, len(held_out))


def _safe_scale(std: torch.Tensor) -> torch.Tensor:
    """Standard deviations with constant columns mapped to 1, as ``StandardScaler`` does."""
    return torch.where(std < 10 * torch.finfo(std.dtype).eps, torch.ones_like(std), std)
