"""Numba kernel for many coefficient draws per pass over the households.

For each draw r and municipality g it sums, over the households h of g,

    E = p f N                   (expected cost)
    V = p (1 - p) (f N)^2       (variance of the cost if bijstand is drawn from p)

Tables are stored draw-minor (``v_coef[level, r]``, ``v_nb[neighbourhood, r]``): for one
household the loop over the R draws reads contiguous memory and vectorises without
gathers, and the sums per (municipality, draw) are contiguous too.

Bit-identical replicates whatever the batch: no fast-math flags here, so the vector
lanes and the scalar tail of a loop round identically and draw r gets the same numbers
at any position in any batch; each draw accumulates over fixed row ranges.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.glm import range_bounds
from kernels.vexp import LN2_HI, LN2_LO, LOG2E, SHIFT, X_MAX, X_MIN

@njit(cache=True)
def _exp_lanes(x, out, kd, sb, R):
    """out[:R] = exp(x[:R]) with the algorithm of kernels.vexp, IEEE-exact arithmetic."""
    for r in range(R):
        xc = min(max(x[r], X_MIN), X_MAX)
        kd[r] = xc * LOG2E + SHIFT
    ki = kd.view(np.int64)
    for r in range(R):
        xc = min(max(x[r], X_MIN), X_MAX)
        k = kd[r] - SHIFT
        t = (xc - k * LN2_HI) - k * LN2_LO
        p = 1.0 / 6227020800.0
        p = p * t + 1.0 / 479001600.0
        p = p * t + 1.0 / 39916800.0
        p = p * t + 1.0 / 3628800.0
        p = p * t + 1.0 / 362880.0
        p = p * t + 1.0 / 40320.0
        p = p * t + 1.0 / 5040.0
        p = p * t + 1.0 / 720.0
        p = p * t + 1.0 / 120.0
        p = p * t + 1.0 / 24.0
        p = p * t + 1.0 / 6.0
        p = p * t + 0.5
        p = p * t + 1.0
        p = p * t + 1.0
        out[r] = p
        sb[r] = (ki[r] + 1023) << 52
    scale = sb.view(np.float64)
    for r in range(R):
        v = out[r] * scale[r]
        out[r] = np.inf if x[r] > X_MAX else v


@njit(parallel=True, cache=True)
def draw_sums(codes, nbhd, norm_index, norm_flat, v_off, v_coef, v_nb, p_off, p_coef, p_nb, nb_mun, n_mun,
              n_virtual):
    """(n_mun, 2, R) sums of E and V for R draws; tables draw-minor: v_coef (L, R), v_nb (n_nb, R)."""
    n = nbhd.shape[0]
    R = v_coef.shape[1]
    F = codes.shape[1]
    acc = np.zeros((n_virtual, n_mun, 2, R))
    bounds = range_bounds(n, n_virtual)
    for v in prange(n_virtual):
        xv = np.empty(R)
        xp = np.empty(R)
        ev = np.empty(R)
        ep = np.empty(R)
        kd = np.empty(R)
        sb = np.empty(R, dtype=np.int64)
        for i in range(bounds[v], bounds[v + 1]):
            nb = nbhd[i]
            for r in range(R):
                xv[r] = -v_nb[nb, r]
                xp[r] = -p_nb[nb, r]
            for k in range(F):
                c = np.int64(codes[i, k])
                lv = v_off[k] + c
                lp = p_off[k] + c
                for r in range(R):
                    xv[r] -= v_coef[lv, r]
                    xp[r] -= p_coef[lp, r]
            _exp_lanes(xv, ev, kd, sb, R)
            _exp_lanes(xp, ep, kd, sb, R)
            norm = norm_flat[norm_index[i]]
            g = nb_mun[nb]
            for r in range(R):
                p = 1.0 / (1.0 + ev[r])
                w = norm / (1.0 + ep[r])
                acc[v, g, 0, r] += p * w
                acc[v, g, 1, r] += p * (1.0 - p) * w * w
    out = acc[0].copy()
    for v in range(1, n_virtual):
        out += acc[v]
    return out
