"""Fitting the volume logit (421 parameters: 8 household factors, 3 neighbourhood columns, 387 municipality fixed effects) on all households: buig vs glum on tabmat vs scikit-learn, same data, same run.

buig: ``engine.model.fit.fit_component(component_design(hh, spec.volume), tol=1e-10)``; the
design is built in setup, the timed call is the whole fit (Newton iterations **and** the
model, robust and cluster covariances and the common effect for prediction; the peers
compute no covariance). The warm-up is a first full fit (Numba compiles or loads its cache
there). Every implementation runs at a tolerance that makes the coefficients identical to
1e-6 (see ``BUIG_TOL``, ``GLUM_GRADIENT_TOL``); the extras show it.

Peers fit exactly the model buig estimated: municipalities whose households have no (or
only) outcomes are left out with their fixed effect, as buig does (none at full scale, a
few small ones at small scale), and every factor drops buig's reference level, so the
coefficients line up term by term. Building their matrices is setup. Their extras compare
coefficients with buig's (saved by buig in this run): maximum absolute and relative
difference, and the largest difference in units of buig's model-based standard error.
"""

from __future__ import annotations

import os

from benchmarks.protocol import Floor, Impl

REPEAT = 3
TIMEOUT = 3600

# Tolerances for identical coefficients (max |difference| <= 1e-6 between implementations).
# buig and glum both stop on max |gradient of the mean log-likelihood| but test it at
# different points of the iteration. glum's default (1e-4) leaves differences of ~5e-3;
# glum at 1e-8 stops after 7 Newton iterations at full scale and leaves 6.2e-6 on a
# sparse level (other_benefit[ao_full]); buig's default (1e-8) stops after 7 at small
# scale and leaves 1.2e-5 there (8 iterations at full scale). With buig 1e-10 and glum
# 1e-10 both take 8 iterations at both scales and agree to ~1e-11: the settings timed here.
BUIG_TOL = 1e-10
GLUM_GRADIENT_TOL = 1e-10
SKLEARN_TOL = 1e-10

# Measured 2026-12-01 at small scale on a 2-vCPU KVM guest (/proc/cpuinfo: "Intel(R) Xeon(R) Processor",
# AVX2 + AVX-512 flags) shared with other jobs (load 0.8-16): pooled ratio of the gate's interleaved rounds
# in 4 gate runs, one with the single-round runner (benchmarks/README.md, "Floors and noise"):
#   glum / buig min 15.6, median 19.8, max 36.5 (single rounds 9.8-34.3; glum suffers most from load: about
#   10-13 in the least loaded rounds); sklearn / buig min 3.25, median 4.2, max 4.54 (single rounds 1.9-6.7).
#   Floors: glum 7.0 = 0.64 x ~11 (least loaded), sklearn 2.5 = 0.6 x the median.
# Earlier, on an AVX-512 machine, quiet: small glum 5.7-7.8, sklearn 3.0-3.3; full glum 3.4, sklearn 6.1
# (full-scale floors unchanged: not measured here).
# 2026-12-02: glum had been measured with its OpenMP threads spinning (its runtime loaded before kernels set
# OMP_WAIT_POLICY=PASSIVE in the child), which on 2 vCPUs made it 2-2.5x slower than it is with them asleep.
# Every child now runs with them asleep (benchmarks.data.child_env): glum / buig 7.37 (rounds 6.80-7.49) and
# 6.34 (rounds 5.51-7.85) in two gate runs; buig's own time unchanged (238-242 ms). glum floor 4.5 = 0.8 x
# the lowest round.
FLOORS = [
    Floor(peer="glum", min_ratio=4.5, scales=("small",)),
    Floor(peer="sklearn", min_ratio=2.5, scales=("small",)),
    Floor(peer="glum", min_ratio=2.0, scales=("full",)),
    Floor(peer="sklearn", min_ratio=2.0, scales=("full",)),
]


# --- shared helpers (also used by fit_volume_subset) -------------------------------------

def load_households(ctx):
    from engine.model.design import households_from_population
    from engine.model.population import read_population

    return households_from_population(read_population(ctx.dataset))


def take_rows(hh, rows):
    """The households ``rows`` (sorted indices) of ``hh``; neighbourhood tables unchanged."""
    import dataclasses

    import numpy as np

    per_row = ("codes", "nbhd", "bijstand", "lks", "benefit_paid", "adults_sharing", "adults_sharing_under_27")
    return dataclasses.replace(hh, **{f: np.ascontiguousarray(getattr(hh, f)[rows]) for f in per_row})


