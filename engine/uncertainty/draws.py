"""Replicates: the random draws of one replicate and the sums of a batch of them.

A :class:`Context` holds what a batch needs (households as codes, fit, regime, tables),
built once per process. Replicate r draws all its random numbers from
``numpy.random.SeedSequence(seed, spawn_key=(r,))`` in a fixed order, and every kernel sum is
per draw over fixed row ranges: results are bit-identical for any batch size and any
number of workers. See :mod:`engine.uncertainty.bootstrap` for the methods.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from engine.io.blas import single_blas_thread
from engine.model.design import read_households
from engine.model.fitted import ModelFit, read_fit
from engine.model.predict import prediction_design, prediction_tables, predict
from engine.model.refit import Refitter
from engine.rules.budget import allocate_stage, allocation_basis, budget_stage
from engine.rules.redistribution import effects
from engine.rules.regime import load_regime
from engine.uncertainty.cells import draw_cells
from engine.uncertainty.settings import REPLICATE_COLUMNS, Settings
from kernels.config import N_VIRTUAL
from kernels.predict import weight_level_sums


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    """A square root L with L L' = cov (Cholesky, or eigen-decomposition when not definite)."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh((cov + cov.T) / 2)
        return V * np.sqrt(np.clip(w, 0, None))


@dataclass(frozen=True)
class BetweenSd:
    """The spread of municipality effects around the model (log-odds of the volume component).

    ``sd``: the estimate; ``mean``: the mean effect relative to the common effect of
    prediction (which is fitted to the national count, so it weights municipalities by
    size: the typical municipality's effect need not be 0); ``used``: municipalities in the
    estimate; ``left_out``: codes of municipalities without an estimable effect (all or
    none of their households with the outcome: the fit drops their fixed effect), reported
    and not used."""

    sd: float
    used: int
    left_out: tuple[str, ...] = ()
    mean: float = 0.0


