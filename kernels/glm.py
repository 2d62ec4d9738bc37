"""Numba kernels for the factor-coded logit and fractional logit.

The design of a component is factor-coded (engine.model.design): per row a few joint
codes of the household factors (engine.model.design.JOINT_GROUPS) and a neighbourhood index.
Every non-factor term (intercept, continuous neighbourhood factors, municipality fixed
effect) depends only on the neighbourhood, so the linear predictor is

    eta_i = nb_eta[nbhd_i] + sum_k j_coef[j_off_k + joint[i, k]]

and the Hessian X'WX is assembled (engine.model.fit) from sufficient statistics of one pass:
sums of w per neighbourhood, per (municipality, slot), per (continuous column, slot) and
per pair of slots, a slot being a parameter of a factor level; a sparse 0/1 map takes
joint codes to their slots.

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


@njit(cache=True, inline="always")
def row_slots(joint, i, j_off, j_coef, slot_ptr, slot_idx, eta, act):
    """Row i's linear predictor (``eta`` its neighbourhood's part plus its joint codes'
    look-ups) and its slots, written to ``act``: returns (eta, number of slots)."""
    na = 0
    for k in range(joint.shape[1]):
        jc = j_off[k] + np.int64(joint[i, k])
        eta += j_coef[jc]
        for u in range(slot_ptr[jc], slot_ptr[jc + 1]):
            act[na] = slot_idx[u]
            na += 1
    return eta, na


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def logit_pass(joint, j_off, j_coef, slot_ptr, slot_idx, n_slot, nbhd, nb_eta, n_nb, nb_cont, nb_mun, n_mun, y, wt,
               mode, clusters, n_virtual):
    """One pass over the rows at the current coefficients, on joint codes (m, J).

    mode 0: w = wt * p (1 - p)        (Hessian of the (quasi) log-likelihood)
    mode 1: w = (wt * (y - p))^2      (meat of the HC sandwich)
    Always r = wt * (y - p) for the score, and the log-likelihood. ``wt`` of length 0
    means unit weights. With ``clusters`` the score is also summed per (municipality, slot).

    The factor-level sums are taken per parameter slot: joint code ``j = j_off[k] + c`` carries
    the slots ``slot_idx[slot_ptr[j]:slot_ptr[j + 1]]`` (the non-reference levels of its factors,
    each a slot in 0..n_slot-1; a row has each slot at most once). Per row the linear predictor
    is the sum of look-ups by joint code, and w is added to every pair of the row's slots (a few
    dozen additions into an (S, S) table that stays in cache; pair histograms of joint codes would
    be far larger than the Hessian block they make up when dozens of indicators fill many joint
    codes). Sums per (municipality, slot) and (continuous column, slot) are gathered per run of
    rows of one neighbourhood (rows sorted by neighbourhood make these runs long; any order gives
    the same sums up to rounding).

    Returns ll, g_s (S,), g_nb (n_nb,), a_nb (n_nb,), a_ms (n_mun, S), a_xs (C, S), a_ss (S, S) sums of
    w per pair of slots (symmetric; the diagonal the sums of w per slot), s_ms (n_mun or 1, S).
    """
    n = nbhd.shape[0]
    S = n_slot
    C = nb_cont.shape[1]
    V = n_virtual
    ll_v = np.zeros(V)
    g_nb_v = np.zeros((V, n_nb))
    a_nb_v = np.zeros((V, n_nb))
    a_ms_v = np.zeros((V, n_mun, S))
    g_ms_v = np.zeros((V, n_mun, S))
    a_xs_v = np.zeros((V, C, S))
    a_ss_v = np.zeros((V, S, S))
    bounds = range_bounds(n, V)
    has_wt = wt.shape[0] > 0
    for v in prange(V):
        act = np.empty(S, dtype=np.int64)
        acc_w = np.zeros(S)
        acc_r = np.zeros(S)
        a_ss = a_ss_v[v]
        ll = 0.0
        cur = -1
        for i in range(bounds[v], bounds[v + 1] + 1):
            nb = nbhd[i] if i < bounds[v + 1] else -1
            if nb != cur:
                if cur >= 0:                      # flush the run of neighbourhood cur
                    g = nb_mun[cur]
                    for s in range(S):
                        a_ms_v[v, g, s] += acc_w[s]
                        g_ms_v[v, g, s] += acc_r[s]
                        for c in range(C):
                            a_xs_v[v, c, s] += acc_w[s] * nb_cont[cur, c]
                        acc_w[s] = 0.0
                        acc_r[s] = 0.0
                cur = nb
            if nb < 0:
                break
            eta, na = row_slots(joint, i, j_off, j_coef, slot_ptr, slot_idx, nb_eta[nb], act)
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
            for a in range(na):
                sa = act[a]
                acc_w[sa] += w
                acc_r[sa] += r
                for b in range(a + 1, na):
                    a_ss[sa, act[b]] += w
        ll_v[v] = ll
    ll = 0.0
    for v in range(V):
        ll += ll_v[v]
    a_ms = reduce_ranges(a_ms_v)
    g_ms = reduce_ranges(g_ms_v)
    a_ss = reduce_ranges(a_ss_v)
    full = a_ss + a_ss.T                          # pairs were added in either orientation
    diag = a_ms.sum(axis=0)
    for s in range(S):
        full[s, s] = diag[s]
    s_ms = g_ms if clusters else np.zeros((1, S))
    return (ll, g_ms.sum(axis=0), reduce_ranges(g_nb_v), reduce_ranges(a_nb_v), a_ms, reduce_ranges(a_xs_v), full,
            s_ms)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def cluster_hessian_sums(joint, j_off, j_coef, slot_ptr, slot_idx, n_slot, nbhd, nb_eta, nb_cont, wt, order, starts):
    """Each municipality's Hessian of the (quasi) log-likelihood, from one pass over its rows.

    Municipality g has the rows ``order[starts[g]:starts[g + 1]]`` (``order`` of length 0: the
    rows ``starts[g]:starts[g + 1]`` themselves). With w = wt p (1 - p) (``wt`` of length 0: unit
    weights) and the row's local terms x = (1, nb_cont[nbhd], its slots' indicators), returns
    (G, L + 1, L + 1) sums of w x x', L = 1 + C + S: the intercept, the continuous neighbourhood
    columns, the slots (:func:`logit_pass`) and last the municipality's own fixed effect (a
    copy of the intercept's row and column). One municipality per task, its rows in order: no
    shared accumulators, the same sums for any number of threads.
    """
    G = starts.shape[0] - 1
    C = nb_cont.shape[1]
    S = n_slot
    D = 1 + C
    out = np.zeros((G, D + S + 1, D + S + 1))
    has_wt = wt.shape[0] > 0
    direct = order.shape[0] == 0
    for g in prange(G):
        H = out[g]
        act = np.empty(S, dtype=np.int64)
        acc = np.zeros(S)
        x = np.empty(D)
        run = 0.0
        cur = -1
        for t in range(starts[g], starts[g + 1] + 1):
            i = -1
            nb = -1
            if t < starts[g + 1]:
                i = t if direct else order[t]
                nb = nbhd[i]
            if nb != cur:
                if cur >= 0:                      # flush the run of neighbourhood cur
                    x[0] = 1.0
                    for c in range(C):
                        x[1 + c] = nb_cont[cur, c]
                    for a in range(D):
                        for b in range(D):
                            H[a, b] += run * x[a] * x[b]
                    for s in range(S):
                        if acc[s] != 0.0:
                            H[D + s, D + s] += acc[s]
                            for a in range(D):
                                H[a, D + s] += acc[s] * x[a]
                            acc[s] = 0.0
                    run = 0.0
                cur = nb
            if nb < 0:
                break
            eta, na = row_slots(joint, i, j_off, j_coef, slot_ptr, slot_idx, nb_eta[nb], act)
            p, logp, log1mp = log_sigmoid_pair(eta)
            w = (wt[i] if has_wt else 1.0) * p * (1.0 - p)
            run += w
            for a in range(na):
                sa = D + act[a]
                acc[act[a]] += w
                for b in range(a + 1, na):
                    H[sa, D + act[b]] += w
        for a in range(D + S):                    # slot pairs were added in either orientation
            for b in range(a + 1, D + S):
                v = H[a, b] + H[b, a] if a >= D else H[a, b]
                H[a, b] = v
                H[b, a] = v
        for a in range(D + S + 1):                # the own fixed effect: the intercept's row again
            H[a, D + S] = H[a, 0]
            H[D + S, a] = H[a, 0]
    return out


@njit(parallel=True, cache=True)
def sample_sums(joint, j_off, n_joint, nbhd, nb_mun, n_mun, y, wt, n_virtual):
    """Sums of the weight and of weight x outcome per joint code (2, n_joint) and per
    municipality (2, n_mun), over fixed row ranges reduced in order (``wt`` of length 0:
    unit weights)."""
    n = nbhd.shape[0]
    V = n_virtual
    acc_j = np.zeros((V, 2, n_joint))
    acc_m = np.zeros((V, 2, n_mun))
    bounds = range_bounds(n, V)
    has_wt = wt.shape[0] > 0
    for v in prange(V):
        for i in range(bounds[v], bounds[v + 1]):
            w = wt[i] if has_wt else 1.0
            wy = w * y[i]
            for k in range(joint.shape[1]):
                jc = j_off[k] + np.int64(joint[i, k])
                acc_j[v, 0, jc] += w
                acc_j[v, 1, jc] += wy
            g = nb_mun[nbhd[i]]
            acc_m[v, 0, g] += w
            acc_m[v, 1, g] += wy
    return reduce_ranges(acc_j), reduce_ranges(acc_m)


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
