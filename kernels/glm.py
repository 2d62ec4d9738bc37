"""Numba kernels for the factor-coded logit and fractional logit.

The design of a component is factor-coded (engine.model.design): per row a few joint
codes of the household factors (engine.model.design.JOINT_GROUPS) and a neighbourhood index.
Every non-factor term (intercept, continuous neighbourhood factors, municipality fixed
effect) depends only on the neighbourhood, so the linear predictor is

    eta_i = nb_eta[nbhd_i] + sum_k j_coef[j_off_k + joint[i, k]]

and the Hessian X'WX is assembled (engine.model.fit) from sufficient statistics of one pass:
sums of w per neighbourhood, per (municipality, joint code), per (continuous column,
joint code) and per pair of joint codes; a sparse 0/1 map takes joint codes to levels.

Rows are split into ``n_virtual`` (kernels.config.N_VIRTUAL) fixed contiguous ranges, each with its own
accumulators, reduced in range order after the parallel loop: no shared scatter-adds
and results that do not depend on the number of threads.
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


@njit(cache=True, inline="always")
def loglik_term(y, logp, log1mp):
    """y log p + (1 - y) log(1 - p), with 0 (not NaN) for a term whose weight is 0, so a
    probability of exactly 0 or 1 (an infinite linear predictor) never turns ll into NaN."""
    ll = 0.0
    if y > 0.0:
        ll += y * logp
    if y < 1.0:
        ll += (1.0 - y) * log1mp
    return ll


@njit(cache=True)
def range_bounds(n, n_virtual):
    """Start of each of ``n_virtual`` contiguous row ranges (length n_virtual + 1)."""
    b = np.empty(n_virtual + 1, dtype=np.int64)
    for v in range(n_virtual + 1):
        b[v] = (n * v) // n_virtual
    return b


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def logit_pass(joint, j_off, j_size, j_coef, nbhd, nb_eta, n_nb, nb_cont, nb_mun, n_mun, y, wt, mode, clusters,
               pair_off, n_pair, n_virtual):
    """One pass over the rows at the current coefficients, on joint codes (m, J).

    mode 0: w = wt * p (1 - p)        (Hessian of the (quasi) log-likelihood)
    mode 1: w = (wt * (y - p))^2      (meat of the HC sandwich)
    Always r = wt * (y - p) for the score, and the log-likelihood. ``wt`` of length 0
    means unit weights. With ``clusters`` the score is also summed per (municipality, code).

    Returns ll, g_j (Lj,), g_nb (n_nb,), a_nb (n_nb,), a_mj (n_mun, Lj) sums of w per
    municipality and joint code, a_xj (n_cont, Lj) sums of w x per continuous column and
    joint code, a_pair (n_pair,) sums of w per pair of joint codes of different groups,
    s_mj (n_mun or 1, Lj).
    """
    n = nbhd.shape[0]
    J = joint.shape[1]
    L = j_coef.shape[0]
    C = nb_cont.shape[1]
    V = n_virtual
    ll_v = np.zeros(V)
    g_v = np.zeros((V, L))
    g_nb_v = np.zeros((V, n_nb))
    a_nb_v = np.zeros((V, n_nb))
    a_mj_v = np.zeros((V, n_mun, L))
    a_xj_v = np.zeros((V, C, L))
    a_pair_v = np.zeros((V, max(n_pair, 1)))
    s_mj_v = np.zeros((V, n_mun if clusters else 1, L))
    bounds = range_bounds(n, V)
    has_wt = wt.shape[0] > 0
    for v in prange(V):
        idx = np.empty(J, dtype=np.int64)
        lvl = np.empty(J, dtype=np.int64)
        ll = 0.0
        for i in range(bounds[v], bounds[v + 1]):
            nb = nbhd[i]
            g = nb_mun[nb]
            eta = nb_eta[nb]
            for k in range(J):
                c = np.int64(joint[i, k])
                lvl[k] = c
                idx[k] = j_off[k] + c
                eta += j_coef[idx[k]]
            p, logp, log1mp = log_sigmoid_pair(eta)
            wi = wt[i] if has_wt else 1.0
            yi = y[i]
            r = wi * (yi - p)
            if mode == 0:
                w = wi * p * (1.0 - p)
            else:
                w = r * r
            ll += wi * loglik_term(yi, logp, log1mp)
            a_nb_v[v, nb] += w
            g_nb_v[v, nb] += r
            for k in range(J):
                a_mj_v[v, g, idx[k]] += w
                g_v[v, idx[k]] += r
                for c in range(C):
                    a_xj_v[v, c, idx[k]] += w * nb_cont[nb, c]
                if clusters:
                    s_mj_v[v, g, idx[k]] += r
            for a in range(J):
                for b in range(a + 1, J):
                    a_pair_v[v, pair_off[a * J + b] + lvl[a] * j_size[b] + lvl[b]] += w
        ll_v[v] = ll
    # reduce the virtual ranges in a fixed order
    ll = 0.0
    for v in range(V):
        ll += ll_v[v]
    return (ll, reduce_ranges(g_v), reduce_ranges(g_nb_v), reduce_ranges(a_nb_v), reduce_ranges(a_mj_v),
            reduce_ranges(a_xj_v), reduce_ranges(a_pair_v), reduce_ranges(s_mj_v))


@njit(cache=True)
def reduce_ranges(x):
    """Sum over the first axis (the virtual row ranges) in range order."""
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


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def common_shift(joint, j_off, j_coef, nbhd, nb_eta, wt, target, n_virtual, c0=0.0, tol=1e-10, max_iter=50,
                 max_step=1.0):
    """The shift c with sum_i wt_i logistic(eta_i + c) = target, eta_i = nb_eta[nbhd_i] +
    sum_k j_coef[j_off_k + joint[i, k]] (Newton on c from c0, steps clipped to [-max_step, max_step]; stops
    when the remaining difference is below ``tol`` x max(target, 1)); sums over the fixed row ranges."""
    n = nbhd.shape[0]
    J = joint.shape[1]
    V = n_virtual
    bounds = range_bounds(n, V)
    eta = np.empty(n)
    for v in prange(V):
        for i in range(bounds[v], bounds[v + 1]):
            e = nb_eta[nbhd[i]]
            for k in range(J):
                e += j_coef[j_off[k] + np.int64(joint[i, k])]
            eta[i] = e
    f_v = np.zeros(V)
    d_v = np.zeros(V)
    c = c0
    for _ in range(max_iter):
        for v in prange(V):
            f = 0.0
            dd = 0.0
            for i in range(bounds[v], bounds[v + 1]):
                p = 1.0 / (1.0 + np.exp(-(eta[i] + c)))
                f += wt[i] * p
                dd += wt[i] * p * (1.0 - p)
            f_v[v] = f
            d_v[v] = dd
        f = -target
        dd = 0.0
        for v in range(V):
            f += f_v[v]
            dd += d_v[v]
        c -= min(max(f / max(dd, 1e-300), -max_step), max_step)   # bounded Newton steps: no overshoot from afar
        if abs(f) < tol * max(target, 1.0):
            break
    return c
