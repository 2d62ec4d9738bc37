"""Bad input, generated with hypothesis: malformed populations, scenario files and regime files.

Every case goes through the command line (``engine.app.cli.main`` in this process) and must give
exactly one error line naming the table (or file), the column (or key) and the first
offending row the test planted, exit with status 2, and leave the population and output
folders as they were: the same files with the same bytes, nothing new (no ``.buig-tmp-*``),
and an output folder that did not exist still does not. The cases tried are counted; the
count is printed at the end of the module and written to ``bad_input_cases.json`` in
pytest's temporary folder.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.uncertainty.settings import METHODS
from engine.rules.cap import REDISTRIBUTION
from engine.app.cli import main
from engine.model.population import TABLE_NAMES
from engine.io.config import DATA

REGIMES = DATA / "regimes"
from engine.app.scenario import FIELDS
from engine.io.config import dump_toml
from engine.model.schema import MAX_ADULTS_SHARING, TABLES
from test_schema import _set

TRIED: collections.Counter = collections.Counter()        # cases run, by kind
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)   # any text that UTF-8 can hold
EXAMPLES = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def report_count(request, tmp_path_factory):
    yield
    total = sum(TRIED.values())
    path = tmp_path_factory.getbasetemp() / "bad_input_cases.json"
    path.write_text(json.dumps({"total": total, "by_kind": dict(sorted(TRIED.items()))}, indent=1))
    line = (f"bad input: {total} malformed inputs tried ("
            + ", ".join(f"{kind}: {n}" for kind, n in sorted(TRIED.items())) + f"); counts in {path}")
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print("\n" + line)


@dataclass(repr=False)
class World:
    population: Path            # a valid population folder, corrupted one file at a time
    tables: dict                # its tables, read once
    original: dict              # file name -> bytes, to restore after each case
    outputs: Path               # holds `existing/`, an output folder with files in it
    scratch: Path               # scenario and regime files of the cases
    hh_mun: np.ndarray          # per household: row of its municipality
    nb_mun: np.ndarray          # per neighbourhood: row of its municipality

    def __repr__(self) -> str:
        return f"World({self.population})"


@pytest.fixture(scope="module")
def world(small_world, tmp_path_factory) -> World:
    """A copy of the small world (the fixture folder itself is never written). Its households are
    rewritten in row groups of 5,000 rows instead of one per municipality: same table, 10x faster reads."""
    root = tmp_path_factory.mktemp("bad_input")
    pop = root / "population"
    shutil.copytree(small_world, pop)
    tables = {name: pq.read_table(pop / f"{name}.parquet").combine_chunks() for name in TABLE_NAMES}
    pq.write_table(tables["households"], pop / "households.parquet", row_group_size=5_000)
    existing = root / "outputs" / "existing"
    (existing / "sub").mkdir(parents=True)
    (existing / "notes.txt").write_text("the outputs of an earlier run\n")
    (existing / "budgets.parquet").write_bytes(b"not touched by a failed run")
    (existing / "sub" / "data.bin").write_bytes(bytes(range(256)))
    (root / "scratch").mkdir()
    codes = {c: i for i, c in enumerate(tables["municipalities"].column("code").to_pylist())}
    mun_of = lambda t: np.array([codes[c] for c in t.column("municipality").cast(pa.string()).to_pylist()])
    return World(pop, tables, {f.name: f.read_bytes() for f in pop.iterdir()}, root / "outputs", root / "scratch",
                 mun_of(tables["households"]), mun_of(tables["neighbourhoods"]))


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder below ``folder``, hidden ones included, with the SHA-256 of each file."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def _rejected(argv: list[str], kind: str, *watched: Path) -> str:
    """Run ``buig ARGV --quiet`` on bad input: exit status 2, one error line and nothing else printed,
    the ``watched`` folders unchanged. Returns the error line."""
    TRIED[kind] += 1
    before = [_snapshot(w) for w in watched]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*argv, "--quiet"])
    lines = err.getvalue().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("buig: "), (rc, err.getvalue())
    assert out.getvalue() == ""
    assert [_snapshot(w) for w in watched] == before, "a failed command changed a folder"
    return lines[0]


# --------------------------------------------------------------------------- populations

@dataclass(repr=False)
class Bad:
    files: dict                 # file name -> corrupted pa.Table or bytes
    table: str                  # what the error must name
    column: str | None
    row: int | None
    words: str

    def __repr__(self) -> str:
        return f"Bad({sorted(self.files)} -> {self.where}: {self.words})"

    @property
    def where(self) -> str:
        where = self.table if self.column is None else f"{self.table}.{self.column}"
        return where if self.row is None else f"{where}, row {self.row}"


def _put(table: pa.Table, column: str, values: dict) -> pa.Table:
    """``table`` with ``column`` set to ``values[row]`` at each row."""
    return reduce(lambda t, row_value: _set(t, column, *row_value), values.items(), table)


def _columns(test) -> list[tuple[str, str]]:
    return [(t, c.name) for t, cols in TABLES.items() for c in cols if test(c)]


def _column(table: str, name: str):
    return next(c for c in TABLES[table] if c.name == name)


def _rows(n: int) -> st.SearchStrategy:
    return st.lists(st.integers(0, n - 1), min_size=1, max_size=3, unique=True)


def _planted(draw, w: World, table: str, column: str, value: st.SearchStrategy, words: str) -> Bad:
    """Bad values at 1-3 rows of one column; the error must name the first of them."""
    rows = draw(_rows(w.tables[table].num_rows))
    values = {r: draw(value) for r in rows}
    return Bad({f"{table}.parquet": _put(w.tables[table], column, values)}, table, column, min(rows), words)


def _first_repeat(values: list) -> int:
    seen = set()
    for i, v in enumerate(values):
        if v in seen:
            return i
        seen.add(v)
    raise AssertionError("no duplicate planted")


def _beyond(table: str, name: str, side: str) -> st.SearchStrategy:
    """Values below the column's minimum (side "min") or above its maximum that its type can hold."""
    c = _column(table, name)
    if pa.types.is_floating(c.type):
        step = st.floats(1e-6, 1e12)
        return step.map(lambda x: c.min - x) if side == "min" else step.map(lambda x: c.max + x)
    info = np.iinfo(c.type.to_pandas_dtype())
    return st.integers(int(info.min), c.min - 1) if side == "min" else st.integers(c.max + 1, int(info.max))


