"""Monte Carlo uncertainty: replicates of the coefficients -> replicates of the budgets.

Two methods:

- ``parametric``: beta_r ~ N(beta_hat, V_cluster) for the volume terms that enter
  prediction (the intercept and fixed effects are replaced by the calibrated common
  effect), gamma_r ~ N(gamma_hat, V_cluster) for the price terms; many draws are
  evaluated per pass over the households collapsed into cells (:mod:`engine.uncertainty.cells`).
- ``cluster``: municipalities resampled with replacement, both components refitted on the
  households collapsed into (neighbourhood, factor codes) cells with frequency weights, warm
  from the one-step estimate (:mod:`engine.model.refit`), prediction on the full population.
- ``score``: the same resamples, each refit replaced by its one-step (score) linearisation
  around the full-sample estimate (no pass over the data per replicate): bands that agree
  with the full refits' up to second-order terms, at the cost of parametric draws.

Every replicate runs the whole distribution of the regime (shares, mix, ex-ante cap), so
bands are on budgets as allocated. Replicate r draws all its random numbers from
``numpy.random.SeedSequence(seed, spawn_key=(r,))`` (the r-th child of ``SeedSequence(seed)``),
and every kernel sum is per draw over fixed row ranges: results are bit-identical for any
number of workers and any batch size.

Spending prediction band (for the flags): per replicate, the municipality's spending is
simulated as E_r + sqrt(V_r) z (bijstand drawn from p: the normal approximation of the
sum of Bernoulli costs), times exp(u (1 - p_g)) with u ~ N(0, between_sd^2), the normal
variation of municipalities around the model, estimated robustly from the fixed effects
(``between_sd="auto"``; 0 switches it off). ``p_explained`` is the share of replicates
whose simulated spending is at or below the actual one: a surplus is unexplained when
actual spending lies below the lower end of the band, i.e. ``p_explained < level``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from engine.io.outputs import remove_stale
from engine.uncertainty.draws import context
from engine.uncertainty.executor import batch_task, client_for, dask_threads_per_host
from engine.uncertainty.settings import DEFAULT_BATCH, METHODS, Settings
from engine.uncertainty.store import check_settings, done_ranges, inputs_digest, plan_batches, read_replicates, write_batch
from engine.uncertainty.summaries import BootstrapResult


def run_bootstrap(settings: Settings, out: str | Path, replicates: int = 200, batch_size: int | None = None,
                  workers: int | None = None, scheduler: str | None = None, progress=None,
                  client=None) -> BootstrapResult:
    """Run (or resume) a bootstrap into ``out``; finished batches are written as they complete.

    ``workers=0`` runs in this process without Dask; otherwise a ``LocalCluster`` of
    ``workers`` single-threaded processes on loopback (default: the number of cores), or the
    scheduler at ``scheduler`` / ``DASK_SCHEDULER_ADDRESS``, or an open ``client`` (left
    open: its workers keep the population loaded between runs). Numba threads per task are
    a host's cores / the Dask threads on that host, so the two never oversubscribe.
    ``batch_size`` None: :data:`engine.uncertainty.settings.DEFAULT_BATCH` of the method.
    """
    if settings.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, not {settings.method!r}")
    batch_size = DEFAULT_BATCH[settings.method] if batch_size is None else batch_size
    if replicates < 1 or batch_size < 1:
        raise ValueError("--replicates and --batch-size must be at least 1")
    out = Path(out)
    t0 = time.perf_counter()
    (out / "batches").mkdir(parents=True, exist_ok=True)
    remove_stale(out)                            # temporary files of a killed run
    remove_stale(out / "batches")
    inputs = inputs_digest(settings)
    check_settings(out, settings, inputs)
    todo = plan_batches(replicates, batch_size, done_ranges(out))
    cores = os.cpu_count() or 1
    workers = cores if workers is None else workers
    ctx = context(settings, inputs)              # the driver needs the codes and the point budget
    codes = ctx.hh.mun_codes
    done_n = replicates - sum(b - a for a, b in todo)
    if progress:
        progress(done_n, replicates)
    if todo and workers == 0:
        for a, b in todo:
            write_batch(out, a, b, ctx.run_batch(a, b), codes)
            done_n += b - a
            if progress:
                progress(done_n, replicates)
    elif todo:
        from dask.distributed import as_completed

        own = client is None
        client = client_for(workers, scheduler) if own else client
        try:
            threads = dask_threads_per_host(client)
            remote = settings.absolute()            # workers may run in another folder
            futures = {client.submit(batch_task, remote, a, b, threads, inputs, pure=False,
                                     key=f"buig-batch-{a}-{b}-{os.getpid()}-{time.time_ns()}"): (a, b)
                       for a, b in todo}
            for fut in as_completed(futures):
                a, b = futures[fut]
                write_batch(out, a, b, fut.result(), codes)
                done_n += b - a
                if progress:
                    progress(done_n, replicates)
        finally:
            if own:
                client.close()
                if client.cluster is not None:
                    client.cluster.close()
    values = read_replicates(out, replicates, codes)
    return BootstrapResult(settings=settings, replicates=replicates, codes=codes,
                           names=np.asarray(ctx.municipalities.column("name").to_pylist(), dtype=object),
                           point_budget=ctx.point_budget.budget, spending=ctx.spending, between_sd=ctx.between_sd,
                           values=values, seconds=time.perf_counter() - t0, computed=sum(b - a for a, b in todo),
                           inputs=inputs)