def estimation_sample(hh, spec):
    """What buig estimates on: rows kept, municipalities kept (no separation), term names.

    A municipality whose households all have (or all lack) the outcome is left out with its
    fixed effect (engine.model.fit does the same); municipalities without households too. The first
    municipality kept is the reference.
    Returns (keep rows bool (n,), kept municipality rows (sorted), term names without the
    intercept in buig's order).
    """
    import numpy as np

    from engine.model.design import make_layout

    mun = hh.municipality()
    y = hh.outcome(spec.outcome)
    n_m = np.bincount(mun, minlength=hh.n_mun)
    y_m = np.bincount(mun, weights=y, minlength=hh.n_mun)
    kept = np.flatnonzero((n_m > 0) & (y_m > 0) & (y_m < n_m))
    if kept.size == 0:
        raise ValueError("no municipality has variation in the outcome")
    ok = np.zeros(hh.n_mun, dtype=bool)
    ok[kept] = True
    # the first kept municipality is the reference (the first one unless it was left out)
    fe = {f"municipality[{c}]" for c in hh.mun_codes[kept[1:]]}
    names = [t for t in make_layout(spec, hh).term_names[1:]
             if not t.startswith("municipality[") or t in fe]
    return ok[mun], kept, names


def household_terms(hh, spec):
    """(factor, reference label, labels) of the spec's household terms in buig's parameter
    order: its factors, then its household indicators (reference level "0")."""
    terms = list(spec.factors) + [(c, "0") for c in spec.indicators if c in hh.indicators]
    return [(f, ref, tuple(hh.factor_levels[hh.factors.index(f)])) for f, ref in terms]


def area_terms(hh, spec):
    """The spec's neighbourhood columns in buig's parameter order: area indicators, then continuous."""
    return [c for c in spec.indicators if c not in hh.indicators] + list(spec.continuous)


def slot_design(hh, spec, keep, kept):
    """Column index and value of each household's nonzero slots (no intercept column).

    Every row has one slot per household factor or indicator (value 0 at the reference
    level), one per neighbourhood column and one for the municipality (value 0 for the
    reference municipality): returns (idx int32 (m, S), val float64 (m, S), number of columns).
    """
    import numpy as np

    rows = np.flatnonzero(keep)
    m = rows.size
    terms, area = household_terms(hh, spec), area_terms(hh, spec)
    F, C = len(terms), len(area)
    idx = np.zeros((m, F + C + 1), dtype=np.int32)
    val = np.zeros((m, F + C + 1))
    off = 0
    for k, (factor, ref, labels) in enumerate(terms):
        r = labels.index(ref)
        # label position -> column (reference -> slot value 0)
        col = np.array([off + (j if j < r else j - 1) for j in range(len(labels))], dtype=np.int32)
        col[r] = off
        code = hh.column(factor)[rows]
        idx[:, k] = col[code]
        val[:, k] = code != r
        off += len(labels) - 1
    cont = hh.nb_cont[hh.nbhd[rows]]
    for j, c in enumerate(area):
        idx[:, F + j] = off + j
        val[:, F + j] = cont[:, hh.cont_names.index(c)]
    off += C
    pos = np.full(hh.n_mun, -1, dtype=np.int64)
    pos[kept] = np.arange(kept.size)
    mp = pos[hh.municipality()[rows]]
    idx[:, F + C] = off + np.maximum(mp - 1, 0)
    val[:, F + C] = mp > 0
    return idx, val, off + kept.size - 1


def sparse_design(hh, spec, keep, kept):
    """CSR one-hot design (no intercept column), explicit zeros removed."""
    import numpy as np
    import scipy.sparse as sp

    idx, val, K = slot_design(hh, spec, keep, kept)
    m, S = idx.shape
    X = sp.csr_matrix((val.ravel(), idx.ravel(), np.arange(0, m * S + 1, S, dtype=np.int64)), shape=(m, K))
    del idx, val
    X.eliminate_zeros()
    X.sort_indices()
    return X


def dense_design(hh, spec, keep, kept):
    """Dense float64 design with the intercept as column 0 (small row counts only)."""
    import numpy as np

    idx, val, K = slot_design(hh, spec, keep, kept)
    m = idx.shape[0]
    X = np.zeros((m, K + 1))
    X[:, 0] = 1.0
    rows = np.broadcast_to(np.arange(m)[:, None], idx.shape)
    nz = val != 0
    X[rows[nz], idx[nz] + 1] = val[nz]
    return X


