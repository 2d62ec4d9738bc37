"""Every kernel in kernels/ called directly, against the plain NumPy references of tests/naive.py.

The kernels' inputs are built here by hand from the raw Arrow columns (codes straight from
the household columns, one look-up table entry per level, neighbourhood terms per
neighbourhood), not through the engine's design code, so both sides share nothing but the
population files.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import naive  # tests/naive.py (pytest puts tests/ on sys.path)
from kernels.bootstrap import draw_sums
from kernels.codes import mixed_radix
from kernels.config import N_VIRTUAL
from kernels.glm import linear_predictor, logit_pass, range_bounds
from kernels.predict import group_sums, household_values, pair_tables, weight_level_sums
from kernels.vexp import exp_array, exp_block

SPEC = naive.read_toml(naive.DATA / "specs" / "2019.toml")
FACTORS = tuple(SPEC["volume"]["factors"])        # every household factor, household type first
CONT = tuple(SPEC["volume"]["continuous"])


@pytest.fixture(scope="module")
def world(small_world):
    """A sixth of the small world's households (dense designs stay small), kernel inputs by hand."""
    t = naive.read_tables(small_world)
    h = t["households"]
    rows = np.arange(0, h.num_rows, 6)
    n_levels = [len(naive.labels(h, f)) for f in FACTORS]
    codes = np.ascontiguousarray(np.column_stack([h.column(f).to_numpy()[rows] for f in FACTORS]).astype(np.uint8))
    return {
        "t": t, "rows": rows, "codes": codes, "n_levels": np.asarray(n_levels, dtype=np.int64),
        "lev_off": np.concatenate([[0], np.cumsum(n_levels)[:-1]]).astype(np.int64),
        "nbhd": naive.household_neighbourhood(t)[rows].astype(np.int32),
        "nb_mun": naive.neighbourhood_municipality(t).astype(np.int32),
        "nb_cont": np.ascontiguousarray(np.column_stack([t["neighbourhoods"].column(c).to_numpy().astype(float)
                                                         for c in CONT])),
        "mun": naive.household_municipality(t)[rows],
        "n_mun": t["municipalities"].num_rows,
        "N": naive.gross_norms(t, naive.read_toml(naive.DATA / "norms" / "2019.toml"))[rows],
        "y": h.column("bijstand").to_numpy()[rows].astype(np.int8),
    }


def _component(w, name, fixed_effects=True):
    comp = dict(SPEC[name])
    if not fixed_effects:
        comp["fixed_effects"] = "none"
    return naive.component_one_hot(w["t"], comp, w["rows"])


def _theta(names, rng, scale=0.3):
    theta = rng.normal(0, scale, len(names))
    theta[0] = -2.5
    return theta


def _tables(w, names, theta):
    """(level_coef over every level of FACTORS, nb_eta per neighbourhood) of coefficients theta."""
    h = w["t"]["households"]
    index = {n: i for i, n in enumerate(names)}
    level = [theta[index[f"{f}[{lab}]"]] if f"{f}[{lab}]" in index else 0.0
             for f in FACTORS for lab in naive.labels(h, f)]
    nb_eta = np.full(w["nb_mun"].shape[0], theta[0])
    for k, c in enumerate(CONT):
        if c in index:
            nb_eta += theta[index[c]] * w["nb_cont"][:, k]
    fe = np.zeros(w["n_mun"])
    for g, code in enumerate(naive.strings(w["t"]["municipalities"], "code")):
        fe[g] = theta[index[f"municipality[{code}]"]] if f"municipality[{code}]" in index else 0.0
    return np.asarray(level), np.ascontiguousarray(nb_eta + fe[w["nb_mun"]])


ALL_COLS = np.arange(len(FACTORS), dtype=np.int64)


def test_linear_predictor(world):
    X, names = _component(world, "volume")
    theta = _theta(names, np.random.default_rng(1))
    level, nb_eta = _tables(world, names, theta)
    eta = linear_predictor(world["codes"], ALL_COLS, world["lev_off"], level, world["nbhd"], nb_eta)
    np.testing.assert_allclose(eta, X @ theta, rtol=1e-12, atol=1e-12)


