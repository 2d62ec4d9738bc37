"""Atomic output: every file is written under a temporary name and renamed into place, and
the files of one command are committed as one set.

``with atomic_dir(out) as tmp:`` gives a fresh temporary folder beside ``out``; files
written there are moved into ``out`` only when the block ends without an exception, so a
failed or interrupted run never leaves a half-written file in ``out``.

Whole sets (a journal, rolled forward). Moving several files takes one rename each, and a
process killed between two renames would leave, say, new coefficients beside old
covariances. So :func:`atomic_dir` first writes a journal, ``out/.buig-commit`` (JSON: the
temporary folder and the file names; itself written under a temporary name and renamed,
so it exists whole or not at all), then renames the files and removes the journal. The
set is committed the moment the journal exists: every file of it is then complete in the
temporary folder. Whoever finds a journal finishes its renames (:func:`settle`): the
readers of a population, a fit and cost files, and every writer into the folder (through
:func:`remove_stale`). So a kill before the journal leaves the old set (and temporary files
that the next writer removes), a kill after it the new set, never a mix that a later
command accepts. If the folder cannot be written the reader stops with an error naming the
journal instead of reading a mix.

Why not a manifest of content hashes that readers check: a file that a user replaced on
purpose (their own ``households.parquet``) would then be refused for having changed. With
the journal nothing is recorded once a set is committed; a folder is valid by its content
(the schema checks of :mod:`engine.model.population`), whoever wrote its files. The layout of
outputs does not change: the files land under their documented names.

Temporary names start with a dot and carry the writer's process id: folders
``.buig-tmp-PID-XXXXXXXX`` and files ``.NAME.tmp-PID``. No reader takes them for outputs,
and :func:`remove_stale` (called by :func:`atomic_dir`, ``buig run``, the bootstrap and
sweeps before they write) deletes those whose process no longer runs on this machine,
i.e. the leftovers of a killed run, after finishing a journal's renames.

One run per folder: :func:`folder_lock` takes an exclusive ``fcntl.flock`` on the
output folder itself for the whole of a ``buig run``, ``bootstrap`` or ``sweep``; a second
command into the same folder is refused at once. The operating system releases the lock
when the process ends, however it ends (a SIGKILL included), so a stale lock never blocks.

Test hook: with the environment variable ``BUIG_TEST_KILL_AT_RENAME=N`` the process kills
itself (SIGKILL) just before its N-th rename into place; the fault tests use it to stop a
command between any two renames.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

JOURNAL = ".buig-commit"
_RENAMES = [0]


def _rename(src: Path, dst: Path) -> None:
    """``os.replace``, counted for the test hook ``BUIG_TEST_KILL_AT_RENAME``."""
    _RENAMES[0] += 1
    at = os.environ.get("BUIG_TEST_KILL_AT_RENAME")
    if at and _RENAMES[0] == int(at):
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(src, dst)


def _roll_forward(out: Path, journal: dict) -> None:
    """Finish the renames of a committed set (idempotent: files already moved are skipped)."""
    tmp = out / journal["folder"]
    for name in journal["files"]:
        try:
            _rename(tmp / name, out / name)
        except FileNotFoundError:
            pass                      # moved already (by the writer, or by another reader)
    (out / JOURNAL).unlink(missing_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)


def settle(folder: str | Path) -> None:
    """Finish the commit of a set of files that a killed writer left in ``folder`` (see the
    module docstring); nothing to do without a journal. Readers call it before reading."""
    folder = Path(folder)
    path = folder / JOURNAL
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return                        # no journal; an unreadable folder is reported by the reader
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the commit journal: {exc.strerror}") from None
    try:
        journal = json.loads(text)
        ok = (isinstance(journal, dict) and isinstance(journal.get("folder"), str)
              and temporary_pid(journal["folder"]) is not None and isinstance(journal.get("files"), list)
              and all(isinstance(n, str) and "/" not in n and n not in ("", ".", "..") for n in journal["files"]))
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{path}: not a commit journal of buig; remove it if you made it")
    try:
        _roll_forward(folder, journal)
    except PermissionError:
        raise ValueError(f"{folder}: a killed command left its outputs half renamed ({JOURNAL}); the folder is "
                         "read-only, so they cannot be completed: rerun that command, or make the folder "
                         "writable") from None


_HELD: dict[str, int] = {}       # folder -> depth: the folder locks this process holds


@contextmanager
def folder_lock(out: str | Path, command: str):
    """Hold an exclusive OS lock on folder ``out`` (``fcntl.flock`` on the folder itself, so no
    file is added) while the block runs; a second command into the folder is refused at once
    with a ``ValueError``. ``out`` (and missing parents) is created if missing, and removed again
    if the block fails while it is still empty. Re-entrant within a process (``buig run`` holds it while its
    bootstrap takes it again). Released by the OS when the process dies, however it dies."""
    import fcntl

    out = Path(out)
    created = []                      # folders made here, deepest first: removed again if the block fails
    for d in (out, *out.parents):
        if d.exists():
            break
        created.append(d)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"--out {out}: not a folder") from None
    key = str(out.resolve())
    try:
        if key in _HELD:
            _HELD[key] += 1
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"--out {out}: another buig command ({command} or other) is writing into this "
                                 "folder; wait for it to finish or choose another folder") from None
            _HELD[key] = 1
        try:
            yield
        except BaseException:
            if _HELD[key] == 1:
                for d in created:            # a failed command leaves no new empty folder behind
                    try:
                        d.rmdir()
                    except OSError:
                        break
            raise
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
    finally:
        os.close(fd)


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
    settle(folder)
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
    """``with atomic_dir(out) as tmp:`` write files into the temporary folder ``tmp``; when the
    block ends without an exception they are committed into ``out`` as one set (see the
    module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".buig-tmp-{os.getpid()}-", dir=out))
    try:
        yield tmp
        files = sorted(f.name for f in tmp.iterdir())
        if len(files) == 1:
            _rename(tmp / files[0], out / files[0])       # one rename is whole by itself
        elif files:
            journal = {"folder": tmp.name, "files": files}
            write_text(out / JOURNAL, json.dumps(journal) + "\n")     # the commit point
            _roll_forward(out, journal)
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
        _rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (temporary name, then rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    """Write JSON to ``path`` atomically (temporary name, then rename)."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def write_table(path: str | Path, table, **options) -> None:
    """Write a pyarrow table as Parquet to ``path`` atomically (temporary name, then rename);
    ``options`` go to ``pyarrow.parquet.write_table`` (such as ``use_dictionary``)."""
    import pyarrow.parquet as pq

    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, **options)


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