def municipality_effects(fit: ModelFit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(effects, covariance, municipality index) of the municipalities with an estimated effect.

    A municipality's effect is the intercept plus its fixed effect (the reference
    municipality: the intercept alone); the covariance ``T V T'`` is that of the
    model-based covariance V of intercept and fixed effects. Every effect shares the
    intercept's sampling error, so the diagonal alone overstates what spreads them.
    Municipalities whose fixed effect the fit dropped (all or none of their households
    with the outcome) have no effect; when the first municipality is dropped, the fit's
    reference is the first one with an effect (its own term is NaN, its effect the intercept)."""
    v = fit.volume
    fe = [i for i, t in enumerate(v.term_names) if t.startswith("municipality[")]
    if not fe:
        return np.zeros(0), np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    dropped = set(v.dropped_municipalities)
    fe_dropped = np.array([v.term_names[i][len("municipality["):-1] in dropped for i in fe])
    fe_nan = ~np.isfinite(v.params[fe])
    substitute = fe_nan & ~fe_dropped                      # the reference when the first one is dropped
    terms = [[0]] if not substitute.any() else []          # municipality 0 (the reference) unless dropped
    mun = [0] if not substitute.any() else []
    for g, i in enumerate(fe, start=1):
        if not fe_dropped[g - 1]:
            terms.append([0] if fe_nan[g - 1] else [0, i])
            mun.append(g)
    idx = np.unique(np.concatenate([np.asarray(t) for t in terms]))
    pos = {k: j for j, k in enumerate(idx)}
    T = np.zeros((len(terms), idx.size))
    for m, t in enumerate(terms):
        T[m, [pos[k] for k in t]] = 1.0
    effect, cov = T @ v.params[idx], T @ v.cov_model[np.ix_(idx, idx)] @ T.T
    ok = np.isfinite(effect) & np.isfinite(cov).all(axis=1)
    return effect[ok], cov[np.ix_(ok, ok)], np.asarray(mun, dtype=np.int64)[ok]


# Huber's bound on standardised residuals, and E[min(Z^2, k^2)] for Z ~ N(0, 1)
_HUBER_K = 2.5
_HUBER_BETA = float((2 * ndtr(_HUBER_K) - 1) - 2 * _HUBER_K * np.exp(-_HUBER_K ** 2 / 2) / np.sqrt(2 * np.pi)
                    + 2 * _HUBER_K ** 2 * (1 - ndtr(_HUBER_K)))


def between_sd_estimate(fit: ModelFit, codes: np.ndarray | None = None, sd: float | None = None) -> BetweenSd:
    """Robust estimate of the sd tau of municipality effects around the model.

    The effects a_g (intercept + fixed effect) are contrasted with their mean,
    c = a - mean(a), whose covariance C V_a C' (C = I - 11'/G) holds each effect's own
    sampling variance v_g but not the reference municipality's error, which every a_g
    shares and which does not spread them. Under a_g = mu + u_g + e_g, u_g ~ N(0, tau^2),
    c_g / sqrt(tau^2 + v_g) is about N(0, 1), and tau^2 solves the likelihood equation with
    bounded residuals (:func:`_solve_tau`: heteroscedastic, and a few municipalities with a
    strong policy of their own do not inflate it much), then refined without the
    municipalities beyond 3 sd (:func:`_trimmed`); 0 when the sampling variance alone
    explains the spread; ``sd`` given: that value). The mean is a Huber M-estimate of the
    location of a_g - (intercept + common effect) with precision weights 1 / (tau^2 + v_g)
    (the same bound k: planted strict municipalities do not drag it). Municipalities without
    an estimable effect are left out and named in ``left_out`` (by ``codes``, the
    population's municipality codes in order; default the fit's); never NaN."""
    effect, cov, mun = municipality_effects(fit)
    codes = fit.mun_codes if codes is None else codes
    used = set(mun.tolist())
    left_out = tuple(str(c) for g, c in enumerate(codes) if g not in used)
    if effect.size < 10:
        return BetweenSd(0.0 if sd is None else float(sd), int(effect.size), left_out)
    G = effect.size
    c = effect - effect.mean()
    Ca = cov - cov.mean(axis=0, keepdims=True)                     # C V (column means removed)
    v = np.clip(np.diag(Ca) - Ca.mean(axis=1), 1e-300, None)       # diag(C V C')
    tau = _solve_tau(c, v) if sd is None else float(sd)
    s2 = tau ** 2 + v
    mu = float(np.dot(1 / s2, effect) / np.sum(1 / s2))
    for _ in range(50):                                            # iteratively reweighted
        r = np.abs(effect - mu) / np.sqrt(s2)
        w = np.minimum(1.0, _HUBER_K / np.maximum(r, 1e-300)) / s2
        mu, old = float(np.dot(w, effect) / w.sum()), mu
        if abs(mu - old) <= 1e-12 * max(abs(mu), 1.0):
            break
    tau, mu = _trimmed(effect, v, tau, mu, fixed_sd=sd is not None)
    mean = mu - float(fit.volume.params[0] + fit.volume.fe_common)
    return BetweenSd(tau, G, left_out, mean if np.isfinite(mean) else 0.0)


def _solve_tau(c: np.ndarray, v: np.ndarray, bound: float = _HUBER_K, beta: float = _HUBER_BETA) -> float:
    """tau >= 0 solving sum_g (min(r_g^2, k^2) - beta) / (tau^2 + v_g) = 0, r_g = c_g / sqrt(tau^2 + v_g):
    the maximum-likelihood equation of tau^2 for c_g ~ N(0, tau^2 + v_g) with the squared
    standardised residuals bounded at k = 2.5 (Huber's proposal 2; beta = E min(Z^2, k^2) keeps it
    unbiased under the normal model). Bisection; 0 when the equation is negative at 0."""
    def score(t2: float) -> float:
        s2 = t2 + v
        return float(np.sum((np.minimum(c ** 2 / s2, bound ** 2) - beta) / s2))

    if not np.isfinite(score(0.0)) or score(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, float(np.max(c ** 2)) + 1.0
    for _ in range(200):                                           # bisection to 1e-12 relative
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if score(mid) > 0 else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    return float(np.sqrt(0.5 * (lo + hi)))


# municipalities further than _TRIM sds from the centre are left out of the second step;
# E[Z^2 | |Z| < _TRIM] keeps the likelihood equation unbiased under the normal model
_TRIM = 3.0
_TRIM_BETA = float(1 - 2 * _TRIM * np.exp(-_TRIM ** 2 / 2) / np.sqrt(2 * np.pi) / (2 * ndtr(_TRIM) - 1))


def _trimmed(effect: np.ndarray, v: np.ndarray, tau: float, mu: float, fixed_sd: bool = False) -> tuple[float, float]:
    """Second step from the bounded-residual estimate (tau, mu): municipalities with
    |effect - mu| > 3 sqrt(tau^2 + v) (strict policies of their own, such as planted ones) are
    left out and tau^2 and mu re-solved on the rest by the likelihood equations of a normal
    truncated at 3 sd, until the set is stable. Huber's bound alone still lets each outlier
    push tau up by k^2 - beta: a dozen strict large municipalities inflate it by 15-20%."""
    keep = None
    for _ in range(30):
        s2 = tau ** 2 + v
        new = np.abs(effect - mu) < _TRIM * np.sqrt(s2)
        if keep is not None and np.array_equal(new, keep):
            break
        keep = new
        if keep.sum() < 10:
            break
        e, vk = effect[keep], v[keep]
        for _ in range(100):                                     # alternate location and spread
            w = 1.0 / (tau ** 2 + vk)
            mu = float(np.dot(w, e) / w.sum())
            if fixed_sd:
                break
            new_tau = _solve_tau(e - mu, vk, bound=np.inf, beta=_TRIM_BETA)
            if abs(new_tau - tau) <= 1e-10 * max(tau, 1e-12):
                tau = new_tau
                break
            tau = new_tau
    return tau, mu


def count_gradient(hh, fit: ModelFit, pd_, lay) -> np.ndarray:
    """How the common effect must move, to first order, to keep the national predicted count
    when the volume parameters move: ``dc/dtheta = -(sum_i w_i x_i) / sum_i w_i`` with
    ``w = p (1 - p)`` at the fit (``lay``: the volume layout on ``hh``; K entries, 0 for the
    intercept and fixed effects, which prediction does not use). The fit calibrates its common
    effect to the national count (engine.model.fit), so a parametric draw of the other terms
    gets the common effect that keeps it, as a refit would; without it a draw moves the level
    of every municipality at once by x_bar' (beta_r - beta_hat), which the estimate cannot do."""
    t = prediction_tables(hh, fit, pd_)
    lev, nb_w = weight_level_sums(pd_.combo, pd_.nbhd, *t.args()[:4], hh.codes, lay.cols, lay.lev_off,
                                  lay.level_param.shape[0], hh.nb_cont.shape[0], N_VIRTUAL)
    g = np.zeros(lay.n_params)
    has = lay.level_param >= 0
    np.add.at(g, lay.level_param[has], lev[has])
    g[lay.cont_param] = nb_w @ hh.nb_cont[:, lay.cont_cols]
    return -g / nb_w.sum()


