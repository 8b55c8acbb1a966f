"""Fitted tuned probes kept on disk by what they were fit on, so that no step fits the same probe twice.

Why: one configuration's tuned probe, fit on a whole training split, is needed by several steps: its test
score in ``lafusion run`` and ``eval/selection_runs.py``, the MTEB paper protocol (the same fit by
construction: the split's own rows and the scan's own vectors), and the :class:`~lafusion_st.LogisticHead`
of the heads table. On full R52 one such fit is 1 to 5 minutes of one core; the MTEB and heads steps took 34
minutes when they refit what the selection step had fit, 23 when they read it (eval/full/r52/rerun_fresh_machine.json).

The key is content, not names: the exact feature bytes (dtype and shape too), the labels' class codes, every
setting of the unfitted estimator, and the scikit-learn, SciPy and NumPy versions. A hit is therefore the fit
that would have been computed, attribute for attribute; a changed vector, label, setting or library refits.

Layout, one entry per key (under :func:`default_fit_cache_dir`)::

    <digest>.safetensors   every learned array of each step ("scale.mean_", "classify.coef_", ...)
    <digest>.json          sidecar, written last: format, what the key was made of, the learned scalars and
                           the list of attributes, the fit's wall and CPU seconds, the data file's sha256 and
                           its own
    <digest>.lock          held while a process fits or reads the entry

Only safetensors and JSON are read, never pickle, and only attribute names a fit produces (``name_``) on
the steps the estimator has are set. An entry found corrupt is warned about, removed and refit. Set
``LAFUSION_FIT_CACHE=off`` to neither read nor write it; a cache folder that cannot be written is used
read-only, with one warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import scipy
import sklearn
from filelock import FileLock
from safetensors import SafetensorError
from sklearn.base import BaseEstimator, clone
from sklearn.pipeline import Pipeline

from lafusion_st.files import (
    CorruptEntryError,
    atomic_path,
    cache_root,
    entry_lock,
    read_json_object,
    remove_entry_files,
    write_text_atomic,
)

FORMAT, FORMAT_VERSION = "lafusion-fit", 2
"""History: 1 = first; 2 = the sidecar records the fit's wall and CPU seconds (``fit_seconds``).
Entries of another version are refit and replaced (the key's fields changed too: another digest)."""
SWITCH_ENV = "LAFUSION_FIT_CACHE"
"""``off`` (or ``0``, ``false``, ``no``) disables the fit cache."""

_LEARNED_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*_")
"""What scikit-learn names a learned attribute (``coef_``, ``n_iter_``, ``Cs_`` lower-cased): the only names
an entry may set."""


class FitCacheWarning(UserWarning):
    """A cached fit was unreadable, or the cache could not be written; the probe is (re)fit."""


def default_fit_cache_dir() -> Path:
    """``fits/`` under :func:`lafusion_st.files.cache_root` (``$LAFUSION_CACHE/fits`` or ``~/.cache/lafusion/fits``)."""
    return cache_root() / "fits"


def fit_cache_enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "").strip().lower() not in ("off", "0", "false", "no")


