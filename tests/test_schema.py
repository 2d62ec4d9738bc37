"""Validation: every kind of bad input gives one error naming table, column and first bad row."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.model.population import from_tables, read_population
from engine.model.schema import CATEGORIES, TABLES, PopulationError, schema


def _tables(pop):
    return {"households": pop.households, "neighbourhoods": pop.neighbourhoods,
            "municipalities": pop.municipalities}


def _set(table: pa.Table, column: str, row: int, value) -> pa.Table:
    arr = table.column(column).combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(pa.string())
    vals = arr.to_pylist()
    vals[row] = value
    new = pa.array(vals, type=arr.type)
    return table.set_column(table.column_names.index(column), column, new)


def _check(pop, table: str, new_table: pa.Table, column: str | None, row: int | None, words: str):
    t = _tables(pop)
    t[table] = new_table
    with pytest.raises(PopulationError) as err:
        from_tables(t["households"], t["neighbourhoods"], t["municipalities"], catalogue=pop.catalogue)
    e = err.value
    assert (e.table, e.column, e.row) == (table, column, row), str(e)
    assert words in str(e)
    assert str(e).startswith(f"{table}.{column}" if column else table)


def test_valid_population_passes(small_population):
    assert small_population.households.num_rows == 30_000
    assert small_population.municipalities.num_rows == 388
    assert small_population.neighbourhoods.num_rows == 3_070


def test_schema_carries_labels():
    field = schema("households").field("wealth")
    import json
    assert json.loads(field.metadata[b"labels"]) == list(CATEGORIES["wealth"])


@pytest.mark.parametrize("table", ["households", "neighbourhoods", "municipalities"])
def test_missing_column(small_population, table):
    t = _tables(small_population)[table]
    col = TABLES[table][-1].name
    _check(small_population, table, t.drop_columns([col]), col, None, "required column is missing")


def test_wrong_type(small_population):
    h = small_population.households
    bad = h.set_column(h.column_names.index("age_class"), "age_class",
                       pa.array(np.full(h.num_rows, 1.5), pa.float64()))
    _check(small_population, "households", bad, "age_class", None, "has type double")
    # strings are labels: an unknown one is refused at its first row
    bad = h.set_column(h.column_names.index("age_class"), "age_class",
                       pa.array(np.full(h.num_rows, "x", dtype=object), pa.string()))
    _check(small_population, "households", bad, "age_class", 0, "label 'x' is not a label of age_class")


def test_nan_and_infinity(small_population):
    nb = small_population.neighbourhoods
    _check(small_population, "neighbourhoods", _set(nb, "liveability", 17, float("nan")),
           "liveability", 17, "not finite")
    _check(small_population, "neighbourhoods", _set(nb, "liveability", 5, float("inf")),
           "liveability", 5, "not finite")


def test_missing_value(small_population):
    m = small_population.municipalities
    _check(small_population, "municipalities", _set(m, "spending_t", 3, None), "spending_t", 3, "missing value")


def test_out_of_range(small_population):
    h, nb, m = small_population.households, small_population.neighbourhoods, small_population.municipalities
    _check(small_population, "households", _set(h, "migration", 123, 7), "migration", 123,
           "code 7 has no label; expected codes: 0 = dutch, 1 = western, 2 = moroccan")
    _check(small_population, "households", _set(h, "benefit_paid", 9, -1.0), "benefit_paid", 9, "below the minimum")
    _check(small_population, "neighbourhoods", _set(nb, "share_non_working", 2, 1.5),
           "share_non_working", 2, "above the maximum")
    _check(small_population, "municipalities", _set(m, "inhabitants", 0, 0), "inhabitants", 0, "below the minimum")


def test_unknown_codes(small_population):
    h, nb = small_population.households, small_population.neighbourhoods
    _check(small_population, "households", _set(h, "municipality", 40, "GM9999"), "municipality", 40,
           "'GM9999' does not exist in municipalities")
    _check(small_population, "households", _set(h, "neighbourhood", 41, "WK99999999"), "neighbourhood", 41,
           "does not exist in neighbourhoods")
    _check(small_population, "neighbourhoods", _set(nb, "municipality", 8, "GM0000"), "municipality", 8,
           "does not exist")


def test_unknown_code_in_a_file_of_many_row_groups(small_population):
    """Codes read as one dictionary per row group (as the batched reader reads them): the first
    unknown code is named with its row counted from the table's start, as for one dictionary."""
    from engine.model.schema import code_positions

    h = small_population.households
    codes = np.asarray(small_population.municipalities.column("code").to_pylist(), dtype=object)
    col = h.column("municipality").combine_chunks().cast(pa.string())
    chunks = [col.slice(a, 1000).dictionary_encode() for a in range(0, len(col), 1000)]
    many = pa.chunked_array(chunks)
    one = col.dictionary_encode()
    assert np.array_equal(code_positions("households", "municipality", many, codes, "municipalities"),
                          code_positions("households", "municipality", one, codes, "municipalities"))
    row = 2500                                 # a row in the third chunk
    known = codes[codes != col[row].as_py()]
    with pytest.raises(PopulationError) as err:
        code_positions("households", "municipality", many, known, "municipalities")
    first = int(np.flatnonzero(col.to_numpy(zero_copy_only=False) == col[row].as_py())[0])
    assert (err.value.row, err.value.column) == (first, "municipality")
    assert f"{col[row].as_py()!r} does not exist in municipalities" in str(err.value)


