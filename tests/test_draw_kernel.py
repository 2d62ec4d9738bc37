"""The draw kernels (kernels.draws on cells, kernels.bootstrap on households) against a plain NumPy
loop over draws, and bit-identical draws whatever the batch they are computed in.

The NumPy twin builds every linear predictor straight from the arrays (factor codes,
per-factor level coefficients, neighbourhood terms), never from engine or kernel code.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.uncertainty.cells as cells_module
from kernels.bootstrap import draw_sums
from kernels.draws import cell_sums, cells, factor_terms, joint_terms, prefix_order, term_tables

N_VIRTUAL = 16
BOUNDS = {np.float32: (np.exp(-43.0), np.exp(43.0)), np.float64: (np.exp(-350.0), np.exp(350.0))}


def _world(seed: int, n: int, draws: int, levels=(3, 4, 2, 5), n_nb: int = 7, n_mun: int = 3):
    rng = np.random.default_rng(seed)
    F = len(levels)
    # few distinct profiles, so that cells hold several households
    pool = np.column_stack([rng.integers(0, m, 6) for m in levels])
    codes = np.ascontiguousarray(pool[rng.integers(0, 6, n)] if n > 1 and rng.random() < 0.7 else
                                 np.column_stack([rng.integers(0, m, n) for m in levels])).astype(np.uint8)
    off = np.concatenate([[0], np.cumsum(levels)[:-1]]).astype(np.int64)
    L = int(sum(levels))
    return {
        "codes": codes, "off": off, "levels": levels, "F": F,
        "nbhd": rng.integers(0, n_nb, n).astype(np.int32),
        "nb_mun": rng.integers(0, n_mun, n_nb).astype(np.int32), "n_mun": n_mun, "n_nb": n_nb,
        "norm_flat": rng.uniform(8_000, 30_000, 5), "norm_index": rng.integers(0, 5, n).astype(np.uint16),
        "v_coef": rng.normal(0, 1, (L, draws)), "v_nb": rng.normal(-2, 1, (n_nb, draws)),
        "p_coef": rng.normal(0, 0.5, (L, draws)), "p_nb": rng.normal(0.5, 0.5, (n_nb, draws)),
    }


def numpy_sums(w) -> np.ndarray:
    """(n_mun, 2, R): a loop over draws, per household eta = nb term + sum of its factors' levels."""
    codes, off = w["codes"].astype(np.intp), w["off"]
    mun = w["nb_mun"][w["nbhd"]]
    norm = w["norm_flat"][w["norm_index"]]
    R = w["v_coef"].shape[1]
    out = np.empty((w["n_mun"], 2, R))
    for r in range(R):
        eta_v = w["v_nb"][w["nbhd"], r] + sum(w["v_coef"][off[k] + codes[:, k], r] for k in range(w["F"]))
        eta_p = w["p_nb"][w["nbhd"], r] + sum(w["p_coef"][off[k] + codes[:, k], r] for k in range(w["F"]))
        p = 1.0 / (1.0 + np.exp(-eta_v))
        fn = norm / (1.0 + np.exp(-eta_p))
        out[:, 0, r] = np.bincount(mun, weights=p * fn, minlength=w["n_mun"])
        out[:, 1, r] = np.bincount(mun, weights=p * (1 - p) * fn * fn, minlength=w["n_mun"])
    return out


def old_sums(w) -> np.ndarray:
    return draw_sums(w["codes"], w["nbhd"], w["norm_index"], w["norm_flat"], w["off"], w["v_coef"], w["v_nb"],
                     w["off"], w["p_coef"], w["p_nb"], w["nb_mun"], w["n_mun"], N_VIRTUAL)


def prepare(w):
    """Cells of the world: profile key = mixed-radix code of the factor codes."""
    key = np.zeros(len(w["nbhd"]), dtype=np.int64)
    for k, m in enumerate(w["levels"]):
        key = key * m + w["codes"][:, k]
    norm = w["norm_flat"][w["norm_index"]]
    first, cell_nb, cell_prof, s1 = cells(key, int(np.prod(w["levels"])), w["nbhd"], w["n_nb"], norm)
    prof_lev = np.ascontiguousarray(w["off"] + w["codes"][first].astype(np.int64))
    return prof_lev, cell_nb, cell_prof, s1