@st.composite
def missing_column(draw, w):
    table, column = draw(st.sampled_from(_columns(lambda c: True)))
    return Bad({f"{table}.parquet": w.tables[table].drop_columns([column])}, table, column, None,
               "required column is missing")


@st.composite
def extra_column(draw, w):
    table = draw(st.sampled_from(TABLE_NAMES))
    t = w.tables[table]
    if draw(st.booleans()):
        name = draw(st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
                    .filter(lambda s: s not in t.column_names))
        values = draw(st.sampled_from([pa.array(np.zeros(t.num_rows)), pa.array(["x"] * t.num_rows)]))
        return Bad({f"{table}.parquet": t.append_column(name, values)}, table, name, None, "not a column of the schema")
    name = draw(st.sampled_from(t.column_names))
    return Bad({f"{table}.parquet": t.append_column(name, t.column(name))}, table, name, None, "more than once")


@st.composite
def wrong_type(draw, w):
    table, column = draw(st.sampled_from(_columns(lambda c: True)))
    c = _column(table, column)
    wrong = ([pa.float64(), pa.string(), pa.bool_()] if pa.types.is_integer(c.type) else
             [pa.string(), pa.bool_()] if pa.types.is_floating(c.type) else [pa.int64(), pa.float64(), pa.bool_()])
    kind = draw(st.sampled_from(wrong + [pa.null()]))
    t = w.tables[table]
    values = pa.nulls(t.num_rows) if kind == pa.null() else pa.array(np.arange(t.num_rows) % 2).cast(kind)
    files = {f"{table}.parquet": t.set_column(t.column_names.index(column), column, values)}
    if c.labels and kind == pa.string():     # strings are labels: "0" is not one
        return Bad(files, table, column, 0, "is not a label of")
    return Bad(files, table, column, None, "has type")


@st.composite
def missing_value(draw, w):
    table, column = draw(st.sampled_from(_columns(lambda c: True)))
    return _planted(draw, w, table, column, st.none(), "missing value")


@st.composite
def not_finite(draw, w):
    table, column = draw(st.sampled_from(_columns(lambda c: pa.types.is_floating(c.type))))
    return _planted(draw, w, table, column, st.sampled_from([math.nan, math.inf, -math.inf]), "is not finite")


@st.composite
def below_minimum(draw, w):
    """Negative amounts and counts, negative codes, no inhabitants."""
    table, column = draw(st.sampled_from(_columns(lambda c: c.min is not None)))
    words = "has no label; expected codes: 0 = " if _column(table, column).labels else "is below the minimum"
    return _planted(draw, w, table, column, _beyond(table, column, "min"), words)


@st.composite
def above_maximum(draw, w):
    """Fractions above 1, 0/1 flags above 1, categorical codes beyond their labels."""
    table, column = draw(st.sampled_from(_columns(lambda c: c.max is not None)))
    words = "has no label; expected codes: 0 = " if _column(table, column).labels else "is above the maximum"
    return _planted(draw, w, table, column, _beyond(table, column, "max"), words)


@st.composite
def malformed_key_code(draw, w):
    """Empty or malformed codes of municipalities and neighbourhoods themselves."""
    table = draw(st.sampled_from(["municipalities", "neighbourhoods"]))
    pattern = _column(table, "code").pattern
    value = st.one_of(st.just(""), st.from_regex(r"(GM|WK|gm)[0-9]{0,8}", fullmatch=True), TEXT)
    return _planted(draw, w, table, "code", value.filter(lambda v: not re.fullmatch(pattern, v)), "is not of the form")


