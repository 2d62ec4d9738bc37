"""Refits on households collapsed into cells, and one-step (score) refits: the cluster bootstrap.

A component's (quasi) log-likelihood depends on a household only through its neighbourhood,
its joint factor codes (:data:`engine.model.design.JOINT_GROUPS`), its weight w and its
outcome y, and w (y log p + (1 - y) log(1 - p)) is linear in y. Households that share
neighbourhood and codes (a cell) therefore enter as one row with the sum W of their weights
and their weighted mean outcome: log-likelihood, score and Hessian are the same sums, so a
fit on the cells (:func:`collapse`) has the estimates of the fit on the households (to
rounding: the sums are added in another order). A cell lies in one municipality, so
resampling municipalities with replacement multiplies its weight by the municipality's
multiplicity, and the cells of unpicked municipalities (weight 0, which adds nothing) are
left out of the refit. Only the estimates and the common effect are computed, never the
covariances (:func:`engine.model.fit.fit_component` with ``covariances=False``).

One-step (score) refits (:meth:`Refitter.one_step`): linearising the score around the
full-sample estimate, a resample with municipality multiplicities m_g has

    theta_m = theta_hat + H^-1 sum_g (m_g - 1) s_g

(H minus the Hessian of the full-sample log-likelihood, s_g municipality g's score at
theta_hat: the score bootstrap of Kline and Santos, "A score based approach to wild
bootstrap inference", Journal of Econometric Methods 1, 2012), and the common effect c that
replaces the fixed effects in prediction, which solves sum_h m_h (logistic(eta0_h + c) - y_h) = 0,
moves by

    dc = (sum_g (m_g - 1) r_g - d' dtheta) / sum_h p_h (1 - p_h)

(r_g = sum over g's households of y - p at the common effect, d = sum_h p_h (1 - p_h) x_h over
the terms that enter prediction). Its bands agree with those of full refits up to second-order
terms; a full refit starts from the one-step estimate (a warm start that saves Newton steps).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg as sla

from engine.model.design import ComponentDesign, Households, component_design
from engine.model.fit import common_effect, fit_component, pass_at
from engine.model.fitted import ModelFit


def collapse(d: ComponentDesign) -> ComponentDesign:
    """The design with one row per (neighbourhood, joint codes) cell, ordered by neighbourhood
    then codes: weight the sum of the households' weights (1 each without weights), outcome
    their weighted mean (0 in a cell of weight 0)."""
    sizes = d.layout.joint.sizes
    if (int(d.nbhd.max(initial=0)) + 1) * np.prod(np.asarray(sizes, dtype=float)) < 2.0 ** 62:
        key = d.nbhd.astype(np.int64)          # one int64 key per cell: (neighbourhood, codes) in order
        for k, size in enumerate(sizes):
            key = key * size + d.joint[:, k]
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    else:                                      # many joint groups (a large catalogue): rows, the same order
        rows = np.column_stack([d.nbhd.astype(np.int64), d.joint.astype(np.int64)])
        _, first, inv = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        inv = inv.ravel()
    w = d.weight if d.weight.size else None
    W = np.bincount(inv, weights=w, minlength=first.size).astype(np.float64)
    Y = np.bincount(inv, weights=d.y * w if w is not None else d.y.astype(np.float64), minlength=first.size)
    y = np.divide(Y, W, out=np.zeros_like(Y), where=W > 0)
    return replace(d, codes=np.ascontiguousarray(d.codes[first]), joint=np.ascontiguousarray(d.joint[first]),
                   nbhd=np.ascontiguousarray(d.nbhd[first]), y=y, weight=W)


@dataclass(frozen=True)
class _Step:
    """What a one-step refit of one component needs (active parameters only)."""

    act: np.ndarray      # indices of the active (finite) parameters
    gain: np.ndarray     # (len(act), G) H^-1 S': theta change per unit of municipality multiplicity
    r_mun: np.ndarray    # (G,) sum of y - p per municipality at the common effect (volume), else empty
    d_pred: np.ndarray   # (K,) sum of p (1 - p) x over the terms that enter prediction (volume)
    d_c: float           # sum of p (1 - p)


class Refitter:
    """Both components of ``fit`` refitted on resamples of municipalities (cells built once)."""

    def __init__(self, hh: Households, fit: ModelFit):
        self.fit = fit
        self.mun_codes = hh.mun_codes
        self.designs, self.bounds = [], []
        for comp in (fit.spec.volume, fit.spec.price):
            d = collapse(component_design(hh, comp, fit.norms))
            mun = d.nb_mun[d.nbhd]
            order = np.argsort(mun, kind="stable")         # cells by municipality: a resample is slices
            d = replace(d, codes=d.codes[order], joint=d.joint[order], nbhd=d.nbhd[order], y=d.y[order],
                        weight=d.weight[order])
            self.designs.append((d, mun[order]))
            self.bounds.append(np.searchsorted(mun[order], np.arange(hh.n_mun + 1)))
        self.sums = [self._municipal_sums(d, mun) for d, mun in self.designs]
        self._steps = None

    @staticmethod
    def _municipal_sums(d: ComponentDesign, mun: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per municipality the sums of weight and of weight x outcome per factor level (G, L) and
        in all (G,): a resample's sample sums are these weighted by the multiplicities."""
        G = d.nb_mun.max() + 1
        wy = d.weight * d.y
        per = [[], []]
        for k, size in enumerate(d.layout.joint.sizes):
            key = mun.astype(np.int64) * size + d.joint[:, k]
            for out, w in zip(per, (d.weight, wy)):
                out.append(np.bincount(key, weights=w, minlength=G * size).reshape(G, size))
        M = d.layout.joint_map()
        return ((M.T @ np.hstack(per[0]).T).T, (M.T @ np.hstack(per[1]).T).T,
                np.bincount(mun, weights=d.weight, minlength=G), np.bincount(mun, weights=wy, minlength=G))

    def _resampled(self, k: int, mult: np.ndarray) -> ComponentDesign:
        """The cells of the picked municipalities, weights times the multiplicities."""
        d, _ = self.designs[k]
        b = self.bounds[k]
        picked = np.flatnonzero(mult > 0)
        parts = [slice(b[g], b[g + 1]) for g in picked]
        cat = lambda a: np.ascontiguousarray(np.concatenate([a[p] for p in parts]))  # noqa: E731
        times = np.repeat(mult[picked], b[picked + 1] - b[picked])
        return replace(d, codes=cat(d.codes), joint=cat(d.joint), nbhd=cat(d.nbhd), y=cat(d.y),
                       weight=cat(d.weight) * times)

    def _reference_shift(self, k: int, comp, mult: np.ndarray) -> tuple[np.ndarray, float]:
        """Start values with the fixed effects relative to the resample's reference municipality
        (the first picked one with variation; see :func:`engine.model.fit._separation_checks`),
        and the common effect moved to match."""
        params = comp.params.copy()
        lay = self.designs[k][0].layout
        if lay.fe_start < 0:
            return params, comp.fe_common
        gone = np.isin(self.mun_codes, np.asarray(comp.dropped_municipalities, dtype=object)) | (mult <= 0)
        ref = int(np.argmax(~gone))
        shift = float(np.nan_to_num(params[lay.fe_start + ref - 1])) if ref > 0 else 0.0
        params[0] += shift
        params[lay.fe_start:] -= shift
        return params, comp.fe_common - shift

    def refit(self, mult: np.ndarray, start: ModelFit | None = None, tol: float = 1e-8) -> ModelFit:
        """Full refit of both components with municipality multiplicities ``mult`` (G,), from
        ``start`` (default: the one-step estimate)."""
        start = self.one_step(mult) if start is None else start
        comps = []
        for k, name in enumerate(("volume", "price")):
            d = self._resampled(k, mult)
            params, c0 = self._reference_shift(k, start.component(name), mult)
            w_lev, y_lev, w_m, y_m = self.sums[k]
            sums = (mult @ w_lev, mult @ y_lev, mult * w_m, mult * y_m)
            f = fit_component(d, tol=tol, mun_codes=self.mun_codes, start=params, covariances=False, common=False,
                              sums=sums)
            comps.append(replace(f, fe_common=common_effect(d, f.params, c0)) if d.layout.fe_start >= 0 else f)
        return replace(self.fit, volume=comps[0], price=comps[1], mun_codes=self.mun_codes)

    def steps(self) -> list[_Step]:
        """The one-step parts of both components at the full-sample estimate (two passes each, once)."""
        if self._steps is None:
            self._steps = [self._step(k, name) for k, name in enumerate(("volume", "price"))]
        return self._steps

    def _step(self, k: int, name: str) -> _Step:
        d, mun = self.designs[k]
        comp = self.fit.component(name)
        lay = d.layout
        theta = np.nan_to_num(comp.params)
        dropped = np.isin(self.mun_codes, np.asarray(comp.dropped_municipalities, dtype=object))
        kept = replace(d, weight=d.weight * ~dropped[mun])     # as in the fit: dropped municipalities left out
        st, S = pass_at(kept, theta, clusters=True)
        act = np.flatnonzero(np.isfinite(comp.params))
        c = sla.cho_factor(st.H[np.ix_(act, act)], lower=True)
        gain = sla.cho_solve(c, S[:, act].T)
        if lay.fe_start < 0:
            return _Step(act=act, gain=gain, r_mun=np.zeros(0), d_pred=np.zeros(0), d_c=1.0)
        # the common effect: eta0 + c on every household of the design (the fixed effects replaced)
        common = theta.copy()
        common[0] += comp.fe_common
        common[lay.fe_start:] = 0.0
        st0, S0 = pass_at(d, common, clusters=True)
        d_pred = st0.H[0].copy()
        d_pred[lay.fe_start:] = 0.0
        return _Step(act=act, gain=gain, r_mun=S0[:, 0], d_pred=d_pred, d_c=float(st0.H[0, 0]))

    def one_step(self, mult: np.ndarray) -> ModelFit:
        """The one-step estimates of both components for multiplicities ``mult`` (G,)."""
        dm = np.asarray(mult, dtype=np.float64) - 1.0
        comps = []
        for s, name in zip(self.steps(), ("volume", "price")):
            comp = self.fit.component(name)
            params = comp.params.copy()
            delta = s.gain @ dm
            params[s.act] += delta
            fe_common = comp.fe_common
            if s.r_mun.size:
                full = np.zeros_like(params)
                full[s.act] = delta
                fe_common += (float(s.r_mun @ dm) - float(s.d_pred @ full)) / s.d_c
            comps.append(replace(comp, params=params, fe_common=fe_common))
        return replace(self.fit, volume=comps[0], price=comps[1])