def test_neighbourhood_in_other_municipality(small_population):
    h = small_population.households
    other = h.column("neighbourhood").combine_chunks().cast(pa.string())[h.num_rows - 1].as_py()
    _check(small_population, "households", _set(h, "neighbourhood", 0, other), "neighbourhood", 0,
           "lies in another municipality")


def test_duplicates(small_population):
    h, m = small_population.households, small_population.municipalities
    _check(small_population, "households", _set(h, "id", 500, 20), "id", 500, "duplicate value 20")
    _check(small_population, "municipalities", _set(m, "code", 5, m.column("code")[2].as_py()), "code", 5,
           "duplicate value")


def test_consistency_rules(small_population):
    h = small_population.households
    _check(small_population, "households", _set(_set(h, "adults_sharing", 3, 1), "adults_sharing_under_27", 3, 2),
           "adults_sharing_under_27", 3, "larger than adults_sharing")
    none = int(np.flatnonzero((h.column("bijstand").to_numpy() == 0) & (h.column("lks").to_numpy() == 0))[0])
    _check(small_population, "households", _set(h, "benefit_paid", none, 10.0), "benefit_paid", none,
           "neither bijstand nor LKS")
    bij = int(np.flatnonzero(h.column("bijstand").to_numpy() == 1)[0])
    _check(small_population, "households", _set(h, "lks", bij, 1), "lks", bij, "both bijstand and LKS")


def test_municipality_without_households(small_population):
    h = small_population.households
    first = h.column("municipality").combine_chunks().cast(pa.string())[0].as_py()
    keep = pc.not_equal(h.column("municipality").combine_chunks().cast(pa.string()), first)
    t = _tables(small_population)
    with pytest.raises(PopulationError) as err:
        from_tables(h.filter(keep), t["neighbourhoods"], t["municipalities"], catalogue=small_population.catalogue)
    assert (err.value.table, err.value.column, err.value.row) == ("municipalities", "code", 0)
    assert "has no households" in str(err.value)