def tabmat_design(hh, spec, keep, kept):
    """tabmat SplitMatrix: one CategoricalMatrix per factor (reference level first, dropped),
    a dense block of the household indicators (0/1) and neighbourhood columns, and the
    municipality categorical (first dropped)."""
    import numpy as np
    import tabmat

    rows = np.flatnonzero(keep)
    mats = []
    dense, dense_names = [], []
    for factor, ref, labels in household_terms(hh, spec):
        if factor in hh.indicators:
            dense.append(hh.column(factor)[rows].astype(np.float64))
            dense_names.append(factor)
            continue
        order = [ref] + [lab for lab in labels if lab != ref]
        remap = np.array([order.index(lab) for lab in labels], dtype=np.int32)
        mats.append(tabmat.CategoricalMatrix(remap[hh.column(factor)[rows]], categories=np.array(order, dtype=object),
                                             drop_first=True, column_name=factor))
    area = area_terms(hh, spec)
    cont = hh.nb_cont[hh.nbhd[rows]][:, [hh.cont_names.index(c) for c in area]]
    mats.append(tabmat.DenseMatrix(np.ascontiguousarray(np.column_stack(dense + [cont])),
                                   column_names=dense_names + area))
    pos = np.full(hh.n_mun, -1, dtype=np.int32)
    pos[kept] = np.arange(kept.size, dtype=np.int32)
    mats.append(tabmat.CategoricalMatrix(pos[hh.municipality()[rows]],
                                         categories=np.array(hh.mun_codes[kept], dtype=object),
                                         drop_first=True, column_name="municipality"))
    return tabmat.SplitMatrix(mats)


def compare(state, intercept, coef) -> dict:
    """Coefficient differences to buig's estimates (saved by buig in this run), by term."""
    import numpy as np

    ref = state["ctx"].load("buig_params")
    names = state["ctx"].load("buig_terms")
    se = state["ctx"].load("buig_se_model")
    if ref is None or names is None:
        return {"coef_compared": False}
    at = {t: i for i, t in enumerate(names)}
    pos = np.array([0] + [at[t] for t in state["names"]])
    b = np.concatenate([[intercept], np.asarray(coef, dtype=np.float64)])
    r = ref[pos]
    d = np.abs(b - r)
    big = np.abs(r) >= 1e-3
    out = {"max_abs_coef_diff": float(d.max()),
           "max_rel_coef_diff": float((d[big] / np.abs(r[big])).max()),
           "worst_term": (["intercept"] + list(state["names"]))[int(d.argmax())],
           "identical_1e-6": bool(d.max() <= 1e-6)}
    if se is not None:
        out["max_diff_over_se"] = float((d / se[pos]).max())
    return out


def threads() -> int:
    return int(os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count() or 1)


# --- buig ----------------------------------------------------------------------------------

def setup_buig(ctx, spec_name="2019"):
    from engine.model.design import component_design
    from engine.model.spec import load_spec

    spec = load_spec(spec_name)
    hh = load_households(ctx)
    return {"ctx": ctx, "design": component_design(hh, spec.volume), "mun_codes": hh.mun_codes}


def run_buig(state):
    from engine.model.fit import fit_component

    return fit_component(state["design"], tol=BUIG_TOL, mun_codes=state["mun_codes"])


def buig_extras(state, fit, timing) -> dict:
    """Extras of a buig fit; saves its estimates for the peers' comparison."""
    import numpy as np

    ctx = state["ctx"]
    ctx.save("buig_params", fit.params)
    ctx.save("buig_terms", list(fit.term_names))
    ctx.save("buig_se_model", fit.se("model"))
    n = state["design"].n
    return {"rows": n, "params": len(fit.term_names), "tol": BUIG_TOL, "iterations": fit.iterations,
            "loglik": fit.loglik, "gradient_norm": fit.gradient_norm, "rows_per_s": n / timing["median_s"],
            "dropped_municipalities": len(fit.dropped_municipalities),
            "finite_params": int(np.isfinite(fit.params).sum()), "threads": threads()}


def extras_buig(state, fit, timing):
    return buig_extras(state, fit, timing)


# --- glum ------------------------------------------------------------------------------------

def setup_glum(ctx, rows=None, spec_name="2019"):
    import numpy as np

    from engine.model.spec import load_spec

    spec = load_spec(spec_name).volume
    hh = load_households(ctx)
    if rows is not None:
        hh = take_rows(hh, rows)
    keep, kept, names = estimation_sample(hh, spec)
    X = tabmat_design(hh, spec, keep, kept)
    y = hh.outcome(spec.outcome)[keep].astype(np.float64)
    return {"ctx": ctx, "X": X, "y": y, "names": names}


def run_glum(state):
    import glum

    m = glum.GeneralizedLinearRegressor(family="binomial", alpha=0, fit_intercept=True,
                                        gradient_tol=GLUM_GRADIENT_TOL, max_iter=100)
    return m.fit(state["X"], state["y"])


def extras_glum(state, m, timing):
    return {"rows": state["y"].size, "iterations": int(m.n_iter_), "gradient_tol": GLUM_GRADIENT_TOL,
            "rows_per_s": state["y"].size / timing["median_s"], **compare(state, m.intercept_, m.coef_)}


# --- scikit-learn -----------------------------------------------------------------------------

