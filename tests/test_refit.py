"""Cluster bootstrap refits on collapsed cells, the common-effect kernel and the one-step (score) refits.

Independent references: the refit on the households themselves (frequency weights per
household), plain NumPy groupings and dense-matrix algebra, scipy's root finder, and for
the score method the full refits of the same resamples.

The world is the 30,000-household fixture with a spec that leaves out ``other_benefit``: its
rare levels have a handful of outcomes at this size, so that some resamples of municipalities
have none and cannot be refitted (a separation error names the term, as on the households).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq

from engine.model.design import DEFAULT_JOINT, JOINT_OFF, component_design, dense_design
from engine.model.fitted import fit_model, fit_to_folder
from engine.model.refit import Refitter, collapse, common_effect
from engine.uncertainty.bootstrap import run_bootstrap
from engine.uncertainty.draws import Context
from engine.uncertainty.settings import Settings
from kernels.config import N_VIRTUAL
from kernels.glm import common_shift

SPEC_2019 = Path(__file__).resolve().parents[1] / "engine" / "data" / "specs" / "2019.toml"


@pytest.fixture(scope="module")
def cluster_world(small_world, small_population, tmp_path_factory):
    root = tmp_path_factory.mktemp("refit")
    lines = [ln for ln in SPEC_2019.read_text(encoding="utf-8").splitlines() if not ln.startswith("other_benefit")]
    spec = root / "spec.toml"
    spec.write_text("\n".join(lines).replace('name = "2019"', 'name = "no-other-benefit"') + "\n", encoding="utf-8")
    fit_to_folder(small_population, root / "fit", spec=spec)
    settings = Settings(population=str(small_world), coefficients=str(root / "fit"), regime="2019",
                        method="cluster", seed=5)
    return settings, Context(settings)


def test_collapse_sums_weights_and_outcomes_per_cell(cluster_world):
    _, ctx = cluster_world
    d = component_design(ctx.hh, ctx.fit.spec.volume, ctx.fit.norms)
    rng = np.random.default_rng(1)
    w = rng.integers(0, 4, d.n).astype(np.float64)
    from dataclasses import replace
    d = replace(d, weight=w)
    c = collapse(d)
    # NumPy twin: unique rows of (neighbourhood, codes) and their sums
    rows = np.column_stack([d.nbhd, d.codes]).astype(np.int64)
    uniq, inv = np.unique(rows, axis=0, return_inverse=True)
    W = np.bincount(inv.ravel(), weights=w)
    Y = np.bincount(inv.ravel(), weights=w * d.y)
    got = np.column_stack([c.nbhd, c.codes]).astype(np.int64)
    order = np.lexsort(got.T[::-1])
    np.testing.assert_array_equal(got[order], uniq)
    np.testing.assert_allclose(c.weight[order], W)
    np.testing.assert_allclose(c.y[order] * c.weight[order], Y, atol=1e-9)
    np.testing.assert_array_equal(c.joint, DEFAULT_JOINT.codes(c.codes))
    assert c.n < d.n


def test_cell_refit_equals_household_refit(cluster_world):
    _, ctx = cluster_world
    mun = ctx.hh.municipality()
    for r in range(3):
        mult = ctx.multiplicities(ctx.rng(r))
        cells = ctx.refitter.refit(mult)
        households = fit_model(ctx.hh, ctx.fit.spec, weight=mult[mun], start=ctx.fit)
        for name in ("volume", "price"):
            a, b = cells.component(name), households.component(name)
            np.testing.assert_array_equal(np.isfinite(a.params), np.isfinite(b.params))
            fin = np.isfinite(b.params)
            np.testing.assert_allclose(a.params[fin], b.params[fin], rtol=0, atol=1e-8)
            assert abs(a.fe_common - b.fe_common) < 1e-8
            assert a.dropped_municipalities == b.dropped_municipalities


def test_common_shift_solves_its_equation(cluster_world):
    _, ctx = cluster_world
    d = collapse(component_design(ctx.hh, ctx.fit.spec.volume, ctx.fit.norms))
    theta = np.nan_to_num(ctx.fit.volume.params)
    level_coef, nb_eta = d.layout.tables(theta, d.nb_cont, d.nb_mun, fe_value=0.0)
    X = dense_design(d)
    fe = np.arange(d.layout.n_params) >= d.layout.fe_start
    eta0 = X[:, ~fe] @ theta[~fe]
    for target_share, c0 in ((0.3, 0.0), (1.0, ctx.fit.volume.fe_common), (2.0, -3.0)):
        target = float(np.dot(d.weight, d.y)) * target_share
        want = brentq(lambda c: np.dot(d.weight, 1 / (1 + np.exp(-(eta0 + c)))) - target, -30, 30, xtol=1e-13)
        got = common_shift(d.joint, JOINT_OFF, d.layout.joint_map() @ level_coef, d.nbhd, nb_eta, d.weight, target,
                           N_VIRTUAL, c0)
        assert abs(got - want) < 1e-9
    assert abs(common_effect(d, ctx.fit.volume.params) - ctx.fit.volume.fe_common) < 1e-9


def _one_step_twin(ctx, name, mult):
    """theta + H^-1 S'(m - 1) and the linearised common effect, with a dense design in NumPy."""
    comp = ctx.fit.component(name)
    spec = getattr(ctx.fit.spec, name)
    d = component_design(ctx.hh, spec, ctx.fit.norms)
    X = dense_design(d)
    y = d.y.astype(np.float64)
    mun = d.nb_mun[d.nbhd]
    dropped = np.isin(ctx.hh.mun_codes[mun], np.asarray(comp.dropped_municipalities, dtype=object))
    act = np.flatnonzero(np.isfinite(comp.params))
    theta = np.nan_to_num(comp.params)
    keep = ~dropped
    Xa = X[np.ix_(keep, act)]
    p = 1 / (1 + np.exp(-(Xa @ theta[act])))
    H = Xa.T @ (Xa * (p * (1 - p))[:, None])
    S = np.zeros((ctx.n_mun, act.size))
    np.add.at(S, mun[keep], Xa * (y[keep] - p)[:, None])
    delta = np.linalg.solve(H, S.T @ (mult - 1))
    params = comp.params.copy()
    params[act] += delta
    fe_common = comp.fe_common
    if d.layout.fe_start >= 0:
        nonfe = np.arange(X.shape[1]) < d.layout.fe_start
        p0 = 1 / (1 + np.exp(-(X[:, nonfe] @ theta[nonfe] + comp.fe_common)))
        r = np.bincount(mun, weights=y - p0, minlength=ctx.n_mun)
        full = np.zeros_like(theta)
        full[act] = delta
        dpred = (X[:, nonfe] * (p0 * (1 - p0))[:, None]).sum(0) @ full[nonfe]
        fe_common += (r @ (mult - 1) - dpred) / (p0 * (1 - p0)).sum()
    return params, fe_common


