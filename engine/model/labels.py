"""Categorical columns read by their labels, never by position.

A categorical column of a population may come as

- integer codes with ``labels`` field metadata (a JSON list: the label of code 0, 1, ...), in
  any order: each code is mapped through its label to the catalogue's code;
- integer codes without metadata: taken as the catalogue's codes (a code out of range is an
  error that lists the expected code-to-label mapping);
- strings, or a dictionary of strings: each value is a label.

:func:`read_labels` returns the table with every categorical column replaced by the
catalogue's int8 codes, and indicator columns (bool or integer) as int8. An unknown label or
a label-less code raises :class:`engine.model.schema.PopulationError` naming the table, the
column, the label and the first row.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.model.schema import DEFAULT_CATALOGUE, Column, PopulationError, as_strings, tables


def mapping_text(labels: tuple[str, ...]) -> str:
    return ", ".join(f"{i} = {lab}" for i, lab in enumerate(labels))


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _metadata_labels(table_name: str, name: str, field: pa.Field | None) -> list[str] | None:
    meta = field.metadata if field is not None else None
    if not meta or b"labels" not in meta:
        return None
    try:
        labels = json.loads(meta[b"labels"].decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        labels = None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise PopulationError(table_name, name, None, "field metadata 'labels' is not a JSON list of strings")
    return labels


def _from_strings(table_name: str, col: Column, arr, start: int) -> np.ndarray:
    """Codes of string (or dictionary) values; an unknown label is an error."""
    ref = pa.array(col.labels, pa.string())
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    out = np.empty(len(arr), dtype=np.int8)
    pos = 0
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            look = pc.index_in(chunk.dictionary.cast(pa.string()), value_set=ref).fill_null(-1)
            codes = look.to_numpy(zero_copy_only=False)[chunk.indices.fill_null(0).to_numpy(zero_copy_only=False)]
        else:
            codes = pc.index_in(chunk.cast(pa.string()), value_set=ref).fill_null(-1).to_numpy(zero_copy_only=False)
        nulls = np.asarray(chunk.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if nulls.any():
            raise PopulationError(table_name, col.name, start + pos + _first_row(nulls), "missing value")
        if (codes < 0).any():
            r = _first_row(codes < 0)
            label = as_strings(chunk)[r].as_py()
            raise PopulationError(table_name, col.name, start + pos + r,
                                  f"label {label!r} is not a label of {col.name}; labels: {', '.join(col.labels)}")
        out[pos:pos + len(chunk)] = codes
        pos += len(chunk)
    return out


def _first_outside(codes: np.ndarray, n: int) -> int | None:
    """Row of the first code outside 0 .. n-1, or None: two reductions, a mask only on an error."""
    if codes.size == 0 or (codes.min() >= 0 and codes.max() < n):
        return None
    return _first_row((codes < 0) | (codes >= n))


def _from_codes(table_name: str, col: Column, arr, labels: list[str] | None, start: int) -> np.ndarray:
    if arr.null_count:
        nulls = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        raise PopulationError(table_name, col.name, start + _first_row(nulls), "missing value")
    # the file's integer type as it is (no int64 copy): comparisons and look-ups give the same codes
    codes = np.asarray(arr.to_numpy(zero_copy_only=False) if isinstance(arr, pa.Array) else arr.to_numpy())
    if labels is None:           # no metadata: the catalogue's codes
        r = _first_outside(codes, len(col.labels))
        if r is not None:
            raise PopulationError(table_name, col.name, start + r,
                                  f"code {codes[r]} has no label; expected codes: {mapping_text(col.labels)} "
                                  "(or give the labels as field metadata 'labels', or as strings)")
        return codes.astype(np.int8, copy=False)
    lut = np.full(len(labels), -1, dtype=np.int64)
    for i, lab in enumerate(labels):
        if lab in col.labels:
            lut[i] = col.labels.index(lab)
    r = _first_outside(codes, len(labels))
    if r is not None:
        raise PopulationError(table_name, col.name, start + r,
                              f"code {codes[r]} has no label in the column's metadata; its labels are: "
                              f"{mapping_text(tuple(labels))}")
    if np.array_equal(lut, np.arange(len(labels))):     # the catalogue's own order (as written by synth)
        return codes.astype(np.int8, copy=False)
    mapped = lut[codes]
    if (mapped < 0).any():
        r = _first_row(mapped < 0)
        raise PopulationError(table_name, col.name, start + r,
                              f"label {labels[codes[r]]!r} (code {codes[r]}) is not a label of {col.name}; "
                              f"expected: {mapping_text(col.labels)}")
    return mapped.astype(np.int8)


def read_labels(table_name: str, table: pa.Table, catalogue=None, schema: pa.Schema | None = None,
                start: int = 0) -> pa.Table:
    """``table`` with categorical columns as the catalogue's int8 codes (see the module docstring).

    ``schema``: the file's schema, whose field metadata holds the labels (default: the
    table's own); ``start``: the row of the table's first row in the file (for errors).
    """
    cols = {c.name: c for c in tables(catalogue)[table_name]}
    indicators = {e.name for e in (catalogue or DEFAULT_CATALOGUE).entries if e.kind == "indicator"}
    for name in table.column_names:
        col = cols.get(name)
        if col is None or table.column_names.count(name) > 1:
            continue
        arr = table.column(name)
        t = arr.type
        string_like = pa.types.is_string(t) or pa.types.is_large_string(t) or (
            pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)))
        if col.labels:
            if string_like:
                codes = _from_strings(table_name, col, arr, start)
            elif pa.types.is_integer(t):
                field = (schema or table.schema).field(name) if name in (schema or table.schema).names else None
                codes = _from_codes(table_name, col, arr, _metadata_labels(table_name, name, field), start)
            else:
                continue          # a wrong type: validate() reports it
        elif pa.types.is_boolean(t) and name in indicators:
            codes = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int8) if arr.null_count == 0 else None
            if codes is None:
                continue
        else:
            continue
        i = table.column_names.index(name)
        table = table.set_column(i, col.field(), pa.array(codes, pa.int8()))
    return table
