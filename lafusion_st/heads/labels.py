"""Class labels that keep their Python type through a JSON round trip.

Why: ``classes_`` of a fitted head may be ints (R8's ``0..7``), strings (``"positive"``) or bools, and a
loaded classifier must predict the same objects it predicted before saving. JSON alone would turn numpy
ints into ints but cannot tell ``1`` from ``1.0`` once read back into one numpy array, so the type is
stored beside the values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lafusion_st.errors import InvalidArgumentError

LABEL_TYPES = ("int", "float", "str", "bool")


def labels_to_json(classes: np.ndarray) -> dict[str, Any]:
    """``{"type": ..., "values": [...]}`` for a 1-D array of class labels (sorted, as sklearn keeps them)."""
    kind = classes.dtype.kind
    if kind == "b":
        label_type = "bool"
    elif kind in "iu":
        label_type = "int"
    elif kind == "f":
        label_type = "float"
    elif kind in "UO" and all(isinstance(value, str) for value in classes.tolist()):
        label_type = "str"
    else:
        raise TypeError(
            f"Class labels of dtype {classes.dtype} cannot be saved; use labels of the types {list(LABEL_TYPES)}."
        )
    return {"type": label_type, "values": classes.tolist()}


def labels_from_json(record: Any) -> np.ndarray:
    """The class labels saved by :func:`labels_to_json`, as a numpy array of their original type.

    Raises:
        ValueError: The record is malformed, of an unknown type, or its values are not of that type.
    """
    if (
        not isinstance(record, dict)
        or record.get("type") not in LABEL_TYPES
        or not isinstance(record.get("values"), list)
    ):
        raise InvalidArgumentError(
            f"Malformed labels record {record!r}: expected a type in {list(LABEL_TYPES)} and a values list."
        )
    python_type = {"int": int, "float": (int, float), "str": str, "bool": bool}[record["type"]]
    values = record["values"]
    if any(
        not isinstance(value, python_type) or (record["type"] == "int" and isinstance(value, bool)) for value in values
    ):
        raise InvalidArgumentError(f"Labels {values!r} are not all of the recorded type {record['type']!r}.")
    if len(set(values)) != len(values) or len(values) < 2:
        raise InvalidArgumentError(f"Labels {values!r} must be at least two distinct values.")
    dtype = {"int": np.int64, "float": np.float64, "str": None, "bool": bool}[record["type"]]
    return np.asarray(values, dtype=dtype)