def new_sums(w, prep, dtype, draws=None, per_cell=False) -> np.ndarray:
    """kernels.draws (E, (n_mun, R)) on the draws ``draws`` (indices; all by default); ``per_cell``: the
    profile terms made in the cell pass from the joint tables (no profile table)."""
    prof_lev, cell_nb, cell_prof, s1 = prep
    draws = np.arange(w["v_coef"].shape[1]) if draws is None else np.asarray(draws)
    col = lambda name: np.ascontiguousarray(w[name][:, draws])  # noqa: E731
    n_prof = 0 if per_cell else prof_lev.shape[0]
    a, b = term_tables(n_prof, w["n_nb"], len(draws), dtype)
    order, shared = prefix_order(prof_lev)
    for comp, (coef, nb) in enumerate((("v_coef", "v_nb"), ("p_coef", "p_nb"))):
        factor_terms(prof_lev[:n_prof], col(coef), col(nb), a, b, comp, *BOUNDS[dtype], order[:n_prof], shared[:n_prof])
    joint = ((prof_lev, joint_terms(col("v_coef"), b.shape[2]), prof_lev, joint_terms(col("p_coef"), b.shape[2]),
              *BOUNDS[dtype]) if per_cell else None)
    return cell_sums(cell_nb, cell_prof, s1, a, b, w["nb_mun"], w["n_mun"], N_VIRTUAL, joint)[:, :len(draws)]


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 400), draws=st.integers(1, 19))
def test_kernels_match_the_numpy_loop(seed, n, draws):
    w = _world(seed, n, draws)
    ref = numpy_sums(w)
    np.testing.assert_allclose(old_sums(w), ref, rtol=1e-12, atol=1e-300)
    prep = prepare(w)
    np.testing.assert_allclose(new_sums(w, prep, np.float64), ref[:, 0], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(new_sums(w, prep, np.float32), ref[:, 0], rtol=2e-6, atol=1e-300)
    for dtype in (np.float32, np.float64):      # the profile terms made per cell: the same bits as tabled
        np.testing.assert_array_equal(new_sums(w, prep, dtype, per_cell=True), new_sums(w, prep, dtype))


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), cuts=st.lists(st.integers(1, 12), min_size=1,
                                                                               max_size=4))
def test_a_draw_gives_the_same_bits_in_any_batch(seed, n, cuts):
    R = 21
    w = _world(seed, n, R)
    prep = prepare(w)
    for dtype, per_cell in ((np.float32, False), (np.float64, False), (np.float32, True)):
        whole = new_sums(w, prep, dtype, per_cell=per_cell)
        parts, start = [], 0
        while start < R:                      # batches of the given sizes, cycling
            size = cuts[len(parts) % len(cuts)]
            parts.append(new_sums(w, prep, dtype, range(start, min(start + size, R)), per_cell=per_cell))
            start += size
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
        backwards = new_sums(w, prep, dtype, range(R - 1, -1, -1), per_cell=per_cell)   # every draw elsewhere
        np.testing.assert_array_equal(backwards[:, ::-1], whole)


def test_cells_hold_every_household_once():
    w = _world(3, 5000, 1)
    prof_lev, cell_nb, cell_prof, s1 = prepare(w)
    norm = w["norm_flat"][w["norm_index"]]
    pairs = set(zip(cell_nb.tolist(), cell_prof.tolist()))
    assert len(pairs) == cell_nb.size                       # one cell per (neighbourhood, profile)
    assert np.unique(prof_lev, axis=0).shape[0] == prof_lev.shape[0]
    np.testing.assert_allclose(s1.sum(), norm.sum(), rtol=1e-12)
    assert cell_nb.size < 5000                              # households collapsed


def test_infinite_coefficients_give_zero_not_nan():
    w = _world(4, 300, 9)
    w["v_coef"][0, :3] = -np.inf         # level 0 of factor 0: p = 0
    w["v_coef"][1, 3:6] = np.inf         # level 1: p = 1
    w["p_coef"][2, 6:] = -np.inf         # level 2: f = 0
    ref = numpy_sums(w)
    prep = prepare(w)
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 2e-6)):
        got = new_sums(w, prep, dtype)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref[:, 0], rtol=rtol, atol=1e-6)
        np.testing.assert_array_equal(new_sums(w, prep, dtype, per_cell=True), got)