@st.composite
def unknown_code(draw, w):
    """A household or neighbourhood in a municipality (or a household in a neighbourhood) that does not exist."""
    table, column, reference = draw(st.sampled_from([("households", "municipality", "municipalities"),
                                                     ("households", "neighbourhood", "neighbourhoods"),
                                                     ("neighbourhoods", "municipality", "municipalities")]))
    known = set(w.tables[reference].column("code").to_pylist())
    value = st.one_of(st.just(""), st.from_regex(r"(GM|WK)[0-9]{4,6}", fullmatch=True), TEXT)
    return _planted(draw, w, table, column, value.filter(lambda v: v not in known), f"does not exist in {reference}")


@st.composite
def neighbourhood_elsewhere(draw, w):
    rows = draw(_rows(w.tables["households"].num_rows))
    codes = w.tables["neighbourhoods"].column("code").to_pylist()

    def elsewhere(r: int) -> st.SearchStrategy:
        return st.sampled_from(np.flatnonzero(w.nb_mun != w.hh_mun[r]).tolist()).map(codes.__getitem__)

    values = {r: draw(elsewhere(r)) for r in rows}
    return Bad({"households.parquet": _put(w.tables["households"], "neighbourhood", values)}, "households",
               "neighbourhood", min(rows), "lies in another municipality")


@st.composite
def duplicate_key(draw, w):
    table = draw(st.sampled_from(TABLE_NAMES))
    column = "id" if table == "households" else "code"
    t = w.tables[table]
    pairs = draw(st.lists(st.tuples(st.integers(0, t.num_rows - 1), st.integers(0, t.num_rows - 1))
                          .filter(lambda p: p[0] != p[1]), min_size=1, max_size=2))
    for row, source in pairs:
        t = _set(t, column, row, t.column(column)[source].as_py())
    return Bad({f"{table}.parquet": t}, table, column, _first_repeat(t.column(column).to_pylist()), "duplicate value")


@st.composite
def inconsistent_household(draw, w):
    h = w.tables["households"]
    col = lambda name: h.column(name).to_numpy()
    none = (col("bijstand") == 0) & (col("lks") == 0)
    column, eligible, value, words = draw(st.sampled_from([
        ("adults_sharing_under_27", col("adults_sharing") < MAX_ADULTS_SHARING,
         lambda r: st.integers(col("adults_sharing")[r] + 1, MAX_ADULTS_SHARING), "larger than adults_sharing"),
        ("lks", col("bijstand") == 1, lambda r: st.just(1), "both bijstand and LKS"),
        ("benefit_paid", none, lambda r: st.floats(0.01, 1e6), "neither bijstand nor LKS"),
        ("duration_class", none, lambda r: st.integers(1, 5), "neither bijstand nor LKS"),
    ]))
    rows = draw(st.lists(st.sampled_from(np.flatnonzero(eligible).tolist()), min_size=1, max_size=3, unique=True))
    values = {r: draw(value(r)) for r in rows}
    return Bad({"households.parquet": _put(h, column, values)}, "households", column, min(rows), words)


@st.composite
def municipality_without_households(draw, w):
    gone = draw(_rows(w.tables["municipalities"].num_rows))
    keep = pa.array(~np.isin(w.hh_mun, gone))
    return Bad({"households.parquet": w.tables["households"].filter(keep)}, "municipalities", "code", min(gone),
               "has no households")


@st.composite
def empty_table(draw, w):
    table = draw(st.sampled_from(TABLE_NAMES))
    return Bad({f"{table}.parquet": w.tables[table].slice(0, 0)}, table, None, None, "the table has no rows")


@st.composite
def cut_short(draw, w):
    """A Parquet file (or truth.json) cut off at any byte."""
    name = draw(st.sampled_from([f"{t}.parquet" for t in TABLE_NAMES] + ["truth.json"]))
    data = w.original[name]
    keep = draw(st.integers(0, len(data.rstrip()) - 1))
    table = name.removesuffix(".parquet").removesuffix(".json")
    return Bad({name: data[:keep]}, table, None, None, f"cannot read {w.population / name}")


POPULATION_CASES = {f.__name__: f for f in (
    missing_column, extra_column, wrong_type, missing_value, not_finite, below_minimum, above_maximum,
    malformed_key_code, unknown_code, neighbourhood_elsewhere, duplicate_key, inconsistent_household,
    municipality_without_households, empty_table, cut_short)}


def _commands(pop: Path, out: Path) -> list[list[str]]:
    p, o = str(pop), str(out)
    return [["validate", p], ["fit", "--population", p, "--out", o],
            ["predict", "--population", p, "--coefficients", o, "--out", o],
            ["budget", "--population", p, "--costs", o, "--regime", "2019", "--out", o],
            ["wdeel", "--population", p, "--total", "1e6", "--out", o],
            ["bootstrap", "--population", p, "--replicates", "2", "--workers", "0", "--out", o],
            ["run", "--population", p, "--replicates", "2", "--out", o]]