def setup_sklearn(ctx, rows=None):
    import numpy as np

    from engine.model.spec import load_spec

    spec = load_spec("2019").volume
    hh = load_households(ctx)
    if rows is not None:
        hh = take_rows(hh, rows)
    keep, kept, names = estimation_sample(hh, spec)
    X = sparse_design(hh, spec, keep, kept)
    y = hh.outcome(spec.outcome)[keep].astype(np.int8)
    return {"ctx": ctx, "X": X, "y": y, "names": names}


def run_sklearn(state):
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(penalty=None, solver="newton-cholesky", tol=SKLEARN_TOL, max_iter=100)
    return m.fit(state["X"], state["y"])


def extras_sklearn(state, m, timing):
    return {"rows": state["y"].size, "iterations": int(m.n_iter_[0]), "tol": SKLEARN_TOL,
            "nnz_per_row": state["X"].nnz / state["X"].shape[0],
            "rows_per_s": state["y"].size / timing["median_s"], **compare(state, m.intercept_[0], m.coef_[0])}


# --- pyfixest (fixed effects absorbed) --------------------------------------------------------

PYFIXEST_TOL = 1e-10


def setup_pyfixest(ctx, spec_name="2019"):
    import pandas as pd

    from engine.model.spec import load_spec

    spec = load_spec(spec_name).volume
    hh = load_households(ctx)
    keep, _, names = estimation_sample(hh, spec)
    df = pd.DataFrame({f: hh.column(f)[keep].astype("float64") if f in hh.indicators else
                       pd.Categorical.from_codes(hh.column(f)[keep], labels).reorder_categories(
                           [ref] + [c for c in labels if c != ref]) for f, ref, labels in household_terms(hh, spec)})
    area = area_terms(hh, spec)
    for c in area:
        df[c] = hh.nb_cont[hh.nbhd[keep], hh.cont_names.index(c)]
    df["municipality"] = hh.municipality()[keep]
    df["y"] = hh.outcome(spec.outcome)[keep].astype("float64")
    formula = "y ~ " + " + ".join(list(df.columns[:-2])) + " | municipality"
    return {"ctx": ctx, "df": df, "formula": formula, "names": [t for t in names if not t.startswith("municipality[")]}


def run_pyfixest(state):
    import pyfixest as pf

    return pf.feglm(state["formula"], data=state["df"], family="logit", iwls_tol=PYFIXEST_TOL, fixef_tol=PYFIXEST_TOL)


def extras_pyfixest(state, m, timing):
    """Coefficients (fixed effects absorbed: no intercept, no municipality terms) against buig's."""
    import numpy as np

    ref, names = state["ctx"].load("buig_params"), state["ctx"].load("buig_terms")
    out = {"rows": len(state["df"]), "rows_per_s": len(state["df"]) / timing["median_s"], "tol": PYFIXEST_TOL}
    if ref is None or names is None:
        return {**out, "coef_compared": False}
    at = {t: i for i, t in enumerate(names)}
    coef = {k.replace("[T.", "["): v for k, v in m.coef().items()}
    d = np.array([abs(coef[t] - ref[at[t]]) for t in state["names"]])
    return {**out, "max_abs_coef_diff": float(d.max()), "identical_1e-6": bool(d.max() <= 1e-6),
            "worst_term": state["names"][int(d.argmax())]}


IMPLEMENTATIONS = [
    Impl("buig", setup=setup_buig, run=run_buig, extras=extras_buig,
         note=f"engine.model.fit.fit_component(tol={BUIG_TOL:g}): Newton on the factor-coded design (Numba passes), "
              "incl. model/robust/cluster covariances and the common effect; warm-up = a first full fit"),
    Impl("glum", setup=setup_glum, run=run_glum, extras=extras_glum,
         note=f"glum.GeneralizedLinearRegressor(binomial, alpha=0, gradient_tol={GLUM_GRADIENT_TOL:g}, solver auto "
              "= irls-ls) on tabmat.SplitMatrix: 8 CategoricalMatrix (buig's reference level dropped) + dense "
              "continuous block + municipality CategoricalMatrix (first dropped); no covariance"),
    Impl("sklearn", setup=setup_sklearn, run=run_sklearn, extras=extras_sklearn,
         note=f"LogisticRegression(penalty=None, solver='newton-cholesky', tol={SKLEARN_TOL:g}) on a scipy.sparse "
              "CSR one-hot design (sparse input is supported by newton-cholesky); no covariance"),
    Impl("pyfixest", setup=setup_pyfixest, run=run_pyfixest, extras=extras_pyfixest, scales=("full",),
         note=f"pyfixest.feglm('y ~ factors + continuous | municipality', family='logit', iwls_tol = fixef_tol = {PYFIXEST_TOL:g}) "
              "on a pandas frame (categoricals, buig's reference first): IRLS with the fixed effects absorbed "
              "(demeaned), so no intercept or municipality coefficients; iid vcov; full scale only (about 20 s at "
              "300k households)"),
]