def check_method(fit: ModelFit, method: str) -> None:
    """Refuse a bootstrap a fit cannot carry: published weights have no refit (cluster) and,
    without a covariance, no parametric draws; the outcome-only band is offered instead."""
    if fit.spec.weights is None:
        return
    if method in ("cluster", "score"):
        raise ValueError(f"model spec {fit.spec.name} carries published weights: a {method} bootstrap would refit "
                         "them; use method \"outcome\" (the band of outcome randomness and the spread of "
                         "municipalities around the model)")
    if method == "parametric":      # a spec carries no covariance of its weights
        raise ValueError(f"model spec {fit.spec.name} carries published weights without a covariance: a parametric "
                         "bootstrap cannot draw its coefficients; use method \"outcome\" (--method outcome, or "
                         "bootstrap.method = \"outcome\": the band of outcome randomness and the spread of "
                         "municipalities around the model only)")


class Context:
    """Everything a batch needs, built once per process (population, fit, regime, tables)."""

    def __init__(self, settings: Settings):
        with single_blas_thread():   # bit-identical in any process
            self._init(settings)

    def _init(self, settings: Settings):
        self.settings = settings
        # the households are read in batches straight into their codes: a worker never holds their table
        self.hh, self.municipalities, self.truth = read_households(settings.population)
        self.fit = read_fit(settings.coefficients)
        self.regime = regime = load_regime(settings.regime)
        if regime.objective_model != "household":
            raise ValueError(f"regime {regime.name} uses the municipal model; the bootstrap needs a regime "
                             "of the household model (such as 2019)")
        self.pd = prediction_design(self.hh, self.fit.norms)
        self.cells = draw_cells(self.hh, self.fit, self.pd)
        mun = self.municipalities
        col = lambda c: mun.column(c).to_numpy().astype(np.float64)  # noqa: E731
        self.inhabitants, self.spending = col("inhabitants"), col("spending_t")
        # the regime's budget stage (provisional, or definitive: newer macro budget and household counts)
        self.stage = budget_stage(regime, regime.stage, col("spending_t2"), col("households"), col("households_t2"),
                                  self.spending)
        self.hist, self.tb = self.stage.historical_share, self.stage.tb
        self.point = predict(self.hh, self.fit, self.pd)
        # the outcome sd at the fit, for every replicate (its change with a draw is of second order)
        self.outcome_sd = np.sqrt(self.point.cost_variance.sum(axis=1))
        cost = self.point.objective_cost
        # weights and cap groups do not depend on the objective cost: once for every replicate
        self.basis = allocation_basis(self.stage.regime, self.hist, self.inhabitants)
        self.point_budget = allocate_stage(self.stage, cost, self.inhabitants, basis=self.basis)
        self.elasticity = self.point.cost_elasticity
        self.between = between_sd_estimate(self.fit, self.hh.mun_codes,
                                           None if settings.between_sd == "auto" else float(settings.between_sd))
        self.between_sd = self.between.sd
        check_method(self.fit, settings.method)
        self.refitter = Refitter(self.hh, self.fit) if settings.method in ("cluster", "score") else None
        if settings.method != "parametric":
            return
        v, p = self.fit.volume, self.fit.price
        # terms without a variance (not estimable, or separated with an estimate of their own) are not drawn
        self.v_draw = np.asarray([i for i, t in enumerate(v.term_names) if t != "intercept"
                                  and not t.startswith("municipality[") and np.isfinite(v.cov_cluster[i, i])],
                                 dtype=np.int64)
        self.p_draw = np.flatnonzero(np.isfinite(p.params) & np.isfinite(np.diag(p.cov_cluster)))
        self.v_root = _sqrt_psd(v.cov_cluster[np.ix_(self.v_draw, self.v_draw)])
        lay = self.cells.layouts[0]
        self.v_level = (count_gradient(self.hh, self.fit, self.pd, lay)[self.v_draw] if lay.fe_start >= 0
                        else np.zeros(self.v_draw.size))
        self.p_root = _sqrt_psd(p.cov_cluster[np.ix_(self.p_draw, self.p_draw)])

    @property
    def n_mun(self) -> int:
        return self.hh.n_mun

    # -- one replicate's random numbers, in a fixed order -----------------------------
    def rng(self, r: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.settings.seed, spawn_key=(r,)))

    def parametric_params(self, rng: np.random.Generator) -> tuple[ModelFit, np.ndarray, np.ndarray]:
        """One parametric draw: the fit with the common effect that keeps the national count
        (to first order, :func:`count_gradient`), the volume and the price parameters."""
        vp = self.fit.volume.params.copy()
        pp = self.fit.price.params.copy()
        dv = self.v_root @ rng.standard_normal(self.v_draw.size)
        vp[self.v_draw] += dv
        pp[self.p_draw] += self.p_root @ rng.standard_normal(self.p_draw.size)
        v = self.fit.volume
        fit = dataclasses.replace(self.fit, volume=dataclasses.replace(
            v, fe_common=v.fe_common + float(self.v_level @ dv))) if self.v_level.any() else self.fit
        return fit, vp, pp

    def multiplicities(self, rng: np.random.Generator) -> np.ndarray:
        """How often each municipality is picked in a resample of all municipalities with replacement."""
        picks = rng.integers(0, self.n_mun, self.n_mun)
        return np.bincount(picks, minlength=self.n_mun).astype(np.float64)

    def cluster_fit(self, rng: np.random.Generator) -> ModelFit:
        """A full refit on a resample (frequency weights on the cells, warm from the one-step estimate)."""
        return self.refitter.refit(self.multiplicities(rng))

    def score_fit(self, rng: np.random.Generator) -> ModelFit:
        """The one-step (score) estimates of the same resample as :meth:`cluster_fit`."""
        return self.refitter.one_step(self.multiplicities(rng))

    def run_batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Replicates start .. stop-1: arrays (stop - start, n_mun) of REPLICATE_COLUMNS."""
        with single_blas_thread():
            return self._run_batch(start, stop)

    def _run_batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        tables, noise = [], []
        for r in range(start, stop):
            rng = self.rng(r)
            if self.settings.method == "parametric":
                t = self.parametric_params(rng)
            elif self.settings.method == "outcome":
                t = (self.fit, None, None)
            elif self.settings.method == "score":
                t = (self.score_fit(rng), None, None)
            else:
                t = (self.cluster_fit(rng), None, None)
            tables.append(t)
            noise.append((rng.standard_normal(self.n_mun), rng.standard_normal(self.n_mun)))
        cost = np.ascontiguousarray(self.cells.sums(tables).T)      # (replicates, n_mun)
        budget = np.stack([allocate_stage(self.stage, c, self.inhabitants, basis=self.basis).budget for c in cost])
        z, u = (np.stack(x) for x in zip(*noise))
        sd = self.outcome_sd
        # row by row the same operations as for one replicate: the same bits in any batch
        return dict(zip(REPLICATE_COLUMNS, (
            cost, budget, budget / budget.sum(axis=1, keepdims=True), effects(budget, self.spending, self.inhabitants).pct,
            np.tile(sd, (len(cost), 1)),
            (cost + sd * z) * np.exp((self.between.mean + self.between_sd * u) * self.elasticity)), strict=True))


_CONTEXTS: dict[tuple, tuple[str | None, Context]] = {}


def context(settings: Settings, inputs: str | None = None) -> Context:
    """The process's Context for these settings (built once: workers load the data themselves).
    With ``inputs`` (:func:`inputs_digest`) it is rebuilt when the files behind the same paths
    changed since; without, the cached one is returned whatever its inputs."""
    key = tuple(sorted(settings.key().items()))
    cached = _CONTEXTS.get(key)
    if cached is None or (inputs is not None and cached[0] != inputs):
        _CONTEXTS.clear()
        _CONTEXTS[key] = (inputs, Context(settings))
    return _CONTEXTS[key][1]