def test_truncated_and_missing_files(small_world, tmp_path):
    bad = tmp_path / "pop"
    shutil.copytree(small_world, bad)
    data = (bad / "households.parquet").read_bytes()
    (bad / "households.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(PopulationError, match=r"^households: cannot read"):
        read_population(bad)
    (bad / "neighbourhoods.parquet").unlink()
    with pytest.raises(PopulationError, match=r"^neighbourhoods: file .* is missing"):
        read_population(bad)


def test_cli_validate_exit_codes(small_world, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "engine", "validate", str(small_world)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "pop"
    shutil.copytree(small_world, bad)
    m = pq.read_table(bad / "municipalities.parquet")
    pq.write_table(_set(m, "spending_t", 11, -5.0), bad / "municipalities.parquet")
    before = sorted(p.name for p in bad.iterdir())
    res = subprocess.run([sys.executable, "-m", "engine", "validate", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "municipalities.spending_t, row 11: value -5.0 is below the minimum 0" in res.stderr
    assert sorted(p.name for p in bad.iterdir()) == before


INT_CATEGORICAL = [c.name for c in TABLES["households"] if c.name in CATEGORIES]


@given(column=st.sampled_from(INT_CATEGORICAL), row=st.integers(0, 29_999), excess=st.integers(1, 100))
def test_any_single_bad_code_is_found_at_its_row(small_population, column, row, excess):
    h = small_population.households
    bad_value = len(CATEGORIES[column]) - 1 + excess
    _check(small_population, "households", _set(h, column, row, bad_value), column, row,
           f"code {bad_value} has no label; expected codes: 0 = {CATEGORIES[column][0]}")


@given(values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                                 st.integers(-300, 300).map(float)), min_size=1, max_size=40),
       cut=st.integers(0, 40), dtype=st.sampled_from(["float64", "float32", "int8", "int64", "uint64"]),
       lo=st.one_of(st.none(), st.integers(-5, 5), st.sampled_from([0.1, -0.3, 2.5])),
       hi=st.one_of(st.none(), st.integers(-5, 5), st.sampled_from([0.1, 0.3, 2.5])))
def test_min_max_shortcut_agrees_with_the_checks_that_name_the_row(values, cut, dtype, lo, hi):
    """The usual case is settled from each chunk's minimum and maximum (schema._all_within); it must
    say 'all good' exactly when Arrow's own checks (the ones validate falls back to) find no value
    that is not finite, below the minimum or above the maximum."""
    from types import SimpleNamespace

    from engine.model.schema import _all_within

    x = np.asarray(values)
    if dtype in ("int8", "int64", "uint64"):
        x = np.nan_to_num(x, nan=0.0, posinf=127, neginf=-128).clip(0 if dtype == "uint64" else -128, 127)
        if dtype == "int64" and all(isinstance(b, int) for b in (lo, hi) if b is not None):
            x = x + 2.0 ** 60 * (x > 100)       # beyond 2^53 (Arrow compares these with integer bounds only)
    x = x.astype(dtype)
    arr = pa.chunked_array([pa.array(x[:cut]), pa.array(x[cut:])], type=pa.array(x).type)
    bad = lambda mask: pc.any(mask).as_py() is True  # noqa: E731
    good = not ((pa.types.is_floating(arr.type) and bad(pc.invert(pc.is_finite(arr))))
                or (lo is not None and bad(pc.less(arr, lo))) or (hi is not None and bad(pc.greater(arr, hi))))
    assert _all_within(arr, SimpleNamespace(min=lo, max=hi)) == good
    # compared exactly, not rounded to float64: 2^53 + 1 is above a bound of 2^53
    big = pa.chunked_array([pa.array([2 ** 53 + 1], pa.int64())])
    assert not _all_within(big, SimpleNamespace(min=None, max=2.0 ** 53))


def test_nulls_in_a_dictionary_are_missing_values(small_population):
    """null_count does not see nulls among a dictionary's values: validate still names the row."""
    m = small_population.municipalities
    names = m.column("name").combine_chunks().cast(pa.string()).to_pylist()
    idx = np.arange(len(names), dtype=np.int32)
    idx[2] = len(names)                                   # row 2 points at the dictionary's null
    col = pa.DictionaryArray.from_arrays(pa.array(idx), pa.array(names + [None], pa.string()))
    assert col.null_count == 0
    new = m.set_column(m.column_names.index("name"), "name", col)
    _check(small_population, "municipalities", new, "name", 2, "missing value")
