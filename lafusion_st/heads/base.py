"""What every classification head shares: input checks, labels, class weights, and saving without pickle.

A head is a scikit-learn classifier on embedding vectors (``[n, d]`` float arrays). Subclasses implement
``_fit`` (on label indices ``0..k-1``), ``_proba``, and describe their learned state as named float32
arrays (``_tensors`` / ``_set_tensors`` / ``_tensor_shapes``). Saving writes those arrays to
``head.safetensors`` and everything else (class, parameters, labels with their type, input layout, the
weights' SHA-256) to ``head_config.json``; loading re-creates the head from an allow-list of classes and
checks every array's shape against what the config implies, so a tampered or mismatched folder fails
with a message instead of predicting nonsense.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from lafusion_st.errors import InvalidArgumentError, MissingFileError
from lafusion_st.files import file_sha256, write_text_atomic
from lafusion_st.heads.labels import labels_from_json, labels_to_json

CONFIG_FILE = "head_config.json"
WEIGHTS_FILE = "head.safetensors"
FORMAT = "lafusion-head"
FORMAT_VERSION = 1


class Head(ClassifierMixin, BaseEstimator):
    """Base class of lafusion's heads (not used directly).

    ``fit(X, y, member_dims=None)``: ``member_dims`` gives the sizes of the fused embedders' blocks in the
    columns of ``X`` (``FusedClassifier`` passes them); heads that fuse two embedders need exactly two.
    """

    REQUIRES_TWO_MEMBERS = False

    # ------------------------------------------------------------------------------------ sklearn API
    def fit(self, X: np.ndarray, y: Sequence, member_dims: Sequence[int] | None = None) -> Head:
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise InvalidArgumentError(
                f"The training labels have one class {classes.tolist()}; a head needs at least 2."
            )
        self.classes_ = classes
        self.member_dims_ = self._check_member_dims(member_dims, X.shape[1])
        self._fit(X.astype(np.float32, copy=False), y_index)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``[n, k]`` class probabilities, columns in the order of ``classes_``."""
        return self._proba(self._check_features(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        probabilities = self.predict_proba(X)
        return self.classes_[np.argmax(probabilities, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------------------------ for subclasses
    def _fit(self, X: np.ndarray, y_index: np.ndarray) -> None:
        raise NotImplementedError

    def _proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _tensors(self) -> dict[str, np.ndarray]:
        """The learned state as named float32 arrays (what ``head.safetensors`` holds)."""
        raise NotImplementedError

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape every learned array must have, given the parameters, ``n_features_in_``,
        ``member_dims_`` and ``classes_`` (checked on load)."""
        raise NotImplementedError

    def _fitted_summary(self) -> dict[str, Any]:
        """Learned scalars worth recording in the config (chosen ``C``, best epoch, ...)."""
        return {}

    def _class_weights(self, y_index: np.ndarray) -> np.ndarray:
        """One weight per class index from ``self.class_weight`` (``None``, ``"balanced"`` or a label -> weight
        dict), as :func:`sklearn.utils.class_weight.compute_class_weight` defines them (float64, as scikit-learn's
        own estimators weight their loss)."""
        class_weight = getattr(self, "class_weight", None)
        if isinstance(class_weight, dict):
            unknown = set(class_weight) - set(self.classes_.tolist())
            if unknown:
                raise InvalidArgumentError(
                    f"class_weight names labels {sorted(unknown, key=repr)} absent from the training labels."
                )
        labels = self.classes_[y_index]
        return compute_class_weight(class_weight, classes=self.classes_, y=labels)

    # ------------------------------------------------------------------------------------ checks
    def _check_features(self, X: Any) -> np.ndarray:
        """``X`` as float32 after scikit-learn's checks (fitted, 2-D, finite, ``n_features_in_`` columns)."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        return X.astype(np.float32, copy=False)

    def _check_member_dims(self, member_dims: Sequence[int] | None, width: int) -> tuple[int, ...]:
        dims = tuple(int(dim) for dim in member_dims) if member_dims is not None else (width,)
        if sum(dims) != width or any(dim < 1 for dim in dims):
            raise InvalidArgumentError(
                f"member_dims {list(dims)} must be positive and add up to the {width} feature columns."
            )
        if self.REQUIRES_TWO_MEMBERS and len(dims) != 2:
            raise InvalidArgumentError(
                f"{type(self).__name__} fuses exactly two embedders, got {len(dims)} block(s) {list(dims)}; use a "
                "two-model EmbedderSpec / MultiModelFuse with concat fusion, or MLPHead."
            )
        return dims

    # ------------------------------------------------------------------------------------ saving
    def save(self, folder: str | Path) -> Path:
        """Write ``head_config.json`` and ``head.safetensors`` into ``folder`` (created); no pickle."""
        check_is_fitted(self, "classes_")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in self._tensors().items()}
        save_file(tensors, str(folder / WEIGHTS_FILE))
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": params_to_json(self.get_params(deep=False)),
            "classes": labels_to_json(self.classes_),
            "n_features_in": int(self.n_features_in_),
            "member_dims": list(self.member_dims_),
            "tensors": {name: list(array.shape) for name, array in tensors.items()},
            "weights_sha256": file_sha256(folder / WEIGHTS_FILE),
            "fitted": self._fitted_summary(),
        }
        write_text_atomic(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        return folder

    @classmethod
    def _restore(cls, config: dict[str, Any], tensors: dict[str, np.ndarray], where: Path) -> Head:
        """A fitted head from a checked config and its arrays (called by :func:`lafusion_st.heads.load_head`)."""
        try:
            head = cls(**params_from_json(config["params"]))
        except TypeError as error:
            raise InvalidArgumentError(
                f"{where / CONFIG_FILE}: parameters do not fit {cls.__name__}: {error}"
            ) from error
        head.classes_ = labels_from_json(config["classes"])
        head.n_features_in_ = int(config["n_features_in"])
        head.member_dims_ = head._check_member_dims(config["member_dims"], head.n_features_in_)
        expected = {name: tuple(shape) for name, shape in head._tensor_shapes().items()}
        found = {name: tuple(array.shape) for name, array in tensors.items()}
        if found != expected:
            raise InvalidArgumentError(
                f"{where / WEIGHTS_FILE} does not match {where / CONFIG_FILE}: arrays {found}, expected {expected} for "
                f"{head.n_features_in_} features and {len(head.classes_)} classes. The head folder is damaged or "
                "mixed from two heads; save the classifier again."
            )
        head._set_tensors(tensors)
        for name, value in config.get("fitted", {}).items():
            setattr(head, f"{name}_", value)
        return head


def params_to_json(params: dict[str, Any]) -> dict[str, Any]:
    """Constructor parameters as JSON; a ``class_weight`` dict becomes ``[[label, weight], ...]`` so that
    non-string labels survive (JSON object keys are always strings)."""
    out = {}
    for name, value in params.items():
        if isinstance(value, dict):
            value = {"items": [[_plain(key), float(weight)] for key, weight in value.items()]}
        elif isinstance(value, (tuple, list)):
            value = [_plain(item) for item in value]
        else:
            value = _plain(value)
        out[name] = value
    return out


def params_from_json(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in params.items():
        if isinstance(value, dict) and set(value) == {"items"}:
            value = {key: weight for key, weight in value["items"]}
        elif isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def load_arrays(folder: Path, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """The head's arrays, after checking the weights file is the one the config was written with."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} is missing: the head folder is incomplete.")
    if file_sha256(path) != config.get("weights_sha256"):
        raise InvalidArgumentError(
            f"{path} does not match the SHA-256 recorded in {folder / CONFIG_FILE}: the file was changed."
        )
    return load_file(str(path))
