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
from kernels.vexp import block_scratch, exp_block


BLOCK = 512


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _eta(codes, i, cols, lev_off, level_coef, nb_eta, nb):
    eta = nb_eta[nb]
    for k in range(cols.shape[0]):
        eta += level_coef[lev_off[k] + np.int64(codes[i, cols[k]])]
    return eta


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _neg_eta_block(codes, nbhd, lo, m, cols, lev_off, level_coef, nb_eta, out):
    """out[:m] = -eta of rows lo .. lo+m-1 (factor by factor, so the look-ups vectorise)."""
    for j in range(m):
        out[j] = -nb_eta[nbhd[lo + j]]
    for k in range(cols.shape[0]):
        o = lev_off[k]
        c = cols[k]
        for j in range(m):
            out[j] -= level_coef[o + np.int64(codes[lo + j, c])]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def group_sums(codes, nbhd, norm_index, norm_flat, v_cols, v_off, v_coef, v_nb, p_cols, p_off, p_coef, p_nb,
               nb_mun, type_of_code, n_types, n_groups, n_virtual):
    """Sums per group of p, p*f, p*N and p*f*N: array (n_groups, 4).

    Group = municipality * n_types + household type, the type being type_of_code[codes[:, 0]]
    (a look-up: a 64-bit division per row cost more than the rest of the row).

    Rows are taken in blocks of BLOCK: the linear predictors of a block first, then exp
    over the block with the vectorised :func:`kernels.vexp.exp_block`, then the sums.
    """
    n = nbhd.shape[0]
    acc = np.zeros((n_virtual, n_groups, 4))
    bounds = range_bounds(n, n_virtual)
    for v in prange(n_virtual):
        xv, xp, ev, ep, kd, sb = block_scratch(BLOCK)
        for lo in range(bounds[v], bounds[v + 1], BLOCK):
            m = min(BLOCK, bounds[v + 1] - lo)
            _neg_eta_block(codes, nbhd, lo, m, v_cols, v_off, v_coef, v_nb, xv)
            _neg_eta_block(codes, nbhd, lo, m, p_cols, p_off, p_coef, p_nb, xp)
            exp_block(xv, ev, kd, sb, m)
            exp_block(xp, ep, kd, sb, m)
            for j in range(m):  # vectorises: p into ev, p f into ep
                ev[j] = 1.0 / (1.0 + ev[j])
                ep[j] = ev[j] / (1.0 + ep[j])
            for j in range(m):
                i = lo + j
                p = ev[j]
                pf = ep[j]
                norm = norm_flat[norm_index[i]]
                g = nb_mun[nbhd[i]] * n_types + type_of_code[codes[i, 0]]
                acc[v, g, 0] += p
                acc[v, g, 1] += pf
                acc[v, g, 2] += p * norm
                acc[v, g, 3] += pf * norm
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
