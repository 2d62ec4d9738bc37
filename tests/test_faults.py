"""Faults: runs killed with SIGKILL, a Dask worker lost mid-bootstrap, a killed bootstrap driver.

- Atomic, consistent outputs: ``buig run`` into a folder that holds a finished run of other
  input files, killed at moments spread over its runtime (and, in the slow test, right after
  each output is renamed into place). After every kill each file is whole and equal to its old
  or its new version, and while ``run.json`` exists every output belongs to one run; the
  rerun equals an undisturbed run bit for bit.
- Worker loss: a real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1; one
  worker (with its nanny) is killed while batches are in flight; the bootstrap finishes
  with the numbers of an undisturbed in-process run.
- Resume: ``buig bootstrap`` killed after some batches are written; the rerun reuses each of
  them untouched, computes only the rest and equals an undisturbed run bit for bit.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.uncertainty.bootstrap import run_bootstrap
from engine.uncertainty.settings import Settings
from engine.uncertainty.store import done_ranges, plan_batches
from engine.uncertainty.summaries import write_results
from engine.app.cli import main
from engine.io.outputs import remove_stale, temporary_pid
from engine.app.pipeline import OUTPUTS

REPO = Path(__file__).resolve().parents[1]
# subprocesses (the CLI, dask workers that unpickle engine functions) import this checkout's engine
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
CLI = [sys.executable, "-m", "engine"]
N_MUN = 388

# buig run: a finished run of an old population, then reruns on the new one under the same path
RUN_REPLICATES, RUN_BATCH = 40, 10
# bootstrap driver / Dask: many small batches, so that a kill lands between them
BOOT_REPLICATES, BOOT_BATCH, BOOT_SEED = 200, 5, 11


# --------------------------------------------------------------------------- helpers

def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporary_names_are_never_batches_and_only_dead_writers_are_removed(tmp_path):
    batches = tmp_path / "batches"
    batches.mkdir()
    dead, live = _dead_pid(), os.getpid()
    for name in ("replicates-000000-000005.parquet", "replicates-000005-000010.parquet"):
        (batches / name).write_bytes(b"whole")
    planted = {f".replicates-000010-000015.parquet.tmp-{dead}": False,      # name -> kept by remove_stale
               f".replicates-000015-000020.parquet.tmp-{live}": True,
               f".buig-tmp-{dead}-abc": False, f".buig-tmp-{live}-abc": True,
               "replicates-20-25.parquet": True, "replicates-000030-000025.parquet": True}     # not ours, not batches
    for name in planted:
        (batches / name).mkdir() if "buig-tmp" in name else (batches / name).write_bytes(b"torn")
    assert done_ranges(tmp_path) == [(0, 5), (5, 10)]
    assert plan_batches(20, 5, done_ranges(tmp_path)) == [(10, 15), (15, 20)]
    removed = remove_stale(batches)
    assert sorted(p.name for p in removed) == sorted(n for n, keep in planted.items() if not keep)
    assert {p.name for p in batches.iterdir()} == {"replicates-000000-000005.parquet",
                                                   "replicates-000005-000010.parquet",
                                                   *(n for n, keep in planted.items() if keep)}
    assert temporary_pid("run.json") is None and temporary_pid(".run.json.tmp-12") == 12


def _column_bits(col: pa.ChunkedArray):
    a = col.to_numpy(zero_copy_only=False)
    if a.dtype.kind == "f":
        return a.astype(np.float64).view(np.uint64).tobytes()          # bit for bit, NaN and -0.0 included
    if a.dtype.kind in "iub":
        return a.tobytes()
    return json.dumps(a.tolist())


def _content(path: Path):
    """The content of an output file, read whole (a truncated file raises): Parquet tables bit for bit
    with their schema and metadata, JSON parsed (fit.json without its timings), other files as bytes."""
    name = path.name
    if name.endswith(".parquet"):
        pf = pq.ParquetFile(path)
        t = pf.read()
        assert t.num_rows == pf.metadata.num_rows, path
        return (t.schema.to_string(show_schema_metadata=True),
                tuple((c, _column_bits(t.column(c))) for c in t.column_names))
    data = path.read_bytes()
    if name.endswith(".json"):
        obj = json.loads(data)
        if name == "fit.json":
            for comp in ("volume", "price"):
                obj[comp].pop("seconds")
        return json.dumps(obj, sort_keys=True)
    if name.endswith(".toml"):
        tomllib.loads(data.decode("utf-8"))
    elif name.endswith(".npz"):
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            assert all(z[k].size for k in z.files), path
    elif name.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
        assert len(rows) > 1 and all(len(r) == len(rows[0]) for r in rows), path
    elif name.endswith(".html"):
        assert data.endswith(b"</html>\n"), path
    return hashlib.sha256(data).hexdigest()


def _files(out: Path) -> dict[str, Path]:
    """Output files of a run folder by relative name; temporary names (leading dot) left out."""
    found = {}
    for d in (out, out / "batches"):
        if d.is_dir():
            for f in d.iterdir():
                if f.is_file() and not f.name.startswith("."):
                    found[str(f.relative_to(out))] = f
    return found


def _snapshot(out: Path) -> dict[str, object]:
    return {name: _content(f) for name, f in _files(out).items() if name not in ("run.json", "bootstrap.json")}


def _temporaries(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for d in (out, out / "batches") if d.is_dir() for p in d.iterdir()
                  if temporary_pid(p.name) is not None)


def _table(path: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(path)
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def _check_run_folder(out: Path, old: dict, new: dict, where: str) -> tuple[str, str]:
    """Every file whole and equal to its old or its new version; with run.json, all of one run whose
    files agree with each other. Returns ("complete" or "incomplete", "old", "new", "both" or "mixed")."""
    files = _files(out)
    assert set(files) <= set(old) | set(new) | {"run.json", "bootstrap.json"}, (where, sorted(files))
    sides = {}
    for name, f in files.items():
        if name in ("run.json", "bootstrap.json"):
            _content(f)                                      # parses whole
            continue
        c = _content(f)
        side = {s for s, ref in (("old", old), ("new", new)) if ref.get(name) == c}
        assert side, f"{where}: {name} is neither the old nor the new file"
        sides[name] = side
    if "bootstrap.json" in files:
        info = json.loads(files["bootstrap.json"].read_text())
        assert Path(info["settings"]["coefficients"]) == out.resolve() and len(info["inputs"]) == 64, where
    common = set.intersection(*sides.values()) if sides else {"old", "new"}
    which = "mixed" if not common else "both" if len(common) == 2 else common.pop()
    if "run.json" not in files:
        return "incomplete", which
    # run.json: every output of one run, and that run's files agree with each other
    for name in OUTPUTS:
        assert name in files, f"{where}: run.json exists but {name} does not"
    assert which != "mixed", f"{where}: run.json exists beside files of two runs: {sides}"
    b = pq.read_table(out / "budgets.parquet")
    tb = float(b.schema.metadata[b"tb"])
    budget = b.column("budget").to_numpy()
    codes = b.column("code").to_pylist()
    assert len(codes) == N_MUN and abs(budget.sum() - tb) < 0.01, where
    costs = _table(out / "municipal_costs.parquet")
    assert costs["code"].tolist() == codes, where
    np.testing.assert_array_equal(costs["objective_cost"], b.column("objective_cost").to_numpy())
    for name, col in (("bands.parquet", "point_budget"), ("flags.parquet", "budget"),
                      ("capped_budgets.parquet", "budget")):
        t = _table(out / name)
        assert t["code"].tolist() == codes, (where, name)
        np.testing.assert_allclose(t[col], budget, rtol=1e-12, err_msg=f"{where}: {name}")
    assert set(_table(out / "rekentool.parquet")["code"]) == set(codes), where
    bands = _table(out / "bands.parquet")
    q = np.stack([bands[f"budget_q{x}"] for x in ("2_5", "5", "50", "95", "97_5")])
    assert np.all(np.diff(q, axis=0) >= 0), where
    reps = _table(out / "replicates.parquet")
    assert len(reps["replicate"]) == RUN_REPLICATES * N_MUN, where
    assert np.all(np.abs(reps["budget"].reshape(RUN_REPLICATES, N_MUN).sum(1) - tb) < 0.01), where
    assert json.loads((out / "bootstrap.json").read_text())["replicates"] == RUN_REPLICATES, where
    return "complete", which


# --------------------------------------------------------------------------- buig run killed

def _prepare(root: Path, new_population: Path) -> dict:
    """``root/out`` holding a finished run of an old population, whose files the new population then
    replaces under the same path; ``ref``: an undisturbed run on the new one, timed as a subprocess."""
    from engine.world.synth import generate

    world = root / "world"
    generate(world, households=30_000, seed=8)                          # the old population
    scenario = root / "scenario.toml"
    scenario.write_text(f"[bootstrap]\nbatch_size = {RUN_BATCH}\n")
    args = ["run", str(scenario), "--population", str(world), "--replicates", str(RUN_REPLICATES),
            "--workers", "0", "--quiet"]
    out = root / "out"
    assert main([*args, "--out", str(out)]) == 0
    old = _snapshot(out)
    for f in new_population.iterdir():                                  # the new population, same path
        shutil.copyfile(f, world / f.name)
    ref = root / "ref"
    t0 = time.perf_counter()
    res = subprocess.run(CLI + [*args, "--out", str(ref)], capture_output=True, text=True, timeout=600, env=ENV)
    seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    new = _snapshot(ref)
    assert {n for n in old if old[n] != new.get(n)} >= {"budgets.parquet", "coefficients.parquet",
                                                         "replicates.parquet", "report.html"}
    return {"args": args, "out": out, "old": old, "new": new, "seconds": seconds}


def _kill_after(args: list[str], out: Path, delay: float) -> int:
    """Start ``buig run`` into ``out`` and SIGKILL it after ``delay`` seconds; its exit status."""
    proc = subprocess.Popen(CLI + [*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=ENV)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()
    return proc.returncode


def _finish_and_compare(k: dict, out: Path) -> None:
    """Plant stale temporaries (a dead writer's) and a live writer's, rerun to completion, compare."""
    dead, live = _dead_pid(), os.getpid()
    (out / f".budgets.parquet.tmp-{dead}").write_bytes(b"PAR1 torn")
    (out / f".buig-tmp-{dead}-x1y2z3").mkdir()
    (out / f".buig-tmp-{dead}-x1y2z3" / "coefficients.parquet").write_bytes(b"PAR1 torn")
    (out / "batches" / f".replicates-000000-000010.parquet.tmp-{dead}").write_bytes(b"PAR1 torn")
    busy = [out / f".flags.parquet.tmp-{live}", out / "batches" / f".replicates-000010-000020.parquet.tmp-{live}"]
    for f in busy:
        f.write_bytes(b"being written")
    res = subprocess.run(CLI + [*k["args"], "--out", str(out)], capture_output=True, text=True, timeout=600,
                         env=ENV)
    assert res.returncode == 0, res.stderr
    assert _temporaries(out) == sorted(str(f.relative_to(out)) for f in busy)   # a running writer's are kept
    for f in busy:
        f.unlink()
    assert _check_run_folder(out, k["old"], k["new"], "after the rerun") == ("complete", "new")
    assert _snapshot(out) == k["new"]                        # bit for bit, batches included


def test_run_killed_at_random_moments_leaves_whole_consistent_outputs(small_world, tmp_path):
    k = _prepare(tmp_path, small_world)
    out = k["out"]
    outcomes = []
    seconds = k["seconds"]
    # the outputs are written in the last part: the population is read and the model fitted before anything
    # is written (about 0.9 of the time of a 30,000-household run, interpreter start-up included)
    def attempt(delay: float) -> tuple:
        t0 = time.perf_counter()
        rc = _kill_after(k["args"], out, delay)
        state = _check_run_folder(out, k["old"], k["new"], f"killed after {delay:.2f} s")
        outcomes.append((round(delay, 2), rc, *state, _temporaries(out)))
        return rc, state, time.perf_counter() - t0

    before, after = 0.0, math.inf                # latest delay that killed before any write, earliest past all
    for f in (0.5, 0.7, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98):
        rc, state, took = attempt(f * seconds)
        if rc == 0:                                      # finished first (a faster machine now): rescale
            seconds = min(seconds, took)
            after = min(after, took)
        elif state == ("complete", "old"):
            before = max(before, f * seconds)
    # the cores' load changes how long a run takes: until a kill lands among the writes, aim between
    # the latest kill before them and the earliest moment past them
    for _ in range(20):
        if any(o[1] == -signal.SIGKILL and o[2] == "incomplete" for o in outcomes):
            break
        delay = 1.15 * before if math.isinf(after) else (before + after) / 2
        rc, state, took = attempt(delay)
        if rc == 0 or state == ("complete", "new"):
            after = min(after, delay if rc else took)
        elif state == ("complete", "old"):
            before = max(before, delay)
    killed = [o for o in outcomes if o[1] == -signal.SIGKILL]
    assert len(killed) >= 3, outcomes                      # most kills landed inside the run
    assert any(o[2] == "incomplete" for o in killed), outcomes
    _finish_and_compare(k, out)


@pytest.mark.slow
def test_run_killed_right_after_each_rename_stays_consistent(small_world, tmp_path):
    """A kill right after run.json is removed and right after each output (and the first and last
    batch) is renamed into place: the moments between two renames, where a folder could mix runs."""
    k = _prepare(tmp_path, small_world)
    out = k["out"]
    batches = [f"batches/replicates-{a:06d}-{a + RUN_BATCH:06d}.parquet" for a in (0, RUN_REPLICATES - RUN_BATCH)]
    targets = ["run.json", "regime.toml", "scenario.toml", "coefficients.parquet", "municipal_costs.parquet",
               "budgets.parquet", batches[0], batches[1], "replicates.parquet", "bands.parquet", "flags.parquet",
               "capped_budgets.parquet", "report.html"]
    states = []
    for name in targets:
        target = out / name
        if name.startswith("batches/"):
            target.unlink(missing_ok=True)               # a finished batch is resumed, never renamed again
        before = target.stat().st_ino if target.exists() else None
        proc = subprocess.Popen(CLI + [*k["args"], "--out", str(out)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=ENV)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                changed = target.stat().st_ino != before and name != "run.json"
            except FileNotFoundError:
                changed = name == "run.json"             # removed: the run has begun replacing outputs
            if changed:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (name, proc.returncode, err.decode())
        states.append((name, *_check_run_folder(out, k["old"], k["new"], f"killed after {name} was renamed")))
    assert all(s[1] == "incomplete" for s in states), states   # run.json is gone from the first rename on
    assert any(s[2] == "mixed" for s in states), states        # ... while the folder mixed two runs
    _finish_and_compare(k, out)


# --------------------------------------------------------------------------- bootstrap: driver and workers

@pytest.fixture(scope="module")
def boot(small_world, small_population, tmp_path_factory):
    """Settings of a bootstrap on the small world and its undisturbed result (in this process)."""
    from engine.model.fitted import fit_to_folder

    coef = tmp_path_factory.mktemp("faults_fit")
    fit_to_folder(small_population, coef)
    settings = Settings(population=str(small_world), coefficients=str(coef), regime="2019", seed=BOOT_SEED)
    ref = tmp_path_factory.mktemp("faults_ref")
    res = run_bootstrap(settings, ref, replicates=BOOT_REPLICATES, batch_size=50, workers=0)
    write_results(res, ref)
    return settings, res, ref


def test_a_population_replaced_under_the_same_path_is_never_mixed_with_old_batches(boot, small_world, tmp_path):
    """A rerun after the population files changed (same path, same settings) recomputes every batch,
    also in a process that still holds the old population in memory."""
    from engine.uncertainty import draws
    from engine.world.synth import generate

    settings, _, _ = boot
    world = tmp_path / "world"
    shutil.copytree(small_world, world)
    s = Settings(**{**settings.__dict__, "population": str(world)})
    out = tmp_path / "out"
    first = run_bootstrap(s, out, replicates=20, batch_size=5, workers=0)
    generate(tmp_path / "other", households=30_000, seed=8)
    for f in (tmp_path / "other").iterdir():
        shutil.copyfile(f, world / f.name)
    again = run_bootstrap(s, out, replicates=20, batch_size=5, workers=0)
    assert again.computed == 20                              # the old batches were discarded, not resumed
    draws._CONTEXTS.clear()
    fresh = run_bootstrap(s, tmp_path / "fresh", replicates=20, batch_size=10, workers=0)
    assert not np.array_equal(first.values["budget"], fresh.values["budget"])
    for c in fresh.values:
        np.testing.assert_array_equal(again.values[c].view(np.uint64), fresh.values[c].view(np.uint64))


def _same_results(out: Path, ref: Path) -> None:
    for name in ("replicates.parquet", "bands.parquet", "flags.parquet"):
        assert _content(out / name) == _content(ref / name), name


def _batch_state(out: Path) -> dict[str, tuple]:
    return {f.name: (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_ino, f.stat().st_mtime_ns)
            for f in (out / "batches").glob("replicates-*.parquet")}


def test_killed_bootstrap_driver_resumes_every_finished_batch(boot, tmp_path):
    settings, _, ref = boot
    out = tmp_path / "out"
    cmd = CLI + ["bootstrap", "--population", settings.population, "--coefficients", settings.coefficients,
                 "--replicates", str(BOOT_REPLICATES), "--batch-size", str(BOOT_BATCH), "--method", "parametric",
                 "--seed", str(BOOT_SEED), "--workers", "0", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 300
    while len(list((out / "batches").glob("replicates-*.parquet"))) < 3:       # some batches are written
        assert proc.poll() is None and time.monotonic() < deadline, "the driver ended before the kill"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    before = _batch_state(out)
    n_batches = BOOT_REPLICATES // BOOT_BATCH
    assert 3 <= len(before) < n_batches
    assert not (out / "replicates.parquet").exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert again.returncode == 0, again.stderr
    after = _batch_state(out)
    assert len(after) == n_batches and set(before) < set(after)
    for name, state in before.items():                      # reused untouched: same bytes, same file
        assert after[name] == state, name
    info = json.loads((out / "bootstrap.json").read_text())
    assert info["replicates"] == BOOT_REPLICATES
    assert info["computed"] == BOOT_REPLICATES - BOOT_BATCH * len(before)
    assert _temporaries(out) == []
    _same_results(out, ref)


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A process in its own process group (a dask worker's nanny and worker die together)."""
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent,
                                env=ENV)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)                # children left behind in the group
    except ProcessLookupError:
        pass


