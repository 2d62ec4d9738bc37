"""Many coefficient draws over households collapsed into cells, without an exponential per household.

With eta = x_prof + x_nb (the household factors' part and the neighbourhood's part of a
linear predictor), the logistic is

    p = 1 / (1 + a),   a = exp(-x_prof) exp(-x_nb) = A[profile] B[neighbourhood]

so exponentials are taken once per draw for each distinct household profile (distinct row
of the joint factor codes) and each neighbourhood (:func:`factor_terms`), never per
household. Households of the same neighbourhood and profile share p and f, so they are
collapsed into one cell (:func:`cells`) with the sum of their norms S1 = sum N. With
b = A_price B_price and q = 1 / ((1 + a)(1 + b)) = p f, a cell adds

    E = p f S1 = q S1

(one division per cell and draw). The outcome variance V = sum p (1 - p) (f N)^2, which the
bootstrap takes once, at the fit, comes from the point prediction's pass over the households
(kernels.predict.group_sums).
Where a population has about as many profiles as households (the realistic spec), writing a
table of every profile's A and reading it back for about one cell costs more than the cell
pass: :func:`cell_sums` then makes each cell's A from the joint tables itself, with the same
products (the same bits).
Terms (A, B, a, b, q) are float32 or float64 (the dtype of the term tables). E is summed over
a neighbourhood run (the consecutive cells of one neighbourhood: 15 on average at 2 M
households) in that dtype, the runs per municipality in float64. The terms are positive, so a
run's relative error stays below its length times the dtype's rounding: with float32 terms at
2 M households the municipalities' sums moved by 7e-7 at most (relative) against float64 run
sums, which cost a quarter of the cell pass (20.6 against 15.7 ms per 64 draws).

Term tables are stored (rows, 2, RP): component 0 the volume, 1 the price, RP the draws
padded to a multiple of BLOCK (padding columns hold 1.0 and are never returned), so the
vectorised loop over a cell's draws (LLVM's, with runtime alias checks) never runs its
scalar remainder. The cost of the kernel is mostly per cell (table rows in cache, loop
set-up), so it grows slowly with the number of draws in a batch.

Bit-identical draws whatever the batch: no fast-math (set explicitly: a callee inherits
its caller's flags), so every lane and position rounds alike (IEEE arithmetic, division
included), and each draw accumulates over fixed cell ranges (kernels.config.N_VIRTUAL) in
a fixed order. A draw's numbers never depend on which other draws share its batch.

Each factor A, B is clamped to [exp(-clamp), exp(clamp)], so that a product A B and
(1 + a)(1 + b) never turn into NaN (inf 0) for infinite coefficients: exact as long as
every part x_prof, x_nb lies within [-clamp, clamp] (the caller picks ``clamp`` by dtype:
43 for float32, where e^86 still fits, 350 for float64).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.glm import range_bounds, reduce_ranges
from kernels.vexp import exp_array

TERM_CHUNKS = 16   # runs of profiles whose terms are computed in parallel (any number: the same bits)
BLOCK = 8       # draws are padded to a multiple of this (the vector width of float32 on AVX2)
CHUNK = 512     # profiles whose term rows are read together (kernel cache locality; fixed: it orders the sums)


@njit(cache=True, fastmath=False)
def cells(profile_key, n_keys, nbhd, n_nb, norm, chunk=CHUNK):
    """Collapse households into (neighbourhood, profile) cells.

    ``profile_key`` (n,) int64 in [0, n_keys): any injective code of the household's factor
    codes; ``norm`` (n,) float64. Profiles are numbered in order of first appearance.
    Cells are ordered by profile chunk (profile // chunk), then neighbourhood, then first
    appearance: the kernel then reads the term rows of one chunk of profiles (in cache)
    for every neighbourhood before the next chunk. Returns (first_row (n_prof,) int64: one
    household of each profile, cell_nb (m,) int32, cell_prof (m,) int32, s1 (m,) float64
    sum of N)."""
    n = nbhd.shape[0]
    pid = np.full(n_keys, -1, dtype=np.int64)
    prof = np.empty(n, dtype=np.int32)           # int32 scratch: n < 2^31, and memory at full scale
    first_row = np.empty(min(n, n_keys), dtype=np.int32)
    n_prof = 0
    for i in range(n):
        k = profile_key[i]
        if pid[k] < 0:
            pid[k] = n_prof
            first_row[n_prof] = i
            n_prof += 1
        prof[i] = pid[k]
    n_group = (n_prof // chunk + 1) * n_nb
    start = np.zeros(n_group + 1, dtype=np.int64)      # counting sort by (chunk, neighbourhood), stable
    for i in range(n):
        start[(prof[i] // chunk) * n_nb + nbhd[i] + 1] += 1
    for j in range(n_group):
        start[j + 1] += start[j]
    fill = start[:-1].copy()
    order = np.empty(n, dtype=np.int32)
    for i in range(n):
        grp = (prof[i] // chunk) * n_nb + nbhd[i]
        order[fill[grp]] = i
        fill[grp] += 1
    stamp = np.full(n_prof, -1, dtype=np.int64)
    slot = np.empty(n_prof, dtype=np.int64)
    cell_nb = np.empty(n, dtype=np.int32)
    cell_prof = np.empty(n, dtype=np.int32)
    s1 = np.empty(n)     # empty, each cell zeroed when it opens: the tail past m is never paged in
    m = 0
    for j in range(n_group):
        for t in range(start[j], start[j + 1]):
            i = order[t]
            p = prof[i]
            if stamp[p] != j:
                stamp[p] = j
                slot[p] = m
                cell_nb[m] = nbhd[i]
                cell_prof[m] = p
                s1[m] = 0.0
                m += 1
            s1[slot[p]] += norm[i]
    # views, not copies: the buffers' tails past m were never written
    return first_row[:n_prof].astype(np.int64), cell_nb[:m], cell_prof[:m], s1[:m]


@njit(cache=True, fastmath=False)
def _exp_neg(x):
    """exp(-x) of a 2-d array, as one exp_block over all its values (a long vectorised loop)."""
    return exp_array(-x.reshape(-1)).reshape(x.shape)


def prefix_order(prof_lev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The profiles in lexicographic order of their level rows and, per position in that order,
    how many leading factors it shares with the previous profile (0 for the first): the
    arguments ``order`` and ``shared`` of :func:`factor_terms`."""
    n, F = prof_lev.shape
    order = np.lexsort(prof_lev.T[::-1]) if F else np.arange(n)
    rows = prof_lev[order]
    same = np.ones((n, F), dtype=bool)
    if n > 1:
        same[1:] = rows[1:] == rows[:-1]
    same[:1] = False
    shared = np.cumprod(same, axis=1).sum(axis=1) if F else np.zeros(n, dtype=np.int64)
    return order.astype(np.int64), shared.astype(np.int64)


@njit(parallel=True, cache=True, fastmath=False)
def factor_terms(prof_lev, level_coef, nb_eta, a_prof, b_nb, comp, lo, hi, order, shared):
    """Fill component ``comp`` of the term tables for R draws.

    ``prof_lev`` (n_prof, F) int64: per profile the rows of ``level_coef`` whose terms it
    multiplies (the engine passes each joint code's row in its joint tables: "factors" below);
    ``level_coef`` (L, R) and ``nb_eta`` (n_nb, R) float64, draw-minor.
    a_prof[p, comp, r] = exp(-sum_k level_coef[prof_lev[p, k], r]), computed as the product
    over the factors (in factor order) of exp(-level_coef): L exponentials per draw instead
    of one per profile; b_nb[j, comp, r] = exp(-nb_eta[j, r]). Both are
    clamped to [lo, hi] (module docstring), in float64, then stored in the tables' dtype.
    Profiles are visited in ``order`` (:func:`prefix_order`): a profile whose first ``shared``
    factors are those of the one before reuses those partial products, which are the very
    same products (1 x e_0 x e_1 ..., in factor order), so the bits do not depend on it,
    nor on the split of the order into ``TERM_CHUNKS`` runs done in parallel (each starts from
    the first factor)."""
    n_prof, F = prof_lev.shape
    R = level_coef.shape[1]
    e = _exp_neg(level_coef)
    bounds = range_bounds(n_prof, TERM_CHUNKS)
    for c in prange(TERM_CHUNKS):
        pre = np.ones((F + 1, R))     # pre[k]: product of the first k factors (pre[0] = 1)
        for i in range(bounds[c], bounds[c + 1]):
            p = order[i]
            for k in range(0 if i == bounds[c] else shared[i], F):
                lev = prof_lev[p, k]
                for r in range(R):
                    pre[k + 1, r] = pre[k, r] * e[lev, r]
            for r in range(R):
                v = pre[F, r]
                a_prof[p, comp, r] = hi if v > hi else (lo if v < lo else v)   # NaN passes through
    e = _exp_neg(nb_eta)
    for j in prange(nb_eta.shape[0]):
        for r in range(R):
            v = e[j, r]
            b_nb[j, comp, r] = hi if v > hi else (lo if v < lo else v)


def term_tables(n_prof: int, n_nb: int, draws: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Empty term tables (rows, 2, RP) of ``dtype`` with RP = draws rounded up to BLOCK, padding 1.0."""
    rp = -(-draws // BLOCK) * BLOCK
    return np.ones((n_prof, 2, rp), dtype=dtype), np.ones((n_nb, 2, rp), dtype=dtype)


@njit(cache=True, fastmath=False, inline="always")
def _profile_term(rows, tab, prod, out, lo, hi):
    """out = one profile's term for every draw: the product of its rows of ``tab`` in order,
    from 1.0, in float64, clamped to [lo, hi], in ``out``'s dtype (as :func:`factor_terms`)."""
    prod[:] = 1.0
    for k in range(rows.shape[0]):
        row = tab[rows[k]]
        for r in range(prod.shape[0]):
            prod[r] = prod[r] * row[r]
    for r in range(prod.shape[0]):
        x = prod[r]
        out[r] = hi if x > hi else (lo if x < lo else x)   # NaN passes through


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def cell_sums(cell_nb, cell_prof, s1, a_prof, b_nb, nb_mun, n_mun, n_virtual, joint=None):
    """(n_mun, RP) float64 sums of E per municipality and draw (module docstring).

    The profile terms come from ``a_prof`` (:func:`factor_terms`), or, with ``joint`` =
    (rows_v, e_v, rows_p, e_p, lo, hi), are made per cell from the joint tables
    (:func:`joint_terms`) exactly as :func:`factor_terms` makes them (the same float64
    products in the same order, clamped, then in ``b_nb``'s dtype): the same bits, without
    writing and reading a table of every profile (``a_prof`` is then not read; pass any
    array of the dtype). For populations with about as many profiles as households.

    Per cell the block of draws is added to the sums of the current neighbourhood run (one
    vector loop: loads of the cell's two table rows only, once its profile row is made when
    per cell), which are added to the municipality's when the neighbourhood changes or the
    cell range ends: a fixed order given the cells and ``n_virtual``."""
    n = cell_nb.shape[0]
    RP = b_nb.shape[2]
    one = b_nb.dtype.type(1.0)
    if joint is not None:                  # no bounds checks below: the joint tables must hold RP draws
        assert joint[1].shape[1] == RP and joint[3].shape[1] == RP
    acc = np.zeros((n_virtual, n_mun, RP))
    bounds = range_bounds(n, n_virtual)
    for v in prange(n_virtual):
        e = np.zeros(RP, dtype=b_nb.dtype)      # the run's E in the terms' dtype (module docstring)
        own = np.empty((2, RP), dtype=b_nb.dtype)
        prod = np.empty(RP)
        lo, hi = bounds[v], bounds[v + 1]
        for i in range(lo, hi):
            nb = cell_nb[i]
            w1 = b_nb.dtype.type(s1[i])
            if joint is None:
                ap = a_prof[cell_prof[i]]
            else:
                rows_v, e_v, rows_p, e_p, t_lo, t_hi = joint
                _profile_term(rows_v[cell_prof[i]], e_v, prod, own[0], t_lo, t_hi)
                _profile_term(rows_p[cell_prof[i]], e_p, prod, own[1], t_lo, t_hi)
                ap = own
            bn = b_nb[nb]
            for r in range(RP):
                e[r] += w1 * (one / ((one + ap[0, r] * bn[0, r]) * (one + ap[1, r] * bn[1, r])))
            if i + 1 == hi or cell_nb[i + 1] != nb:
                g = nb_mun[nb]
                for r in range(RP):
                    acc[v, g, r] += np.float64(e[r])
                    e[r] = 0.0
    return reduce_ranges(acc)


def joint_terms(level_coef: np.ndarray, rp: int) -> np.ndarray:
    """(L, rp) float64 exp(-level_coef) of (L, R) coefficients, padded with 1.0 to ``rp`` draws:
    the factors :func:`factor_terms` multiplies (the same exponentials), for ``cell_sums(joint=...)``."""
    out = np.ones((level_coef.shape[0], rp))
    out[:, :level_coef.shape[1]] = _exp_neg(level_coef)
    return out
