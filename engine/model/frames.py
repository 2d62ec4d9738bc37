"""Arrow tables for pandas: category codes with their labels, and the table's metadata.

``table.to_pandas()`` works on every table buig returns or writes (strings are plain
``string`` columns, codes ``dictionary<int32, string>``, no nested types). Two things it
cannot know: the household characteristics are ``int8`` codes whose labels sit in the
field metadata (``labels``, a JSON list), and the schema metadata of a table (the flag
level, kappa, TB) is dropped. :func:`labelled` and :func:`to_pandas` add both.
"""

from __future__ import annotations

import json

import pyarrow as pa


def labelled(table: pa.Table) -> pa.Table:
    """``table`` with every integer column whose field metadata has ``labels`` turned into a
    dictionary column of those labels (to_pandas: a ``Categorical``); other columns as they are."""
    columns, fields = [], []
    for field, column in zip(table.schema, table.columns):
        meta = field.metadata or {}
        if b"labels" in meta and pa.types.is_integer(field.type):
            labels = pa.array(json.loads(meta[b"labels"]), pa.string())
            column = pa.chunked_array([pa.DictionaryArray.from_arrays(c.cast(pa.int8()), labels) for c in column.chunks],
                                      pa.dictionary(pa.int8(), pa.string()))
            field = pa.field(field.name, column.type, field.nullable, meta)
        columns.append(column)
        fields.append(field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, table.schema.metadata))


def to_pandas(table: pa.Table):
    """A pandas ``DataFrame`` of ``table``: codes as labelled ``Categorical`` columns
    (:func:`labelled`), the schema metadata decoded into ``DataFrame.attrs``."""
    df = labelled(table).to_pandas()
    df.attrs.update({k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()
                     if k != b"pandas"})
    return df
