"""Bootstrap: reproducibility across workers and batches, resume, delta method, flags, cap."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.uncertainty.bootstrap import run_bootstrap
from engine.uncertainty.draws import context
from engine.uncertainty.settings import Settings
from engine.uncertainty.store import plan_batches
from engine.uncertainty.summaries import bands_table, flags_table, write_results
from engine.rules.cap import rob_cap
from engine.model.fitted import fit_to_folder
from engine.rules.budget import allocate


@pytest.fixture(scope="module")
def fitted_world(small_world, small_population, tmp_path_factory):
    coef = tmp_path_factory.mktemp("coef")
    fit_to_folder(small_population, coef)
    return Settings(population=str(small_world), coefficients=str(coef), regime="2019", seed=5)


def _values(res):
    return {k: v.copy() for k, v in res.values.items()}


def test_plan_batches_skips_what_is_done():
    assert plan_batches(10, 4, []) == [(0, 4), (4, 8), (8, 10)]
    assert plan_batches(10, 4, [(0, 4), (6, 8)]) == [(4, 6), (8, 10)]
    assert plan_batches(5, 10, [(0, 5)]) == []


def test_same_seed_same_numbers_any_batch_size(fitted_world, tmp_path):
    a = run_bootstrap(fitted_world, tmp_path / "a", replicates=12, batch_size=12, workers=0)
    b = run_bootstrap(fitted_world, tmp_path / "b", replicates=12, batch_size=5, workers=0)
    for k in a.values:
        np.testing.assert_array_equal(a.values[k], b.values[k])
    other = run_bootstrap(Settings(**{**fitted_world.__dict__, "seed": 6}), tmp_path / "c", replicates=12,
                          batch_size=12, workers=0)
    assert not np.array_equal(other.values["budget"], a.values["budget"])


def test_one_or_two_dask_workers_give_identical_bands(fitted_world, tmp_path):
    one = run_bootstrap(fitted_world, tmp_path / "one", replicates=8, batch_size=3, workers=1)
    two = run_bootstrap(fitted_world, tmp_path / "two", replicates=8, batch_size=2, workers=2)
    serial = run_bootstrap(fitted_world, tmp_path / "serial", replicates=8, batch_size=8, workers=0)
    for k in one.values:
        np.testing.assert_array_equal(one.values[k], two.values[k])
        np.testing.assert_array_equal(one.values[k], serial.values[k])
    b1, b2 = bands_table(one), bands_table(two)
    for c in b1.column_names[2:]:            # NaN-aware (a municipality without spending has no effect)
        np.testing.assert_array_equal(b1.column(c).to_numpy(), b2.column(c).to_numpy())


def test_interrupted_run_resumes_to_the_same_result(fitted_world, tmp_path):
    full = run_bootstrap(fitted_world, tmp_path / "full", replicates=10, batch_size=3, workers=0)
    part = tmp_path / "part"
    run_bootstrap(fitted_world, part, replicates=10, batch_size=3, workers=0)
    batches = sorted((part / "batches").iterdir())
    batches[1].unlink()                       # as if killed before this batch was written
    (part / "batches" / ".replicates-000009-000010.parquet.tmp-1").write_bytes(b"half")  # a torn temp file
    again = run_bootstrap(fitted_world, part, replicates=10, batch_size=4, workers=0)
    assert again.computed == 3
    for k in full.values:
        np.testing.assert_array_equal(again.values[k], full.values[k])
    with pytest.raises(ValueError, match="another bootstrap"):
        run_bootstrap(Settings(**{**fitted_world.__dict__, "seed": 99}), part, replicates=10, workers=0)


def test_a_failed_batch_write_stops_the_run_and_keeps_the_written_batches(fitted_world, tmp_path, monkeypatch):
    """Batches are written on a background thread (store.BatchWriter) while the next is computed: a
    write that fails half way still ends the run with its error, leaves no temporary file, and the
    batches written before it stay."""
    import pyarrow.parquet as pq

    real, calls = pq.write_table, []

    def failing(table, where, **options):
        calls.append(where)
        if len(calls) == 2:
            Path(where).write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        return real(table, where, **options)

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(OSError, match="No space left") as err:
        run_bootstrap(fitted_world, tmp_path / "out", replicates=12, batch_size=3, workers=0)
    assert not getattr(err.value, "__notes__", None)            # raised once, not noted on itself again
    written = sorted(f.name for f in (tmp_path / "out" / "batches").glob("replicates-*.parquet"))
    assert written == ["replicates-000000-000003.parquet"]      # one batch behind: the run stopped at the next
    assert not list((tmp_path / "out" / "batches").glob(".*"))      # the torn temporary file is removed


def _count(ctx, fit, vp, pp) -> float:
    from engine.model.predict import predict, prediction_tables
    return float(predict(ctx.hh, fit, ctx.pd, prediction_tables(ctx.hh, fit, ctx.pd, vp, pp)).predicted.sum())


def _recalibrated(ctx, vp, pp):
    """The fit with the common effect at which the national predicted count of (vp, pp) is the
    point's (scipy's secant), and that common effect."""
    from scipy.optimize import newton

    target = _count(ctx, ctx.fit, ctx.fit.volume.params, ctx.fit.price.params)
    at = lambda c: dataclasses.replace(ctx.fit, volume=dataclasses.replace(ctx.fit.volume, fe_common=c))  # noqa: E731
    c = newton(lambda c: _count(ctx, at(c), vp, pp) / target - 1, ctx.fit.volume.fe_common, tol=1e-15, maxiter=50)
    return at(c), c


def test_parametric_draws_keep_the_national_count(fitted_world):
    """A parametric draw gets the common effect that keeps the national predicted count, as the
    estimate (calibrated to the observed count) and a refit do. The shift is first order: on a
    draw scaled down 100-fold it agrees with the exact recalibration (scipy's secant) to 2%; on
    the draws themselves (large in this small world: second-order terms are visible) the
    national count moves far less than without it."""
    ctx = context(fitted_world)
    v = ctx.fit.volume
    target = _count(ctx, ctx.fit, v.params, ctx.fit.price.params)
    with_shift, without = [], []
    for r in range(12):
        fit, vp, pp = ctx.parametric_params(ctx.rng(r))
        with_shift.append(abs(_count(ctx, fit, vp, pp) / target - 1))
        without.append(abs(_count(ctx, ctx.fit, vp, pp) / target - 1))
        if r < 4:
            t = 0.01
            small = v.params + t * (vp - v.params)
            _, exact = _recalibrated(ctx, small, ctx.fit.price.params)
            first = v.fe_common + t * (fit.volume.fe_common - v.fe_common)
            assert abs(exact - v.fe_common) > 1e-5
            assert abs(first - exact) < 0.02 * abs(exact - v.fe_common)
    assert np.mean(with_shift) < 0.3 * np.mean(without)


def test_parametric_bands_agree_with_the_delta_method(fitted_world, tmp_path):
    """Budget sd per municipality from 300 draws vs the delta method J V J' (finite differences)."""
    res = run_bootstrap(fitted_world, tmp_path / "d", replicates=300, batch_size=100, workers=0)
    ctx = context(fitted_world)
    from engine.model.predict import predict, prediction_tables

    def budget(vp, pp):
        # as the estimate: the common effect recalibrated to the national count (exactly, by secant)
        fit, _ = _recalibrated(ctx, vp, pp)
        cost = predict(ctx.hh, fit, ctx.pd, prediction_tables(ctx.hh, fit, ctx.pd, vp, pp)).objective_cost
        return allocate(ctx.regime, cost, ctx.hist, ctx.inhabitants, ctx.tb).budget

    v, p = ctx.fit.volume, ctx.fit.price
    base_v, base_p = v.params.copy(), p.params.copy()
    cols, h = [], 1e-5
    for idx, base, comp in [(i, base_v, "v") for i in ctx.v_draw] + [(i, base_p, "p") for i in ctx.p_draw]:
        up, dn = base.copy(), base.copy()
        up[idx] += h
        dn[idx] -= h
        bu = budget(up, base_p) if comp == "v" else budget(base_v, up)
        bd = budget(dn, base_p) if comp == "v" else budget(base_v, dn)
        cols.append((bu - bd) / (2 * h))
    J = np.column_stack(cols)
    Vv = v.cov_cluster[np.ix_(ctx.v_draw, ctx.v_draw)]
    Vp = p.cov_cluster[np.ix_(ctx.p_draw, ctx.p_draw)]
    kv = len(ctx.v_draw)
    delta_sd = np.sqrt(np.einsum("gi,ij,gj->g", J[:, :kv], Vv, J[:, :kv]) + np.einsum("gi,ij,gj->g", J[:, kv:], Vp, J[:, kv:]))
    boot_sd = res.values["budget"].std(axis=0, ddof=1)
    ok = delta_sd > 1e-9 * np.abs(ctx.point_budget.budget).max()
    ratio = boot_sd[ok] / delta_sd[ok]
    # Monte Carlo error of an sd from 300 draws is about 1/sqrt(600) = 4%
    assert np.median(np.abs(ratio - 1)) < 0.05
    assert np.mean(np.abs(ratio - 1) < 0.15) > 0.95


def test_outputs_and_flags_consistent_with_bands(fitted_world, tmp_path):
    out = tmp_path / "o"
    res = run_bootstrap(fitted_world, out, replicates=30, batch_size=10, workers=0)
    write_results(res, out, level=0.05)
    import pyarrow.parquet as pq
    bands = pq.read_table(out / "bands.parquet")
    flags = pq.read_table(out / "flags.parquet")
    reps = pq.read_table(out / "replicates.parquet")
    assert bands.num_rows == flags.num_rows == 388 and reps.num_rows == 30 * 388
    q = [bands.column(f"budget_q{x}").to_numpy() for x in ("2_5", "5", "50", "95", "97_5")]
    assert all((a <= b + 1e-9).all() for a, b in zip(q, q[1:]))
    f = flags.to_pydict()
    for surplus, p, flagged in zip(f["surplus"], f["p_explained"], f["flagged"]):
        assert flagged == (surplus > 0 and p < 0.05)
    np.testing.assert_allclose(reps.column("budget").to_numpy().reshape(30, 388).sum(1), context(fitted_world).tb)


@pytest.mark.slow
def test_flags_find_planted_municipalities(tmp_path):
    from engine.model.population import read_population
    from engine.world.synth import generate

    generate(tmp_path / "pop", households=1_000_000, seed=3, planted_effect=-0.7)   # strong: a sanity check
    fit_to_folder(read_population(tmp_path / "pop"), tmp_path / "fit")
    s = Settings(population=str(tmp_path / "pop"), coefficients=str(tmp_path / "fit"), regime="2019", seed=1)
    res = run_bootstrap(s, tmp_path / "boot", replicates=200, batch_size=50, workers=0)
    f = flags_table(res, level=0.01).to_pydict()
    planted = set(context(s).truth["planted"])
    flagged = {c for c, x in zip(f["code"], f["flagged"]) if x}
    assert len(flagged & planted) >= 0.8 * len(planted)


def test_rob_cap_by_hand():
    # five municipalities, kappa = 10%:
    #   g0: B 100, S  70 -> surplus 30, above 10 is 20 clawed back (flagged)
    #   g1: B 100, S  95 -> surplus 5 <= 10: nothing (flagged)
    #   g2: B 200, S 100 -> surplus 100 but not flagged: nothing
    #   g3: B 100, S 120 -> deficit 20
    #   g4: B 100, S 105 -> deficit 5
    b = np.array([100.0, 100, 200, 100, 100])
    s = np.array([70.0, 95, 100, 120, 105])
    flagged = np.array([True, True, False, False, False])
    c = rob_cap(b, s, flagged, 0.10, "pro_rata")
    np.testing.assert_allclose(c.clawed_back, [20, 0, 0, 0, 0])
    # the 20 go pro rata to the budgets of the others (100+200+100+100 = 500)
    np.testing.assert_allclose(c.received, [0, 4, 8, 4, 4])
    np.testing.assert_allclose(c.budget, [80, 104, 208, 104, 104])
    d = rob_cap(b, s, flagged, 0.10, "deficit")
    # deficits 20 and 5 are covered first (25 > 20 available: 20 x 20/25 and 20 x 5/25)
    np.testing.assert_allclose(d.received, [0, 0, 0, 16, 4])
    d2 = rob_cap(b, s, flagged, 0.0, "deficit")
    # kappa 0: 30 + 5 = 35 back; deficits 25 covered, the other 10 pro rata to g2, g3, g4 (200, 100, 100)
    np.testing.assert_allclose(d2.clawed_back, [30, 5, 0, 0, 0])
    np.testing.assert_allclose(d2.received, [0, 0, 5, 22.5, 7.5])


@given(st.lists(st.tuples(st.floats(1, 1e6), st.floats(0, 2e6), st.booleans()), min_size=2, max_size=30),
       st.floats(0, 0.5), st.sampled_from(["pro_rata", "deficit"]))
def test_rob_cap_is_budget_neutral(rows, kappa, how):
    b, s, f = (np.array(x) for x in zip(*rows))
    c = rob_cap(b, s, f, kappa, how)
    assert np.isfinite(c.budget).all() and np.isfinite(c.unallocated)
    assert abs(c.budget.sum() + c.unallocated - b.sum()) <= 1e-9 * b.sum()
    if (~f | (b - s <= kappa * b)).any():           # somebody may receive: nothing is left unallocated
        assert c.unallocated == 0
    assert (c.received[c.clawed_back > 0] == 0).all()     # a capped municipality never receives
    capped = c.clawed_back > 0
    np.testing.assert_allclose(c.budget[capped], (s + kappa * b)[capped] + c.received[capped], rtol=1e-9,
                               atol=1e-9 * b.max())
    assert (c.budget >= 0).all() and (c.received >= 0).all()