@pytest.mark.parametrize("kind", POPULATION_CASES)
@EXAMPLES
@given(data=st.data())
def test_bad_population_gives_one_error_at_the_first_bad_row(world, kind, data):
    bad = data.draw(POPULATION_CASES[kind](world), label="corruption")
    out = world.outputs / data.draw(st.sampled_from(["existing", "new"]), label="output folder")
    command = data.draw(st.sampled_from(_commands(world.population, out)), label="command")
    group = data.draw(st.sampled_from([997, 7_000, 1 << 20]), label="row group size")   # several chunks to map
    try:
        for name, content in bad.files.items():
            if isinstance(content, bytes):
                (world.population / name).write_bytes(content)
            else:
                pq.write_table(content, world.population / name, row_group_size=group)
        line = _rejected(command, kind, world.population, world.outputs)
    finally:
        for name in bad.files:
            (world.population / name).write_bytes(world.original[name])
    assert line.startswith(f"buig: invalid input: {bad.where}: "), line
    assert bad.words in line, line


def test_a_cut_parquet_file_fails_cleanly_in_a_fresh_process(world, tmp_path):
    TRIED["cut_short (subprocess)"] += 1
    pop = tmp_path / "pop"
    shutil.copytree(world.population, pop)
    data = (pop / "households.parquet").read_bytes()
    (pop / "households.parquet").write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    before = _snapshot(tmp_path)
    res = subprocess.run([sys.executable, "-m", "engine", "run", "--population", str(pop), "--replicates", "2",
                          "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith(f"buig: invalid input: households: cannot read {pop / 'households.parquet'}: ")
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------- scenario files

SECTIONS = sorted({section for section, _ in FIELDS})
KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,10}", fullmatch=True)
NEGATIVE = st.floats(max_value=-1e-300, allow_infinity=False)
ANY_VALUE = st.one_of(TEXT, st.booleans(), st.integers(-10**6, 10**6), st.floats(),
                      st.lists(st.integers(0, 9), max_size=2))


def _fits(kind: type, v) -> bool:
    """Whether the scenario or regime reader accepts ``v`` for a key of type ``kind``."""
    if kind is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, kind)


# (section, key) -> (values out of range, words); population keys other than the seed with a synthetic source
OUT_OF_RANGE = {
    ("bootstrap", "replicates"): (st.integers(-2**63, 0), "must be at least 1"),
    ("bootstrap", "batch_size"): (st.integers(-2**63, 0), "must be at least 1"),
    ("bootstrap", "seed"): (st.integers(-2**63, -1), "a seed must be >= 0"),
    ("population", "seed"): (st.integers(-2**63, -1), "a seed must be >= 0"),
    ("bootstrap", "flag_level"): (st.one_of(st.floats(max_value=0, allow_infinity=False),
                                            st.floats(min_value=1, allow_infinity=False)), "must lie between 0 and 1"),
    ("cap", "kappa"): (st.one_of(NEGATIVE, st.floats(min_value=1, exclude_min=True, allow_infinity=False)),
                       "must lie between 0 and 1"),
    ("bootstrap", "between_sd"): (st.one_of(NEGATIVE, st.just(math.nan), TEXT.filter(lambda s: s != "auto"),
                                            st.booleans()), 'must be "auto" or a number'),
    ("bootstrap", "method"): (TEXT.filter(lambda s: s not in METHODS), "is not one of"),
    ("cap", "redistribute"): (TEXT.filter(lambda s: s not in REDISTRIBUTION), "is not one of"),
    ("population", "households"): (st.integers(-2**63, 387), "households"),      # 388 municipalities
    ("population", "planted"): (st.integers(-2**63, -1), "must be >= 0"),
    ("population", "policy_sd"): (NEGATIVE, "must be >= 0"),
    ("bootstrap", "flag_fdr"): (st.one_of(NEGATIVE, st.floats(min_value=1, allow_infinity=False)),
                                "must be 0 (flags per test at flag_level) or lie between 0 and 1"),
    ("population", "planted_surplus"): (st.one_of(st.lists(st.floats(0, 0.5), max_size=1),
                                                  st.lists(st.floats(min_value=1, allow_infinity=False), min_size=2,
                                                           max_size=2)), "must be [min, max]"),
}


# Each strategy gives the file's tables (or bytes) and the words of the error: the first is how the
# line starts after "buig: ", the others appear in it.

@st.composite
def unknown_section(draw, file):
    name = draw(KEY.filter(lambda k: k not in SECTIONS))
    return {name: draw(st.one_of(st.integers(), st.just({"x": 1})))}, [f"scenario {file}: unknown section '{name}'"]


@st.composite
def section_not_a_table(draw, file):
    section = draw(st.sampled_from(SECTIONS))
    return {section: draw(ANY_VALUE)}, [f"scenario {file}: '{section}' must be a table"]


@st.composite
def unknown_key(draw, file):
    section = draw(st.sampled_from(SECTIONS))
    key = draw(KEY.filter(lambda k: (section, k) not in FIELDS))
    return {section: {key: draw(ANY_VALUE)}}, [f"scenario {file}: unknown key '{section}.{key}'"]


@st.composite
def wrong_type_value(draw, file):
    (section, key), (_, kind) = draw(st.sampled_from([f for f in FIELDS.items() if f[1][1] is not object]))
    value = draw(ANY_VALUE.filter(lambda v: not _fits(kind, v)))
    return {section: {key: value}}, [f"scenario {file}: key '{section}.{key}': expected"]


