"""Distribution rules: hand-computed five-municipality cases, regime files, properties."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from engine.io.config import DATA
from engine.rules.budget import (allocate, ex_ante_cap, historical_shares, objective_shares, objective_weight,
                                 size_class, total_budget)
from engine.rules.regime import CapRule, load_regime
from engine.rules.vangnet import vangnet_payout

R2019 = load_regime("2019")
R2005 = load_regime("2005")


# --------------------------------------------------------------------------- regime files

def test_builtin_regimes():
    assert (R2019.historical_up_to, R2019.objective_from, R2019.objective_share) == (15_000, 40_000, 1.0)
    assert (R2005.historical_up_to, R2005.objective_from, R2005.objective_share) == (40_000, 60_000, 0.73)
    assert R2019.macrobudget == 6_219_700_000.0 and R2019.cap is None and not R2019.compartments
    assert R2005.macrobudget is None and R2005.compartments
    assert (R2005.cap.theta, R2005.cap.band_to) == (0.10, 0.10)
    assert {c.name for c in R2005.cap_variants} == {"5%", "7.5%", "5-10% half", "10%"}
    assert (R2019.vangnet.own_risk, R2019.vangnet.full_from, R2019.vangnet.paid_in_band) == (0.075, 0.125, 0.5)
    assert load_regime(DATA / "regimes" / "2019.toml") == dataclasses.replace(R2019)


def _broken(tmp_path: Path, old: str, new: str, base: str = "2019") -> Path:
    text = (DATA / "regimes" / f"{base}.toml").read_text(encoding="utf-8")
    assert re.search(old, text, flags=re.M), old
    path = tmp_path / "mine.toml"
    path.write_text(re.sub(old, new, text, count=1, flags=re.M), encoding="utf-8")
    return path


@pytest.mark.parametrize("old, new, key, words", [
    (r"^objective_from = 40_000", "objective_from = 10_000", "objective_weight.objective_from", "ordered"),
    (r"^historical_up_to = 15_000\n", "", "objective_weight.historical_up_to", "missing"),
    (r"^objective_share = 1.0", "objective_share = 1.2", "objective_weight.objective_share", "outside [0, 1]"),
    (r"^rule = \"pro_rata\"", 'rule = "step"', "objective_weight.rule", "not one of"),
    (r"^normalise = true", 'normalise = "yes"', "budget.normalise", "expected true or false"),
    (r"^macrobudget = .*", "macrobudget = -1.0", "budget.macrobudget", "negative"),
    (r"^vangnet_reserve = 0.0", "vangnet_reserve = -5.0", "budget.deductions.vangnet_reserve", "negative"),
    (r"^year = \"2019\"", 'year = "1999"', "vangnet.year", "no rule"),
    (r"full_from = 0.125(, paid_in_band = 0.5 \}  # 50%)", r"full_from = 0.05\1",
     "vangnet.rules.2019.full_from", "ordered"),
    (r"^\"2019\" = \{ own_risk = 0.075", '"2019" = { own_risk = 1.5', "vangnet.rules.2019.own_risk", "outside"),
])
def test_bad_regime_file_names_file_and_key(tmp_path, old, new, key, words):
    path = _broken(tmp_path, old, new)
    with pytest.raises(ValueError) as err:
        load_regime(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value) and words in str(err.value), str(err.value)


@pytest.mark.parametrize("old, new, key", [
    (r"^band_to = 0.10", "band_to = 0.05", "ex_ante_cap.band_to"),
    (r"^band_share = 1.0", "band_share = -0.5", "ex_ante_cap.band_share"),
    (r"\"5%\" = \{ theta = 0.05, ", '"5%" = { ', "ex_ante_cap.variants.5%.theta"),
    (r"\"share_low_educated\", ", '"share_tall", ', "objective.variables"),
    (r"^normalise = true", "normalise = false", "budget.compartments"),
])
def test_bad_2005_file(tmp_path, old, new, key):
    with pytest.raises(ValueError, match=re.escape(f"'{key}'")):
        load_regime(_broken(tmp_path, old, new, "2005"))


def test_not_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_regime(bad)
    with pytest.raises(FileNotFoundError, match="no regime file .*none.toml"):
        load_regime(tmp_path / "none.toml")
    with pytest.raises(FileNotFoundError, match="no built-in regime 'none'; built in: 2005, 2006, 2007, 2011, 2012, .*, 2025"):
        load_regime("none")                          # a bare name is a built-in, never a file in the cwd


# --------------------------------------------------------------------------- hand-computed cases

def test_objective_weight_2019_thresholds():
    n = np.array([10_000, 15_000, 15_001, 27_500, 40_000, 40_001])
    # (N - 15000) / 25000 clipped to [0, 1]: 0, 0, 1/25000, 12500/25000, 1, 1
    np.testing.assert_allclose(objective_weight(n, R2019), [0, 0, 4e-5, 0.5, 1, 1])


def test_objective_weight_2005_thresholds():
    n = np.array([39_999, 40_000, 50_000, 60_000, 60_001])
    # (N - 40000) / 20000 clipped, times phi = 0.73: 0, 0, 0.5 * 0.73, 0.73, 0.73
    np.testing.assert_allclose(objective_weight(n, R2005), [0, 0, 0.365, 0.73, 0.73])


def test_size_class_boundaries():
    # class 0: N < lower; 1: lower <= N <= upper; 2: N > upper
    np.testing.assert_array_equal(size_class([14_999, 15_000, 40_000, 40_001], 15_000, 40_000), [0, 1, 1, 2])


def test_historical_shares():
    spend = np.array([100, 200, 300, 400, 50.0])
    hh = np.array([110, 100, 90, 200, 10])
    hh2 = np.array([100, 100, 100, 200, 0])
    # L = spending * hh / hh2 = 110, 200, 270, 400, and 50 uncorrected (hh2 = 0); sum 1030
    np.testing.assert_allclose(historical_shares(spend, hh, hh2), np.array([110, 200, 270, 400, 50]) / 1030)
    np.testing.assert_allclose(historical_shares(spend, hh, hh2, correct=False), spend / 1050)


def test_distribute_2019_normalised_and_literal():
    inh = np.array([10_000, 15_000, 27_500, 40_000, 100_000])   # w = 0, 0, 0.5, 1, 1
    cost = np.array([10, 20, 30, 20, 20.0])                     # s = 0.1, 0.2, 0.3, 0.2, 0.2
    hist = np.array([0.3, 0.2, 0.1, 0.2, 0.2])
    # raw = w s + (1 - w) H = 0.3, 0.2, 0.5*0.3 + 0.5*0.1 = 0.2, 0.2, 0.2; sum 1.1
    shares = dataclasses.replace(R2019, formula="shares")    # the engine's mix of shares
    b = allocate(shares, cost, hist, inh, 1000.0)
    np.testing.assert_allclose(b.objective_share, [0.1, 0.2, 0.3, 0.2, 0.2])
    np.testing.assert_allclose(b.objective_weight, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(b.budget, np.array([0.3, 0.2, 0.2, 0.2, 0.2]) / 1.1 * 1000)
    assert abs(b.residual) < 1e-9 and math.isnan(b.ceiling)
    literal = allocate(dataclasses.replace(shares, normalise=False), cost, hist, inh, 1000.0)
    np.testing.assert_allclose(literal.budget, [300, 200, 200, 200, 200])     # TB * raw
    assert literal.residual == pytest.approx(-100.0)                          # 1000 - 1100


def test_distribute_2005_compartments():
    inh = np.array([30_000, 35_000, 50_000, 70_000, 80_000])    # classes 0, 0, 1, 2, 2
    cost = np.array([1, 1, 2, 3, 3.0])                          # s = 0.1, 0.1, 0.2, 0.3, 0.3
    hist = np.array([0.2, 0.1, 0.2, 0.2, 0.3])
    # w = 0, 0, 0.365, 0.73, 0.73
    # raw = 0.2, 0.1, 0.365*0.2 + 0.635*0.2 = 0.2, 0.73*0.3 + 0.27*0.2 = 0.273, 0.73*0.3 + 0.27*0.3 = 0.3
    # compartments by objective share: <40k 0.2, 40-60k 0.2, >60k 0.6 of TB = 1000
    # <40k: 200 split 0.2 : 0.1; 40-60k: 200; >60k: 600 split 0.273 : 0.3
    b = allocate(R2005, cost, hist, inh, 1000.0, cap=None)
    np.testing.assert_allclose(b.budget, [400 / 3, 200 / 3, 200, 600 * 0.273 / 0.573, 600 * 0.3 / 0.573])
    assert b.budget.sum() == pytest.approx(1000.0)


CAP10 = CapRule("10%", 0.10, 0.10, 1.0)
REF = np.full(5, 100.0)


@pytest.mark.parametrize("budget, expected, u", [
    # -20% floored to 90 (top-up 10); the 20% gainer is cut to 100 (0.20 - u) = 10 -> u = 0.10
    ([80, 95, 100, 105, 120], [90, 95, 100, 105, 110], 0.10),
    # top-up 5 (85 -> 90); 100 (0.20 - u) = 5 -> u = 0.15: gains up to 15% stay
    ([85, 95, 100, 100, 120], [90, 95, 100, 100, 115], 0.15),
    # top-up 20 (70 -> 90); gains 15% and 20%: (0.15 - u) + (0.20 - u) = 0.20 -> u = 0.075 < theta
    ([70, 95, 100, 115, 120], [90, 95, 100, 107.5, 107.5], 0.075),
    # nobody loses more than 10%: nothing changes
    ([92, 95, 100, 105, 108], [92, 95, 100, 105, 108], math.nan),
])
def test_cap_ceiling(budget, expected, u):
    out, ceiling = ex_ante_cap(np.array(budget, float), REF, CAP10)
    np.testing.assert_allclose(out, expected)
    assert out.sum() == pytest.approx(500.0)
    assert ceiling == pytest.approx(u, nan_ok=True)


def test_cap_proportional():
    prop = dataclasses.replace(CAP10, financing="proportional")
    # top-up 10 (80 -> 90); gains beyond 10%: 4 (114) and 10 (120), together 14 >= 10:
    # they pay 10 * 4/14 and 10 * 10/14
    out, _ = ex_ante_cap(np.array([80, 95, 91, 114, 120.0]), REF, prop)
    np.testing.assert_allclose(out, [90, 95, 91, 114 - 40 / 14, 120 - 100 / 14])
    # the ceiling rule on the same budgets: (0.14 - u) + (0.20 - u) = 0.10 -> u = 0.12
    out, u = ex_ante_cap(np.array([80, 95, 91, 114, 120.0]), REF, CAP10)
    np.testing.assert_allclose(out, [90, 95, 91, 112, 112])
    # top-up 15 but gains beyond 10% only 2 + 3 = 5: falls back to the ceiling,
    # (0.12 - u) + (0.13 - u) = 0.15 -> u = 0.05
    out, u = ex_ante_cap(np.array([75, 100, 100, 112, 113.0]), REF, prop)
    np.testing.assert_allclose(out, [90, 100, 100, 105, 105])
    assert u == pytest.approx(0.05)


def test_cap_half_shared_band():
    band = CapRule("5-10% half", 0.05, 0.10, 0.5)
    # kept: min(x, 5%) + half of the part between 5% and 10%, nothing beyond 10%
    # -20% keeps 5 + 2.5 = 7.5% -> 92.5 (+12.5); -8% keeps 5 + 1.5 = 6.5% -> 93.5 (+1.5); -4% stays
    # top-up 14 from gains 12% and 20%: (0.12 - u) + (0.20 - u) = 0.14 -> u = 0.09
    out, u = ex_ante_cap(np.array([80, 92, 96, 112, 120.0]), REF, band)
    np.testing.assert_allclose(out, [92.5, 93.5, 96, 109, 109])
    assert u == pytest.approx(0.09)


def test_cap_in_distribute_keeps_tb():
    inh = np.array([30_000, 45_000, 65_000, 80_000, 90_000])
    cost = np.array([1.0, 1.0, 1.0, 4.0, 0.2])
    hist = np.full(5, 0.2)
    b = allocate(dataclasses.replace(R2005, compartments=False), cost, hist, inh, 1000.0)
    e = b.budget / (1000 * hist) - 1
    assert e.min() >= -0.10 - 1e-12 and b.budget.sum() == pytest.approx(1000.0, abs=0.01)
    assert not np.allclose(b.budget, b.uncapped)


def test_vangnet_bands_2019():
    budget = np.full(5, 100.0)
    spending = np.array([90, 107.5, 110, 112.5, 120])
    # deficit 0 (surplus), 7.5 (all own risk), 10 (half of 2.5), 12.5 (half of 5), 20 (2.5 + all of 7.5)
    np.testing.assert_allclose(vangnet_payout(spending, budget, R2019.vangnet), [0, 0, 1.25, 2.5, 10])


def test_vangnet_iau_2005():
    # own risk 10%, everything above it paid
    np.testing.assert_allclose(vangnet_payout(np.array([90, 105, 110, 112.5, 120]), np.full(5, 100.0),
                                              R2005.vangnet), [0, 0, 0, 2.5, 10])


def test_total_budget():
    # 6,219.7 mln x 30,000 / 7,794,075 households
    assert total_budget(R2019, 30_000, 1.0) == pytest.approx(6_219_700_000 * 30_000 / 7_794_075)
    assert total_budget(R2005, 123, 5e8) == 5e8                   # TB = spending in t
    with pytest.raises(ValueError, match="not positive"):
        total_budget(R2005, 123, 0.0)


def test_shares_reject_bad_input():
    with pytest.raises(ValueError, match="objective cost"):
        objective_shares(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="not positive"):
        objective_shares(np.zeros(3))


# --------------------------------------------------------------------------- properties

@st.composite
def worlds(draw, min_size=2, max_size=60):
    n = draw(st.integers(min_size, max_size))
    pos = st.floats(1.0, 1e8, allow_nan=False, allow_infinity=False)
    inh = np.array(draw(st.lists(st.floats(500, 900_000), min_size=n, max_size=n)))
    cost = np.array(draw(st.lists(pos, min_size=n, max_size=n)))
    spend = np.array(draw(st.lists(pos, min_size=n, max_size=n)))
    tb = draw(st.floats(1e3, 1e10))
    return inh, cost, historical_shares(spend, np.ones(n), np.ones(n)), tb


REGIMES = [R2019, R2005, dataclasses.replace(R2005, compartments=False),
           dataclasses.replace(R2005, cap=dataclasses.replace(R2005.cap_variants[2], financing="ceiling"))]


@pytest.mark.parametrize("regime", REGIMES, ids=["2019", "2005", "2005-national", "2005-band"])
@given(world=worlds())
def test_budgets_sum_to_tb_and_shares_to_one(regime, world):
    inh, cost, hist, tb = world
    b = allocate(regime, cost, hist, inh, tb)
    assert abs(b.budget.sum() - tb) <= 0.01
    assert abs(b.objective_share.sum() - 1.0) <= 1e-12
    assert abs(b.historical_share.sum() - 1.0) <= 1e-12
    assert np.all(b.budget >= 0)


@pytest.mark.parametrize("regime", REGIMES, ids=["2019", "2005", "2005-national", "2005-band"])
@given(world=worlds(), seed=st.integers(0, 2**32 - 1))
def test_order_does_not_matter(regime, world, seed):
    inh, cost, hist, tb = world
    perm = np.random.default_rng(seed).permutation(inh.size)
    b = allocate(regime, cost, hist, inh, tb)
    p = allocate(regime, cost[perm], hist[perm], inh[perm], tb)
    np.testing.assert_allclose(p.budget, b.budget[perm], rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("regime", REGIMES[:3], ids=["2019", "2005", "2005-national"])
@given(world=worlds(), who=st.integers(0, 10**6), factor=st.floats(1.0, 10.0))
def test_raising_own_cost_never_lowers_own_budget(regime, world, who, factor):
    """Holds for the mix, the normalisation and the compartments; the ex-ante cap breaks
    it (see the next test), so the cap is switched off here."""
    inh, cost, hist, tb = world
    g = who % inh.size
    more = cost.copy()
    more[g] *= factor
    before = allocate(regime, cost, hist, inh, tb, cap=None).budget[g]
    after = allocate(regime, more, hist, inh, tb, cap=None).budget[g]
    assert after >= before - 1e-9 * tb


def test_cap_leaves_historically_budgeted_alone():
    """Only municipalities in the objective model have a redistribution effect (Besluit WWB
    2007, annex part B; the letter K2004): one with m_g = 0 is neither floored nor pays for floors,
    and the others are compared within their own group."""
    r = dataclasses.replace(R2005, compartments=False, objective_share=1.0)
    inh = np.array([40_000, 50_000, 60_000, 60_000, 60_000])     # w = 0, 0.5, 1, 1, 1
    hist = np.full(5, 0.2)
    # cost 16,1,2,2,2 (sum 23): raw = 0.2, 0.5/23 + 0.1, 2/23 x 3; B = 1000 raw / sum raw
    raw = np.array([0.2, 0.5 / 23 + 0.1, 2 / 23, 2 / 23, 2 / 23])
    b = 1000 * raw / raw.sum()                                    # 343.3, 209.0, 149.3 x 3
    # the group is 1..4: reference = group total / 4 = 164.2; 149.3 is -9.1%: within 10%
    out = allocate(r, np.array([16.0, 1, 2, 2, 2]), hist, inh, 1000.0)
    np.testing.assert_allclose(out.budget, b)
    # cost 40 for the first in the group (sum 62): the others fall below -10% of the group mean
    raw = np.array([0.2, 0.5 * 40 / 62 + 0.1, 2 / 62, 2 / 62, 2 / 62])
    b = 1000 * raw / raw.sum()                                    # 278.0, 587.4, 44.8 x 3
    out = allocate(r, np.array([16.0, 40, 2, 2, 2]), hist, inh, 1000.0)
    ref = (1000 - b[0]) / 4
    assert out.budget[0] == pytest.approx(b[0])                   # untouched
    np.testing.assert_allclose(out.budget[2:], 0.9 * ref)         # floored within the group
    assert out.budget.sum() == pytest.approx(1000.0)


@given(world=worlds(min_size=3))
def test_cap_bounds_losses(world):
    inh, cost, hist, tb = world
    assume(hist.min() > 1e-9)
    r = dataclasses.replace(R2005, compartments=False)
    b = allocate(r, cost, hist, inh, tb)
    grp = b.objective_weight > 0
    assume(grp.sum() >= 2)
    e = b.budget[grp] / (b.budget[grp].sum() * hist[grp] / hist[grp].sum()) - 1
    assert e.min() >= -0.10 - 1e-9
