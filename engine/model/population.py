"""Reading a population folder: one call that reads and validates.

A population folder holds ``households.parquet``, ``neighbourhoods.parquet`` and
``municipalities.parquet`` (schemas in :mod:`engine.model.schema`), and for a synthetic world
also ``truth.json``. The columns are those of the schema and of the population's catalogue
(:func:`engine.model.catalogue.population_catalogue`: ``--catalogue FILE``, else
``catalogue.toml`` in the folder, else the built-in ``default``); categorical columns are read
by their labels (:mod:`engine.model.labels`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.io.outputs import settle
from engine.model.catalogue import Catalogue, population_catalogue
from engine.model.labels import read_labels
from engine.model.schema import PopulationError, check_unique, validate

TABLE_NAMES = ("municipalities", "neighbourhoods", "households")


@dataclass(frozen=True)
class Population:
    """The three validated tables of a population, plus index columns for the engine.

    ``household_municipality`` and ``household_neighbourhood`` give, per household, the
    row of its municipality / neighbourhood in the other tables (int32); ``truth`` is the
    synthetic world's truth (``None`` for real data).
    """

    households: pa.Table
    neighbourhoods: pa.Table
    municipalities: pa.Table
    household_municipality: np.ndarray
    household_neighbourhood: np.ndarray
    neighbourhood_municipality: np.ndarray
    truth: dict | None = None
    path: Path | None = None
    catalogue: Catalogue | None = None

    @property
    def synthetic(self) -> bool:
        return self.truth is not None

    @property
    def municipality_codes(self) -> np.ndarray:
        return np.asarray(self.municipalities.column("code").to_pylist(), dtype=object)


def _unreadable(table: str, file: Path, exc: Exception) -> PopulationError:
    return PopulationError(table, None, None, f"cannot read {file}: {' '.join(str(exc).split())}")


def _read_table(path: Path, name: str, columns=None) -> pa.Table:
    file = _table_file(path, name)
    try:   # ParquetFile, not read_table: 10x faster on many row groups, and keeps duplicate columns to report
        with pq.ParquetFile(file) as f:
            return f.read(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(name, file, exc) from None


def _geography(neighbourhoods: pa.Table, municipalities: pa.Table, catalogue) -> tuple[np.ndarray, np.ndarray]:
    """Validate the two small tables; return the municipality codes and each neighbourhood's municipality row."""
    validate("municipalities", municipalities, catalogue=catalogue)
    codes = np.asarray(municipalities.column("code").to_pylist(), dtype=object)
    nm = validate("neighbourhoods", neighbourhoods, municipalities=codes, catalogue=catalogue)["municipality"]
    return codes, nm


def _every_municipality_has_households(counts: np.ndarray, codes: np.ndarray) -> None:
    """``counts``: households per municipality row."""
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise PopulationError("municipalities", "code", int(empty[0]),
                              f"municipality {codes[empty[0]]} has no households")


def from_tables(households: pa.Table, neighbourhoods: pa.Table, municipalities: pa.Table,
                truth: dict | None = None, path: Path | None = None,
                catalogue: Catalogue | str | Path | None = None) -> Population:
    """Validate three in-memory tables and index them into a :class:`Population` (categorical
    columns read by their labels; ``catalogue``: as :func:`read_population`)."""
    cat = population_catalogue(path, catalogue)
    municipalities = read_labels("municipalities", municipalities, cat)
    neighbourhoods = read_labels("neighbourhoods", neighbourhoods, cat)
    households = read_labels("households", households, cat)
    codes, nm = _geography(neighbourhoods, municipalities, cat)
    rows = validate("households", households, municipalities=codes, neighbourhoods=neighbourhoods, catalogue=cat)
    hm, hn = rows["municipality"], rows["neighbourhood"]
    _every_municipality_has_households(np.bincount(hm, minlength=len(codes)), codes)
    return Population(households, neighbourhoods, municipalities, hm, hn, nm, truth, path, cat)


def _folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise PopulationError("population", None, None, f"folder {path} does not exist")
    settle(path)                 # a set of files whose commit a killed writer left unfinished
    return path


def _table_file(path: Path, name: str) -> Path:
    """``path/name.parquet``, which must exist and be a regular file (a FIFO or device would hang)."""
    file = path / f"{name}.parquet"
    if not file.exists():
        raise PopulationError(name, None, None, f"file {file} is missing")
    if not file.is_file():
        raise PopulationError(name, None, None, f"{file} is not a regular file")
    return file