def _slots(w, names):
    """Slot CSR of the raw factor codes (each factor its own joint code): level lev_off[k] + c carries
    the slot of its term in ``names`` (none for a reference level); slots numbered in term order.
    Returns (slot_ptr, slot_idx, n_slot, the term column of each slot)."""
    h = w["t"]["households"]
    index = {n: i for i, n in enumerate(names)}
    cols = [index.get(f"{f}[{lab}]", -1) for f in FACTORS for lab in naive.labels(h, f)]
    term_cols = sorted(c for c in cols if c >= 0)
    slot_of = {c: s for s, c in enumerate(term_cols)}
    ptr = np.zeros(len(cols) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([c >= 0 for c in cols])
    idx = np.asarray([slot_of[c] for c in cols if c >= 0], dtype=np.int64)
    return ptr, idx, len(term_cols), np.asarray(term_cols)


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("order", ["population", "shuffled"])
def test_logit_pass(world, mode, order):
    """The kernel on the raw factor codes (each factor its own joint code) against dense sums
    (tests/naive.py), rows in population order (sorted by neighbourhood) and shuffled."""
    w = world
    X, names = _component(w, "volume")
    y = naive.outcome(w["t"], SPEC["volume"]["outcome"])[w["rows"]]
    rng = np.random.default_rng(2)
    theta = _theta(names, rng)
    wt = rng.uniform(0.5, 2.0, len(y))
    level, nb_eta = _tables(w, names, theta)
    ptr, idx, S, term_cols = _slots(w, names)
    perm = np.arange(len(y)) if order == "population" else rng.permutation(len(y))
    codes, nbhd = np.ascontiguousarray(w["codes"][perm]), np.ascontiguousarray(w["nbhd"][perm])
    ll, g_s, g_nb, a_nb, a_ms, a_xs, a_ss, s_ms = logit_pass(
        codes, w["lev_off"], level, ptr, idx, S, nbhd, nb_eta, w["nb_mun"].shape[0], w["nb_cont"],
        w["nb_mun"], w["n_mun"], y[perm], wt[perm], mode, True, N_VIRTUAL)
    want_ll, _, _, _ = naive.logit_pass(X, y, theta, wt)
    p = naive.logistic(X @ theta)
    r = wt * (y - p)
    weight = wt * p * (1 - p) if mode == 0 else r ** 2
    want = naive.slot_sums(X[:, term_cols], w["mun"], w["n_mun"], w["nb_cont"][w["nbhd"]], weight, r)
    n_nb = w["nb_mun"].shape[0]
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)  # noqa: E731
    np.testing.assert_allclose(ll, want_ll, rtol=1e-12)
    close(g_nb, np.bincount(w["nbhd"], weights=r, minlength=n_nb))
    close(a_nb, np.bincount(w["nbhd"], weights=weight, minlength=n_nb))
    for name, got in (("g", g_s), ("a_m", a_ms), ("a_x", a_xs), ("a_pair", a_ss), ("s_m", s_ms)):
        close(got, want[name])


def test_logit_pass_bits_do_not_depend_on_the_number_of_threads(world):
    """Fixed row ranges, reduced in order: one thread and two give the same bits."""
    import numba

    w = world
    X, names = _component(w, "volume")
    y = naive.outcome(w["t"], SPEC["volume"]["outcome"])[w["rows"]]
    level, nb_eta = _tables(w, names, _theta(names, np.random.default_rng(4)))
    ptr, idx, S, _ = _slots(w, names)
    args = (w["codes"], w["lev_off"], level, ptr, idx, S, w["nbhd"], nb_eta, w["nb_mun"].shape[0], w["nb_cont"],
            w["nb_mun"], w["n_mun"], y, np.zeros(0), 0, True, N_VIRTUAL)
    before = numba.get_num_threads()
    try:
        outs = []
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            outs.append(logit_pass(*args))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


