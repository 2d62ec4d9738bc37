"""Replicates: the random draws of one replicate and the sums of a batch of them.

A :class:`Context` holds what a batch needs (households as codes, fit, regime, tables),
built once per process. Replicate r draws all its random numbers from
``numpy.random.SeedSequence(seed, spawn_key=(r,))`` in a fixed order, and every kernel sum is
per draw over fixed row ranges: results are bit-identical for any batch size and any
number of workers. See :mod:`engine.uncertainty.bootstrap` for the methods.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from engine.model.design import read_households
from engine.model.fitted import ModelFit, read_fit
from engine.model.predict import prediction_design, predict
from engine.model.refit import Refitter
from engine.rules.budget import allocate, historical_shares, total_budget
from engine.rules.redistribution import effects
from engine.rules.regime import load_regime
from engine.uncertainty.cells import draw_cells
from engine.uncertainty.settings import REPLICATE_COLUMNS, Settings


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    """A square root L with L L' = cov (Cholesky, or eigen-decomposition when not definite)."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh((cov + cov.T) / 2)
        return V * np.sqrt(np.clip(w, 0, None))


def between_sd_from_fit(fit: ModelFit) -> float:
    """Robust estimate of the sd of municipality effects around the model.

    The fixed effects (with the intercept) estimate each municipality's effect; their
    spread is MAD * 1.4826 (robust to a few extreme municipalities), from which the mean
    sampling variance is subtracted (method of moments); 0 if nothing is left.
    """
    v = fit.volume
    names = v.term_names
    fe = [i for i, t in enumerate(names) if t.startswith("municipality[") and np.isfinite(v.params[i])]
    if len(fe) < 10:
        return 0.0
    fe = np.asarray(fe)
    effect = v.params[fe]
    var = np.diag(v.cov_model)[fe]
    spread = 1.4826 * np.median(np.abs(effect - np.median(effect)))
    return float(np.sqrt(max(spread ** 2 - np.median(var), 0.0)))


class Context:
    """Everything a batch needs, built once per process (population, fit, regime, tables)."""

    def __init__(self, settings: Settings):
        with threadpool_limits(limits=1, user_api="blas"):   # bit-identical in any process
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
        self.hist = historical_shares(col("spending_t2"), col("households"), col("households_t2"),
                                      regime.household_growth_correction)
        self.tb = total_budget(regime, col("households").sum(), self.spending.sum())
        self.point = predict(self.hh, self.fit, self.pd)
        cost = self.point.objective_cost
        self.point_budget = allocate(regime, cost, self.hist, self.inhabitants, self.tb)
        households = self.point.households.sum(1)
        self.rate = self.point.predicted.sum(1) / np.maximum(households, 1)
        self.between_sd = (between_sd_from_fit(self.fit) if settings.between_sd == "auto"
                           else float(settings.between_sd))
        v, p = self.fit.volume, self.fit.price
        self.v_draw = np.asarray([i for i, t in enumerate(v.term_names)
                                  if t != "intercept" and not t.startswith("municipality[")])
        self.p_draw = np.flatnonzero(np.isfinite(p.params))
        self.v_root = _sqrt_psd(v.cov_cluster[np.ix_(self.v_draw, self.v_draw)])
        self.p_root = _sqrt_psd(p.cov_cluster[np.ix_(self.p_draw, self.p_draw)])
        self.refitter = Refitter(self.hh, self.fit) if settings.method in ("cluster", "score") else None

    @property
    def n_mun(self) -> int:
        return self.hh.n_mun

    # -- one replicate's random numbers, in a fixed order -----------------------------
    def rng(self, r: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.settings.seed, spawn_key=(r,)))

    def parametric_params(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        vp = self.fit.volume.params.copy()
        pp = self.fit.price.params.copy()
        vp[self.v_draw] += self.v_root @ rng.standard_normal(self.v_draw.size)
        pp[self.p_draw] += self.p_root @ rng.standard_normal(self.p_draw.size)
        return vp, pp

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
        with threadpool_limits(limits=1, user_api="blas"):
            return self._run_batch(start, stop)

    def _run_batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        tables, noise = [], []
        for r in range(start, stop):
            rng = self.rng(r)
            if self.settings.method == "parametric":
                vp, pp = self.parametric_params(rng)
                t = (self.fit, vp, pp)
            elif self.settings.method == "score":
                t = (self.score_fit(rng), None, None)
            else:
                t = (self.cluster_fit(rng), None, None)
            tables.append(t)
            noise.append((rng.standard_normal(self.n_mun), rng.standard_normal(self.n_mun)))
        sums = self.cells.sums(tables)
        out = {c: np.empty((stop - start, self.n_mun)) for c in REPLICATE_COLUMNS}
        for i in range(stop - start):
            cost, var = sums[:, 0, i], sums[:, 1, i]
            b = allocate(self.regime, cost, self.hist, self.inhabitants, self.tb)
            z, u = noise[i]
            out["objective_cost"][i] = cost
            out["budget"][i] = b.budget
            out["share"][i] = b.budget / b.budget.sum()
            out["effect_pct"][i] = effects(b.budget, self.spending, self.inhabitants).pct
            out["simulated_spending"][i] = ((cost + np.sqrt(var) * z) *
                                            np.exp(self.between_sd * u * (1.0 - self.rate)))
        return out


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
