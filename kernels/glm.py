"""Numba kernels for the factor-coded logit and fractional logit.

The design of a component is factor-coded (DESIGN.md, section 2): per row a small code
for each of F factors (columns ``cols`` of ``codes``) and a neighbourhood index. Every
non-factor term (intercept, continuous neighbourhood factors, municipality fixed effect)
depends only on the neighbourhood, so the linear predictor is

    eta_i = nb_eta[nbhd_i] + sum_k level_coef[lev_off_k + codes[i, cols_k]]

and the Hessian X'WX is assembled from sufficient statistics accumulated in one pass:

- ``a_nb[j]``          sum of w over rows in neighbourhood j
- ``a_nbl[j, l]``      sum of w over rows in neighbourhood j with factor level l
- ``a_pair[...]``      sum of w over rows with level i of factor a and level j of factor b (a < b)

Rows are split into ``n_virtual`` (kernels.config.N_VIRTUAL) fixed contiguous ranges, each with its own
accumulators, reduced in range order after the parallel loop: no shared scatter-adds
and results that do not depend on the number of threads (DESIGN.md, section 6).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.config import FASTMATH


@njit(cache=True, inline="always")
def log_sigmoid_pair(eta):
    """(p, log p, log(1 - p)) for p = logistic(eta), stable for large |eta|."""
    e = np.exp(-abs(eta))
    l1 = np.log1p(e)
    if eta >= 0.0:
        return 1.0 / (1.0 + e), -l1, -eta - l1
    return e / (1.0 + e), eta - l1, -l1


@njit(cache=True)
def range_bounds(n, n_virtual):
    """Start of each of ``n_virtual`` contiguous row ranges (length n_virtual + 1)."""
    b = np.empty(n_virtual + 1, dtype=np.int64)
    for v in range(n_virtual + 1):
        b[v] = (n * v) // n_virtual
    return b


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def logit_pass(codes, cols, lev_off, n_lev, level_coef, nbhd, nb_eta, n_nb, y, wt, mode,
               cluster_of_nb, n_clusters, pair_off, n_pair, n_virtual):
    """One pass over the rows at the current coefficients.

    mode 0: w = wt * p (1 - p)        (Hessian of the (quasi) log-likelihood)
    mode 1: w = (wt * (y - p))^2      (meat of the HC sandwich)
    Always: r = wt * (y - p) for the score, and the log-likelihood.
    ``wt`` of length 0 means unit weights. With ``n_clusters`` > 0 the score is also
    summed per (cluster, level), clusters given per neighbourhood.

    Returns ll, g_lev (L,), g_nb (n_nb,), a_nb (n_nb,), a_nbl (n_nb, L), a_pair (n_pair,),
    s_cl (max(n_clusters, 1), L).
    """
    n = nbhd.shape[0]
    F = cols.shape[0]
    L = level_coef.shape[0]
    V = n_virtual
    nc = max(n_clusters, 1)
    ll_v = np.zeros(V)
    g_lev_v = np.zeros((V, L))
    g_nb_v = np.zeros((V, n_nb))
    a_nb_v = np.zeros((V, n_nb))
    a_nbl_v = np.zeros((V, n_nb, L))
    a_pair_v = np.zeros((V, max(n_pair, 1)))
    s_cl_v = np.zeros((V, nc, L))
    bounds = range_bounds(n, V)
    has_wt = wt.shape[0] > 0
    for v in prange(V):
        idx = np.empty(F, dtype=np.int64)
        lvl = np.empty(F, dtype=np.int64)
        ll = 0.0
        for i in range(bounds[v], bounds[v + 1]):
            nb = nbhd[i]
            eta = nb_eta[nb]
            for k in range(F):
                c = np.int64(codes[i, cols[k]])
                lvl[k] = c
                idx[k] = lev_off[k] + c
                eta += level_coef[idx[k]]
            p, logp, log1mp = log_sigmoid_pair(eta)
            wi = wt[i] if has_wt else 1.0
            yi = y[i]
            r = wi * (yi - p)
            if mode == 0:
                w = wi * p * (1.0 - p)
            else:
                w = r * r
            ll += wi * (yi * logp + (1.0 - yi) * log1mp)
            a_nb_v[v, nb] += w
            g_nb_v[v, nb] += r
            for k in range(F):
                a_nbl_v[v, nb, idx[k]] += w
                g_lev_v[v, idx[k]] += r
            if n_clusters > 0:
                cl = cluster_of_nb[nb]
                for k in range(F):
                    s_cl_v[v, cl, idx[k]] += r
            for a in range(F):
                for b in range(a + 1, F):
                    a_pair_v[v, pair_off[a * F + b] + lvl[a] * n_lev[b] + lvl[b]] += w
        ll_v[v] = ll
    # reduce the virtual ranges in a fixed order
    ll = 0.0
    for v in range(V):
        ll += ll_v[v]
    return (ll, _reduce(g_lev_v), _reduce(g_nb_v), _reduce(a_nb_v), _reduce(a_nbl_v),
            _reduce(a_pair_v), _reduce(s_cl_v))


@njit(cache=True)
def _reduce(x):
    out = x[0].copy()
    for v in range(1, x.shape[0]):
        out += x[v]
    return out


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def linear_predictor(codes, cols, lev_off, level_coef, nbhd, nb_eta):
    """eta per row (float64): the sum of look-ups."""
    n = nbhd.shape[0]
    F = cols.shape[0]
    out = np.empty(n)
    for i in prange(n):
        eta = nb_eta[nbhd[i]]
        for k in range(F):
            eta += level_coef[lev_off[k] + np.int64(codes[i, cols[k]])]
        out[i] = eta
    return out
