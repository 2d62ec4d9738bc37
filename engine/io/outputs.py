"""Atomic output: every file is written under a temporary name and renamed into place.

``with atomic_dir(out) as tmp:`` gives a fresh temporary folder beside ``out``; files
written there are moved into ``out`` only when the block ends without an exception, so a
failed or interrupted run never leaves a half-written file in ``out``.

Temporary names start with a dot and carry the writer's process id: folders
``.buig-tmp-PID-XXXXXXXX`` and files ``.NAME.tmp-PID``. No reader takes them for outputs,
and :func:`remove_stale` (called by :func:`atomic_dir`, ``buig run``, the bootstrap and
sweeps before they write) deletes those whose process no longer runs on this machine,
i.e. the leftovers of a killed run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


TEMPORARY = re.compile(r"\.buig-tmp-(\d+)-.*|\..+\.tmp-(\d+)")


def temporary_pid(name: str) -> int | None:
    """The writer's process id if ``name`` is a temporary name of this module's forms, else None."""
    m = TEMPORARY.fullmatch(name)
    return None if m is None else int(m.group(1) or m.group(2))


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":      # elsewhere os.kill(pid, 0) is no probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale(folder: str | Path) -> list[Path]:
    """Delete the temporary files and folders in ``folder`` left by processes that no longer run
    (a killed run); those of running processes are left alone. Returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for e in entries:
        pid = temporary_pid(e.name)
        if pid is None or _running(pid):
            continue
        path = Path(e.path)
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def temporary_name(path: str | Path) -> Path:
    """The temporary name under which ``path`` is written before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_dir(out: str | Path):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".buig-tmp-{os.getpid()}-", dir=out))
    try:
        yield tmp
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path):
    """``with atomic_file(path) as tmp:`` write ``tmp``; it replaces ``path`` when the block ends
    without an exception (and is removed otherwise)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (temporary name, then rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    """Write JSON to ``path`` atomically (temporary name, then rename)."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def write_table(path: str | Path, table) -> None:
    """Write a pyarrow table as Parquet to ``path`` atomically (temporary name, then rename)."""
    import pyarrow.parquet as pq

    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def write_csv_copies(folder: str | Path, names) -> list[Path]:
    """``NAME.csv`` next to each ``NAME.parquet`` of ``names`` in ``folder`` (those present),
    atomically; dictionary columns are written as their values. Returns the CSV files."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    written = []
    for name in names:
        src = Path(folder) / name
        if not src.is_file():
            continue
        table = pq.read_table(src)
        table = table.cast(pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                                      for f in table.schema]))
        target = src.with_suffix(".csv")
        with atomic_file(target) as tmp:
            pcsv.write_csv(table, tmp)
        written.append(target)
    return written