def _read_truth(path: Path) -> dict | None:
    if not (path / "truth.json").exists():
        return None
    if not (path / "truth.json").is_file():
        raise PopulationError("truth", None, None, f"{path / 'truth.json'} is not a regular file")
    try:
        truth = json.loads((path / "truth.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:     # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PopulationError("truth", None, None, f"cannot read {path / 'truth.json'}: {exc}") from None
    if not isinstance(truth, dict):
        raise PopulationError("truth", None, None, f"{path / 'truth.json'} does not hold a JSON object")
    return truth


def read_population(path: str | Path, catalogue: Catalogue | str | Path | None = None) -> Population:
    """Read and validate a population folder; raise :class:`PopulationError` on bad input.
    ``catalogue``: a catalogue (name or file) instead of the folder's ``catalogue.toml`` / the default."""
    path = _folder(path)
    tables = {name: _read_table(path, name) for name in TABLE_NAMES}
    truth = _read_truth(path)
    return from_tables(tables["households"], tables["neighbourhoods"], tables["municipalities"], truth, path,
                       catalogue)


@dataclass(frozen=True)
class HouseholdBatches:
    """A population folder whose households are read in batches (:func:`stream_population`)."""

    path: Path
    neighbourhoods: pa.Table
    municipalities: pa.Table
    neighbourhood_municipality: np.ndarray
    truth: dict | None
    num_rows: int
    batch_rows: int
    catalogue: Catalogue | None = None

    @property
    def municipality_codes(self) -> np.ndarray:
        return np.asarray(self.municipalities.column("code").to_pylist(), dtype=object)

    def _tables(self, f: pq.ParquetFile):
        """The file as tables of about ``batch_rows`` rows (small row groups are joined, and read
        together with Arrow's threads; a file with a row group above ``batch_rows`` is read in batches)."""
        md = f.metadata
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        if max(sizes, default=0) <= self.batch_rows:
            group, rows = [], 0
            for i, size in enumerate(sizes):
                group.append(i)
                rows += size
                if rows >= self.batch_rows or i == len(sizes) - 1:
                    yield f.read_row_groups(group, use_threads=True)
                    group, rows = [], 0
            return
        pending, rows = [], 0
        for batch in f.iter_batches(batch_size=self.batch_rows):
            pending.append(batch)
            rows += batch.num_rows
            if rows >= self.batch_rows:
                yield pa.Table.from_batches(pending)
                pending, rows = [], 0
        if pending:
            yield pa.Table.from_batches(pending)

    def __iter__(self):
        """Yield ``(start, batch, municipality_rows, neighbourhood_rows)`` per batch of households,
        each batch validated like :func:`read_population` validates the whole table (errors give
        the row counted from the start of the file); after the last batch the ids are checked
        for duplicates and every municipality for households."""
        file = self.path / "households.parquet"
        codes = self.municipality_codes
        ids = np.empty(self.num_rows, dtype=np.int64)
        counts = np.zeros(len(codes), dtype=np.int64)
        start = 0
        try:
            # codes as dictionaries: mapped to rows once per distinct code, not once per household
            with pq.ParquetFile(file, read_dictionary=["municipality", "neighbourhood"]) as f:
                file_schema = f.schema_arrow
                for batch in self._tables(f):
                    try:
                        batch = read_labels("households", batch, self.catalogue, file_schema)
                        rows = validate("households", batch, municipalities=codes,
                                        neighbourhoods=self.neighbourhoods, catalogue=self.catalogue)
                    except PopulationError as e:
                        raise PopulationError(e.table, e.column, None if e.row is None else e.row + start,
                                              e.problem) from None
                    stop = start + batch.num_rows
                    ids[start:stop] = batch.column("id").to_numpy()
                    hm, hn = rows["municipality"], rows["neighbourhood"]
                    counts += np.bincount(hm, minlength=len(codes))
                    yield start, batch, hm, hn
                    start = stop
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable("households", file, exc) from None
        if start != self.num_rows:
            raise PopulationError("households", None, None, f"{file} holds {start} rows, its footer says "
                                  f"{self.num_rows}")
        check_unique("households", "id", pa.array(ids))
        _every_municipality_has_households(counts, codes)


def stream_population(path: str | Path, batch_rows: int = 1 << 20,
                      catalogue: Catalogue | str | Path | None = None) -> HouseholdBatches:
    """A population folder read for one pass over its households in batches of ``batch_rows``
    rows, never holding the whole households table (for the steps that only need arrays
    derived from it). The small tables and ``truth.json`` are read and validated here, the
    households as they are iterated, with the same checks and errors as :func:`read_population`."""
    path = _folder(path)
    cat = population_catalogue(path, catalogue)
    municipalities = read_labels("municipalities", _read_table(path, "municipalities"), cat)
    neighbourhoods = read_labels("neighbourhoods", _read_table(path, "neighbourhoods"), cat)
    truth = _read_truth(path)
    _, nm = _geography(neighbourhoods, municipalities, cat)
    file = _table_file(path, "households")
    try:
        with pq.ParquetFile(file) as f:
            empty, rows = f.schema_arrow.empty_table(), f.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable("households", file, exc) from None
    try:
        validate("households", read_labels("households", empty, cat), catalogue=cat)   # the columns first
    except PopulationError as e:
        if rows == 0 or e.problem != "the table has no rows":
            raise
    return HouseholdBatches(path, neighbourhoods, municipalities, nm, truth, rows, batch_rows, cat)