def test_one_step_matches_a_dense_numpy_twin(cluster_world):
    _, ctx = cluster_world
    for r in (0, 1):
        mult = ctx.multiplicities(ctx.rng(r))
        got = ctx.refitter.one_step(mult)
        for name in ("volume", "price"):
            params, fe_common = _one_step_twin(ctx, name, mult)
            np.testing.assert_allclose(got.component(name).params, params, rtol=1e-7, atol=1e-9)
            assert abs(got.component(name).fe_common - fe_common) < 1e-8


def test_score_bands_agree_with_full_refits(cluster_world, tmp_path):
    """The same 60 resamples refitted in full and by one step: per municipality the sd and the
    90% band width of the budget share agree within the Monte Carlo error of 60 replicates
    (about 1/sqrt(2 x 59) = 9% for an sd), and the replicates themselves move together."""
    settings, _ = cluster_world
    from dataclasses import replace
    B = 60
    full = run_bootstrap(settings, tmp_path / "cluster", replicates=B, batch_size=20, workers=0)
    score = run_bootstrap(replace(settings, method="score"), tmp_path / "score", replicates=B, batch_size=20,
                          workers=0)
    a, b = full.values["share"], score.values["share"]
    varies = a.std(0) > 1e-9 * a.mean(0)
    a, b = a[:, varies], b[:, varies]
    mc = 1 / np.sqrt(2 * (B - 1))
    ratio = b.std(0, ddof=1) / a.std(0, ddof=1)
    assert abs(np.median(ratio) - 1) < mc
    assert np.mean(np.abs(ratio - 1) < 2 * mc) > 0.95
    width = lambda x: np.quantile(x, 0.95, axis=0) - np.quantile(x, 0.05, axis=0)  # noqa: E731
    assert abs(np.median(width(b) / width(a)) - 1) < 1.5 * mc
    corr = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(a.shape[1])]
    assert np.median(corr) > 0.9


@pytest.mark.parametrize("method", ["cluster", "score"])
def test_resampling_methods_identical_for_any_batch_size(cluster_world, tmp_path, method):
    settings, _ = cluster_world
    from dataclasses import replace
    s = replace(settings, method=method)
    one = run_bootstrap(s, tmp_path / "one", replicates=6, batch_size=6, workers=0)
    two = run_bootstrap(s, tmp_path / "two", replicates=6, batch_size=4, workers=0)
    for k in one.values:
        np.testing.assert_array_equal(one.values[k], two.values[k])


def test_score_identical_on_two_dask_workers(cluster_world, tmp_path):
    settings, _ = cluster_world
    from dataclasses import replace
    s = replace(settings, method="score")
    serial = run_bootstrap(s, tmp_path / "serial", replicates=6, batch_size=6, workers=0)
    dask = run_bootstrap(s, tmp_path / "dask", replicates=6, batch_size=2, workers=2)
    for k in serial.values:
        np.testing.assert_array_equal(serial.values[k], dask.values[k])


def test_refitter_is_built_only_for_resampling_methods(cluster_world):
    settings, ctx = cluster_world
    assert isinstance(ctx.refitter, Refitter)
    from dataclasses import replace
    assert Context(replace(settings, method="parametric")).refitter is None
