"""The coverage study's calibration statistics (scripts/coverage_study.py): principal-direction
z-scores and the reference distribution of a pooled coverage, against hand-computed cases and
draws whose distribution is known."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "coverage_study", Path(__file__).resolve().parents[1] / "scripts" / "coverage_study.py")
cs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cs)


def test_principal_z_diagonal_by_hand():
    # replicates whose sample covariance is exactly diag(9, 1, 0.01) (orthonormal centred columns):
    # the first direction is coordinate 0, the second coordinate 1
    rng = np.random.default_rng(1)
    B = 200
    x = rng.standard_normal((B, 3))
    q = np.linalg.qr(x - x.mean(axis=0))[0] * np.sqrt(B - 1)
    reps = 5.0 + q * np.array([3.0, 1.0, 0.1])
    z, frac = cs.principal_z(reps, np.array([6.0, -1.0, 0.0]), np.zeros(3))
    assert np.abs(z) == pytest.approx([2.0, 1.0], rel=1e-9)
    assert frac == pytest.approx(np.array([9.0, 1.0]) / 10.01, rel=1e-9)


def test_principal_z_standard_normal_when_truth_is_a_draw():
    # a nearly rank-one spread over 50 "municipalities", as a coefficient moving all shares;
    # when the truth's error has the replicates' distribution, z is N(0, 1) over worlds
    rng = np.random.default_rng(2)
    G, worlds = 50, 400
    a, b = rng.standard_normal(G), rng.standard_normal(G)
    draw = lambda n: np.outer(rng.standard_normal(n), a) + 0.3 * np.outer(rng.standard_normal(n), b) \
        + 0.01 * rng.standard_normal((n, G))  # noqa: E731
    z = np.array([cs.principal_z(draw(400), np.zeros(G), draw(1)[0])[0] for _ in range(worlds)])
    # mean square over 400 worlds: chi-square(400) / 400 has sd 0.07
    assert np.mean(z[:, 0] ** 2) == pytest.approx(1.0, abs=0.25)
    assert np.mean(z[:, 1] ** 2) == pytest.approx(1.0, abs=0.25)
    # twice as wide a bootstrap: mean square about 1/4
    z_wide = np.array([cs.principal_z(2 * draw(400), np.zeros(G), draw(1)[0])[0][0] for _ in range(worlds)])
    assert np.mean(z_wide ** 2) == pytest.approx(0.25, abs=0.08)


def test_reference_coverage_by_hand():
    reps = np.array([[0.0, 5.0], [1.0, 1.0], [2.0, -3.0]])
    lo, hi = np.array([0.5, 0.0]), np.array([2.0, 4.0])
    # replicate 0: coordinate 0 out (0 < 0.5), 1 out (5 > 4); replicate 1: both in; replicate 2: 0 in, 1 out
    assert cs.reference_coverage(reps, lo, hi).tolist() == [0.0, 1.0, 0.5]


def test_pooled_reference_quantiles_and_probabilities():
    # world A always covers all, world B covers all or nothing with probability 1/2 each
    per_world = [np.ones(10), np.array([1.0, 0.0] * 5)]
    r = cs.pooled_reference(per_world, observed=1.0, draws=40000, seed=3)
    assert r["p_at_least_observed"] == pytest.approx(0.5, abs=0.02)
    assert r["p_at_most_observed"] == 1.0
    assert r["quantiles_5_25_50_75_95"][0] == 0.5 and r["quantiles_5_25_50_75_95"][-1] == 1.0
    assert r["p_in_0_93_0_97"] == 0.0


def test_t_referred_scores_are_standard_normal_for_t_variates():
    rng = np.random.default_rng(5)
    df = np.repeat([3.0, 9.0, 40.0], 40_000)
    z = rng.standard_t(df)
    assert np.mean(z[df == 3.0] ** 2) > 2          # df / (df - 2) = 3
    zt = cs.t_referred(z, df)
    assert np.mean(zt ** 2) == pytest.approx(1.0, abs=0.02)
    assert cs.t_referred(np.array([1.959963984540054]), np.array([1e12]))[0] == pytest.approx(1.959963984540054)


def test_price_target_is_the_truth_without_overpaid_households(small_world, monkeypatch):
    """The estimator's target with no clipped fractions is the truth's own coefficients; with
    them it solves the score equation of the expected clipped fraction (a hand check on the
    intercept's direction: clipping raises every mean fraction, so the intercept rises)."""
    from types import SimpleNamespace

    from engine.model.design import households_from_population
    from engine.model.fitted import fit_model
    from engine.model.population import read_population
    from engine.world import truth as T

    pop = read_population(small_world)
    hh = households_from_population(pop)
    fit = fit_model(hh, "2019")
    ctx = SimpleNamespace(hh=hh, fit=fit)
    pp = np.array([T.PRICE.get(t, 0.0) for t in fit.price.term_names])
    monkeypatch.setattr(T, "PRICE_OVERPAID_SHARE", 0.0)
    np.testing.assert_allclose(cs.price_target(ctx, pp), pp, atol=1e-10)
    monkeypatch.setattr(T, "PRICE_OVERPAID_SHARE", 0.003)
    b = cs.price_target(ctx, pp)
    assert b[0] > pp[0]
    assert np.max(np.abs(b - pp)) < 0.05
