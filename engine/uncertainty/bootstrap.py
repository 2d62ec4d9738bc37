"""Monte Carlo uncertainty: replicates of the coefficients -> replicates of the budgets.

Four methods:

- ``parametric``: beta_r ~ N(beta_hat, V_cluster) for the volume terms that enter
  prediction (the intercept and fixed effects are replaced by the calibrated common
  effect), gamma_r ~ N(gamma_hat, V_cluster) for the price terms; many draws are
  evaluated per pass over the households collapsed into cells (:mod:`engine.uncertainty.cells`).
- ``cluster``: municipalities resampled with replacement, both components refitted on the
  households collapsed into (neighbourhood, factor codes) cells with frequency weights, warm
  from the one-step estimate (:mod:`engine.model.refit`), prediction on the full population;
- ``score``: the same resamples, each refit replaced by its one-step (score) linearisation
  around the full-sample estimate (no pass over the data per replicate): bands that agree
  with the full refits' up to second-order terms, at the cost of parametric draws;
- ``outcome``: the coefficients as they are (published weights without a covariance), so the
  band holds the outcome randomness and the spread of municipalities around the model only.

Every replicate runs the whole distribution of the regime (shares, mix, ex-ante cap), so
bands are on budgets as allocated. Replicate r draws all its random numbers from
``numpy.random.SeedSequence(seed, spawn_key=(r,))`` (the r-th child of ``SeedSequence(seed)``),
and every kernel sum is per draw over fixed row ranges: results are bit-identical for any
number of workers and any batch size.

Spending prediction band (for the flags): per replicate, the municipality's spending is
simulated as E_r + sqrt(V) z (bijstand drawn from p: the normal approximation of the
sum of Bernoulli costs, with V = sum p (1 - p) (f N)^2 at the fit: V's change with the draw
moves the band at second order only), times exp(e_g (mu + u)) with u ~ N(0, between_sd^2): the
municipality's own effect on the log-odds around the model, mu its mean relative to the
common effect and e_g the elasticity of the municipality's cost to a shift of the log-odds
(:attr:`engine.model.predict.Prediction.cost_elasticity`). ``between_sd="auto"`` estimates sd
and mean from the fixed effects contrasted with their mean
(:func:`engine.uncertainty.draws.between_sd_estimate`); a number fixes the sd (0 switches
it off). ``p_explained`` (:func:`engine.uncertainty.summaries.explained_probability`) is
the probability under this band that spending is at or below the actual one, averaged
over the coefficient replicates: a surplus is unexplained when ``p_explained < level``,
or, with false-discovery-rate control, when its Benjamini-Hochberg q-value is at most Q.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from engine.io.outputs import folder_lock, remove_stale
from engine.uncertainty.draws import context
from engine.uncertainty.executor import batch_task, client_for, dask_threads_per_host, resolve_workers
from engine.uncertainty.settings import DEFAULT_BATCH, METHODS, Settings
from engine.model.schema import check_finite
from engine.uncertainty.store import (FINITE_COLUMNS, BatchWriter, check_settings, done_ranges, inputs_digest,
                                      plan_batches, put_batch, read_replicates, write_batch)
from engine.uncertainty.summaries import BootstrapResult


def run_bootstrap(settings: Settings, out: str | Path, replicates: int = 200, batch_size: int | None = None,
                  workers: int | None = None, scheduler: str | None = None, progress=None,
                  client=None) -> BootstrapResult:
    """Run (or resume) a bootstrap into ``out``; finished batches are written as they complete (in
    this process one batch behind, on a background thread: ``progress`` counts computed batches).

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
    workers = resolve_workers(workers)
    with folder_lock(out, "bootstrap"):           # one bootstrap per folder (refused at once)
        return _run_bootstrap(settings, Path(out), replicates, batch_size, workers, scheduler, progress, client)


def _run_bootstrap(settings: Settings, out: Path, replicates: int, batch_size: int, workers: int | None,
                   scheduler: str | None, progress, client) -> BootstrapResult:
    t0 = time.perf_counter()
    inputs = inputs_digest(settings)
    ctx = context(settings, inputs)              # the driver needs the codes and the point budget
    (out / "batches").mkdir(parents=True, exist_ok=True)      # the inputs are valid: now write
    remove_stale(out)                            # temporary files of a killed run
    remove_stale(out / "batches")
    check_settings(out, settings, inputs)
    todo = plan_batches(replicates, batch_size, done_ranges(out))
    cores = os.cpu_count() or 1
    workers = cores if workers is None else workers
    codes = ctx.hh.mun_codes
    values = read_replicates(out, replicates, codes)    # resumed batches, checked before any work
    done_n = replicates - sum(b - a for a, b in todo)
    if progress:
        progress(done_n, replicates)
    if todo and workers == 0:
        with BatchWriter(out, codes) as writer:        # a batch is written while the next is computed
            for a, b in todo:
                batch = ctx.run_batch(a, b)
                writer.put(a, b, batch)
                put_batch(values, a, b, batch)
                done_n += b - a
                if progress:
                    progress(done_n, replicates)
    elif todo:
        from dask.distributed import as_completed

        own = client is None
        client = client_for(workers, scheduler) if own else client
        try:
            threads = dask_threads_per_host(client)
            futures = {client.submit(batch_task, settings, a, b, threads, inputs, pure=False,
                                     key=f"buig-batch-{a}-{b}-{os.getpid()}-{time.time_ns()}"): (a, b)
                       for a, b in todo}
            for fut in as_completed(futures):
                a, b = futures[fut]
                batch = fut.result()
                write_batch(out, a, b, batch, codes)
                put_batch(values, a, b, batch)
                done_n += b - a
                if progress:
                    progress(done_n, replicates)
        finally:
            if own:
                client.close()
                if client.cluster is not None:
                    client.cluster.close()
    for c in FINITE_COLUMNS:
        check_finite(f"bootstrap {c.replace('_', ' ')}", values[c], codes)
    return BootstrapResult(settings=settings, replicates=replicates, codes=codes,
                           names=np.asarray(ctx.municipalities.column("name").to_pylist(), dtype=object),
                           point_budget=ctx.point_budget.budget, spending=ctx.spending, between_sd=ctx.between_sd,
                           values=values, seconds=time.perf_counter() - t0, computed=sum(b - a for a, b in todo),
                           inputs=inputs, elasticity=ctx.elasticity, between_left_out=ctx.between.left_out,
                           between_mean=ctx.between.mean)
