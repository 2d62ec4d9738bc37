"""The budget rules as the Besluit writes them: hand-computed cases from the articles
(Besluit WWB 2007 art. 4-7 for 2011; Besluit Participatiewet art. 2-5, 8a and the annex for
2015 and 2017), the MAU deduction, where the engine's mix of shares agrees with the Besluit,
the ex-ante limitation within compartments, deductions by key, the granieten voorraad."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, given

from engine.rules.budget import allocate, hand_out, size_class
from engine.rules.regime import Deduction, load_regime
from test_rules import worlds

R2011, R2015, R2017, R2019, R2005 = (load_regime(y) for y in ("2011", "2015", "2017", "2019", "2005"))


def test_regime_files_follow_the_law():
    assert (R2011.formula, R2011.historical_up_to, R2011.objective_from) == ("besluit_2007", 25_000, 40_000)
    assert (R2015.formula, R2015.historical_up_to, R2015.transition_historical) == ("besluit_2015", 15_000, 0.5)
    assert R2017.transition_historical == 0.25 and R2019.transition_historical == 0.0
    assert (R2011.mau.lower, R2011.mau.upper) == (25_000, 40_000) == (R2015.mau.lower, R2015.mau.upper)
    for year in range(2011, 2026):
        r = load_regime(str(year))
        assert r.year == year and r.macrobudget > 4e9
        assert r.kostendelers_cut_off_age == (None if year < 2015 else 21 if year <= 2022 else 27)
    assert load_regime("2019").macrobudget == 6_219_700_000.0       # provisional 2019, published
    assert [r.objective_share for r in map(load_regime, ("2005", "2006", "2007"))] == [0.73, 0.875, 1.0]
    assert [r.granite_weight for r in map(load_regime, ("2005", "2006", "2007"))] == [1.0, 0.75, 0.5]


def test_2011_small_pro_rata_large_with_mau():
    inh = np.array([20_000, 31_000, 100_000])          # m = 0, (31,000 - 25,000) / 15,000 = 0.4, 1
    o = np.array([10.0, 40.0, 150.0])                  # objective costs, EUR
    k = np.array([12.0, 30.0, 160.0])                  # historical costs (gemeentelijke bijstandslasten), EUR
    # art. 5-7: G = 12, 0.4 x 40 + 0.6 x 30 = 34, 150; TG = 196
    # art. 4(1): U = G / TG x (TB + TBMAU) = G x 210 / 196 = G x 15 / 14
    u = np.array([12.0, 34.0, 150.0]) * 15 / 14
    # art. 4(6): B = TBMAU x m U / sum(m U) over > 25,000 (m = 0.4, 1): 10 x 13.6 / 163.6, 10 x 150 / 163.6
    mau = np.array([0.0, 10 * 13.6 / 163.6, 10 * 150 / 163.6])
    b = allocate(R2011, o, k / k.sum(), inh, 200.0, cap=None, historical_cost=k, mau=10.0)
    np.testing.assert_allclose(b.budget, u - mau, rtol=1e-12)
    np.testing.assert_allclose(b.mau_deduction, mau, rtol=1e-12)
    assert b.budget.sum() == pytest.approx(200.0, abs=1e-9)
    with pytest.raises(ValueError, match="euro amounts"):
        allocate(R2011, o, k / k.sum(), inh, 200.0, cap=None)


# three municipalities: <= 15,000 (compartment of its own), 27,500 (m = 12,500 / 25,000 = 0.5,
# and above 25,000 for the MAU with m = 2,500 / 15,000 = 1/6), 80,000 (m = 1)
INH = np.array([12_000, 27_500, 80_000])
L = np.array([20.0, 30.0, 150.0])                      # historical costs, TL = 200
O = np.array([5.0, 40.0, 100.0])


def _by_hand(transition: float, tbmau: float, tb: float = 1000.0) -> np.ndarray:
    total = tb + tbmau
    small = total * 20 / 200                            # art. 2(1), 2(4): B_klein = 20 / 200
    b15 = total * 180 / 200                             # art. 2(5): B_15dzd = 1 - B_klein
    bl = b15 * np.array([30.0, 150.0]) / 180            # art. 4(2): BL = L / TL_15dzd x ... x B_15dzd
    fixed = 0.5 * bl[0]                                 # (1 - m) BL of the pro rata municipality
    c = (b15 - fixed) / (0.5 * 40 + 100)                # annex: O calibrated, historical parts fixed
    g = np.array([0.5 * 40 * c + fixed, 100 * c])       # art. 4(1), 5
    u = transition * bl + (1 - transition) * g          # art. 8a (G / TG_15dzd x b15 = G)
    mu = np.array([u[0] / 6, u[1]])                     # art. 2(8)
    return np.concatenate([[small], u - tbmau * mu / mu.sum()])


@pytest.mark.parametrize("regime, transition", [(R2015, 0.5), (R2017, 0.25), (R2019, 0.0)])
def test_2015_2017_small_pro_rata_large_with_mau(regime, transition):
    b = allocate(regime, O, L / L.sum(), INH, 1000.0, mau=60.0)
    np.testing.assert_allclose(b.budget, _by_hand(transition, 60.0), rtol=1e-12)
    assert b.budget.sum() == pytest.approx(1000.0, abs=1e-9)


def test_2015_numbers():
    # worked out: small 106; BL = 159, 795; c = 874.5 / 120 = 7.2875; G = 225.25, 728.75;
    # U = 0.5 (159, 795) + 0.5 (225.25, 728.75) = 192.125, 761.875; MAU 60 x (32.0208, 761.875) / 793.8958
    b = allocate(R2015, O, L / L.sum(), INH, 1000.0, mau=60.0).budget
    np.testing.assert_allclose(b, [106.0, 192.125 - 60 * (192.125 / 6) / (192.125 / 6 + 761.875),
                                   761.875 - 60 * 761.875 / (192.125 / 6 + 761.875)], rtol=1e-12)
    # 2017 without MAU: small 100; BL 150, 750; c = 825 / 120; G = 212.5, 687.5; U = 0.25 BL + 0.75 G
    np.testing.assert_allclose(allocate(R2017, O, L / L.sum(), INH, 1000.0).budget, [100.0, 196.875, 703.125])


# --------------------------------------------------------------------------- shares against the Besluit

SHARES_2019 = dataclasses.replace(R2019, formula="shares")


@given(world=worlds(min_size=3))
def test_besluit_2015_is_shares_rescaled(world):
    """The Besluit (2015 on) gives U = TB [(1 - m) h + m s sum(m h) / sum(m s)] (small ones
    m = 0): the historical parts are fixed and only the objective parts absorb the gap. The
    engine's mix of shares gives TB [m s + (1 - m) h] / (1 + sum m (s - h)); the two agree
    exactly when sum m s = sum m h, and otherwise differ for every municipality with m < 1."""
    inh, cost, hist, tb = world
    h, s = hist / hist.sum(), cost / cost.sum()
    m = np.clip((inh - 15_000) / 25_000, 0, 1)
    assume(m.sum() > 0)
    expected = tb * ((1 - m) * h + m * s * (m @ h) / (m @ s))
    np.testing.assert_allclose(allocate(R2019, cost, h, inh, tb).budget, expected, rtol=1e-9, atol=1e-9 * tb)
    # the same budgets when the small municipalities' objective costs make sum m s = sum m h
    small = m == 0
    assume(small.any())
    f = ((m @ cost) / (m @ h) - cost[~small].sum()) / cost[small].sum()
    assume(f > 1e-6)
    o2 = np.where(small, f * cost, cost)
    np.testing.assert_allclose(m @ (o2 / o2.sum()), m @ h, rtol=1e-9)
    np.testing.assert_allclose(allocate(SHARES_2019, o2, h, inh, tb).budget,
                               allocate(R2019, o2, h, inh, tb).budget, rtol=1e-7, atol=1e-7 * tb)


@given(world=worlds(min_size=3))
def test_besluit_2007_is_shares_when_totals_agree(world):
    """Besluit WWB 2007 mixes euros: with sum O = sum K it is the normalised mix of shares."""
    inh, cost, k, tb = world
    shares = dataclasses.replace(R2011, formula="shares")
    o = cost * k.sum() / cost.sum()
    a = allocate(R2011, o, k / k.sum(), inh, tb, cap=None, historical_cost=k).budget
    np.testing.assert_allclose(a, allocate(shares, o, k / k.sum(), inh, tb, cap=None).budget, rtol=1e-9)


# --------------------------------------------------------------------------- ex-ante limitation

@given(world=worlds(min_size=3))
def test_ex_ante_cap_moves_no_euro_between_compartments(world):
    inh, cost, hist, tb = world
    inh = inh / 3 + 20_000                              # spread over <40k, 40-60k, >60k
    b = allocate(R2005, cost, hist / hist.sum(), inh, tb)
    cls = size_class(inh, R2005.historical_up_to, R2005.objective_from)
    np.testing.assert_allclose(np.bincount(cls, weights=b.budget, minlength=3),
                               np.bincount(cls, weights=b.uncapped, minlength=3), rtol=1e-9, atol=1e-6)
    historical = b.objective_weight == 0                # not in the objective model: untouched
    np.testing.assert_allclose(b.budget[historical], b.uncapped[historical], rtol=1e-12)


# --------------------------------------------------------------------------- deductions

def test_hand_out_by_key():
    d = (Deduction("vergunninghouders", 90.0, "permit_holders"), Deduction("reserve", 50.0))
    out = hand_out(d, {"permit_holders": np.array([1.0, 2.0, 0.0])}, factor=0.5)
    assert list(out) == ["vergunninghouders"]
    np.testing.assert_allclose(out["vergunninghouders"], [15.0, 30.0, 0.0])
    with pytest.raises(ValueError, match="not a column"):
        hand_out(d, {}, 1.0)


def test_granieten_voorraad_counts_long_durations(small_population):
    from engine.model.municipal import granite_comparison, granite_from_durations

    hh = small_population.households
    codes = hh.column("municipality").to_pylist()
    long = (hh.column("bijstand").to_numpy() == 1) & (hh.column("duration_class").to_numpy() >= 4)
    order = {c: i for i, c in enumerate(small_population.municipality_codes)}
    expected = np.zeros(len(order))
    for c, x in zip(codes, long):
        expected[order[c]] += x
    np.testing.assert_array_equal(granite_from_durations(small_population), expected)
    assert granite_comparison(small_population)["derived_total"] == expected.sum()