@dataclass(frozen=True)
class FitKey:
    """Everything a deterministic fit depends on: equal keys give equal fitted estimators.

    Attributes:
        features_sha256: sha256 of the feature matrix's bytes (C order).
        shape: Its ``[rows, columns]``.
        dtype: Its dtype (float32 and float64 fits differ).
        codes_sha256: sha256 of the labels' class codes (``np.unique``'s inverse): scikit-learn fits on
            those, so ``["neg", "pos", ...]`` and ``[0, 1, ...]`` in the same pattern are one fit.
        classes: The number of classes.
        class_names: The classes themselves, only when a parameter is a dict (a ``class_weight`` keyed by
            label: ``{"b": 10}`` weighs another class of ``a, b`` than of ``b, c``); else empty, so that names
            and codes share an entry.
        settings: Every parameter of the unfitted estimator (:func:`estimator_settings`).
        libraries: The scikit-learn, SciPy (its L-BFGS) and NumPy versions.
    """

    features_sha256: str
    shape: tuple[int, ...]
    dtype: str
    codes_sha256: str
    classes: int
    class_names: str
    settings: str
    libraries: str

    @classmethod
    def of(cls, estimator: BaseEstimator, features: np.ndarray, labels: np.ndarray) -> FitKey:
        """The key of fitting ``estimator`` on ``features`` (C-contiguous: the caller fits exactly these bytes)."""
        if not features.flags.c_contiguous:
            raise ValueError("The fit cache keys C-contiguous features; pass np.ascontiguousarray(features).")
        classes, codes = np.unique(labels, return_inverse=True)
        params = estimator.get_params(deep=True).values()
        return cls(
            features_sha256=hashlib.sha256(features.data).hexdigest(),
            shape=tuple(features.shape),
            dtype=features.dtype.str,
            codes_sha256=hashlib.sha256(np.ascontiguousarray(codes, dtype="<i8").data).hexdigest(),
            classes=len(classes),
            class_names=repr(classes.tolist()) if any(isinstance(value, dict) for value in params) else "",
            settings=estimator_settings(estimator),
            libraries=f"scikit-learn {sklearn.__version__}, scipy {scipy.__version__}, numpy {np.__version__}",
        )

    def fields(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()[:32]


def estimator_settings(estimator: BaseEstimator) -> str:
    """Every parameter of ``estimator``, nested ones included, as sorted ``name=repr`` lines, with each
    step's class. Why not scikit-learn's ``repr``: it lists changed parameters only and cuts long ones
    (a 52-class ``class_weight``) with ``...``, so two settings could print alike."""
    params = estimator.get_params(deep=True)
    lines = [f"{name}={value!r}" for name, value in sorted(params.items()) if not _is_estimator_slot(name, value)]
    steps = [type(step).__qualname__ for _, step in estimator.steps] if isinstance(estimator, Pipeline) else []
    return "\n".join([f"class={type(estimator).__qualname__}{steps}", *lines])


def _is_estimator_slot(name: str, value: Any) -> bool:
    """A parameter holding a whole step (``steps``, ``scale``...): its own parameters are listed one by one."""
    return name == "steps" or isinstance(value, BaseEstimator)


@dataclass(frozen=True)
class FitEvent:
    """One fit :func:`cached_fit` gave: read from the cache or computed, and what the fit itself cost (when
    read, as measured when it was computed)."""

    cached: bool
    seconds: float
    cpu_seconds: float


_EVENTS: ContextVar[list[FitEvent] | None] = ContextVar("lafusion_fit_events", default=None)


@contextmanager
def fit_events() -> Iterator[list[FitEvent]]:
    """The fits made or read inside the block, in order. Why: a caller that reports what a fit costs (the
    heads table's fit time) must not report the milliseconds of a read as the time of a fit."""
    events: list[FitEvent] = []
    token = _EVENTS.set(events)
    try:
        yield events
    finally:
        _EVENTS.reset(token)


def cached_fit(
    estimator: Pipeline,
    features: np.ndarray,
    labels: np.ndarray,
    fit: Callable[[Pipeline], Pipeline],
    cache_dir: Path | None = None,
) -> Pipeline:
    """``estimator`` fitted on ``features`` and ``labels``: read from the cache, else ``fit(estimator)`` stored.

    Args:
        estimator: The unfitted pipeline (not modified on a hit: a restored clone is returned).
        features: ``[N, D]`` training features, exactly as ``fit`` sees them.
        labels: ``N`` labels, exactly as ``fit`` sees them.
        fit: Fits the estimator it is given and returns it (the caller's thread and warning settings).
        cache_dir: Default :func:`default_fit_cache_dir`.
    """
    if not fit_cache_enabled():
        return _timed(fit, estimator)[0]
    entry = FitCacheEntry(cache_dir or default_fit_cache_dir(), FitKey.of(estimator, features, labels))
    with entry_lock(entry.lock()) as refused:
        if refused is not None:  # a cache this process may not write: serve what is there, store nothing
            _warn_read_only(entry.lock_file.parent, refused.strerror or str(refused))
        found = entry.load(estimator, labels)
        if found is not None:
            return found
        fitted, event = _timed(fit, estimator)
        if refused is None:
            entry.store(fitted, event)
        return fitted


@cache
def _warn_read_only(folder: Path, reason: str) -> None:
    """Once per folder and reason: a read-only cache is read, not written."""
    message = f"The fit cache {folder} cannot be written ({reason}); reading it only."
    warnings.warn(message, FitCacheWarning, stacklevel=4)


def _timed(fit: Callable[[Pipeline], Pipeline], estimator: Pipeline) -> tuple[Pipeline, FitEvent]:
    start, cpu = time.perf_counter(), time.process_time()
    fitted = fit(estimator)
    event = FitEvent(cached=False, seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)
    _record(event)
    return fitted, event


def _record(event: FitEvent) -> None:
    events = _EVENTS.get()
    if events is not None:
        events.append(event)


class FitCacheEntry:
    """The files of one cached fit."""

    def __init__(self, cache_dir: Path, key: FitKey) -> None:
        stem = Path(cache_dir) / key.digest
        self.key = key
        self.data_file = stem.with_suffix(".safetensors")
        self.sidecar_file = stem.with_suffix(".json")
        self.lock_file = stem.with_suffix(".lock")

    def lock(self) -> FileLock:
        """The entry's inter-process lock, taken with :func:`~lafusion_st.files.entry_lock`."""
        return FileLock(str(self.lock_file))

    def load(self, estimator: Pipeline, labels: np.ndarray) -> Pipeline | None:
        """A clone of ``estimator`` carrying the stored fit, or ``None`` if absent; a corrupt entry is warned
        about, removed and ``None``."""
        if not self.sidecar_file.is_file():
            return None
        try:
            sidecar = read_json_object(self.sidecar_file, CorruptEntryError)
            if sidecar.get("format") != FORMAT:
                raise CorruptEntryError(f"format {sidecar.get('format')!r}")
            if sidecar.get("format_version") != FORMAT_VERSION:
                return None  # written by another lafusion: not damage; refit, and the new entry replaces it
            if sidecar.get("sidecar_sha256") != sidecar_checksum(sidecar):
                raise CorruptEntryError("the sidecar fails its checksum (edited or damaged)")
            if sidecar.get("key") != self.key.fields():
                raise CorruptEntryError("its key differs from the one asked for")
            data = self.data_file.read_bytes() if self.data_file.is_file() else b""
            if hashlib.sha256(data).hexdigest() != sidecar.get("sha256"):
                raise CorruptEntryError(f"{self.data_file.name} is missing or fails its checksum")
            arrays = _read_arrays(data)
            slots, present = sidecar.get("slots"), sorted([*arrays, *(sidecar.get("scalars") or {})])
            if not isinstance(slots, list) or sorted(map(str, slots)) != present:
                raise CorruptEntryError("its attributes are not the ones it lists")
            try:
                restored = _restored(estimator, labels, arrays, sidecar.get("scalars"))
            except (AttributeError, TypeError, ValueError) as error:  # e.g. an array of another shape
                raise CorruptEntryError(f"its attributes do not make a fitted estimator: {error}") from error
            cost = sidecar.get("fit_seconds")
            if not (isinstance(cost, list) and len(cost) == 2 and all(isinstance(x, int | float) for x in cost)):
                raise CorruptEntryError(f"fit_seconds is {cost!r}")
        except CorruptEntryError as error:
            warnings.warn(
                f"Fit cache entry {self.sidecar_file} is unusable ({error}); fitting again.",
                FitCacheWarning,
                stacklevel=4,
            )
            remove_entry_files(self.sidecar_file, self.data_file)  # a read-only cache keeps it
            return None
        _record(FitEvent(cached=True, seconds=float(cost[0]), cpu_seconds=float(cost[1])))
        return restored

    def store(self, fitted: Pipeline, event: FitEvent) -> None:
        """Write the learned attributes, then the sidecar; a folder that cannot be written, or an attribute
        of a kind it cannot hold (a future scikit-learn's), only warns."""
        try:
            arrays, scalars = _learned(fitted)
            data = safetensors.numpy.save(arrays)
            with atomic_path(self.data_file) as temporary:
                temporary.write_bytes(data)
            sidecar = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "key": self.key.fields(),
                "scalars": scalars,
                "slots": sorted([*arrays, *scalars]),
                "fit_seconds": [round(event.seconds, 3), round(event.cpu_seconds, 3)],  # wall, CPU
                "sha256": hashlib.sha256(data).hexdigest(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            sidecar["sidecar_sha256"] = sidecar_checksum(sidecar)
            write_text_atomic(self.sidecar_file, json.dumps(sidecar, indent=1))
        except (OSError, TypeError) as error:
            warnings.warn(f"Could not store a fit in {self.data_file.parent} ({error}).", FitCacheWarning, stacklevel=4)


def sidecar_checksum(sidecar: dict[str, Any]) -> str:
    """sha256 of a sidecar's fields but its own checksum: the learned scalars (``C_``...) live in the sidecar,
    outside the data file's checksum, and an edited one must not be served."""
    body = {name: value for name, value in sidecar.items() if name != "sidecar_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _learned(fitted: Pipeline) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every attribute the fit set on each step (those its unfitted clone lacks) but ``classes_`` (the labels
    give it back): arrays for safetensors, Python and NumPy scalars for JSON (``{"dtype": ..., "value": ...}``
    for NumPy ones). ``TypeError`` for one it cannot store, a private one included: an entry without it would
    not be the fit."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    for step_name, step in fitted.steps:
        unfitted = vars(clone(step))
        for name, value in vars(step).items():
            if name in unfitted or name == "classes_":
                continue
            slot = f"{step_name}.{name}"
            if not _LEARNED_NAME.fullmatch(name.lower()):
                raise TypeError(f"{slot} is not a public learned attribute; the fit cache cannot restore it.")
            if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
                arrays[slot] = np.ascontiguousarray(value)
            elif isinstance(value, np.generic) and value.dtype.kind in "biuf":
                scalars[slot] = {"dtype": value.dtype.str, "value": value.item()}
            elif isinstance(value, bool | int | float):
                scalars[slot] = value
            else:
                raise TypeError(f"{slot} is a {type(value).__name__}; the fit cache stores arrays and numbers only.")
    return arrays, scalars


def _read_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a data file already read (once: its checksum was taken from the same bytes)."""
    try:
        return safetensors.numpy.load(data)
    except SafetensorError as error:
        raise CorruptEntryError(f"the data file is not readable safetensors: {error}") from error


def _restored(estimator: Pipeline, labels: np.ndarray, arrays: dict[str, np.ndarray], scalars: Any) -> Pipeline:
    """A clone of ``estimator`` with the stored attributes set, and ``classes_`` from ``labels``, as a fit sets it."""
    if not isinstance(scalars, dict):
        raise CorruptEntryError("its scalars are not a JSON object")
    restored = clone(estimator)
    steps = dict(restored.steps)
    values: dict[str, Any] = dict(arrays)
    for slot, value in scalars.items():
        if isinstance(value, dict):
            try:
                dtype = np.dtype(value["dtype"])
                if dtype.kind not in "biuf":
                    raise TypeError(f"dtype {dtype} is not numeric")
                value = np.array(value["value"], dtype=dtype)[()]
            except (KeyError, TypeError, ValueError) as error:
                raise CorruptEntryError(f"scalar {slot} is {value!r}") from error
        elif not isinstance(value, bool | int | float):
            raise CorruptEntryError(f"scalar {slot} is {value!r}")
        values[slot] = value
    for slot, value in values.items():
        step_name, _, name = slot.partition(".")
        if step_name not in steps or not _LEARNED_NAME.fullmatch(name.lower()):
            raise CorruptEntryError(f"{slot!r} is not a learned attribute of this estimator's steps")
        setattr(steps[step_name], name, value)
    last = restored.steps[-1][1]
    classes = np.unique(labels)
    rows = 1 if len(classes) == 2 else len(classes)  # scikit-learn's binary logistic regression has one row
    coef = getattr(last, "coef_", None)
    if not isinstance(coef, np.ndarray) or coef.shape[0] != rows:
        raise CorruptEntryError("its coefficients do not match the classes")
    last.classes_ = classes
    return restored
