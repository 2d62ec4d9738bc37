"""Fitting the realistic volume logit (469 parameters: the 8 household factors (30 levels), 42 household indicators, 2 neighbourhood indicators and 7 continuous neighbourhood columns, 387 municipality fixed effects) on all households of a `--truth realistic` world: buig vs glum vs pyfixest's feglm, same data, same run.

The realistic model (spec ``realistic``, catalogue ``realistic``: engine/data/specs/realistic.toml)
is the size of the real one. Timed, set up and compared exactly as in ``fit_volume`` (its
helpers build every design): buig's whole fit (Newton iterations, the three covariances and
the common effect) against glum on a tabmat SplitMatrix (the 8 factors as categoricals, the
indicators and neighbourhood columns as one dense block, the municipalities as a categorical)
and pyfixest's ``feglm`` with the municipality fixed effects absorbed (which cannot fit the full
population in 24 GiB: see ``PYFIXEST_BYTES_PER_ROW``). Peers run at full scale
only (``Impl.scales``): at small scale the case times buig alone, so the gate stays within
budget. Coefficients are compared term by term with buig's (``identical_1e-6`` in the extras).
"""

from __future__ import annotations

from benchmarks.cases import fit_volume as fv
from benchmarks.protocol import Floor, Impl

REPEAT = 3
TIMEOUT = 5400
TRUTH = "realistic"
SPEC = "realistic"

# Measured 2026-12-01 at full scale on the 2-vCPU KVM guest of fit_volume (/proc/cpuinfo: "Intel(R) Xeon(R)
# Processor", family 6 model 167, AVX2 + AVX-512) shared with other sessions: glum / buig 7.08 (one round each,
# load ~7: buig 22.5 s, glum 160 s), 17.8 (buig 6.5 s at load ~1, glum 116 s at load ~5: not the same window)
# and 9.34 pooled over two interleaved rounds at load 5-7 (rounds 12.5 and 7.5: buig 12.0 and 20.9 s, glum 150
# and 157 s). The target of 10 is met in some rounds only. Floor 6.0 = 0.64 x the interleaved 9.34.
FLOORS = [Floor(peer="glum", min_ratio=6.0, scales=("full",))]

# pyfixest's feglm holds dense copies of the design (81 columns here): its peak RSS was 2.64 GB at
# 300,000 and 7.89 GB at 1,000,000 households of a realistic world (measured 2026-12-01 on the
# 2-vCPU machine of fit_volume, /usr/bin/time -v), 7.5 kB per household more: about 58 GB for the
# 7,794,075 households, more than the 24 GiB machine. Its setup refuses, naming the figures,
# when the estimate exceeds the memory available.
PYFIXEST_BYTES_PER_ROW = 7_500
PYFIXEST_BYTES_FIXED = 400e6


def setup_buig(ctx):
    return fv.setup_buig(ctx, SPEC)


def setup_buig_8factor(ctx):
    """The built-in 2019 spec (8 factors, 3 neighbourhood columns) on the same households."""
    return fv.setup_buig(ctx, "2019")


def extras_buig_8factor(state, fit, timing):
    n = state["design"].n
    return {"rows": n, "params": len(fit.term_names), "iterations": fit.iterations, "rows_per_s": n / timing["median_s"]}


def setup_glum(ctx):
    return fv.setup_glum(ctx, spec_name=SPEC)


def setup_pyfixest(ctx):
    import psutil

    state = fv.setup_pyfixest(ctx, SPEC)
    rows = len(state["df"])
    need = PYFIXEST_BYTES_FIXED + PYFIXEST_BYTES_PER_ROW * rows
    avail = psutil.virtual_memory().available
    if need > avail:
        raise MemoryError(f"pyfixest feglm cannot fit this model here: for {rows:,} households it would need about "
                          f"{need / 1e9:.0f} GB ({PYFIXEST_BYTES_PER_ROW:,} bytes per household, measured at 300,000 and "
                          f"1,000,000), {avail / 1e9:.1f} GB is available")
    return state


IMPLEMENTATIONS = [
    Impl("buig", setup=setup_buig, run=fv.run_buig, extras=fv.extras_buig,
         note=f"engine.model.fit.fit_component(tol={fv.BUIG_TOL:g}) on the realistic spec: Newton on the factor-coded "
              "design (Numba passes over 8 joint codes, Hessian sums per pair of level slots), incl. model/robust/cluster "
              "covariances and the common effect; warm-up = a first full fit"),
    Impl("buig_8factor", setup=setup_buig_8factor, run=fv.run_buig, extras=extras_buig_8factor, role="floor",
         note="the same fit of the built-in 2019 spec (8 factors, 3 neighbourhood columns, 421 parameters) on the same "
              "households: the 8-factor figure beside the realistic one"),
    Impl("glum", setup=setup_glum, run=fv.run_glum, extras=fv.extras_glum, scales=("full",), warmup=lambda state: None,
         note=f"glum.GeneralizedLinearRegressor(binomial, alpha=0, gradient_tol={fv.GLUM_GRADIENT_TOL:g}) on "
              "tabmat.SplitMatrix: 8 CategoricalMatrix (buig's reference dropped) + dense block of the 42 household indicators "
              "and 9 neighbourhood columns + municipality CategoricalMatrix; no covariance; full scale only; no warm-up "
              "call (nothing to compile; a fit takes about 20 minutes on 2 loaded cores)"),
    Impl("pyfixest", setup=setup_pyfixest, run=fv.run_pyfixest, extras=fv.extras_pyfixest, scales=("full",),
         note=f"pyfixest.feglm('y ~ factors + indicators + continuous | municipality', family='logit', "
              f"iwls_tol = fixef_tol = {fv.PYFIXEST_TOL:g}): IRLS with the fixed effects absorbed; full scale only; "
              "refused in setup when its memory (7.5 kB per household) exceeds what is available"),
]
