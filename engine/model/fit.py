"""Estimation: Newton with step-halving for the logit (volume) and fractional logit (price).

Each Newton iteration is one pass of :func:`kernels.glm.logit_pass` over the sample; the
gradient and Hessian are assembled from its sufficient statistics with small sparse
products (:mod:`engine.model.design`). Convergence: the largest absolute score divided by the
total weight (the gradient of the mean log-likelihood) below ``tol`` (default 1e-8) and
the next Newton step below 1e-6 in every coefficient; that step is applied, leaving an
error of the order of its square (the reported gradient norm is at the final point).

Covariances at the estimate: model-based (inverse Hessian), robust HC1 (sandwich with
n/(n-k)) and cluster-robust by municipality, bias-reduced (CR2, :mod:`engine.model.sandwich`:
the plain sandwich with statsmodels' G/(G-1) * (n-1)/(n-k), CR1, is too small for the terms
a few large municipalities dominate; ``cluster_kind="cr1"`` gives it). Municipality
fixed effects are estimated with the model and left out
of prediction: they are replaced there by one common effect (``fe_common``) chosen so that
the national number of predicted households equals the observed one.

Separation, handled explicitly. A factor level whose sample has no (or only) outcomes has
its maximum-likelihood coefficient at minus (plus) infinity; given that coefficient its
households carry no information on the others, so they are left out of the shared
estimate (exactly the estimate with the infinite coefficient), the term is listed in
``separated_terms`` and gets a finite coefficient of its own: the one at which its
households' predicted number of outcomes (with the common effect, as in prediction) is
half a household instead of 0 (or all but half a household): the correction of one half
of Haldane (1956, Biometrika 43, 'The estimation and viewing of the logarithm of a
ratio'). It has no standard error (NaN) and is not drawn in the parametric bootstrap.
A municipality whose sample has no (or only) outcomes has its fixed effect at infinity
likewise: its rows are left out of the shared estimate and it is listed in
``dropped_municipalities``; in prediction it gets the common effect like every other.
Leaving rows out can make another level or municipality degenerate: the checks repeat
until none is. Only when nothing estimable is left is it an :class:`EstimationError`.
A level with no households at all in the sample is not estimable: its term is left out
(NaN; prediction uses the reference level for it) and listed in ``unestimable_terms``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from engine.io.blas import single_blas_thread
from engine.model.design import ComponentDesign
from engine.model.sandwich import cluster_hessians, cr2_covariance, satterthwaite_df
from kernels.config import N_VIRTUAL
from kernels.glm import common_shift, logit_pass, sample_sums

# Samples of at least PILOT_MIN_ROWS rows start from a pilot fit on every PILOT_EVERY-th row (_pilot_start)
PILOT_MIN_ROWS = 2_000_000
PILOT_EVERY = 8


class EstimationError(ValueError):
    """The model cannot be estimated on this sample (separation, collinearity, no convergence)."""


@dataclass(frozen=True)
class PassStats:
    ll: float
    g: np.ndarray          # score (K,)
    H: np.ndarray          # Hessian or HC meat (K, K)
    g_nb: np.ndarray
    a_nb: np.ndarray
    s_ms: np.ndarray       # score per (municipality, slot), with clusters


@dataclass(frozen=True)
class ComponentFit:
    """Estimates of one component. Parameters of dropped fixed effects are NaN."""

    name: str
    term_names: tuple[str, ...]
    params: np.ndarray
    cov_model: np.ndarray
    cov_robust: np.ndarray
    cov_cluster: np.ndarray
    loglik: float
    iterations: int
    gradient_norm: float
    n_obs: int
    n_clusters: int
    n_clipped: int
    dropped_municipalities: tuple[str, ...]
    seconds: float
    fe_common: float = 0.0
    history: list = field(default_factory=list)
    unestimable_terms: tuple[str, ...] = ()   # levels without households in the sample (NaN)
    separated_terms: tuple[str, ...] = ()     # levels with no or only outcomes (own finite estimate, se NaN)
    # degrees of freedom of each se_cluster (CR2: engine.model.sandwich.satterthwaite_df;
    # CR1: clusters - 1; NaN for the fixed effects and, with them, the intercept, whose
    # cluster-robust variance is degenerate; empty: unknown, normal reference)
    df_cluster: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def se(self, kind: str = "cluster") -> np.ndarray:
        cov = {"model": self.cov_model, "robust": self.cov_robust, "cluster": self.cov_cluster}[kind]
        return np.sqrt(np.diag(cov))

    def summary(self) -> dict:
        return {"n_obs": self.n_obs, "n_params": len(self.term_names), "n_clusters": self.n_clusters,
                "iterations": self.iterations, "loglik": self.loglik, "gradient_norm": self.gradient_norm,
                "converged": True, "n_clipped": self.n_clipped, "fe_common": self.fe_common,
                "dropped_municipalities": list(self.dropped_municipalities),
                "unestimable_terms": list(self.unestimable_terms),
                "separated_terms": list(self.separated_terms), "seconds": self.seconds,
                "history": self.history}


class _Evaluator:
    """Evaluates passes of one design; holds the sparse maps built once.

    Parameters are reached from joint codes through P = joint_map @ level_map (0/1,
    (Lj, K)), whose nonzero columns are the slots of the pass (kernels.glm.logit_pass), placed
    among the parameters by Q ((S, K)), and from neighbourhoods through D = nb_design ((n_nb,
    K)); the cross terms use B, which takes (municipality, slot) and (continuous column, slot)
    sums to the rows of the intercept, continuous and fixed-effect parameters.
    """

    def __init__(self, d: ComponentDesign):
        self.d = d
        lay = d.layout
        self.D = lay.nb_design(d.nb_cont, d.nb_mun)                  # (n_nb, K)
        self.M = lay.joint_map()                                     # (Lj, L)
        self.P = (self.M @ lay.level_map()).tocsr()                  # (Lj, K)
        self.n_nb = d.nb_mun.shape[0]
        self.n_mun = int(d.nb_mun.max()) + 1 if self.n_nb else 0
        K = lay.n_params
        rows = [np.zeros(self.n_mun, dtype=np.int64)]                # intercept: every municipality
        cols = [np.arange(self.n_mun)]
        if lay.fe_start >= 0:
            rows.append(lay.fe_start + np.arange(self.n_mun - 1))
            cols.append(np.arange(1, self.n_mun))
        r, c = np.concatenate(rows), np.concatenate(cols)
        self.Bm = sp.csr_matrix((np.ones(r.size), (r, c)), shape=(K, self.n_mun))
        self.Bc = sp.csr_matrix((np.ones(len(lay.cont_cols)), (lay.cont_param, lay.cont_cols)),
                                shape=(K, d.nb_cont.shape[1]))
        self.off = d.layout.joint.off
        # slots: the parameters of factor levels; P restricted to them takes joint codes to slots (CSR)
        slot_par = np.unique(self.P.indices)
        self.slot_par = slot_par
        Ps = self.P[:, slot_par].tocsr()
        Ps.sort_indices()
        self.slot_ptr, self.slot_idx = Ps.indptr.astype(np.int64), Ps.indices.astype(np.int64)
        self.Q = sp.csr_matrix((np.ones(slot_par.size), (np.arange(slot_par.size), slot_par)),
                               shape=(slot_par.size, K))                 # (S, K)
        # float64 for both components (0/1 and fractions): one compiled logit_pass, not one per dtype
        self.y = np.asarray(d.y, dtype=np.float64)
        self._mun_rows = None

    def tables(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(j_coef, nb_eta) of the passes at ``theta``: the linear predictor's look-up table per
        joint code and its neighbourhood part."""
        level_coef, nb_eta = self.d.layout.tables(theta, self.d.nb_cont, self.d.nb_mun)
        return self.M @ level_coef, nb_eta

    def municipality_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts (G + 1,), order): municipality g's rows are ``order[starts[g]:starts[g + 1]]``;
        ``order`` is empty when the rows are already grouped by municipality (rows sorted by
        neighbourhood, neighbourhoods numbered within municipalities), and they are those rows
        themselves. Computed once per design."""
        if self._mun_rows is None:
            mun = self.d.nb_mun[self.d.nbhd]
            starts = np.zeros(self.n_mun + 1, dtype=np.int64)
            np.cumsum(np.bincount(mun, minlength=self.n_mun), out=starts[1:])
            grouped = bool(np.all(mun[1:] >= mun[:-1]))
            self._mun_rows = starts, (np.zeros(0, dtype=np.int64) if grouped else np.argsort(mun, kind="stable"))
        return self._mun_rows

    def run(self, theta: np.ndarray, mode: int = 0, clusters: bool = False, weight=None) -> PassStats:
        d = self.d
        j_coef, nb_eta = self.tables(theta)
        wt = d.weight if weight is None else weight
        ll, g_s, g_nb, a_nb, a_ms, a_xs, a_ss, s_ms = logit_pass(
            d.joint, self.off, j_coef, self.slot_ptr, self.slot_idx, self.Q.shape[0], d.nbhd, nb_eta, self.n_nb,
            d.nb_cont, d.nb_mun, self.n_mun, self.y, wt, mode, clusters, N_VIRTUAL)
        D, Q = self.D, self.Q
        g = D.T @ g_nb + Q.T @ g_s
        Hnn = (D.T @ sp.diags(a_nb) @ D).toarray()
        B = np.asarray(self.Bm @ a_ms) + np.asarray(self.Bc @ a_xs)   # (K, S)
        cross = np.asarray((Q.T @ B.T).T)                              # (K, K)
        H = Hnn + cross + cross.T + np.asarray(Q.T @ (Q.T @ a_ss).T)
        return PassStats(ll=ll, g=np.asarray(g), H=H, g_nb=g_nb, a_nb=a_nb, s_ms=s_ms)

    def cluster_scores(self, st: PassStats) -> np.ndarray:
        """(G, K) score sums per municipality (clusters nest neighbourhoods)."""
        Cm = sp.csr_matrix((st.g_nb, (self.d.nb_mun, np.arange(self.n_nb))), shape=(self.n_mun, self.n_nb))
        return np.asarray((Cm @ self.D).toarray()) + np.asarray((self.Q.T @ st.s_ms.T).T)


def pass_at(d: ComponentDesign, theta: np.ndarray, clusters: bool = False) -> tuple[PassStats, np.ndarray | None]:
    """One pass over ``d`` at coefficients ``theta`` (Hessian mode): the statistics (score ``g``,
    Hessian ``H`` of minus the log-likelihood) and, with ``clusters``, the (G, K) score sums
    per municipality."""
    ev = _Evaluator(d)
    st = ev.run(theta, mode=0, clusters=clusters)
    return st, (ev.cluster_scores(st) if clusters else None)


def _solve(H: np.ndarray, rhs: np.ndarray, names) -> np.ndarray:
    try:
        c = sla.cho_factor(H, lower=True, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        raise EstimationError(_collinear_message(H, names)) from None
    return sla.cho_solve(c, rhs)


def municipality_levels(term_names) -> np.ndarray:
    """Mask of the terms that are levels one municipality alone determines: its fixed effect
    and, in a model with fixed effects, the intercept (the reference municipality's level).
    Its residuals are fitted to such a level exactly, so a cluster-robust variance misses
    that municipality's own noise along it: no cluster df, no cluster-based inference."""
    fe = np.array([t.startswith("municipality[") for t in term_names], dtype=bool)
    if fe.any():
        fe |= np.array([t == "intercept" for t in term_names], dtype=bool)
    return fe


def _collinear_message(H: np.ndarray, names) -> str:
    """Name the terms involved in the (near) singularity of H."""
    d = np.sqrt(np.maximum(np.diag(H), 1e-300))
    R = H / d[:, None] / d[None, :]
    w, V = np.linalg.eigh(R)
    v = V[:, 0]
    terms = [names[i] for i in np.argsort(-np.abs(v))[:6] if abs(v[i]) > 0.1]
    return ("singular design: the terms " + ", ".join(terms) +
            f" are (nearly) collinear (smallest scaled eigenvalue {w[0]:.2e}); drop one of them from the model spec")


def _sample_sums(d: ComponentDesign, M, weight: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Sums of weight and outcome per factor level and per municipality (one kernel pass)."""
    w = weight if weight is not None else d.weight
    off = np.asarray(d.layout.joint.off, dtype=np.int64)
    n_mun = int(d.nb_mun.max()) + 1
    s_j, s_m = sample_sums(d.joint, off, int(sum(d.layout.joint.sizes)), d.nbhd, d.nb_mun, n_mun,
                           np.asarray(d.y, dtype=np.float64), np.ascontiguousarray(w, dtype=np.float64), N_VIRTUAL)
    return M.T @ s_j[0], M.T @ s_j[1], s_m[0], s_m[1]


def _level_rows(d: ComponentDesign, level: int) -> np.ndarray:
    """Mask of the sample rows with factor level ``level`` (an index into the level tables)."""
    lay = d.layout
    k = int(np.searchsorted(lay.lev_off, level, side="right")) - 1
    return d.codes[:, lay.cols[k]] == level - lay.lev_off[k]


def _degenerate(w: np.ndarray, y: np.ndarray, tol: float) -> np.ndarray:
    """Groups with weight whose outcome sum is 0 or all of their weight."""
    return (w > tol) & ((y <= tol) | (y >= w - tol))


def _separation_checks(d: ComponentDesign, M, sums: tuple | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, tuple]:
    """(dropped municipality mask, active parameter mask, separated level indices, sample weight
    with the rows of separated levels and dropped municipalities at 0, or None if none is, and the
    sample sums (:func:`_sample_sums`) with that weight)).

    Rows of a separated level are left out, then the sums are taken again (another level or
    municipality may have become degenerate), until nothing changes. A factor level with no
    households in the sample is not estimable: its term is left out (inactive, NaN, predicted
    at the reference level) and reported. ``sums``: the unweighted sample sums when the caller
    has them (:func:`_sample_sums`)."""
    lay = d.layout
    base = d.weight if d.weight.size else np.ones(d.n)
    weight = None
    separated = np.zeros(lay.n_levels_total, dtype=bool)
    dropped = np.zeros(int(d.nb_mun.max()) + 1, dtype=bool)
    tol = 1e-9 * max(float(base.sum()), 1.0)
    first = _sample_sums(d, M, None) if sums is None else sums
    absent_lev = first[0] <= tol
    while True:
        w_lev, y_lev, w_m, y_m = first if weight is None else _sample_sums(d, M, weight)
        new_lev = _degenerate(w_lev, y_lev, tol) & (lay.level_param >= 0) & ~separated
        new_mun = _degenerate(w_m, y_m, tol) & ~dropped if lay.fe_start >= 0 else np.zeros_like(dropped)
        if not new_lev.any() and not new_mun.any():
            break
        separated |= new_lev
        dropped |= new_mun
        keep = ~dropped[d.nb_mun[d.nbhd]]
        for l in np.flatnonzero(separated):
            keep &= ~_level_rows(d, l)
        weight = base * keep
        if not weight.any():
            raise EstimationError(f"{d.spec.name}: nothing estimable is left: every household is in a "
                                  "municipality or factor level whose outcome is all 0 or all 1")
    if lay.fe_start >= 0:
        dropped |= w_m <= tol         # no households left in the sample
    active = np.ones(lay.n_params, dtype=bool)
    active[lay.level_param[(lay.level_param >= 0) & (absent_lev | separated | (w_lev <= tol))]] = False
    if lay.fe_start >= 0:
        active[lay.fe_start:] = ~dropped[1:]
        if dropped[0]:
            # the first municipality with variation becomes the reference (its effect 0):
            # the intercept changes meaning, predictions do not (the common effect is recalibrated)
            kept = np.flatnonzero(~dropped)
            if kept.size == 0:
                raise EstimationError(f"{d.spec.name}: no municipality has variation in the outcome")
            active[lay.fe_start + kept[0] - 1] = False
    return dropped, active, np.flatnonzero(separated), weight, (w_lev, y_lev, w_m, y_m)


def _separated_estimates(d: ComponentDesign, params: np.ndarray, levels: np.ndarray, c: float) -> None:
    """Set, in place, each separated level's coefficient to the one at which its households'
    predicted outcomes (common effect ``c``, other coefficients as estimated) are half a
    household's weight from 0 (no outcomes) or from all (only outcomes): Newton on a monotone
    function of one number."""
    lay = d.layout
    base = d.weight if d.weight.size else np.ones(d.n)
    for l in levels:
        par = lay.level_param[l]
        rows = _level_rows(d, l) & (base > 0)
        params[par] = 0.0
        level_coef, nb_eta = lay.tables(np.nan_to_num(params), d.nb_cont, d.nb_mun, fe_value=c)
        w = base[rows]
        total = float(w.sum())
        half = 0.5 * total / max(int(rows.sum()), 1)
        target = half if float(np.dot(w, d.y[rows])) <= 0.5 * total else total - half
        params[par] = _shift(d, level_coef, nb_eta, w, target, rows=rows, tol=1e-10 * total / max(target, 1.0),
                             max_iter=100, max_step=5.0)


def _dropped_params(lay, dropped: np.ndarray) -> np.ndarray:
    """Fixed-effect parameters of dropped municipalities (the reference has none)."""
    if lay.fe_start < 0:
        return np.zeros(0, dtype=np.int64)
    return lay.fe_start + np.flatnonzero(dropped[1:])


def _shift(d: ComponentDesign, level_coef: np.ndarray, nb_eta: np.ndarray, w: np.ndarray, target: float,
           rows: np.ndarray | None = None, start: float = 0.0, **solver) -> float:
    """The shift c of the linear predictors (tables ``level_coef``, ``nb_eta``) of the design's rows
    (or those of the mask ``rows``) with sum w logistic(eta + c) = target: Newton in one kernel
    (:func:`kernels.glm.common_shift`; ``solver``: its tol, max_iter and max_step)."""
    lay = d.layout
    joint, nbhd = (d.joint, d.nbhd) if rows is None else (d.joint[rows], d.nbhd[rows])
    return float(common_shift(np.ascontiguousarray(joint), np.asarray(lay.joint.off), lay.joint_map() @ level_coef,
                              np.ascontiguousarray(nbhd), nb_eta, np.ascontiguousarray(w, dtype=np.float64),
                              float(target), N_VIRTUAL, start, **solver))


def common_effect(d: ComponentDesign, params: np.ndarray, start: float = 0.0) -> float:
    """The one effect c that replaces every municipality's fixed effect in prediction:
    sum_h w_h logistic(eta0_h + c) = sum_h w_h y_h over all households (or cells) of the design,
    eta0 the linear predictor without fixed effects (Newton on c from ``start``, monotone)."""
    lay = d.layout
    level_coef, nb_eta = lay.tables(np.nan_to_num(params), d.nb_cont, d.nb_mun, fe_value=0.0)
    w = d.weight if d.weight.size else np.ones(d.n)
    return _shift(d, level_coef, nb_eta, w, float(np.dot(w, d.y)), start=start)


def _pilot_start(d: ComponentDesign) -> np.ndarray | None:
    """Start values from a loose fit on every PILOT_EVERY-th row (rows are sorted by
    neighbourhood, so every municipality is sampled in proportion): the first Newton
    iterations, far from the estimate, then cost an eighth of a pass each, and the full
    sample needs about half as many. A term the pilot could not estimate (a municipality
    without outcome variation among its rows) is NaN and starts at 0; ``None`` if the pilot
    itself cannot be estimated."""
    rows = np.arange(0, d.n, PILOT_EVERY)
    sub = replace(d, codes=d.codes[rows], joint=d.joint[rows], nbhd=d.nbhd[rows], y=d.y[rows],
                  weight=d.weight[rows] if d.weight.size else d.weight)
    try:
        return _fit_component(sub, tol=1e-6, step_tol=1e-4, covariances=False, common=False).params
    except EstimationError:
        return None


def fit_component(*args, **kwargs) -> ComponentFit:
    """Estimate one component (see :func:`_fit_component`) with single-threaded BLAS, so
    that the estimates do not depend on the number of BLAS threads (a Dask worker has 1):
    bit-identical everywhere. The dense algebra is K x K with K ~ 400: threads gain nothing."""
    with single_blas_thread():
        return _fit_component(*args, **kwargs)


def _fit_component(d: ComponentDesign, tol: float = 1e-8, max_iter: int = 100,
                  mun_codes: np.ndarray | None = None, start: np.ndarray | None = None,
                  step_tol: float = 1e-6, covariances: bool = True, common: bool = True,
                  sums: tuple | None = None, cluster_kind: str = "cr2") -> ComponentFit:
    """Estimate one component by Newton with step-halving (from ``start`` if given: a warm
    start; NaN entries start at 0; by default the fixed effects start at each
    municipality's own log-odds, and a sample of at least PILOT_MIN_ROWS rows from a pilot
    fit on every PILOT_EVERY-th row, :func:`_pilot_start`). Converged when the gradient norm is below ``tol`` and
    the next Newton step below ``step_tol`` in every coefficient (the gradient norm alone
    is loose for the fixed effect of a small municipality); that last step is applied.
    The model-based covariance uses the Hessian of the point before it (a difference of
    the order of ``step_tol`` relative). ``covariances=False`` (a bootstrap refit, which
    needs the estimates only) skips the covariance pass: the three covariances are NaN and
    loglik and gradient norm those of the last pass; ``common=False`` leaves ``fe_common``
    NaN for the caller to compute; ``sums``: the sample sums of weight and outcome per
    factor level and per municipality (:func:`_sample_sums`) when the caller has them;
    ``cluster_kind``: ``"cr2"`` (default, :mod:`engine.model.sandwich`) or ``"cr1"`` (the
    G/(G-1) (n-1)/(n-k) correction of statsmodels) for the cluster-robust covariance."""
    t0 = time.perf_counter()
    lay = d.layout
    names = lay.term_names
    K = lay.n_params
    ev = _Evaluator(d)
    wt_sum = float(d.weight.sum()) if d.weight.size else float(d.n)
    ybar = float(np.dot(d.weight, d.y) / wt_sum) if d.weight.size else float(np.mean(d.y))
    if not 0 < ybar < 1:
        raise EstimationError(f"{d.spec.name}: the outcome is {'never' if ybar <= 0 else 'always'} "
                              "observed in the estimation sample")
    dropped, active, separated, weight, sums = _separation_checks(d, ev.M, sums)
    if weight is not None:
        wt_sum = float(weight.sum())
    act = np.flatnonzero(active)
    theta = np.zeros(K)
    theta[0] = np.log(ybar / (1 - ybar))
    if lay.fe_start >= 0:        # each municipality's own log-odds relative to the national
        w_m, y_m = sums[2], sums[3]
        rate = np.clip(y_m / np.maximum(w_m, 1e-300), 1e-6, 1 - 1e-6)
        theta[0] = np.log(rate[0] / (1 - rate[0])) if not dropped[0] else theta[0]
        fe = np.log(rate / (1 - rate)) - theta[0]
        theta[lay.fe_start:] = np.where(active[lay.fe_start:], fe[1:], 0.0)
    if start is None and d.n >= PILOT_MIN_ROWS:
        start = _pilot_start(d)
    if start is not None:
        theta = np.where(active, np.nan_to_num(start), 0.0)
    st = ev.run(theta, weight=weight)
    history = []
    it = 0
    gnorm = float(np.abs(st.g[act]).max()) / wt_sum
    while True:
        step = np.zeros(K)
        step[act] = _solve(st.H[np.ix_(act, act)], st.g[act], [names[i] for i in act])
        if gnorm < tol and np.abs(step).max() < step_tol:
            # the last, tiny Newton step is taken without another pass (what is left is of
            # the order of its square); the covariance pass below evaluates the final point
            theta = theta + step
            break
        if it >= max_iter:
            raise EstimationError(f"{d.spec.name}: no convergence after {max_iter} Newton iterations "
                                  f"(gradient norm {gnorm:.2e})")
        t = 1.0
        while True:
            new = ev.run(theta + t * step, weight=weight)
            if np.isfinite(new.ll) and new.ll >= st.ll - 1e-12 * abs(st.ll):
                break
            t *= 0.5
            if t < 1e-10:
                raise EstimationError(f"{d.spec.name}: step-halving failed at iteration {it + 1}")
        theta, st = theta + t * step, new
        it += 1
        gnorm = float(np.abs(st.g[act]).max()) / wt_sum
        history.append({"iteration": it, "loglik": st.ll, "gradient_norm": gnorm, "step": t})

    level_terms = lay.level_param[lay.level_param >= 0]
    sep_params = lay.level_param[separated]
    unestimable = level_terms[~active[level_terms] & ~np.isin(level_terms, sep_params)]
    left_out = np.concatenate([_dropped_params(lay, dropped), unestimable])
    params = np.where(active | ~np.isin(np.arange(K), left_out), theta, np.nan)
    n_obs = int(np.count_nonzero(weight)) if weight is not None else (
        int(np.count_nonzero(d.weight)) if d.weight.size else d.n)
    fe_common = common_effect(d, params) if lay.fe_start >= 0 and (common or separated.size) else 0.0
    if separated.size:
        params[sep_params] = 0.0
        for _ in range(3):     # the separated levels' own estimates and the common effect, alternately
            _separated_estimates(d, params, separated, fe_common)
            fe_common = common_effect(d, params) if lay.fe_start >= 0 else 0.0
    if not common and lay.fe_start >= 0:
        fe_common = np.nan                       # the caller computes it
    codes = mun_codes if mun_codes is not None else np.array([str(i) for i in range(ev.n_mun)], dtype=object)
    done = dict(name=d.spec.name, term_names=names, params=params, iterations=it, n_obs=n_obs,
                n_clipped=d.n_clipped, dropped_municipalities=tuple(str(c) for c in codes[np.flatnonzero(dropped)]),
                unestimable_terms=tuple(names[i] for i in unestimable),
                separated_terms=tuple(names[i] for i in sep_params), fe_common=fe_common, history=history)
    if not covariances:
        nan = np.full((K, K), np.nan)
        return ComponentFit(cov_model=nan, cov_robust=nan, cov_cluster=nan, loglik=float(st.ll), gradient_norm=gnorm,
                            n_clusters=int(ev.n_mun - dropped.sum()), seconds=time.perf_counter() - t0, **done)
    # covariances on the active parameters
    k = act.size
    Hinv = np.full((K, K), np.nan)
    Ha = st.H[np.ix_(act, act)]
    Hinv_a = _solve(Ha, np.eye(k), [names[i] for i in act])
    Hinv[np.ix_(act, act)] = Hinv_a
    meat = ev.run(theta, mode=1, clusters=True, weight=weight)
    gnorm = float(np.abs(meat.g[act]).max()) / wt_sum        # at the final point
    robust = np.full((K, K), np.nan)
    robust[np.ix_(act, act)] = Hinv_a @ meat.H[np.ix_(act, act)] @ Hinv_a * (n_obs / (n_obs - k))
    S = ev.cluster_scores(meat)[:, act]
    has = np.diff(ev.municipality_rows()[0]) > 0
    if weight is not None:
        has &= ~dropped
    G = int(has.sum())
    S = S[has]
    cluster = np.full((K, K), np.nan)
    df = np.full(K, np.nan)
    if G > 1 and cluster_kind == "cr1":
        corr = G / (G - 1) * (n_obs - 1) / (n_obs - k)
        cluster[np.ix_(act, act)] = Hinv_a @ (S.T @ S) @ Hinv_a * corr
        df[act] = G - 1
    elif G > 1:
        shared, own, H = cluster_hessians(ev, theta, np.flatnonzero(has), act, weight)
        cluster[np.ix_(act, act)] = cr2_covariance(shared, own, H, Hinv_a, S)
        df[act[shared]] = satterthwaite_df(shared, own, H, Hinv_a)
    df[municipality_levels(names)] = np.nan
    return ComponentFit(cov_model=Hinv, cov_robust=robust, cov_cluster=cluster, loglik=float(meat.ll),
                        gradient_norm=gnorm, n_clusters=G, seconds=time.perf_counter() - t0, df_cluster=df, **done)