@st.composite
def out_of_range(draw, file):
    (section, key), (values, words) = draw(st.sampled_from(list(OUT_OF_RANGE.items())))
    data = {section: {key: draw(values)}}
    if section == "population" and key != "seed":
        data["population"]["source"] = "synthetic"
    return data, [f"scenario {file}: key '{section}.{key}': ", words]


@st.composite
def missing_file(draw, file):
    section, key = draw(st.sampled_from([("population", "source"), ("model", "spec"), ("regime", "name")]))
    name = draw(st.from_regex(r"no-such-[a-z0-9]{1,8}", fullmatch=True))
    if section == "population":
        return {section: {key: name}}, [f"population folder {file.parent / name} does not exist"]
    kind = "spec" if section == "model" else "regime"
    if draw(st.booleans()):                          # a bare name means a built-in, never a file here
        return {section: {key: name}}, [f"scenario {file}: key '{section}.{key}': ", f"no built-in {kind} '{name}'"]
    return ({section: {key: name + ".toml"}},
            [f"scenario {file}: key '{section}.{key}': ", str(file.parent / (name + ".toml"))])


def _not_toml(b: bytes) -> bool:
    try:
        tomllib.loads(b.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return True
    return False


NOT_TOML = st.one_of(st.binary(min_size=1, max_size=40), TEXT.map(lambda s: (s + " = = 1").encode())).filter(_not_toml)


@st.composite
def not_toml(draw, file):
    return draw(NOT_TOML), [f"scenario file {file}: not valid TOML"]


SCENARIO_CASES = {f.__name__: f for f in (unknown_section, section_not_a_table, unknown_key, wrong_type_value,
                                          out_of_range, missing_file, not_toml)}


def _write_scenario(file: Path, content, population: Path) -> None:
    """``content``: raw bytes, or tables laid over a quick run of ``population``."""
    if isinstance(content, bytes):
        file.write_bytes(content)
        return
    data = {"population": {"source": str(population)}, "bootstrap": {"replicates": 2, "batch_size": 2}}
    for section, table in content.items():
        data[section] = (data.get(section, {}) | table) if isinstance(table, dict) else table
    file.write_text(dump_toml(data), encoding="utf-8")


@pytest.mark.parametrize("kind", SCENARIO_CASES)
@EXAMPLES
@given(data=st.data())
def test_bad_scenario_file_names_the_file_and_key(world, kind, data):
    file = world.scratch / "scenario.toml"
    content, words = data.draw(SCENARIO_CASES[kind](file), label="scenario")
    _write_scenario(file, content, world.population)
    out = world.outputs / data.draw(st.sampled_from(["existing", "new"]), label="output folder")
    line = _rejected(["run", str(file), "--out", str(out)], f"scenario {kind}", world.outputs, world.population)
    assert line.startswith(f"buig: {words[0]}") and all(w in line for w in words[1:]), (words, line)


# --------------------------------------------------------------------------- regime files

DELETE = object()
REQUIRED = ["name", "year", "objective_weight.historical_up_to", "objective_weight.objective_from",
            "objective_weight.rule", "objective_weight.objective_share", "objective.model", "objective.variables",
            "historical.household_growth_correction", "budget.macrobudget", "budget.scale",
            "budget.reference_households", "budget.normalise", "budget.compartments", "budget.deductions",
            "ex_ante_cap.enabled", "vangnet.year", "vangnet.rules"]
CAP_REQUIRED = ["ex_ante_cap.theta", "ex_ante_cap.band_to", "ex_ante_cap.band_share", "ex_ante_cap.financing"]
TYPES = {"name": str, "year": int, "objective_weight.historical_up_to": float,
         "objective_weight.objective_from": float, "objective_weight.rule": str,
         "objective_weight.objective_share": float, "objective.model": str, "objective.variables": list,
         "historical.household_growth_correction": bool, "budget.macrobudget": float, "budget.scale": str,
         "budget.reference_households": float, "budget.normalise": bool, "budget.compartments": bool,
         "ex_ante_cap.enabled": bool, "vangnet.year": str}
SHARES = {"vangnet": ("own_risk", "full_from", "paid_in_band"), "ex_ante_cap": ("theta", "band_to", "band_share")}


def _path(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split("."))


def _at(data: dict, key: tuple[str, ...]):
    return reduce(lambda node, k: node[k], key, data)


def _rules(data: dict) -> list[tuple[str, ...]]:
    """The regime's tables of ordered thresholds: every vangnet rule and, when switched on, every cap."""
    cap = data["ex_ante_cap"]
    return ([("vangnet", "rules", year) for year in data["vangnet"]["rules"]]
            + ([("ex_ante_cap",)] + [("ex_ante_cap", "variants", v) for v in cap.get("variants", {})]
               if cap["enabled"] else []))


# Each strategy gives (key path, new value or DELETE, a regular expression of the problem, the key named).

@st.composite
def regime_missing_key(draw, data):
    key = _path(draw(st.sampled_from(REQUIRED + (CAP_REQUIRED if data["ex_ante_cap"]["enabled"] else []))))
    return key, DELETE, "missing", key


@st.composite
def regime_wrong_type(draw, data):
    dotted = draw(st.sampled_from(sorted(TYPES)))
    value = draw(ANY_VALUE.filter(lambda v: not _fits(TYPES[dotted], v) and v != "spending_t"))
    return _path(dotted), value, "expected", _path(dotted)


@st.composite
def share_outside_0_1(draw, data):
    key = draw(st.sampled_from([("objective_weight", "objective_share")]
                               + [r + (k,) for r in _rules(data) for k in SHARES[r[0]]]))
    outside = st.one_of(NEGATIVE, st.floats(min_value=1, exclude_min=True, allow_infinity=False))
    return key, draw(outside), r"is outside \[0, 1\]", key


@st.composite
def thresholds_overlap(draw, data):
    """objective_from at or below historical_up_to, full_from below own_risk, band_to below theta."""
    lower, upper = (data["objective_weight"][k] for k in ("historical_up_to", "objective_from"))
    named = ("objective_weight", "objective_from")
    options = [(named, st.floats(-1e9, lower), named),
               (("objective_weight", "historical_up_to"), st.floats(upper, 1e12), named)]
    for rule in _rules(data):
        low, high = SHARES[rule[0]][:2]
        t = _at(data, rule)
        options += [(rule + (high,), st.floats(0, t[low], exclude_max=True), rule + (high,)),
                    (rule + (low,), st.floats(t[high], 1, exclude_min=True), rule + (high,))]
    key, values, named = draw(st.sampled_from(options))
    return key, draw(values), "thresholds must be ordered", named


@st.composite
def no_positive_budget(draw, data):
    """A negative or zero macrobudget, a negative deduction, or deductions that take the whole macrobudget."""
    budget = data["budget"]
    options = [(("budget", "deductions", d), NEGATIVE, "is negative") for d in budget["deductions"]]
    if budget["macrobudget"] != "spending_t":
        first = ("budget", "deductions", next(iter(budget["deductions"])))
        options += [(("budget", "macrobudget"), st.one_of(NEGATIVE, st.just(0.0)), "is negative|is not positive"),
                    (first, st.floats(budget["macrobudget"], 1e15), "nothing would be left")]
    key, values, words = draw(st.sampled_from(options))
    return key, draw(values), words, ("budget", "deductions") if words == "nothing would be left" else key


@st.composite
def unknown_choice(draw, data):
    key = _path(draw(st.sampled_from(["objective_weight.rule", "objective.model", "budget.scale", "vangnet.year"]
                                     + (["ex_ante_cap.financing"] if data["ex_ante_cap"]["enabled"] else []))))
    value = draw(TEXT.filter(lambda s: s not in ("pro_rata", "household", "municipal", "households", "none",
                                                 "ceiling", "proportional", *data["vangnet"]["rules"])))
    return key, value, "no rule for year" if key == ("vangnet", "year") else "is not one of", key


@st.composite
def regime_not_toml(draw, data):
    return None, draw(NOT_TOML), "not valid TOML", None


REGIME_CASES = {f.__name__: f for f in (regime_missing_key, regime_wrong_type, share_outside_0_1,
                                        thresholds_overlap, no_positive_budget, unknown_choice, regime_not_toml)}


@pytest.mark.parametrize("kind", REGIME_CASES)
@EXAMPLES
@given(data=st.data())
def test_bad_regime_names_the_file_and_key(world, kind, data):
    name = data.draw(st.sampled_from(["2019", "2005"]), label="regime")
    regime = tomllib.loads((REGIMES / f"{name}.toml").read_text(encoding="utf-8"))
    key, value, problem, named = data.draw(REGIME_CASES[kind](regime), label="corruption")
    # the regime file given to `buig budget`, to `buig run` in a scenario, or built in with scenario overrides
    via = data.draw(st.sampled_from(["budget", "run"] + (["overrides"] if key and value is not DELETE else [])),
                    label="via")
    out = world.outputs / data.draw(st.sampled_from(["existing", "new"]), label="output folder")
    file, overrides = world.scratch / "regime.toml", {}
    if via == "overrides":
        file, overrides = REGIMES / f"{name}.toml", reduce(lambda v, k: {k: v}, reversed(key), value)
    elif key is None:
        file.write_bytes(value)
    else:
        node = _at(regime, key[:-1])
        if value is DELETE:
            del node[key[-1]]
        else:
            node[key[-1]] = value
        file.write_text(dump_toml(regime), encoding="utf-8")
    if via == "budget":
        argv = ["budget", "--population", str(world.population), "--costs", str(out), "--regime", str(file),
                "--out", str(out)]
    else:
        scenario = world.scratch / "scenario.toml"
        _write_scenario(scenario, {"regime": {"name": str(file), "overrides": overrides}}, world.population)
        argv = ["run", str(scenario), "--out", str(out)]
    line = _rejected(argv, f"regime {kind}", world.outputs, world.population)
    where = f"regime file {file}: " + (f"key '{'.'.join(named)}': " if named else "")
    assert where in line and re.search(problem, line), line
    assert line.endswith("(after the scenario's regime.overrides)") == (via == "overrides"), line


# --------------------------------------------------------------------------- values, sizes, files, options
# Each case: a command on bad options, values or files; exit 2, one line naming the option, key,
# file or column, and the population and output folders byte for byte as they were.

@pytest.fixture(scope="module")
def made(world, tmp_path_factory):
    """A fit, cost files and a 4-replicate bootstrap of the world (outside the watched folders)."""
    root = tmp_path_factory.mktemp("made")
    p = str(world.population)
    for argv in (["fit", "--population", p, "--out", str(root / "fit")],
                 ["predict", "--population", p, "--coefficients", str(root / "fit"), "--out", str(root / "costs")],
                 ["bootstrap", "--population", p, "--coefficients", str(root / "fit"), "--replicates", "4",
                  "--batch-size", "2", "--workers", "0", "--out", str(root / "boot")]):
        assert main([*argv, "--quiet"]) == 0
    return root


def _option_cases(p: str, m: Path, o: str) -> list[tuple[list[str], str]]:
    fit, boot = str(m / "fit"), str(m / "boot")
    bs = ["bootstrap", "--population", p, "--coefficients", fit, "--replicates", "2", "--workers", "0"]
    cases = [([*bs, "--level", v], "--level") for v in ("nan", "5", "inf", "0")]
    cases += [([*bs, "--between-sd", v], "--between-sd") for v in ("-1", "nan", "inf", "lots")]
    cases += [(["budget", "--population", p, "--costs", str(m / "costs"), "--macrobudget", v], "--macrobudget")
              for v in ("inf", "nan", "0")]
    cases += [(["wdeel", "--population", p, "--total", v], "--total") for v in ("inf", "nan")]
    cases += [(["cap", "--bootstrap", boot, "--kappa", v], "--kappa") for v in ("nan", "inf", "-0.1")]
    cases += [(["synth", "--households", "30000", "--policy-sd", v], "--policy-sd") for v in ("nan", "inf", "-1")]
    cases += [(["synth", "--households", "30000", "--planted-effect", v], "--planted-effect") for v in ("nan", "inf")]
    return [(argv + ["--out", o], words) for argv, words in cases]


def _size_cases(p: str, m: Path, o: str) -> list[tuple[list[str], str]]:
    fit = str(m / "fit")
    return [(["synth", "--households", str(10 ** 13), "--out", o], "--households 10,000,000,000,000 would need"),
            (["bootstrap", "--population", p, "--coefficients", fit, "--replicates", str(10 ** 12), "--workers", "0",
              "--out", o], "--replicates 1,000,000,000,000 would need"),
            (["run", "--population", p, "--replicates", str(10 ** 12), "--out", o], "bootstrap.replicates' 1,000,000,000,000"),
            (["run", "--households", str(10 ** 13), "--out", o], "population.households' 10,000,000,000,000")]


def _dask_cases(p: str, m: Path, o: str, sweep: Path) -> list[tuple[list[str], str]]:
    fit = str(m / "fit")
    tls = ["--tls-ca-file", str(sweep), "--tls-cert", str(sweep), "--tls-key", str(sweep)]
    commands = [["bootstrap", "--population", p, "--coefficients", fit, "--replicates", "2", "--out", o],
                ["run", "--population", p, "--replicates", "2", "--out", o], ["sweep", str(sweep), "--out", o]]
    cases = [([*c, "--workers", w], f"--workers {w}: give 0") for c in commands for w in ("-2", "-100")]
    cases += [([*c, "--scheduler", "tcp://127.0.0.1:1", *tls], "tls://HOST:PORT, not tcp://127.0.0.1:1")
              for c in commands]
    return cases


@pytest.mark.parametrize("kind", ["option not finite or out of range", "size that cannot fit", "dask option"])
def test_bad_option_is_refused_before_anything_is_written(world, made, kind):
    p, o = str(world.population), str(world.outputs / "existing")
    sweep = world.scratch / "sweep.toml"
    sweep.write_text('[grid]\n"cap.kappa" = [0.1, 0.2]\n', encoding="utf-8")
    cases = {"option not finite or out of range": lambda: _option_cases(p, made, o),
             "size that cannot fit": lambda: _size_cases(p, made, o),
             "dask option": lambda: _dask_cases(p, made, o, sweep)}[kind]()
    for argv, words in cases:
        for out in (o, str(world.outputs / "new")):
            argv = [out if a == o else a for a in argv]
            line = _rejected(argv, kind, world.population, world.outputs, made)
            assert words in line, (argv, line)


def _with_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _invalid_utf8(values: list[str], row: int) -> pa.Array:
    raw = [v.encode() for v in values]
    raw[row] = raw[row][:2] + b"\xff\xfe" + raw[row][2:]
    arr = pa.array(raw, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(arr), arr.buffers())      # unchecked, as a foreign writer may


def _file_cases(w: World, m: Path) -> list[tuple[str, str, object, list[str], str]]:
    """(file of the population or fit, how it is replaced, content, command, words)."""
    t = w.tables
    mun, nb = t["municipalities"], t["neighbourhoods"]
    s2 = mun.column("spending_t2").to_numpy().copy()
    s2[[3, 10, 20]] = 1e308
    jobs = mun.column("jobs_availability").to_numpy().astype(np.float16)
    p, fit = str(w.population), str(m / "fit")
    validate, predict = ["validate", p], ["predict", "--population", p, "--coefficients", fit]
    budget = ["budget", "--population", p, "--costs", str(m / "costs")]
    cases = [(f"{name}.parquet", how, None, validate, f"{name}.parquet is not a regular file")
             for name in TABLE_NAMES for how in ("fifo", "device")]
    cases += [("coefficients.parquet", how, None, predict, "coefficients.parquet is not a regular file")
              for how in ("fifo", "device")]
    cases += [("municipalities.parquet", "table", _with_column(mun, "spending_t2", pa.array(s2)), budget,
               "historical spending (t-2): the sum overflows"),
              ("municipalities.parquet", "table", _with_column(mun, "jobs_availability", pa.array(jobs)), validate,
               "municipalities.jobs_availability: has type halffloat"),
              ("municipalities.parquet", "table", _with_column(mun, "name", _invalid_utf8(mun.column("name").to_pylist(), 7)),
               validate, "municipalities.name, row 7: not valid UTF-8"),
              ("neighbourhoods.parquet", "table", _with_column(nb, "code", _invalid_utf8(nb.column("code").to_pylist(), 11)),
               validate, "neighbourhoods.code, row 11: not valid UTF-8")]
    return cases


def test_bad_file_in_place_of_a_table_is_refused(world, made):
    for name, how, content, argv, words in _file_cases(world, made):
        folder = made / "fit" if name == "coefficients.parquet" else world.population
        file = folder / name
        original = file.read_bytes()
        file.unlink()
        try:
            if how == "fifo":
                os.mkfifo(file)
            elif how == "device":
                file.symlink_to("/dev/zero")
            else:
                pq.write_table(content, file)
            watched = [world.outputs] + ([world.population] if folder == made / "fit" else [made])
            for out in ("existing", "new"):
                line = _rejected([*argv, *(["--out", str(world.outputs / out)] if argv[0] != "validate" else [])],
                                 f"file {how}", *watched)
                assert words in line, (name, how, line)
        finally:
            file.unlink(missing_ok=True)
            file.write_bytes(original)


def test_values_that_overflow_in_a_regime_are_refused(world, made):
    regime = tomllib.loads((REGIMES / "2019.toml").read_text(encoding="utf-8"))
    for value in (1e-300, 5e-324):
        regime["budget"]["reference_households"] = value
        file = world.scratch / "tiny_reference.toml"
        file.write_text(dump_toml(regime), encoding="utf-8")
        scenario = world.scratch / "scenario.toml"
        _write_scenario(scenario, {"regime": {"name": str(file)}}, world.population)
        for argv in (["budget", "--population", str(world.population), "--costs", str(made / "costs"),
                      "--regime", str(file)], ["run", str(scenario)]):
            line = _rejected([*argv, "--out", str(world.outputs / "existing")], "regime value overflows",
                             world.outputs, world.population, made)
            assert "the budget to distribute (TB) is not finite" in line and "reference_households" in line, line


def test_batch_file_with_other_replicates_than_its_name_is_refused(world, made, tmp_path):
    boot = tmp_path / "boot"
    shutil.copytree(made / "boot", boot)
    batches = boot / "batches"
    first = batches / "replicates-000000-000002.parquet"
    t = pq.read_table(first)
    for name, table, words in (
            ("replicates-000004-000006.parquet", t, "column replicate, row 0: holds replicate 0, its name says 4 to 5"),
            ("replicates-000004-000006.parquet", t.slice(0, 100), "is not a batch of replicates 4 to 5"),
            ("replicates-000004-000006.parquet", _with_column(t, "replicate", pa.array(t.column("replicate").to_numpy() + 4))
             .set_column(2, "objective_cost", pa.array(np.full(t.num_rows, np.nan))), "column objective_cost, row 0: not a finite")):
        pq.write_table(table, batches / name)
        argv = ["bootstrap", "--population", str(world.population), "--coefficients", str(made / "fit"),
                "--replicates", "6", "--batch-size", "2", "--workers", "0", "--out", str(boot)]
        # the planted batch covers 4-5: nothing is left to compute, so the command only reads
        line = _rejected(argv, "batch file", boot, world.population)
        assert f"{batches / name}: " in line and words in line, line
        (batches / name).unlink()


def test_a_sweep_with_a_bad_variant_leaves_the_previous_sweep_alone(world, tmp_path):
    out = world.outputs / "existing"
    sweep = world.scratch / "bad_sweep.toml"
    sweep.write_text(f'[base]\n"population.source" = "{world.population}"\n[grid]\n"cap.kappa" = [0.1, 5.0]\n',
                     encoding="utf-8")
    (out / "comparison.csv").write_text("variant\nfrom an earlier sweep\n")
    try:
        line = _rejected(["sweep", str(sweep), "--out", str(out), "--workers", "0"], "sweep variant", world.outputs,
                         world.population)
    finally:
        (out / "comparison.csv").unlink()
    assert "key 'cap.kappa': must lie between 0 and 1" in line, line
