"""Arrow schemas of a population and their validation.

A population is three tables:

- ``households``: one row per household, categorical characteristics as small integers
  whose labels live in the field metadata (``labels``: a JSON list, code = position), or as
  strings; the characteristics are those of the catalogue (:mod:`engine.model.catalogue`);
- ``neighbourhoods``: one row per neighbourhood (CBS wijk code such as ``WK036301``);
- ``municipalities``: one row per municipality (CBS code such as ``GM0363``).

``validate(table_name, table, ...)`` raises :class:`PopulationError` naming the table,
the column and the first offending row; it never repairs anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.model.catalogue import Catalogue, Characteristic, load_catalogue

# Labels of the benefit duration class (an outcome, read by the W-deel and the granieten
# voorraad); the characteristics' labels are in the catalogue (engine/data/catalogues/).
DURATION_CLASSES = ("none", "lt1", "1-2", "2-4", "4-5", "gt5")
MAX_ADULTS_SHARING = 8


@dataclass(frozen=True)
class Column:
    """One column of a table: Arrow type, value range and meaning."""

    name: str
    type: pa.DataType
    doc: str
    min: float | None = None
    max: float | None = None
    code: bool = False  # a CBS code (string, possibly dictionary-encoded)
    pattern: str | None = None  # regular expression every value must match in full (key codes)
    labels: tuple[str, ...] = ()   # a categorical column: the label of each code

    def field(self) -> pa.Field:
        meta = {"doc": self.doc}
        if self.labels:
            meta["labels"] = json.dumps(self.labels)
        return pa.field(self.name, self.type, nullable=False, metadata=meta)


CODE = pa.dictionary(pa.int32(), pa.string())

# The structural columns (keys, law, outcomes, money); the characteristics between them come
# from the catalogue: households after "neighbourhood", neighbourhoods after "urbanity",
# municipalities after "households_t2".
_HOUSEHOLDS_HEAD = (
    Column("id", pa.int64(), "household id, unique"),
    Column("municipality", CODE, "CBS municipality code (GMxxxx)", code=True),
    Column("neighbourhood", CODE, "CBS wijk code (WKxxxxxx)", code=True),
)
_HOUSEHOLDS_TAIL = (
    Column("adults_sharing", pa.int8(), "co-resident adults aged 21+ outside the benefit unit", 0, MAX_ADULTS_SHARING),
    Column("adults_sharing_under_27", pa.int8(), "of adults_sharing, those aged 21-26", 0, MAX_ADULTS_SHARING),
    Column("bijstand", pa.int8(), "1 if the household receives bijstand on the reference date", 0, 1),
    Column("lks", pa.int8(), "1 if loonkostensubsidie (LKS) applies on the reference date", 0, 1),
    Column("benefit_paid", pa.float64(), "benefit (or LKS) paid over the year, EUR", 0, None),
    Column("duration_class", pa.int8(), "benefit duration on the reference date", 0, len(DURATION_CLASSES) - 1,
           labels=DURATION_CLASSES),
)
_NEIGHBOURHOODS_HEAD = (
    Column("code", pa.string(), "CBS wijk code", code=True, pattern="WK[0-9]{6}"),
    Column("name", pa.string(), "name"),
    Column("municipality", pa.string(), "CBS municipality code", code=True),
    Column("urbanity", pa.int8(), "CBS stedelijkheid, 1 (very strongly urban) to 5 (not urban)", 1, 5),
)
_MUNICIPALITIES_HEAD = (
    Column("code", pa.string(), "CBS municipality code", code=True, pattern="GM[0-9]{4}"),
    Column("name", pa.string(), "name"),
    Column("province", pa.string(), "province"),
    Column("region", pa.string(), "labour-market region code"),
    Column("inhabitants", pa.int64(), "inhabitants on the reference date (1 Jan t-1)", 1, None),
    Column("households", pa.int64(), "households 18-AOW on 1 Jan t-1", 0, None),
    Column("households_t2", pa.int64(), "households 18-AOW on 1 Jan t-2", 0, None),
)
_MUNICIPALITIES_TAIL = (
    Column("granieten_voorraad", pa.int64(), "persons more than 4 years on bijstand at the frozen base date", 0, None),
    Column("spending_t2", pa.float64(), "actual bijstand + LKS spending in t-2, EUR", 0, None),
    Column("spending_t", pa.float64(), "actual bijstand + LKS spending in t, EUR", 0, None),
    Column("wdeel_need", pa.float64(), "need for reintegration funds (W-deel), EUR", 0, None),
    Column("wdeel_target_group", pa.int64(), "size of the municipal target group (W-deel model 4)", 0, None),
)
STRUCTURAL = {"households": _HOUSEHOLDS_HEAD + _HOUSEHOLDS_TAIL, "neighbourhoods": _NEIGHBOURHOODS_HEAD,
              "municipalities": _MUNICIPALITIES_HEAD + _MUNICIPALITIES_TAIL}


def catalogue_column(e: Characteristic) -> Column:
    """The schema column of a catalogue characteristic."""
    doc = e.doc + (f" [{e.unit}]" if e.unit else "")
    if e.kind == "categorical":
        return Column(e.name, pa.int8(), doc, 0, len(e.labels) - 1, labels=e.labels)
    if e.kind == "indicator":
        return Column(e.name, pa.int8(), doc, 0, 1)
    if e.kind == "code":
        return Column(e.name, pa.string(), doc, code=True)
    return Column(e.name, pa.float64(), doc, e.min, e.max)


def tables(catalogue: Catalogue | None = None) -> dict[str, tuple[Column, ...]]:
    """The columns of the three tables under ``catalogue`` (default: the built-in ``default``)."""
    cat = catalogue if catalogue is not None else DEFAULT_CATALOGUE
    own = {t: tuple(catalogue_column(e) for e in cat.of_table(t)) for t in STRUCTURAL}
    clash = [c.name for t in STRUCTURAL for c in own[t] if c.name in {s.name for s in STRUCTURAL[t]}]
    if clash:
        raise ValueError(f"catalogue {cat.path or cat.name}: {clash[0]!r} is a structural column of the schema, "
                         "not a characteristic; rename it")
    return {"households": _HOUSEHOLDS_HEAD + own["households"] + _HOUSEHOLDS_TAIL,
            "neighbourhoods": _NEIGHBOURHOODS_HEAD + own["neighbourhoods"],
            "municipalities": _MUNICIPALITIES_HEAD + own["municipalities"] + _MUNICIPALITIES_TAIL}


DEFAULT_CATALOGUE = load_catalogue("default")
TABLES: dict[str, tuple[Column, ...]] = tables(DEFAULT_CATALOGUE)
# Labels of the categorical household columns of the default catalogue, and the duration classes.
CATEGORIES: dict[str, tuple[str, ...]] = {c.name: c.labels for c in TABLES["households"] if c.labels}


def schema(table_name: str, catalogue: Catalogue | None = None) -> pa.Schema:
    """The Arrow schema of ``households``, ``neighbourhoods`` or ``municipalities``."""
    return pa.schema([c.field() for c in tables(catalogue)[table_name]])


class PopulationError(ValueError):
    """A population table that does not satisfy its schema."""

    def __init__(self, table: str, column: str | None, row: int | None, problem: str):
        self.table, self.column, self.row, self.problem = table, column, row, problem
        where = table if column is None else f"{table}.{column}"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {problem}")


def check_finite(quantity: str, values, codes) -> None:
    """Stop (``ValueError``) when a stage produced a value that is not finite: the message names
    ``quantity`` and the first municipality (``codes[i]``) with one. ``values``: one per municipality,
    or (replicates, municipalities)."""
    v = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        col = np.flatnonzero(bad.reshape(-1, v.shape[-1]).any(axis=0))[0]
        raise ValueError(f"{quantity} is not finite for municipality {codes[col]} (row {col}): "
                         f"{v.reshape(-1, v.shape[-1])[:, col][bad.reshape(-1, v.shape[-1])[:, col]][0]}; "
                         "nothing was written for this stage")


def _first(mask) -> int | None:
    """Index of the first True in a boolean Arrow/NumPy array (nulls count as False), or None.
    The usual answer, None, costs one vectorised ``any`` and no conversion."""
    if hasattr(mask, "to_numpy"):
        if not pc.any(mask).as_py():
            return None
        mask = mask.to_numpy(zero_copy_only=False)
    arr = np.asarray(mask, dtype=bool)
    return int(np.argmax(arr)) if arr.any() else None


def _all_within(arr, col) -> bool:
    """True when a numeric column without nulls holds only finite values within the column's bounds,
    found from each chunk's minimum and maximum (NaN propagates into both): the usual case in
    one pass, without a mask per check. False sends the column to the checks that name the row."""
    floating = pa.types.is_floating(arr.type)
    if arr.null_count or not (pa.types.is_integer(arr.type) or floating):
        return False
    if not floating and col.min is None and col.max is None:
        return True
    for chunk in arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]:
        if len(chunk) == 0:
            continue
        x = chunk.to_numpy(zero_copy_only=False)
        # Python numbers: compared with the bounds exactly, as Arrow compares (float32 widened, no
        # rounding of int64 to float64), not by NumPy's scalar rules
        lo, hi = x.min().item(), x.max().item()
        if floating and not (np.isfinite(lo) and np.isfinite(hi)):
            return False
        if (col.min is not None and lo < col.min) or (col.max is not None and hi > col.max):
            return False
    return True


def _first_invalid_utf8(arr) -> int | None:
    """Row of the first string that is not valid UTF-8 (Parquet does not guarantee it), or None."""
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    start = 0
    for c in chunks:
        values = c.dictionary if pa.types.is_dictionary(c.type) else c
        try:
            values.validate(full=True)
        except pa.ArrowInvalid:
            raw = values.cast(pa.binary()) if not pa.types.is_large_string(values.type) else values.cast(pa.large_binary())
            bad = None
            for i, b in enumerate(raw.to_pylist()):
                try:
                    b is None or b.decode("utf-8")
                except UnicodeDecodeError:
                    bad = i
                    break
            if bad is not None:
                if pa.types.is_dictionary(c.type):
                    bad = _first(pc.equal(c.indices, bad))
                return start + bad
        start += len(c)
    return None


def _is_string_like(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _type_ok(col: Column, t: pa.DataType) -> bool:
    if col.code or pa.types.is_string(col.type):
        return _is_string_like(t)
    if pa.types.is_floating(col.type):      # not float16: 3 significant digits, maximum 65,504
        return pa.types.is_float32(t) or pa.types.is_float64(t) or pa.types.is_integer(t)
    if pa.types.is_integer(col.type):
        return pa.types.is_integer(t) and t.bit_width <= max(col.type.bit_width, 64)
    return t == col.type


def as_strings(arr) -> pa.ChunkedArray | pa.Array:
    """Decode a possibly dictionary-encoded string column to plain strings."""
    if pa.types.is_dictionary(arr.type):
        return arr.cast(arr.type.value_type)
    return arr


def code_positions(table_name: str, column: str, values, reference: np.ndarray,
                   reference_table: str) -> np.ndarray:
    """Map each code in ``values`` to its position in ``reference`` (int32).

    Raises :class:`PopulationError` at the first code that is not in ``reference``.
    Dictionary-encoded columns are mapped dictionary by dictionary, so 8 million rows
    cost a look-up per distinct code, not per row.
    """
    ref = pa.array(reference, pa.string())
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    found = lambda v: pc.index_in(v, value_set=ref).fill_null(-1).to_numpy(zero_copy_only=False)  # noqa: E731
    lookups = [None] * len(chunks)
    if len(chunks) > 1 and all(pa.types.is_dictionary(c.type) for c in chunks):
        # a file of many row groups: every chunk's dictionary looked up in one call, not a call per chunk
        sizes = np.cumsum([len(c.dictionary) for c in chunks])[:-1]
        lookups = np.split(found(pa.concat_arrays([c.dictionary.cast(pa.string()) for c in chunks])), sizes)
    out = np.empty(len(values), dtype=np.int32)
    start = 0
    for chunk, lookup in zip(chunks, lookups, strict=True):
        if pa.types.is_dictionary(chunk.type):
            lookup = found(chunk.dictionary.cast(pa.string())) if lookup is None else lookup
            pos = lookup[chunk.indices.to_numpy(zero_copy_only=False)]
        else:
            lookup = pos = found(chunk.cast(pa.string()))
        first = _first(pos < 0) if lookup.min(initial=0) < 0 else None    # rows searched only if a code is unknown
        if first is not None:
            code = as_strings(chunk)[first].as_py()
            raise PopulationError(table_name, column, start + first,
                                  f"code {code!r} does not exist in {reference_table}")
        out[start:start + len(chunk)] = pos
        start += len(chunk)
    return out


def validate(table_name: str, table: pa.Table, *, municipalities: np.ndarray | None = None,
             neighbourhoods: pa.Table | None = None, catalogue: Catalogue | None = None) -> dict[str, np.ndarray]:
    """Check one table against its schema; raise :class:`PopulationError` on the first problem.

    ``municipalities`` (codes) and ``neighbourhoods`` (the validated table) enable the
    cross-table checks: every referenced code must exist, and a household's
    neighbourhood must lie in its municipality. Returns, per code column so checked, the
    row of each value in the referenced table (int32), for the caller to reuse. The columns
    are the structural ones and the ``catalogue``'s (default: the built-in one); categorical
    columns are expected as canonical codes (:func:`engine.model.labels.read_labels` maps
    labels to them first).
    """
    cols = tables(catalogue)[table_name]
    names = set(table.column_names)
    for col in cols:
        if col.name not in names:
            raise PopulationError(table_name, col.name, None, "required column is missing")
    known, seen = {c.name for c in cols}, set()
    for name in table.column_names:
        if name not in known:
            where = f"catalogue {catalogue.path or catalogue.name}" if catalogue is not None else "the default catalogue"
            raise PopulationError(table_name, name, None, f"is not a column of the schema nor declared in {where}; "
                                  "remove it, or declare it in a catalogue (--catalogue FILE or catalogue.toml "
                                  "in the population folder)")
        if name in seen:
            raise PopulationError(table_name, name, None, "the column appears more than once")
        seen.add(name)
    if table.num_rows == 0:
        raise PopulationError(table_name, None, None, "the table has no rows")
    for col in cols:
        arr = table.column(col.name)
        if not _type_ok(col, arr.type):
            raise PopulationError(table_name, col.name, None,
                                  f"has type {arr.type}, expected {col.type}")
        # a dictionary's nulls can sit in its values, which null_count does not count
        first = _first(arr.is_null()) if arr.null_count or pa.types.is_dictionary(arr.type) else None
        if first is not None:
            raise PopulationError(table_name, col.name, first, "missing value")
        if _is_string_like(arr.type):
            first = _first_invalid_utf8(arr)
            if first is not None:
                raise PopulationError(table_name, col.name, first, "not valid UTF-8 text")
        if col.pattern is not None:
            values = as_strings(arr)
            first = _first(pc.invert(pc.match_substring_regex(values, f"^(?:{col.pattern})$")))
            if first is not None:
                raise PopulationError(table_name, col.name, first,
                                      f"code {values[first].as_py()!r} is not of the form {col.pattern}")
        if col.code or _is_string_like(arr.type) or _all_within(arr, col):
            continue
        if pa.types.is_floating(arr.type):
            first = _first(pc.invert(pc.is_finite(arr)))
            if first is not None:
                raise PopulationError(table_name, col.name, first, f"value {arr[first].as_py()} is not finite")
        if col.min is not None:
            first = _first(pc.less(arr, col.min))
            if first is not None:
                raise PopulationError(table_name, col.name, first,
                                      f"value {arr[first].as_py()} is below the minimum {col.min:g}")
        if col.max is not None:
            first = _first(pc.greater(arr, col.max))
            if first is not None:
                raise PopulationError(table_name, col.name, first,
                                      f"value {arr[first].as_py()} is above the maximum {col.max:g}")
    key = "id" if table_name == "households" else "code"
    check_unique(table_name, key, table.column(key))
    if table_name == "households":
        return _check_households(table, municipalities, neighbourhoods)
    if table_name == "neighbourhoods" and municipalities is not None:
        return {"municipality": code_positions(table_name, "municipality", table.column("municipality"),
                                               municipalities, "municipalities")}
    return {}


def check_unique(table_name: str, column: str, arr) -> None:
    if _is_string_like(arr.type):
        values = np.asarray(as_strings(arr).to_pylist(), dtype=object)
    else:
        values = arr.to_numpy()
    if values.size < 2:
        return
    if values.dtype != object and np.all(values[1:] > values[:-1]):
        return  # strictly increasing: the usual case, checked in one pass
    order = np.argsort(values, kind="stable")
    dup = values[order][1:] == values[order][:-1]
    if dup.any():
        rows = np.sort(order[1:][dup])
        value = values[rows[0]]
        value = value.item() if hasattr(value, "item") else value
        raise PopulationError(table_name, column, int(rows[0]), f"duplicate value {value!r}")


def _check_households(table: pa.Table, municipalities, neighbourhoods) -> dict[str, np.ndarray]:
    sharing = table.column("adults_sharing").to_numpy()
    under = table.column("adults_sharing_under_27").to_numpy()
    first = _first(under > sharing)
    if first is not None:
        raise PopulationError("households", "adults_sharing_under_27", first,
                              "is larger than adults_sharing")
    bij = table.column("bijstand").to_numpy()
    lks = table.column("lks").to_numpy()
    first = _first((bij == 1) & (lks == 1))
    if first is not None:
        raise PopulationError("households", "lks", first, "household has both bijstand and LKS")
    none = (bij == 0) & (lks == 0)
    first = _first(none & (table.column("benefit_paid").to_numpy() > 0))
    if first is not None:
        raise PopulationError("households", "benefit_paid", first,
                              "benefit paid to a household with neither bijstand nor LKS")
    first = _first(none & (table.column("duration_class").to_numpy() != 0))
    if first is not None:
        raise PopulationError("households", "duration_class", first,
                              "benefit duration for a household with neither bijstand nor LKS")
    rows = {}
    if municipalities is not None:
        rows["municipality"] = mpos = code_positions("households", "municipality", table.column("municipality"),
                                                     municipalities, "municipalities")
    if neighbourhoods is not None:
        rows["neighbourhood"] = npos = code_positions(
            "households", "neighbourhood", table.column("neighbourhood"),
            np.asarray(neighbourhoods.column("code").to_pylist(), dtype=object), "neighbourhoods")
        if municipalities is not None:
            nb_mun = code_positions("neighbourhoods", "municipality", neighbourhoods.column("municipality"),
                                    municipalities, "municipalities")
            first = _first(nb_mun[npos] != mpos)
            if first is not None:
                raise PopulationError("households", "neighbourhood", first,
                                      "neighbourhood lies in another municipality than the household")
    return rows
