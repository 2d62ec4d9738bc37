"""Fitting the volume logit on a random subset of households (fixed seed): buig vs statsmodels on a dense design vs glum, same subset, same run.

statsmodels' ``Logit`` needs a dense float64 design (rows x 421 columns), so it cannot fit
the full population: this case draws ``SUBSET[scale]`` households without replacement
(``numpy.random.default_rng(SUBSET_SEED + seed)``, kept in population order), and every
implementation fits exactly that sample. Random rows rather than whole municipalities, so
every municipality is represented; one without outcome variation in the subset is left
out with its fixed effect as in ``fit_volume`` (73 of 388 in the 50,000 rows at small
scale, 2 in the 1,000,000 at full). At full scale the dense design is 3.2 GiB and the
statsmodels child peaks near 11 GiB (the rank check of ``Logit(y, X)`` in setup, then the
Hessian's n x k temporary). Times per million rows are in the extras; ratios compare
implementations on the same subset.
"""

from __future__ import annotations

from benchmarks.cases.fit_volume import (BUIG_TOL, GLUM_GRADIENT_TOL, buig_extras, compare, dense_design,
                                         estimation_sample, load_households, setup_glum, take_rows)
from benchmarks.cases.fit_volume import extras_glum as _extras_glum
from benchmarks.cases.fit_volume import run_buig, run_glum
from benchmarks.protocol import Floor, Impl

REPEAT = 3
TIMEOUT = 3600
SUBSET = {"small": 50_000, "full": 1_000_000}
SUBSET_SEED = 20_190_000
STATSMODELS_TOL = 1e-10

# Measured 2026-12-01 at small scale on a 2-vCPU KVM guest (/proc/cpuinfo: "Intel(R) Xeon(R) Processor",
# AVX2 + AVX-512 flags) shared with other jobs (load 0.8-16): pooled ratio of the gate's interleaved rounds
# in 4 gate runs, one with the single-round runner (benchmarks/README.md, "Floors and noise"):
#   glum / buig min 7.39, median 17.2, max 32.5 (7.4 and 10.1 in the two least loaded runs);
#   statsmodels / buig min 12.5, median 17.2, max 93.8 (12.5 and 14.8 in the two least loaded runs).
#   Floors then: glum 5.0 = 0.57 x 8.7, statsmodels 8.0 = 0.59 x 13.6 (the least loaded runs' mean).
# Since 2026-12-01 buig's timed fit computes the CR2 cluster covariance (#13; glum computes none), about
# 20 ms of its ~105 ms at this size (388 small eigendecompositions). Measured with it, same machine: glum /
# buig 6.39, 5.66, 5.88 in three quiet gate runs (rounds 5.17-6.85: glum's own time varies 0.47-1.07 s), and
# 4.57 (rounds 4.17-6.27) with a niced 2-thread job on the cores. glum floor 4.0 = 0.67 x 6.0 (the quiet
# runs' mean), so that a busy core does not fail it; the statsmodels floor (measured 12.3-17.5) stays.
# Earlier, on an AVX-512 machine: small glum 3.4, statsmodels 14; full (1,000,000 rows) glum 15 (24 iterations
# to reach gradient_tol 1e-10), statsmodels 133 (full-scale floors unchanged: not measured here).
# 2026-12-02: glum had been measured with its OpenMP threads spinning, 2-2.5x slower than with them asleep
# as every child now runs (benchmarks.data.child_env; fit_volume.py): glum's fit 0.30-0.33 s against 0.85 s,
# glum / buig 2.40 (rounds 2.34-2.43), 2.48 (2.42-2.53) and 2.32 with commit ae12d5a's engine, whose fit is
# the same (131-137 ms). glum floor 1.8 = 0.77 x the lowest round.
FLOORS = [
    Floor(peer="glum", min_ratio=1.8, scales=("small",)),
    Floor(peer="statsmodels", min_ratio=8.0, scales=("small",)),
    Floor(peer="glum", min_ratio=3.0, scales=("full",)),
    Floor(peer="statsmodels", min_ratio=20.0, scales=("full",)),
]


def subset_rows(ctx):
    import numpy as np

    n = ctx.households
    m = min(SUBSET.get(ctx.scale, 50_000), n)
    rng = np.random.default_rng(SUBSET_SEED + ctx.seed)
    return np.sort(rng.choice(n, size=m, replace=False))


def per_million(timing, rows) -> float:
    return timing["median_s"] / rows * 1e6


def setup_buig(ctx):
    from engine.model.design import component_design
    from engine.model.spec import load_spec

    hh = take_rows(load_households(ctx), subset_rows(ctx))
    return {"ctx": ctx, "design": component_design(hh, load_spec("2019").volume), "mun_codes": hh.mun_codes}


def extras_buig(state, fit, timing):
    return {**buig_extras(state, fit, timing), "s_per_million_rows": per_million(timing, state["design"].n)}


def setup_glum_subset(ctx):
    return setup_glum(ctx, rows=subset_rows(ctx))


def extras_glum(state, m, timing):
    return {**_extras_glum(state, m, timing), "s_per_million_rows": per_million(timing, state["y"].size)}


def setup_statsmodels(ctx):
    import numpy as np

    from engine.model.spec import load_spec

    spec = load_spec("2019").volume
    hh = take_rows(load_households(ctx), subset_rows(ctx))
    keep, kept, names = estimation_sample(hh, spec)
    import statsmodels.api as sm

    X = dense_design(hh, spec, keep, kept)
    y = hh.outcome(spec.outcome)[keep].astype(np.float64)
    # The model object is built here, untimed: its constructor computes the rank of X (an
    # SVD of the dense design, slower than a Newton iteration).
    return {"ctx": ctx, "X": X, "y": y, "names": names, "model": sm.Logit(y, X)}


def run_statsmodels(state):
    return state["model"].fit(method="newton", tol=STATSMODELS_TOL, maxiter=100, disp=0)


def warmup_statsmodels(state):
    """No JIT to warm: one Hessian at zero touches the design and BLAS (a full fit would
    cost minutes at full scale and tell nothing more)."""
    import numpy as np

    return state["model"].hessian(np.zeros(state["X"].shape[1]))


def extras_statsmodels(state, res, timing):
    n = state["y"].size
    return {"rows": n, "iterations": int(res.mle_retvals["iterations"]),
            "converged": bool(res.mle_retvals["converged"]), "tol": STATSMODELS_TOL, "dense_design_MiB": state["X"].nbytes / 2**20, "rows_per_s": n / timing["median_s"],
            "s_per_million_rows": per_million(timing, n), **compare(state, res.params[0], res.params[1:])}


IMPLEMENTATIONS = [
    Impl("buig", setup=setup_buig, run=run_buig, extras=extras_buig,
         note=f"engine.model.fit.fit_component(tol={BUIG_TOL:g}) on the subset's factor-coded design, incl. covariances"),
    Impl("glum", setup=setup_glum_subset, run=run_glum, extras=extras_glum,
         note=f"glum irls-ls (gradient_tol={GLUM_GRADIENT_TOL:g}) on the subset's tabmat.SplitMatrix, "
              "as in fit_volume"),
    Impl("statsmodels", setup=setup_statsmodels, run=run_statsmodels, extras=extras_statsmodels,
         warmup=warmup_statsmodels,
         note=f"statsmodels Logit(y, X).fit(method='newton', tol={STATSMODELS_TOL:g}) on the subset's dense float64 "
              "design (intercept + the columns kept; the fit also inverts the Hessian for the covariance); Logit(y, X) "
              "built in setup (its rank check is an SVD of X), warm-up = one Hessian"),
]
