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

The engine now uses kernels.draws (households collapsed into cells, no exponential per
household); this kernel is kept as the baseline of benchmarks/cases/bootstrap.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.glm import range_bounds, reduce_ranges
from kernels.vexp import block_scratch, exp_block

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
        xv, xp, ev, ep, kd, sb = block_scratch(R)
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
            exp_block(xv, ev, kd, sb, R)
            exp_block(xp, ep, kd, sb, R)
            norm = norm_flat[norm_index[i]]
            g = nb_mun[nb]
            for r in range(R):
                p = 1.0 / (1.0 + ev[r])
                w = norm / (1.0 + ep[r])
                acc[v, g, 0, r] += p * w
                acc[v, g, 1, r] += p * (1.0 - p) * w * w
    return reduce_ranges(acc)
