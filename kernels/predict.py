"""Numba kernels for prediction: p, f, N and E = p f N per household, summed per group.

Per household h: p = logistic(volume eta), f = logistic(price eta), N = norm_flat[norm_index],
each eta a sum of look-ups (see kernels.glm); ``codes`` are usually the joint codes of
engine.model.predict.PredictionDesign, whose first column starts with the household type.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.config import FASTMATH
from kernels.glm import range_bounds, reduce_ranges


BLOCK = 512


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _eta(codes, i, cols, lev_off, level_coef, nb_eta, nb):
    eta = nb_eta[nb]
    for k in range(cols.shape[0]):
        eta += level_coef[lev_off[k] + np.int64(codes[i, cols[k]])]
    return eta


@njit(cache=True)
def pair_tables(cols, lev_off, level_coef, code_sizes):
    """One component's look-ups merged two codes at a time: consecutive entries of ``cols``
    (a, b) become one table of code_sizes[b] * code_sizes[a] sums level_coef[off_a + x] +
    level_coef[off_b + y] at x * code_sizes[b] + y (an odd last code keeps its own table).

    Returns (first, second, width, offset, table): per pair the two code columns, the width
    (code_sizes of the second, 0 for a single code) and the offset of its table. Halves the
    look-ups per household; with uint8 codes a pair table has at most 65,536 entries (the
    realistic volume component: 160,680 entries, 1.3 MB, kept in L2)."""
    n_pair = (cols.shape[0] + 1) // 2
    first = np.empty(n_pair, dtype=np.int64)
    second = np.empty(n_pair, dtype=np.int64)
    width = np.zeros(n_pair, dtype=np.int64)
    offset = np.empty(n_pair + 1, dtype=np.int64)
    offset[0] = 0
    for q in range(n_pair):
        a = cols[2 * q]
        first[q] = a
        second[q] = a
        size = code_sizes[a]
        if 2 * q + 1 < cols.shape[0]:
            second[q] = cols[2 * q + 1]
            width[q] = code_sizes[second[q]]
            size *= width[q]
        offset[q + 1] = offset[q] + size
    table = np.empty(offset[n_pair])
    for q in range(n_pair):
        oa = lev_off[2 * q]
        if width[q] == 0:
            for x in range(code_sizes[first[q]]):
                table[offset[q] + x] = level_coef[oa + x]
        else:
            ob = lev_off[2 * q + 1]
            for x in range(code_sizes[first[q]]):
                for y in range(width[q]):
                    table[offset[q] + x * width[q] + y] = level_coef[oa + x] + level_coef[ob + y]
    return first, second, width, offset, table


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _exp_neg_eta_pairs(codes, nbhd, lo, m, first, second, width, offset, etable, enb, out):
    """out[:m] = exp(-eta) of rows lo .. lo+m-1, the product of the pre-exponentiated pair
    tables (``etable = exp(-table)`` of :func:`pair_tables`, ``enb = exp(-nb_eta)``)."""
    for j in range(m):
        out[j] = enb[nbhd[lo + j]]
    for q in range(first.shape[0]):
        o = offset[q]
        a = first[q]
        b = second[q]
        wd = width[q]
        if wd == 0:
            for j in range(m):
                out[j] *= etable[o + np.int64(codes[lo + j, a])]
        else:
            for j in range(m):
                out[j] *= etable[o + np.int64(codes[lo + j, a]) * wd + np.int64(codes[lo + j, b])]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def group_sums(codes, nbhd, norm_index, norm_flat, v_cols, v_off, v_coef, v_nb, p_cols, p_off, p_coef, p_nb,
               group, y, code_sizes, n_groups, n_virtual):
    """Sums per group of p, p*f, p*N and p*f*N, the number of households, the sum of the
    observed outcome ``y`` (0/1 per row), p(1-p)*f*N (the slope of p*f*N in the volume's
    log-odds) and p(1-p)*(f*N)^2 (the variance of the cost when bijstand is drawn from p):
    array (n_groups, 8). 1 - p is taken as exp(-eta) p where p > 1/2 (no cancellation near p = 1) and as
    1 - p elsewhere (exp(-eta) is infinite where a coefficient is -inf and p = 0).

    ``group[h]``: the group of each row (engine.model.predict.PredictionDesign.group:
    municipality * n_types + household type, stored once per population, so the pass does
    not re-derive it from neighbourhood and codes). ``code_sizes[c]``: number of values of
    code column c (the joint sizes).

    The codes a component reads are looked up two at a time (:func:`pair_tables`), and the
    tables are exponentiated once per call: ``exp(-eta)`` of a household is the product of
    its entries of ``exp(-table)`` and ``exp(-nb_eta)``, so the pass has no exp at all
    (p = 1 / (1 + exp(-eta))). Equal to the sum-then-exp of :func:`household_values` to
    rounding (a few ulp), and the same bits whatever the number of threads. Rows are taken
    in blocks of BLOCK: the products of a block first, then p and p f, then the sums.
    """
    n = nbhd.shape[0]
    va, vb, vw, vo, vt = pair_tables(v_cols, v_off, v_coef, code_sizes)
    pa, pb, pw, po, pt = pair_tables(p_cols, p_off, p_coef, code_sizes)
    vt, pt, v_enb, p_enb = np.exp(-vt), np.exp(-pt), np.exp(-v_nb), np.exp(-p_nb)
    acc = np.zeros((n_virtual, n_groups, 8))
    bounds = range_bounds(n, n_virtual)
    for v in prange(n_virtual):
        ev = np.empty(BLOCK)
        ep = np.empty(BLOCK)
        eq = np.empty(BLOCK)
        ef = np.empty(BLOCK)
        for lo in range(bounds[v], bounds[v + 1], BLOCK):
            m = min(BLOCK, bounds[v + 1] - lo)
            _exp_neg_eta_pairs(codes, nbhd, lo, m, va, vb, vw, vo, vt, v_enb, ev)
            _exp_neg_eta_pairs(codes, nbhd, lo, m, pa, pb, pw, po, pt, p_enb, ep)
            for j in range(m):  # vectorises: p into ev, p f into ep, 1 - p into eq, f into ef
                p = 1.0 / (1.0 + ev[j])
                eq[j] = ev[j] * p if ev[j] < 1.0 else 1.0 - p
                ev[j] = p
                ef[j] = 1.0 / (1.0 + ep[j])
                ep[j] = p / (1.0 + ep[j])
            for j in range(m):
                i = lo + j
                p = ev[j]
                pf = ep[j]
                norm = norm_flat[norm_index[i]]
                g = np.int64(group[i])
                slope = pf * eq[j] * norm
                acc[v, g, 0] += p
                acc[v, g, 1] += pf
                acc[v, g, 2] += p * norm
                acc[v, g, 3] += pf * norm
                acc[v, g, 4] += 1.0
                acc[v, g, 5] += y[i]
                acc[v, g, 6] += slope
                acc[v, g, 7] += slope * ef[j] * norm
    return reduce_ranges(acc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def household_values(codes, nbhd, norm_index, norm_flat, v_cols, v_off, v_coef, v_nb, p_cols, p_off, p_coef, p_nb):
    """Per household p, f and N: array (3, n)."""
    n = nbhd.shape[0]
    out = np.empty((3, n))
    for i in prange(n):
        nb = nbhd[i]
        out[0, i] = 1.0 / (1.0 + np.exp(-_eta(codes, i, v_cols, v_off, v_coef, v_nb, nb)))
        out[1, i] = 1.0 / (1.0 + np.exp(-_eta(codes, i, p_cols, p_off, p_coef, p_nb, nb)))
        out[2, i] = norm_flat[norm_index[i]]
    return out


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def weight_level_sums(combo, nbhd, v_cols, v_off, v_coef, v_nb, codes, cols, lev_off, n_levels, n_nb, n_virtual):
    """Sums of the volume logit's weight w = p (1 - p) per factor level (``lev_off[k] +
    codes[i, cols[k]]``, (n_levels,)) and per neighbourhood ((n_nb,)), with p from the
    prediction tables (``v_*`` as in :func:`household_values`), over fixed row ranges
    reduced in order."""
    n = nbhd.shape[0]
    F = cols.shape[0]
    acc_l = np.zeros((n_virtual, n_levels))
    acc_n = np.zeros((n_virtual, n_nb))
    bounds = range_bounds(n, n_virtual)
    for v in prange(n_virtual):
        for i in range(bounds[v], bounds[v + 1]):
            nb = nbhd[i]
            p = 1.0 / (1.0 + np.exp(-_eta(combo, i, v_cols, v_off, v_coef, v_nb, nb)))
            w = p * (1.0 - p)
            for k in range(F):
                acc_l[v, lev_off[k] + np.int64(codes[i, cols[k]])] += w
            acc_n[v, nb] += w
    return reduce_ranges(acc_l), reduce_ranges(acc_n)