def test_bootstrap_survives_the_loss_of_a_dask_worker(boot, tmp_path):
    from distributed import Client

    settings, reference, ref = boot
    dask = [sys.executable, "-m", "dask"]
    loopback = ["--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]   # (its http server
    # for health checks runs even without a dashboard, on every interface unless told otherwise)
    sched_file = tmp_path / "scheduler.json"
    procs: dict[str, subprocess.Popen] = {}
    observer = None
    try:
        procs["scheduler"] = _start(dask + ["scheduler", "--scheduler-file", str(sched_file), "--port", "0", *loopback],
                                    tmp_path / "scheduler.log")
        deadline = time.monotonic() + 120
        address = None
        while address is None:
            assert procs["scheduler"].poll() is None and time.monotonic() < deadline, \
                (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
            try:
                address = json.loads(sched_file.read_text())["address"]
            except (FileNotFoundError, ValueError, KeyError):      # not there yet, or being written
                pass
        assert address.startswith("tcp://127.0.0.1:")
        for name in ("w1", "w2"):
            (tmp_path / name).mkdir()
            procs[name] = _start(dask + ["worker", "--scheduler-file", str(sched_file), "--name", name,
                                         "--nthreads", "1", *loopback, "--local-directory", str(tmp_path / name)],
                                 tmp_path / name / "worker.log")
        observer = Client(address, timeout=60)
        observer.wait_for_workers(2, timeout=120)
        # (names by a direct call: scheduler_info() returns a cache that the client's periodic update,
        # which asks for no workers, can empty between the call and its return)
        names = observer.run(lambda dask_worker: dask_worker.name)
        killed: dict[str, object] = {}
        stop = threading.Event()

        def kill_a_busy_worker() -> None:
            """As soon as a first batch is computed (the workers are past start-up), SIGKILL the worker
            with the most batches in flight, nanny included: a real loss, not a restart."""
            try:
                while not stop.is_set():
                    if any(observer.who_has().values()):
                        busy = {names[addr]: len(tasks) for addr, tasks in observer.processing().items()}
                        victim = max(busy, key=busy.get)
                        os.killpg(procs[victim].pid, signal.SIGKILL)
                        procs[victim].wait(timeout=30)
                        killed.update(name=victim, in_flight=busy[victim],
                                      batches_written=len(list((out / "batches").glob("replicates-*"))))
                        return
                    time.sleep(0.005)
            except Exception as exc:                     # reported by the assertion below
                killed["error"] = repr(exc)

        out = tmp_path / "out"
        watcher = threading.Thread(target=kill_a_busy_worker, daemon=True)
        watcher.start()
        try:
            res = run_bootstrap(settings, out, replicates=BOOT_REPLICATES, batch_size=BOOT_BATCH, scheduler=address)
        finally:
            stop.set()
            watcher.join(timeout=60)
        assert killed.get("in_flight", 0) >= 1 and killed["batches_written"] < BOOT_REPLICATES // BOOT_BATCH, killed
        alive = [info["name"] for info in observer.scheduler_info(n_workers=-1)["workers"].values()]
        assert alive == [n for n in ("w1", "w2") if n != killed["name"]]      # lost for good
        assert res.computed == BOOT_REPLICATES
        for c in reference.values:
            np.testing.assert_array_equal(res.values[c].view(np.uint64), reference.values[c].view(np.uint64))
        write_results(res, out)
        _same_results(out, ref)
    finally:
        if observer is not None:
            observer.close()
        for p in procs.values():
            _stop(p)


# --------------------------------------------------------------------------- whole sets: a kill at every rename

KILLS: dict[str, int] = {}          # command -> kill points tried


def _set_state(folder: Path, names: tuple[str, ...], old: dict, new: dict, where: str) -> str:
    """'old' or 'new': every file of the set equal to one version; a mix fails."""
    sides = []
    for name in names:
        c = _content(folder / name)
        side = {s for s, ref in (("old", old), ("new", new)) if ref[name] == c}
        assert side, f"{where}: {name} is neither the old nor the new file"
        sides.append(side)
    common = set.intersection(*sides)
    assert common, f"{where}: files of two sets side by side: {dict(zip(names, sides))}"
    return "old" if "old" in common else "new"


def _killed_at(n: int, argv: list[str]) -> bool:
    """Run ``buig ARGV`` with the test hook that SIGKILLs it at its n-th rename; True if it was killed."""
    res = subprocess.run(CLI + [*argv, "--quiet"], capture_output=True, text=True, timeout=600,
                         env={**ENV, "BUIG_TEST_KILL_AT_RENAME": str(n)})
    assert res.returncode in (0, -signal.SIGKILL), res.stderr
    return res.returncode != 0


def _later_commands_accept(pop: Path, fit: Path, out: Path) -> None:
    for argv in (["validate", str(pop)],
                 ["predict", "--population", str(pop), "--coefficients", str(fit), "--out", str(out / "costs")],
                 ["bootstrap", "--population", str(pop), "--coefficients", str(fit), "--replicates", "2",
                  "--workers", "0", "--out", str(out / "boot")]):
        assert main([*argv, "--quiet"]) == 0, argv


POPULATION_SET = ("households.parquet", "neighbourhoods.parquet", "municipalities.parquet", "truth.json")
FIT_SET = ("coefficients.parquet", "fit.json", "covariances.npz")


def test_synth_and_fit_killed_at_every_rename_leave_one_whole_set(small_world, tmp_path):
    """``buig synth`` over an old population and ``buig fit`` over an old fit, each SIGKILLed just before
    its 1st, 2nd, ... rename until it finishes: what is left is the old set or the new set, never a mix,
    and validate, predict and bootstrap accept it."""
    from engine.world.synth import generate

    pop, fit, scratch = tmp_path / "pop", tmp_path / "fit", tmp_path / "scratch"
    newpop, newfit = tmp_path / "newpop", tmp_path / "newfit"
    generate(newpop, households=30_000, seed=8)
    for p, f in ((small_world, fit), (newpop, newfit)):
        assert main(["fit", "--population", str(p), "--out", str(f), "--quiet"]) == 0
    old_pop = {n: _content(small_world / n) for n in POPULATION_SET}
    new_pop = {n: _content(newpop / n) for n in POPULATION_SET}
    old_fit = {n: _content(fit / n) for n in FIT_SET}
    new_fit = {n: _content(newfit / n) for n in FIT_SET}
    shutil.copytree(fit, tmp_path / "oldfit")
    seen = {"synth": set(), "fit": set()}
    for command in ("synth", "fit"):
        n = 0
        while True:
            n += 1
            shutil.rmtree(pop, ignore_errors=True)
            shutil.copytree(small_world if command == "synth" else newpop, pop)
            if command == "fit":
                shutil.rmtree(fit)
                shutil.copytree(tmp_path / "oldfit", fit)
            argv = (["synth", "--households", "30000", "--seed", "8", "--out", str(pop)] if command == "synth"
                    else ["fit", "--population", str(pop), "--out", str(fit)])
            killed = _killed_at(n, argv)
            shutil.rmtree(scratch, ignore_errors=True)
            _later_commands_accept(pop, fit if command == "fit" else newfit, scratch)
            where = f"{command} killed at rename {n}"
            if command == "synth":
                seen["synth"].add(_set_state(pop, POPULATION_SET, old_pop, new_pop, where))
            else:
                seen["fit"].add(_set_state(fit, FIT_SET, old_fit, new_fit, where))
            assert not ((pop, fit)[command == "fit"] / ".buig-commit").exists(), where      # finished by the readers
            if not killed:
                KILLS[command] = n - 1
                break
    assert seen == {"synth": {"old", "new"}, "fit": {"old", "new"}}, seen      # kills landed on both sides
    assert KILLS["synth"] >= 4 and KILLS["fit"] >= 3, KILLS
    print(f"\nfaults: kill points tried: synth {KILLS['synth']}, fit {KILLS['fit']}")


def test_a_replaced_file_stays_valid_by_its_content(small_world, tmp_path):
    """A population whose households file a user replaced (by the one of another world of the same
    municipalities) is read as it is: no record of the set refuses it."""
    from engine.world.synth import generate

    pop = tmp_path / "pop"
    shutil.copytree(small_world, pop)
    generate(tmp_path / "other", households=30_000, seed=8)
    shutil.copyfile(tmp_path / "other" / "households.parquet", pop / "households.parquet")
    assert main(["validate", str(pop), "--quiet"]) == 0


# --------------------------------------------------------------------------- one command per folder

def test_a_second_command_into_a_folder_in_use_is_refused_at_once(small_world, tmp_path):
    """While a process holds the output folder, run, bootstrap and sweep into it stop at once with exit 2
    and one line, and leave it as it was; once that process is SIGKILLed the OS releases the lock."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("in use\n")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom engine.io.outputs import folder_lock\n"
                               f"with folder_lock({str(out)!r}, 'run'):\n    print('held', flush=True)\n"
                               "    time.sleep(600)\n"], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        sweep = tmp_path / "sweep.toml"
        sweep.write_text(f'[base]\n"population.source" = "{small_world}"\n[grid]\n"cap.kappa" = [0.1, 0.2]\n')
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        for argv in (["run", "--population", str(small_world), "--replicates", "2", "--workers", "0"],
                     ["bootstrap", "--population", str(small_world), "--replicates", "2", "--workers", "0"],
                     ["sweep", str(sweep), "--replicates", "2", "--workers", "0"]):
            err = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stderr(err):
                rc = main([*argv, "--out", str(out), "--quiet"])
            lines = err.getvalue().splitlines()
            assert rc == 2 and len(lines) == 1 and "another buig command" in lines[0], (argv, err.getvalue())
            assert time.perf_counter() - t0 < 30, argv                       # at once: no waiting for the lock
            assert {p.name: p.read_bytes() for p in out.iterdir()} == before, argv
    finally:
        holder.kill()
        holder.wait()
    assert main(["bootstrap", "--population", str(small_world), "--replicates", "2", "--workers", "0",
                 "--out", str(out), "--quiet"]) == 0


# --------------------------------------------------------------------------- resume by content

def test_resume_does_not_depend_on_how_the_folder_is_spelled(small_world, tmp_path, monkeypatch):
    """The same bootstrap resumed with a relative --out, an absolute one, and from another working
    folder (relative population and fit paths too) recomputes nothing."""
    fit = tmp_path / "fit"
    assert main(["fit", "--population", str(small_world), "--out", str(fit), "--quiet"]) == 0
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copytree(small_world, tmp_path / "a" / "world")
    monkeypatch.chdir(tmp_path / "a")
    args = ["--replicates", "4", "--batch-size", "2", "--workers", "0", "--quiet"]
    assert main(["bootstrap", "--population", "world", "--coefficients", str(fit), *args, "--out", "boot"]) == 0
    first = _batch_state(tmp_path / "a" / "boot")
    assert len(first) == 2
    for cwd, pop, out in ((tmp_path / "a", str(tmp_path / "a" / "world"), str(tmp_path / "a" / "boot")),
                          (tmp_path / "a" / "b", "../world", "../boot"),
                          (tmp_path, "a/world", "a/./boot")):
        monkeypatch.chdir(cwd)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["bootstrap", "--population", pop, "--coefficients", os.path.relpath(fit), *args, "--out", out])
        assert rc == 0, err.getvalue()
        assert _batch_state(tmp_path / "a" / "boot") == first, (cwd, out)     # resumed, nothing rewritten


def test_ctrl_c_on_a_dask_bootstrap_prints_one_line(boot, tmp_path):
    """SIGINT to the whole process group (what Ctrl-C in a terminal sends) while a 2-worker local cluster
    runs: exit 130, one line on stderr, no worker traceback; the finished batches are kept."""
    settings, _, _ = boot
    out = tmp_path / "out"
    proc = subprocess.Popen(CLI + ["bootstrap", "--population", settings.population, "--coefficients",
                                   settings.coefficients, "--replicates", "400", "--method", "cluster",
                                   "--batch-size", "2", "--workers", "2", "--seed", "3", "--out", str(out), "--quiet"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not list((out / "batches").glob("replicates-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [l for l in err.splitlines()                      # Dask's notice of a dashboard port in use aside
             if not any(w in l for w in ("Port 8787", "Perhaps you already", "Hosting the HTTP", "warnings.warn"))]
    assert proc.returncode == 130 and lines == ["buig: interrupted; run the same command again to resume "
                                                "(finished bootstrap batches are kept)"], err
    assert list((out / "batches").glob("replicates-*.parquet"))