def test_logit_pass_unit_weights_and_no_clusters(world):
    w = world
    X, names = _component(w, "volume", fixed_effects=False)
    y = naive.outcome(w["t"], SPEC["volume"]["outcome"])[w["rows"]]
    theta = _theta(names, np.random.default_rng(3))
    level, nb_eta = _tables(w, names, theta)
    ptr, idx, S, term_cols = _slots(w, names)
    out = logit_pass(w["codes"], w["lev_off"], level, ptr, idx, S, w["nbhd"], nb_eta, w["nb_mun"].shape[0],
                     w["nb_cont"], w["nb_mun"], w["n_mun"], y, np.zeros(0), 0, False, N_VIRTUAL)
    ll, _, H, _ = naive.logit_pass(X, y, theta)
    np.testing.assert_allclose(out[0], ll, rtol=1e-12)
    np.testing.assert_allclose(out[3].sum(), H[0, 0], rtol=1e-12)      # sum of w = Hessian of the intercept
    np.testing.assert_allclose(out[6], H[np.ix_(term_cols, term_cols)], rtol=1e-10)   # the factor block
    assert out[7].shape == (1, S) and not out[7].any()


def _both(w, rng):
    Xv, vn = _component(w, "volume")
    Xp, pn = _component(w, "price")
    return Xv, vn, _theta(vn, rng), Xp, pn, _theta(pn, rng, 0.5) + np.r_[3.0, np.zeros(len(pn) - 1)]


def _cols(component):
    """Columns of the codes a component reads (the prediction kernels take the level offset
    of each column they read: ``lev_off[cols]``)."""
    return np.asarray([FACTORS.index(f) for f in SPEC[component]["factors"]], dtype=np.int64)


def _prediction_args(w, seed):
    """(naive p, f, N per household; the arguments the prediction kernels share) for random coefficients."""
    Xv, vn, beta, Xp, pn, gamma = _both(w, np.random.default_rng(seed))
    norm_flat, norm_index = np.unique(w["N"], return_inverse=True)
    vc, pc = _cols("volume"), _cols("price")
    args = (w["codes"], w["nbhd"], norm_index.astype(np.uint16), norm_flat, vc, w["lev_off"][vc],
            *_tables(w, vn, beta), pc, w["lev_off"][pc], *_tables(w, pn, gamma))
    return naive.household_values(Xv, beta, Xp, gamma, w["N"]), args


def test_household_values(world):
    (p, f, N), args = _prediction_args(world, 4)
    got = household_values(*args)
    np.testing.assert_allclose(got[0], p, rtol=1e-13)
    np.testing.assert_allclose(got[1], f, rtol=1e-13)
    np.testing.assert_array_equal(got[2], N)



def test_weight_level_sums(world):
    """Sums of p (1 - p) per factor level and per neighbourhood against bincounts of the naive p."""
    w = world
    (p, _, _), args = _prediction_args(w, 6)
    wt = p * (1 - p)
    cols = np.arange(w["codes"].shape[1], dtype=np.int64)
    L = int(w["lev_off"][-1] + w["n_levels"][-1])
    n_nb = int(w["nbhd"].max()) + 1
    lev, nb = weight_level_sums(*args[:2], *args[4:8], w["codes"], cols, w["lev_off"], L, n_nb, N_VIRTUAL)
    want = sum(np.bincount(w["lev_off"][k] + w["codes"][:, k].astype(np.int64), weights=wt, minlength=L)
               for k in cols)
    np.testing.assert_allclose(lev, want, rtol=1e-12)
    np.testing.assert_allclose(nb, np.bincount(w["nbhd"], weights=wt, minlength=n_nb), rtol=1e-12)

def test_group_sums(world):
    w = world
    (p, f, N), args = _prediction_args(w, 5)
    n_types = int(w["n_levels"][0])
    group = w["mun"] * n_types + w["codes"][:, 0]    # codes[:, 0] is the household type itself
    got = group_sums(*args, group.astype(np.uint16), w["y"], w["n_levels"].astype(np.int64), w["n_mun"] * n_types,
                     N_VIRTUAL)
    want = naive.group_sums(p, f, N, group, w["n_mun"] * n_types, w["y"])
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-9)
    np.testing.assert_array_equal(got[:, 4:6], want[:, 4:6])        # counts: exact


