"""The resumable store of a bootstrap: batch files, the digest of its inputs, resume checks.

Batches are ``OUT/batches/replicates-START-STOP.parquet``, each written whole under a
temporary name and renamed; ``OUT/bootstrap.json`` records the settings and a SHA-256 of
the input files, and batches are resumed only for the same settings and inputs.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.io.outputs import write_json, write_table
from engine.uncertainty.settings import REPLICATE_COLUMNS, Settings


FINITE_COLUMNS = ("objective_cost", "budget", "share", "simulated_spending")   # effect_pct: NaN without spending
# what the replicates' numbers mean, in the inputs digest: a change of method makes older batches recomputed
# instead of resumed among new ones (2: outcome_sd at the fit, profile terms over joint codes; 3: outcome_sd and
# the elasticity from the point prediction's pass over the households, E's neighbourhood runs in the terms' dtype)
BATCH_FORMAT = "3"


def _batch_file(out: Path, start: int, stop: int) -> Path:
    return out / "batches" / f"replicates-{start:06d}-{stop:06d}.parquet"


# columns that repeat (dictionary-encoded in the files); the float columns rarely repeat a value, and
# trying a dictionary for them cost three times the rest of the write
DICTIONARY_COLUMNS = ["replicate", "code"]


def replicate_table(start: int, values: dict[str, np.ndarray], codes: np.ndarray) -> pa.Table:
    """Replicates ``start`` .. of ``values`` (REPLICATE_COLUMNS -> (replicates, municipalities)) as one
    row per replicate and municipality: the layout of a batch file and of ``replicates.parquet``."""
    n = values[REPLICATE_COLUMNS[0]].shape[0]
    return pa.table({"replicate": np.repeat(np.arange(start, start + n, dtype=np.int64), len(codes)),
                     "code": np.tile(codes, n).tolist(), **{c: values[c].ravel() for c in REPLICATE_COLUMNS}})


def write_batch(out: Path, start: int, stop: int, result: dict[str, np.ndarray], codes: np.ndarray) -> None:
    write_table(_batch_file(out, start, stop), replicate_table(start, result, codes), use_dictionary=DICTIONARY_COLUMNS)


class BatchWriter:
    """Writes batch files (:func:`write_batch`) on one background thread, one batch behind: a batch
    is written while the next one is computed (Parquet encoding and the file system release the
    GIL). :meth:`put` first waits for the previous write and raises its error; the end of the
    ``with`` block waits for the last write (also when the block raises: the finished batches stay
    for a resume, and a failed write is noted on the exception that ends the block)."""

    def __init__(self, out: Path, codes: np.ndarray):
        self._out, self._codes = out, codes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buig-batch-writer")
        self._last = None

    def put(self, start: int, stop: int, result: dict[str, np.ndarray]) -> None:
        last, self._last = self._last, None      # a failed write is raised here once, not noted again
        if last is not None:
            last.result()
        self._last = self._pool.submit(write_batch, self._out, start, stop, result, self._codes)

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._pool.shutdown(wait=True)
        error = self._last.exception() if self._last is not None else None
        if error is None:
            return
        if exc is None:
            raise error
        exc.add_note(f"and writing the last batch failed: {error}")


def done_ranges(out: Path) -> list[tuple[int, int]]:
    """The finished batches: files ``replicates-START-STOP.parquet`` only (a batch is renamed into
    place when written whole; temporary names start with a dot and never count)."""
    done = []
    for f in sorted((out / "batches").glob("replicates-*-*.parquet")):
        try:
            a, b = f.stem.split("-")[1:]
            a, b = int(a), int(b)
        except ValueError:
            continue
        if 0 <= a < b and f.name == _batch_file(out, a, b).name:
            done.append((a, b))
    return done


def plan_batches(replicates: int, batch_size: int, done: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Batches of at most ``batch_size`` covering the replicates not in ``done``."""
    have = np.zeros(replicates, dtype=bool)
    for a, b in done:
        have[a:min(b, replicates)] = True
    todo, r = [], 0
    while r < replicates:
        if have[r]:
            r += 1
            continue
        s = r
        while r < replicates and not have[r] and r - s < batch_size:
            r += 1
        todo.append((s, r))
    return todo


