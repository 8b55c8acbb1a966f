"""The head names ``FusedClassifier(head="...")`` accepts, and loading saved heads from that allow-list only."""

from __future__ import annotations

from pathlib import Path

from sklearn.base import clone

from lafusion_st.errors import InvalidArgumentError
from lafusion_st.files import read_versioned_json
from lafusion_st.heads.base import CONFIG_FILE, FORMAT, FORMAT_VERSION, Head, load_arrays
from lafusion_st.heads.hadamard_residual import HadamardResidualHead
from lafusion_st.heads.logistic import LogisticHead
from lafusion_st.heads.mlp import MLPHead
from lafusion_st.heads.sum_residual import SumResidualHead

HEADS: dict[str, type[Head]] = {
    "logistic": LogisticHead,
    "mlp": MLPHead,
    "hadamard": HadamardResidualHead,
    "sum": SumResidualHead,
}


def make_head(head: str | Head) -> Head:
    """An unfitted copy of ``head``: a head object (cloned) or the name of one with default parameters."""
    if isinstance(head, str):
        if head not in HEADS:
            raise InvalidArgumentError(f"Unknown head {head!r}; choose one of {list(HEADS)} or pass a head object.")
        return HEADS[head]()
    if not isinstance(head, Head):
        raise TypeError(
            f"head must be one of {list(HEADS)} or a lafusion head object "
            f"({', '.join(cls.__name__ for cls in HEADS.values())}), got {type(head).__name__}."
        )
    return clone(head)


def load_head(folder: str | Path) -> Head:
    """Load a head saved by ``Head.save``.

    Raises:
        FileNotFoundError: The folder, its config or its weights are missing.
        ValueError: The config is not a lafusion head config, names a class outside :data:`HEADS`, or does not
            match the weights (checksum, array shapes, label count).
    """
    folder = Path(folder)
    path = folder / CONFIG_FILE
    config = read_versioned_json(path, FORMAT, FORMAT_VERSION, missing=f"{folder} is not a saved lafusion head.")
    classes = {cls.__name__: cls for cls in HEADS.values()}
    if config.get("class") not in classes:
        raise InvalidArgumentError(
            f"{path} names head class {config.get('class')!r}; lafusion loads only {sorted(classes)}."
        )
    try:
        return classes[config["class"]]._restore(config, load_arrays(folder, config), folder)
    except KeyError as error:
        raise InvalidArgumentError(f"{path} lacks the field {error}.") from error
