"""Text-classification data: the bundled datasets, the user's own files, and sanity checks.

Everything downstream (layer scans, probes, MTEB tasks) works on one small container,
:class:`LabeledTexts`, so that the bundled datasets and a user's CSV go through the same path.
Loading is strict about the file format (a bad line is reported by file and 1-based line number)
and lenient about content: empty or whitespace-only texts are kept, because the embedding
modules define a vector for them, and a single-class label column loads fine, because whether
that is a problem depends on the use; :func:`check_classification_data` is the place for that.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from lafusion_st.errors import DataFormatError, InvalidArgumentError, MissingFileError

__all__ = [
    "BUNDLED_DATASETS",
    "SPLITS",
    "DataFormatError",
    "LabeledTexts",
    "check_classification_data",
    "load_bundled",
    "load_file",
    "load_task",
]

BUNDLED_DATASETS = ("sst2", "mr", "r8", "r52")
SPLITS = ("train", "test")
FILE_FORMATS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")


@dataclass(frozen=True)
class LabeledTexts:
    """Texts with one label each, in file order.

    Args:
        texts: The texts. Empty or whitespace-only strings are allowed.
        labels: One label per text, ``int`` or ``str``, kept as the data gives them (not mapped
            to 0..k-1), so that predictions and reports use the dataset's own label names.
    """

    texts: list[str]
    labels: list

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"got {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def classes(self) -> list:
        """The distinct labels, sorted, so that class order is the same on every run."""
        return sorted(set(self.labels))

    def fingerprint(self) -> str:
        """SHA-256 of the texts and labels in order: recorded in a run's report, so that a finished selection
        is reused only for the very data it was made on (same size is not same data)."""
        return hashlib.sha256(json.dumps([self.texts, self.labels], default=str).encode("utf-8")).hexdigest()

    def subsample(self, n: int, seed: int = 0) -> LabeledTexts:
        """A stratified random subset of ``n`` examples, e.g. for quick layer scans.

        Each class gets its proportional share ``n * class_size / len(self)``, rounded by the
        largest-remainder method (the rounding sklearn's stratified splits use), but at least
        one example, so no class disappears: a class with a single example (R52 has one) is always
        in the sample, and when ``n`` is small the rare classes are over-represented at the
        expense of the largest ones. ``train_test_split(stratify=...)`` itself is not used
        because it rejects classes with one member and drops classes whose share rounds to zero.

        Args:
            n: Number of examples wanted. ``n >= len(self)`` returns ``self`` unchanged.
            seed: Seed of the random choice; the same seed gives the same subset.

        Returns:
            The subset, in the original order.

        Raises:
            ValueError: If ``n`` is smaller than the number of classes, since then some class
                would have to be dropped.
        """
        if n >= len(self):
            return self
        classes = self.classes
        if n < len(classes):
            raise ValueError(
                f"cannot keep all {len(classes)} classes in a subsample of {n}; "
                f"ask for at least {len(classes)} examples"
            )
        index_by_class: dict = {c: [] for c in classes}
        for i, label in enumerate(self.labels):
            index_by_class[label].append(i)
        share = {c: n * len(index_by_class[c]) / len(self) for c in classes}
        quota = {c: max(1, int(share[c])) for c in classes}
        # Largest remainder: give the places left to the classes furthest below their share, or,
        # when the minimum of one per class overshoots n, take places from those furthest above.
        while (total := sum(quota.values())) != n:
            if total < n:
                quota[max(classes, key=lambda c: share[c] - quota[c])] += 1
            else:
                above = [c for c in classes if quota[c] > 1]
                quota[min(above, key=lambda c: share[c] - quota[c])] -= 1
        rng = np.random.default_rng(seed)
        chosen = sorted(int(i) for c in classes for i in rng.choice(index_by_class[c], quota[c], replace=False))
        return LabeledTexts([self.texts[i] for i in chosen], [self.labels[i] for i in chosen])


def load_bundled(name: str, split: str) -> LabeledTexts:
    """Load one split of a dataset shipped inside the package (works offline).

    Args:
        name: One of :data:`BUNDLED_DATASETS` (see ``lafusion_st/datasets/README.md`` for their
            provenance and reference accuracies).
        split: ``"train"`` or ``"test"``.

    Raises:
        ValueError: For an unknown name or split, listing the valid ones.
    """
    if name not in BUNDLED_DATASETS:
        raise InvalidArgumentError(f"unknown bundled dataset {name!r}; choose one of {list(BUNDLED_DATASETS)}")
    if split not in SPLITS:
        raise InvalidArgumentError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    resource = resources.files("lafusion_st") / "datasets" / f"{name}_{split}.jsonl.gz"
    with resource.open("rb") as fh:
        raw = gzip.decompress(fh.read())
    return _parse_jsonl(raw.decode("utf-8"), f"bundled {name}_{split}", "text", "label")


def load_file(path: str | Path, text_col: str = "text", label_col: str = "label") -> LabeledTexts:
    """Load the user's own labelled texts from a JSON Lines, CSV or TSV file.

    The format follows the suffix: ``.jsonl``/``.ndjson``/``.json`` (one JSON object a line),
    ``.csv`` or ``.tsv`` (a header row naming the columns; both follow Python's ``csv`` quoting
    rules, as written by pandas ``to_csv``), each optionally gzipped (``.gz``).
    The file must be UTF-8 (a byte-order mark is accepted). JSON labels must be ints or strings,
    all of one type. CSV/TSV cells are strings; a label column whose every value is a plain
    integer (``"0"``, ``"12"``, ``"-1"``) is turned into ints, so that a CSV and a JSONL copy of
    the same data have the same labels. Empty texts are kept; blank lines are skipped.

    Args:
        path: The file.
        text_col: Name of the text field or column.
        label_col: Name of the label field or column.

    Raises:
        DataFormatError: If the file cannot be read as labelled texts; the message names the file,
            the 1-based line number and what is wrong.
        FileNotFoundError: If the file does not exist.
    """
    path = Path(path)
    compressed = path.name.lower().endswith(".gz")
    fmt = Path(path.name.lower().removesuffix(".gz")).suffix
    if fmt not in FILE_FORMATS:
        raise DataFormatError(
            f"{path}: unsupported file type {fmt or '(no suffix)'}; "
            f"use one of {list(FILE_FORMATS)}, optionally followed by .gz"
        )
    if not path.is_file():
        raise MissingFileError(f"No such data file: {path}")
    raw = path.read_bytes()
    if compressed:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataFormatError(f"{path}: not a valid gzip file ({err})") from err
    text = _decode_utf8(raw, path)
    if not text.strip():
        raise DataFormatError(f"{path}: the file is empty")
    if fmt in (".csv", ".tsv"):
        return _parse_csv(text, path, text_col, label_col, "\t" if fmt == ".tsv" else ",")
    return _parse_jsonl(text, path, text_col, label_col)


def check_classification_data(train: LabeledTexts, test: LabeledTexts | None = None) -> None:
    """Check that a train/test pair can train and evaluate a classifier.

    Kept apart from loading so that a single-class file can still be loaded (and embedded); call
    this before fitting a probe.

    Args:
        train: The training split.
        test: The test split, if any.

    Raises:
        ValueError: If a split is empty, the training split has fewer than two classes, or the
            test split has labels that never occur in training (they are named).
    """
    if len(train) == 0:
        raise ValueError("the training split is empty")
    if test is not None and len(test) == 0:
        raise ValueError("the test split is empty")
    classes = set(train.labels)
    if len(classes) < 2:
        raise ValueError(
            f"the training split has {len(classes)} class ({sorted(classes, key=repr)}); a classifier needs at least 2"
        )
    if test is not None:
        unseen = Counter(label for label in test.labels if label not in classes)
        if unseen:
            counts = sorted(unseen.items(), key=repr)
            listed = ", ".join(f"{label!r} ({count}x)" for label, count in counts)
            raise ValueError(
                f"the test split has labels that never occur in training: {listed}; "
                f"training labels are {sorted(classes, key=repr)}"
            )


def load_task(
    task: str | None = None,
    train: str | Path | None = None,
    test: str | Path | None = None,
    text_col: str = "text",
    label_col: str = "label",
) -> tuple[LabeledTexts, LabeledTexts]:
    """Load a train/test pair, either a bundled dataset or the user's two files.

    One entry point for the CLI and scripts, so that a bundled task and one's own data are
    interchangeable. The pair is not checked here; see :func:`check_classification_data`.

    Args:
        task: Name of a bundled dataset (one of :data:`BUNDLED_DATASETS`).
        train: The user's training file (see :func:`load_file` for formats).
        test: The user's test file.
        text_col: Text field or column name in the user's files (bundled data uses ``"text"``).
        label_col: Label field or column name in the user's files (bundled data uses ``"label"``).

    Returns:
        ``(train, test)``.

    Raises:
        ValueError: Unless exactly one of ``task`` or the pair ``train``/``test`` is given.
    """
    if task is not None:
        if train is not None or test is not None:
            raise InvalidArgumentError("give either a bundled task or train/test files, not both")
        return load_bundled(task, "train"), load_bundled(task, "test")
    if train is None or test is None:
        raise InvalidArgumentError(
            f"give a bundled task (one of {list(BUNDLED_DATASETS)}) or both a train and a test file"
        )
    return load_file(train, text_col, label_col), load_file(test, text_col, label_col)


def _decode_utf8(raw: bytes, path: Path) -> str:
    """Decode strictly, because a silently mis-decoded text gives a wrong vector later."""
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = raw.count(b"\n", 0, offset) + 1
        raise DataFormatError(
            f"{path}: line {line}: byte {raw[offset : offset + 1]!r} at byte offset {offset} is not "
            "valid UTF-8; re-encode the file as UTF-8 (e.g. `iconv -f cp1252 -t utf-8 in > out`)"
        ) from None


def _parse_jsonl(text: str, source: str | Path, text_col: str, label_col: str) -> LabeledTexts:
    texts: list[str] = []
    labels: list = []
    first_label_line = 0  # where the label type was fixed, for the mixed-type message
    # split("\n"), not splitlines(): JSON strings may legally hold U+2028 and similar characters.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{source}: line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            hint = ""
            if line.lstrip().startswith("["):
                hint = " (expected JSON Lines: one object a line, not a JSON array)"
            message = f"{where}: invalid JSON: {err.msg} at column {err.colno}{hint}"
            raise DataFormatError(message) from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for column in (text_col, label_col):
            if column not in row:
                raise DataFormatError(f"{where}: no {column!r} field; fields present: {list(row)}")
        value, label = row[text_col], row[label_col]
        if not isinstance(value, str):
            raise DataFormatError(f"{where}: {text_col!r} must be a string, got {type(value).__name__} {value!r}")
        _check_label(label, where, label_col)
        if labels and type(label) is not type(labels[0]):
            raise DataFormatError(
                f"{where}: label {label!r} is {type(label).__name__} but the label on line "
                f"{first_label_line} is {type(labels[0]).__name__} {labels[0]!r}; "
                "use one type for all labels"
            )
        if not labels:
            first_label_line = number
        texts.append(value)
        labels.append(label)
    if not texts:
        raise DataFormatError(f"{source}: the file is empty")
    return LabeledTexts(texts, labels)


def _parse_csv(text: str, path: Path, text_col: str, label_col: str, delimiter: str) -> LabeledTexts:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    texts: list[str] = []
    labels: list = []
    try:
        header = next(row for row in reader if row)
        for column in (text_col, label_col):
            if column not in header:
                raise DataFormatError(
                    f"{path}: line {reader.line_num} (header): no {column!r} column; columns present: {header}"
                )
        text_at, label_at = header.index(text_col), header.index(label_col)
        line_end = reader.line_num
        for row in reader:
            where = f"{path}: line {line_end + 1}"  # a quoted cell may span lines: name the first
            line_end = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise DataFormatError(f"{where}: expected {len(header)} fields like the header, got {len(row)}")
            _check_label(row[label_at], where, label_col)
            texts.append(row[text_at])
            labels.append(row[label_at])
    except csv.Error as err:
        raise DataFormatError(f"{path}: line {reader.line_num}: {err}") from None
    if not texts:
        raise DataFormatError(f"{path}: the file has a header but no data rows")
    if all(re.fullmatch(r"0|-?[1-9][0-9]*", label) for label in labels):
        labels = [int(label) for label in labels]
    return LabeledTexts(texts, labels)


def _check_label(label: object, where: str, label_col: str) -> None:
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise DataFormatError(
            f"{where}: {label_col!r} must be an int or a string, got {type(label).__name__} {label!r}"
        )
    if isinstance(label, str) and not label.strip():
        raise DataFormatError(f"{where}: {label_col!r} is empty")