@given(st.lists(st.integers(1, 12), min_size=1, max_size=7), st.integers(0, 2**32 - 1))
def test_pair_tables_sum_two_codes(sizes, seed):
    """Every pair entry is the sum of its two codes' coefficients (an odd last code keeps its own)."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes, dtype=np.int64)
    cols = rng.permutation(sizes.size).astype(np.int64)
    off = np.concatenate([[0], np.cumsum(sizes[cols])[:-1]]).astype(np.int64)
    coef = rng.normal(size=int(sizes.sum()))
    first, second, width, offset, table = pair_tables(cols, off, coef, sizes)
    assert first.size == (cols.size + 1) // 2
    for q in range(first.size):
        k = 2 * q
        own = coef[off[k]:off[k] + sizes[cols[k]]]
        if k + 1 < cols.size:
            want = (own[:, None] + coef[off[k + 1]:off[k + 1] + sizes[cols[k + 1]]][None, :]).ravel()
            assert (first[q], second[q], width[q]) == (cols[k], cols[k + 1], sizes[cols[k + 1]])
        else:
            want = own
            assert (first[q], width[q]) == (cols[k], 0)
        np.testing.assert_array_equal(table[offset[q]:offset[q + 1]], want)


def test_group_sums_same_bits_for_any_thread_count(world):
    import numba

    w = world
    _, args = _prediction_args(w, 6)
    n_types = int(w["n_levels"][0])
    rest = ((w["mun"] * n_types + w["codes"][:, 0]).astype(np.uint16), w["y"], w["n_levels"].astype(np.int64),
            w["n_mun"] * n_types, N_VIRTUAL)
    before = numba.get_num_threads()
    try:
        outs = []
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            outs.append(group_sums(*args, *rest))
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("n_cols", [1, 3])
def test_group_sums_odd_columns(world, n_cols):
    """Components reading an odd number of codes (the last one looked up alone) against NumPy."""
    w = world
    rng = np.random.default_rng(11 + n_cols)
    cols = rng.choice(len(FACTORS), n_cols, replace=False).astype(np.int64)
    coef = rng.normal(scale=0.3, size=int(w["n_levels"].sum()))
    nb_v, nb_p = rng.normal(-1.0, 0.3, size=w["nb_mun"].size), rng.normal(0.5, 0.3, size=w["nb_mun"].size)
    eta_v = nb_v[w["nbhd"]] + sum(coef[w["lev_off"][c] + w["codes"][:, c]] for c in cols)
    eta_p = nb_p[w["nbhd"]] + sum(coef[w["lev_off"][c] + w["codes"][:, c]] for c in cols[::-1])
    p, f = 1 / (1 + np.exp(-eta_v)), 1 / (1 + np.exp(-eta_p))
    norm_flat, norm_index = np.unique(w["N"], return_inverse=True)
    n_types = int(w["n_levels"][0])
    group = w["mun"] * n_types + w["codes"][:, 0]
    got = group_sums(w["codes"], w["nbhd"], norm_index.astype(np.uint16), norm_flat, cols, w["lev_off"][cols], coef,
                     nb_v, cols[::-1].copy(), w["lev_off"][cols[::-1]], coef, nb_p, group.astype(np.int32), w["y"],
                     w["n_levels"].astype(np.int64), w["n_mun"] * n_types, N_VIRTUAL)
    np.testing.assert_allclose(got, naive.group_sums(p, f, w["N"], group, w["n_mun"] * n_types, w["y"]), rtol=1e-11,
                               atol=1e-9)


@pytest.mark.parametrize("R", [1, 7])
def test_draw_sums(world, R):
    w = world
    rng = np.random.default_rng(6 + R)
    Xv, vn, beta, Xp, pn, gamma = _both(w, rng)
    betas = beta + rng.normal(0, 0.1, (R, len(beta)))
    gammas = gamma + rng.normal(0, 0.1, (R, len(gamma)))
    tv = [_tables(w, vn, b) for b in betas]
    tp = [_tables(w, pn, g) for g in gammas]
    stack = lambda ts, i: np.ascontiguousarray(np.stack([x[i] for x in ts], axis=1))  # noqa: E731
    norm_flat, norm_index = np.unique(w["N"], return_inverse=True)
    # draw_sums reads every column of codes for both components: price levels of unused factors are 0
    got = draw_sums(w["codes"], w["nbhd"], norm_index.astype(np.uint16), norm_flat, w["lev_off"], stack(tv, 0),
                    stack(tv, 1), w["lev_off"], stack(tp, 0), stack(tp, 1), w["nb_mun"], w["n_mun"], N_VIRTUAL)
    want = naive.draw_sums(Xv, betas, Xp, gammas, w["N"], w["mun"], w["n_mun"])
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-6)
    # draw r's sums do not depend on the other draws of the batch
    one = draw_sums(w["codes"], w["nbhd"], norm_index.astype(np.uint16), norm_flat, w["lev_off"],
                    stack(tv[-1:], 0), stack(tv[-1:], 1), w["lev_off"], stack(tp[-1:], 0), stack(tp[-1:], 1),
                    w["nb_mun"], w["n_mun"], N_VIRTUAL)
    np.testing.assert_array_equal(one[:, :, 0], got[:, :, -1])


@given(n=st.integers(0, 10_000), v=st.integers(1, 64))
def test_range_bounds_split_rows_evenly(n, v):
    b = range_bounds(n, v)
    assert b[0] == 0 and b[-1] == n and len(b) == v + 1
    sizes = np.diff(b)
    assert (sizes >= 0).all() and sizes.max() - sizes.min() <= 1


def test_exp_block_writes_only_the_first_m():
    x = np.linspace(-30, 30, 37)
    out = np.full(37, -1.0)
    exp_block(x, out, np.empty(37), np.empty(37, dtype=np.int64), 20)
    np.testing.assert_allclose(out[:20], np.exp(x[:20]), rtol=4e-16)
    assert (out[20:] == -1.0).all()
    np.testing.assert_allclose(exp_array(x), np.exp(x), rtol=4e-16)


def test_cache_is_warm_only_with_compiled_kernels(tmp_path, monkeypatch):
    """``buig run`` says it is compiling exactly when the cache folder of these sources has no kernel."""
    from kernels import cache_is_warm

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba-x"))
    assert not cache_is_warm()                                   # no folder
    (tmp_path / "numba-x" / "kernels_1").mkdir(parents=True)
    (tmp_path / "numba-x" / "kernels_1" / "glm.logit_pass-58.py311.nbi").write_bytes(b"")
    assert not cache_is_warm()                                   # an index without compiled code
    (tmp_path / "numba-x" / "kernels_1" / "glm.logit_pass-58.py311.1.nbc").write_bytes(b"")
    assert cache_is_warm()


@given(st.lists(st.integers(1, 6), min_size=1, max_size=9), st.integers(0, 2**32 - 1), st.integers(0, 60))
def test_mixed_radix_is_numpys_ravel_multi_index(radix, seed, n):
    """Each group of columns as one number, first column most significant: np.ravel_multi_index."""
    rng = np.random.default_rng(seed)
    radix = np.asarray(radix, dtype=np.int64)
    codes = np.stack([rng.integers(0, r, n) for r in radix], axis=1).astype(np.uint8).reshape(n, radix.size)
    members = rng.permutation(radix.size).astype(np.int64)
    cuts = np.sort(rng.choice(np.arange(1, radix.size), size=rng.integers(0, radix.size), replace=False))
    starts = np.concatenate([[0], cuts, [radix.size]]).astype(np.int64)
    largest = max(int(np.prod(radix[members[a:b]])) for a, b in zip(starts[:-1], starts[1:]))
    for dtype in (np.int64, np.uint16) if largest <= 1 << 16 else (np.int64,):     # an out dtype that holds them
        out = np.full((n, starts.size - 1), 99, dtype=dtype)
        mixed_radix(codes, members, starts, radix, out)
        for j in range(starts.size - 1):
            cols = members[starts[j]:starts[j + 1]]
            want = np.ravel_multi_index(tuple(codes[:, cols].T), tuple(radix[cols])) if n else np.zeros(0)
            np.testing.assert_array_equal(out[:, j], want)