def test_engine_cells_agree_with_the_household_kernel(small_population):
    """engine.uncertainty.cells on a fitted synthetic world: the draws of commit c675859's path to rounding."""
    from engine.uncertainty.cells import draw_cells
    from engine.model.design import households_from_population
    from engine.model.fitted import fit_model
    from engine.model.predict import prediction_design, prediction_tables
    from engine.model.spec import load_spec

    hh = households_from_population(small_population)
    fit = fit_model(hh, load_spec("2019"))
    pd_ = prediction_design(hh, fit.norms)
    rng = np.random.default_rng(1)
    coefs = [(fit, fit.volume.params + rng.normal(0, 0.02, fit.volume.params.size),
              fit.price.params + rng.normal(0, 0.02, fit.price.params.size)) for _ in range(5)]
    tables = [prediction_tables(hh, fit, pd_, vp, pp) for _, vp, pp in coefs]
    stack = lambda name: np.ascontiguousarray(np.stack([getattr(t, name) for t in tables], axis=1))  # noqa: E731
    t0 = tables[0]
    ref = draw_sums(pd_.combo, pd_.nbhd, pd_.norm_index, t0.norm_flat, t0.v_off, stack("v_coef"), stack("v_nb"),
                    t0.p_off, stack("p_coef"), stack("p_nb"), pd_.nb_mun, hh.n_mun, N_VIRTUAL)
    auto = draw_cells(hh, fit, pd_)
    assert auto.dtype == np.float32            # the synthetic fit's parts stay well within FLOAT32_LIMIT
    assert auto.cell_nb.size < hh.n
    np.testing.assert_allclose(auto.sums(coefs), ref[:, 0], rtol=1e-6)
    assert not auto.per_cell                   # few profiles: tabled; made per cell, the same bits
    np.testing.assert_array_equal(replace(auto, per_cell=True).sums(coefs), auto.sums(coefs))
    # a thread's next batch of the same shape reuses the term tables: nothing of the last batch is read
    other = [(fit, vp + 0.05, pp - 0.05) for _, vp, pp in coefs]
    auto.sums(coefs)
    again = auto.sums(other)
    vars(cells_module._HELD).clear()           # fresh tables
    np.testing.assert_array_equal(again, auto.sums(other))
    assert not np.array_equal(again, auto.sums(coefs))
    wide = draw_cells(hh, fit, pd_, dtype=np.float64)
    np.testing.assert_array_equal(replace(wide, per_cell=True).sums(coefs), wide.sums(coefs))
    np.testing.assert_allclose(wide.sums(coefs), ref[:, 0], rtol=1e-11)
    # the batch's tables, computed for all draws at once, are each draw's own tables bit for bit
    coefs.append((fit, None, None))
    for comp in range(2):
        level, nb = auto.batch_tables(coefs, comp)
        one = [auto.level_tables(*c)[comp] for c in coefs]
        assert np.array_equal(level, np.stack([t[0] for t in one], axis=1))
        assert np.array_equal(nb, np.stack([t[1] for t in one], axis=1))


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 400), draws=st.integers(1, 19))
def test_shared_prefixes_give_the_same_bits(seed, n, draws):
    """factor_terms in prefix order (partial products reused) against every profile's product
    taken afresh in factor order (identity order, nothing shared): the same bits."""
    w = _world(seed, n, draws)
    prof_lev = prepare(w)[0]
    n_prof = prof_lev.shape[0]
    got, want = (term_tables(n_prof, w["n_nb"], draws, np.float64) for _ in range(2))
    factor_terms(prof_lev, w["v_coef"], w["v_nb"], *got, 0, *BOUNDS[np.float64], *prefix_order(prof_lev))
    factor_terms(prof_lev, w["v_coef"], w["v_nb"], *want, 0, *BOUNDS[np.float64],
                 np.arange(n_prof, dtype=np.int64), np.zeros(n_prof, dtype=np.int64))
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    x = np.ones(draws)                      # and a plain product in factor order, outside the kernel
    for k in range(prof_lev.shape[1]):
        x = x * np.exp(-w["v_coef"][prof_lev[0, k]])
    np.testing.assert_allclose(got[0][0, 0, :draws], x, rtol=1e-12)
