"""Unlabelled texts to embed: JSON Lines, CSV, TSV, Parquet or plain text, read into one Arrow table.

Why Arrow and not :mod:`lafusion_st.data`: that module reads *labelled* training data into Python lists;
``lafusion embed`` reads inputs of millions of texts with no labels, which Arrow holds compactly and hands
to Ray Data (``ray.data.from_arrow``) without a copy. Every reader yields the same three columns:

* ``row``: the 0-based position in the input, the key of output shards and of resuming;
* ``id``: the user's id column when one is named (``--id-col``), else equal to ``row``;
* ``text``: the texts, as strings (empty strings allowed, missing values refused).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from lafusion_st.errors import DataFormatError, MissingFileError

TEXT_FORMATS = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".txt")
"""Suffixes read by :func:`read_text_table`; any other suffix is read as plain text, one text a line."""


def read_text_table(path: str | Path, text_col: str = "text", id_col: str | None = None) -> pa.Table:
    """Read the texts of ``path`` as a table with columns ``row``, ``id`` and ``text``.

    Args:
        path: A ``.jsonl``/``.ndjson`` (one JSON object a line), ``.csv``, ``.tsv`` (header row) or
            ``.parquet`` file; any other file is plain text with one text a line (a trailing newline does
            not add an empty text).
        text_col: The text field or column (ignored for plain text).
        id_col: A field or column to carry into the output as ``id``; default: the row number.

    Raises:
        MissingFileError: If ``path`` is not a file (a ``FileNotFoundError``).
        DataFormatError: If the file cannot be parsed as its suffix says (or is not UTF-8), a named column is
            missing (the columns present are listed), the text column holds non-strings, or a text is missing
            (its row is named); a ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"No such file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet"):
        try:
            table = _read_columns(path, suffix, text_col)
        except pa.ArrowInvalid as error:
            raise DataFormatError(f"{path} cannot be read as {suffix[1:].upper()}: {error}") from error
        text = _column(table, text_col, path)
    else:
        if id_col is not None:
            raise DataFormatError(f"{path} is plain text (one text a line): it has no column {id_col!r} to use as ids.")
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise DataFormatError(f"{path} is not UTF-8 text: {error}") from error
        lines = content.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        text = pa.array([line.removesuffix("\r") for line in lines], type=pa.string())
        table = None
    if not pa.types.is_string(text.type) and not pa.types.is_large_string(text.type):
        raise DataFormatError(f"{path}: column {text_col!r} holds {text.type}, not text.")
    if text.null_count:
        first = next(index for index, value in enumerate(text.is_null().to_pylist()) if value)
        raise DataFormatError(f"{path}: row {first} has no text in column {text_col!r}.")
    rows = pa.array(range(len(text)), type=pa.int64())
    ids = _column(table, id_col, path) if id_col is not None else rows
    return pa.table({"row": rows, "id": ids, "text": text.cast(pa.string())})


def _read_columns(path: Path, suffix: str, text_col: str) -> pa.Table:
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if suffix in (".csv", ".tsv"):
        from pyarrow import csv

        return csv.read_csv(
            path,
            parse_options=csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=True),
            # Texts stay texts: "NA", "null" or "" are sentences here, not missing values.
            # A text column of digits stays text.
            convert_options=csv.ConvertOptions(
                column_types={text_col: pa.string()}, strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
    from pyarrow import json

    return json.read_json(path)


def _column(table: pa.Table, name: str, path: Path) -> pa.Array:
    if name not in table.column_names:
        raise DataFormatError(f"{path} has no column {name!r}; its columns are {table.column_names}.")
    return table.column(name).combine_chunks()