def _file_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def inputs_digest(settings: Settings) -> str:
    """SHA-256 of the files behind ``settings`` that replicates depend on: the population tables,
    the fit (coefficients.parquet, covariances.npz, fit.json without its timings, the model spec
    file it names) and the regime file. Batches are resumed only for the same digest, so files
    replaced under the same paths (a regenerated population, a refit) never mix with old batches."""
    from engine.model.population import TABLE_NAMES
    from engine.io.config import resolve

    h = hashlib.sha256()

    def add(label: str, data: str) -> None:
        h.update(f"{label}\0{data}\0".encode())

    pop, coef = Path(settings.population), Path(settings.coefficients)
    for name in TABLE_NAMES:
        f = pop / f"{name}.parquet"
        add(name, _file_digest(f) if f.is_file() else "missing")
    for name in ("coefficients.parquet", "covariances.npz"):
        f = coef / name
        add(name, _file_digest(f) if f.is_file() else "missing")
    try:
        info = json.loads((coef / "fit.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict):
        for comp in ("volume", "price"):
            if isinstance(info.get(comp), dict):
                info[comp].pop("seconds", None)
        spec = Path(str(info.get("spec", {}).get("file", "")))
        add("spec", _file_digest(spec) if spec.is_file() else "missing")
    add("fit.json", json.dumps(info, sort_keys=True))
    add("replicate columns", ",".join(REPLICATE_COLUMNS))       # batches of an older format are recomputed
    add("batch format", BATCH_FORMAT)
    try:
        add("regime", _file_digest(resolve("regime", settings.regime)))
    except FileNotFoundError:
        add("regime", "missing")
    return h.hexdigest()


def check_settings(out: Path, settings: Settings, inputs: str) -> None:
    """Refuse a folder of another bootstrap; discard the batches of the same settings on other input
    files (they would mix with new ones); record the settings and inputs of this run."""
    f = out / "bootstrap.json"
    if f.exists():
        old = json.loads(f.read_text(encoding="utf-8"))
        if old.get("settings") != settings.key():
            raise ValueError(f"{out} holds replicates of another bootstrap ({old.get('settings')}); use a new "
                             "--out folder")
        if old.get("inputs") == inputs:
            return
        for a, b in done_ranges(out):           # deleted before the new record: a kill here loses nothing
            _batch_file(out, a, b).unlink(missing_ok=True)
    write_json(f, {"settings": settings.key(), "inputs": inputs})


def put_batch(res: dict[str, np.ndarray], start: int, stop: int, batch: dict[str, np.ndarray]) -> None:
    """Replicates ``start`` .. ``stop``-1 of a batch (REPLICATE_COLUMNS -> (stop - start, n_mun)) into
    ``res`` (REPLICATE_COLUMNS -> (replicates, n_mun)), those beyond its replicates left out."""
    stop = min(stop, res[REPLICATE_COLUMNS[0]].shape[0])
    for c in REPLICATE_COLUMNS:
        res[c][start:stop] = batch[c].reshape(-1, res[c].shape[1])[:stop - start]


def read_replicates(out: Path, replicates: int, codes: np.ndarray) -> dict[str, np.ndarray]:
    """Replicates 0 .. replicates-1 from the batch files: arrays (replicates, n_mun), NaN where
    no file holds them."""
    res = {c: np.full((replicates, len(codes)), np.nan) for c in REPLICATE_COLUMNS}
    for a, b in done_ranges(out):
        if a < replicates:
            t = _read_batch(_batch_file(out, a, b), a, b, codes)
            put_batch(res, a, b, {c: t.column(c).to_numpy() for c in REPLICATE_COLUMNS})
    return res


def _read_batch(f: Path, a: int, b: int, codes: np.ndarray) -> pa.Table:
    """A batch file, refused unless it holds replicates a .. b-1 (as its name says) of every
    municipality in ``codes``, in order, with finite values."""
    def bad(problem: str) -> ValueError:
        return ValueError(f"{f}: {problem}; delete the file and rerun to compute that batch again")

    try:
        t = pq.read_table(f)
    except (pa.ArrowException, OSError) as exc:
        raise bad(f"cannot be read ({' '.join(str(exc).split())})") from None
    want = {"replicate", "code", *REPLICATE_COLUMNS}
    if not want <= set(t.column_names) or t.num_rows != (b - a) * len(codes):
        raise bad(f"is not a batch of replicates {a} to {b - 1} ({t.num_rows} rows, columns "
                  f"{', '.join(t.column_names)})")
    rep = np.asarray(t.column("replicate").to_numpy(zero_copy_only=False))
    expected = np.repeat(np.arange(a, b, dtype=np.int64), len(codes))
    if rep.dtype.kind not in "iu" or not np.array_equal(rep, expected):
        row = int(np.flatnonzero(rep != expected)[0]) if rep.shape == expected.shape else 0
        raise bad(f"column replicate, row {row}: holds replicate {rep[row]}, its name says {a} to {b - 1}")
    if t.column("code").to_pylist() != np.tile(codes, b - a).tolist():
        raise bad("column code: not the municipalities of this population in order")
    for c in FINITE_COLUMNS:
        v = np.asarray(t.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
        if not np.isfinite(v).all():
            row = int(np.flatnonzero(~np.isfinite(v))[0])
            raise bad(f"column {c}, row {row}: not a finite number")
    return t
