"""Cluster bootstrap on Dask: 2 workers vs 1 worker on the same refits (scaling efficiency).

Each timed call is ``engine.uncertainty.bootstrap.run_bootstrap(method="cluster")`` into a fresh
folder on an open ``LocalCluster`` (loopback, one Dask thread per worker): per replicate
the municipalities are resampled, both components refitted warm from the full-sample
estimate, and the whole distribution run on the full population; batches of
``BATCH`` replicates are Dask tasks and are written as Parquet as they finish.

- buig: 2 workers, Numba on 1 thread in each (the cores divided by the Dask threads).
- one_worker: 1 worker with Numba held to 1 thread (``NUMBA_NUM_THREADS=1``): the
  one-core baseline, so one_worker / buig is the speed-up of the second worker
  (efficiency = ratio / 2).
- one_worker_2threads: 1 worker whose Numba uses both cores (how far Numba's own
  threads get on the same refits).

Setup starts the cluster and fits the full sample (untimed); the warm-up runs one
replicate per worker so every worker has read the population, built its context and
compiled the kernels before the timed calls. Peak RSS is the driver's only (the workers
are other processes; each holds its own copy of the population).
"""

from __future__ import annotations

from benchmarks.protocol import Floor, Impl

REPEAT = 1
TIMEOUT = 3600
SEED = 5
REPLICATES = {"small": 16, "full": 100}
BATCH = 2
# Measured 2026-12-01 at small scale on a 2-vCPU KVM guest (/proc/cpuinfo: "Intel(R) Xeon(R) Processor",
# AVX2 + AVX-512 flags) shared with other jobs (load 0.8-16): pooled ratio of the gate's interleaved rounds
# in 4 gate runs, one with the single-round runner (benchmarks/README.md, "Floors and noise"):
# one_worker / buig min 0.80, median 0.92, max 1.03 (single rounds 0.40-2.81): with another job on a core
# there is no second core for the second worker. Alone on the cores (two --only cluster_bootstrap runs) 1.78
# and 1.78; earlier 1.72 at small scale (load ~2), 1.90 at full scale quiet, 1.53 with other jobs.
# The small floor, 1.3 = 0.73 x the 1.78 measured alone, still claims a real speed-up of the second worker,
# so on its own it would fail whenever other jobs take a core. It is a parallel floor (cores=2): the runner
# probes the free cores around each round, and a miss while a core was taken is reported as unverified,
# not as passed (benchmarks/README.md, "Floors and noise").
FLOORS = [Floor(peer="one_worker", min_ratio=1.3, scales=("small",), cores=2),
          Floor(peer="one_worker", min_ratio=1.5, scales=("full",), cores=2)]


def _setup(ctx, workers: int, numba_threads: int | None):
    from dask.distributed import Client, LocalCluster

    from benchmarks.cases.bootstrap import fitted_settings
    from engine.uncertainty.bootstrap import run_bootstrap

    settings = fitted_settings(ctx, method="cluster", seed=SEED)
    env = {"NUMBA_NUM_THREADS": str(numba_threads)} if numba_threads else {}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, env=env)
    client = Client(cluster)
    state = {"ctx": ctx, "settings": settings, "client": client, "cluster": cluster, "calls": 0,
             "replicates": REPLICATES.get(ctx.scale, 16), "workers": workers}
    # warm-up: one replicate per worker, so each has loaded the data and compiled
    run_bootstrap(settings, ctx.tmp / "warmup", replicates=workers, batch_size=1, client=client)
    return state


def _run(state):
    from engine.uncertainty.bootstrap import run_bootstrap

    state["calls"] += 1
    return run_bootstrap(state["settings"], state["ctx"].tmp / f"run-{state['calls']}",
                         replicates=state["replicates"], batch_size=BATCH, client=state["client"])


def _warmup(state):
    """Already warm from setup (every worker ran a replicate); a no-op, so nothing is timed twice."""


def _extras(state, result, timing):
    import numpy as np

    r = state["replicates"]
    out = {"replicates": r, "batch_size": BATCH, "workers": state["workers"],
           "refits_per_s": r / timing["median_s"], "seconds_per_refit": timing["median_s"] / r}
    budget = result.values["budget"]
    if state["ctx"].impl == "buig":
        state["ctx"].save("budget", budget)
    else:
        ref = state["ctx"].load("budget")
        if ref is not None:
            out["identical_to_buig"] = bool(np.array_equal(ref, budget))
    state["client"].close()
    state["cluster"].close()
    return out


def _impl(name, workers, numba_threads, note):
    return Impl(name, setup=lambda ctx: _setup(ctx, workers, numba_threads), run=_run, warmup=_warmup,
                extras=_extras, note=note)


IMPLEMENTATIONS = [
    _impl("buig", 2, None, "run_bootstrap(method='cluster') on a 2-worker LocalCluster, Numba 1 thread each"),
    _impl("one_worker", 1, 1, "the same on a 1-worker LocalCluster with NUMBA_NUM_THREADS=1 (one core)"),
    _impl("one_worker_2threads", 1, None, "the same on a 1-worker LocalCluster, Numba on both cores"),
]
