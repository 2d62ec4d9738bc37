"""Households read in batches (engine.model.population.stream_population, engine.model.design.read_households):
the same arrays and the same errors as reading and validating the whole table."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.model.design import households_from_population, read_households
from engine.model.population import read_population
from engine.model.schema import CATEGORIES, MAX_ADULTS_SHARING, PopulationError
from test_schema import _set

BATCH = 4096                       # the 30,000-household world in 8 batches


@pytest.fixture(scope="module")
def folder(small_world, tmp_path_factory):
    """A copy of the small world whose households.parquet the tests overwrite (restored after each)."""
    out = tmp_path_factory.mktemp("stream_world")
    for f in small_world.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def households(small_population):
    return small_population.households


def _write(folder, table: pa.Table, row_group: int = 1000) -> None:
    pq.write_table(table, folder / "households.parquet", row_group_size=row_group)


def _errors(folder) -> tuple[tuple, tuple]:
    """(table, column, row, message) from read_population and from read_households."""
    got = []
    for read in (read_population, lambda p: read_households(p, batch_rows=BATCH)):
        with pytest.raises(PopulationError) as err:
            read(folder)
        e = err.value
        got.append((e.table, e.column, e.row, str(e)))
    return got[0], got[1]


@pytest.mark.parametrize("batch_rows", [BATCH, 7_777, 1 << 20])
def test_same_arrays_as_the_whole_table(small_world, small_population, batch_rows):
    hh, municipalities, truth = read_households(small_world, batch_rows=batch_rows)
    want = households_from_population(small_population)
    for f in dataclasses.fields(want):
        a, b = getattr(hh, f.name), getattr(want, f.name)
        if not isinstance(b, np.ndarray):            # metadata: factor names, catalogue, region codes
            if isinstance(b, dict):
                assert b.keys() == a.keys() and all(np.array_equal(a[k], b[k]) for k in b), f.name
            else:
                assert a == b, f.name
            continue
        assert a.dtype == b.dtype, f.name
        np.testing.assert_array_equal(a, b, err_msg=f.name)
    assert municipalities.equals(small_population.municipalities) and truth == small_population.truth


COLUMNS = ["household_type", "wealth", "duration_class", "adults_sharing"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.sampled_from(COLUMNS), rows=st.lists(st.integers(0, 29_999), min_size=1, max_size=3),
       excess=st.integers(1, 50))
def test_a_bad_value_in_any_batch_gives_the_same_error(folder, households, column, rows, excess):
    top = len(CATEGORIES[column]) - 1 if column in CATEGORIES else MAX_ADULTS_SHARING
    table = households
    for r in rows:
        table = _set(table, column, r, top + excess)
    try:
        _write(folder, table)
        whole, batched = _errors(folder)
        assert batched == whole and whole[2] == min(rows)
    finally:
        _write(folder, households)


def test_duplicate_ids_across_batches_and_empty_municipalities(folder, households):
    ids = households.column("id").to_numpy().copy()
    ids[25_000] = ids[10]                                      # duplicates a row of the first batch
    cases = [households.set_column(0, "id", pa.array(ids)),
             households.filter(pa.compute.not_equal(households.column("municipality"), "GM0363"))]
    try:
        for table in cases:
            _write(folder, table)
            whole, batched = _errors(folder)
            assert batched == whole
        assert whole[:2] == ("municipalities", "code") and "GM0363" in whole[3]
    finally:
        _write(folder, households)


def test_a_file_cut_short_or_of_the_wrong_columns(folder, households):
    data = (folder / "households.parquet").read_bytes()
    try:
        (folder / "households.parquet").write_bytes(data[: len(data) // 2])
        with pytest.raises(PopulationError, match="households: cannot read"):
            read_households(folder, batch_rows=BATCH)
        _write(folder, households.drop_columns(["wealth"]))
        whole, batched = _errors(folder)
        assert batched == whole and whole[:2] == ("households", "wealth")
    finally:
        _write(folder, households)
