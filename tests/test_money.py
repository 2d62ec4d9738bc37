"""Money that adds up: the synthetic world against the published national facts, and the Rob cap
with the vangnet (independent checks: hand arithmetic on the published CSVs, the CBS counts read
directly, NumPy twins of the vangnet rule)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.rules.cap import capped_table, rob_cap
from engine.rules.regime import VangnetRule
from engine.world.published import facts, national_gaps

DATA = Path(__file__).resolve().parents[1] / "engine" / "data"
TB_2019 = 6_219_700_000.0
NL_HOUSEHOLDS = 7_794_075


def test_published_gaps_by_hand():
    # (macro budget - spending) / macro budget, from the published rows:
    gaps = national_gaps()
    assert gaps[2016] == pytest.approx(-270 / 5691.6)          # deficit EUR 270 mln, definitive budget 2016
    assert gaps[2017] == pytest.approx(-270 / 5889.6)
    assert gaps[2018] == pytest.approx(0.0076)                  # surplus 0.76% of the macro budget
    assert gaps[2021] == pytest.approx(244 / 6385.3)
    assert gaps[2022] == pytest.approx((6019 - 6134) / 6019)
    f = facts()
    assert (f.gap_low, f.gap_high) == (pytest.approx(-270 / 5691.6), pytest.approx(244 / 6385.3))
    assert (f.vangnet_low, f.vangnet_high, f.deficit_share_2012) == (73, 214, 0.63)


def _cbs_recipients() -> dict[str, tuple[float, float]]:
    with open(DATA / "cbs" / "municipalities_2017.csv", newline="", encoding="utf-8") as fh:
        return {r["code"]: (float(r["recipients_2015"] or "nan"), float(r["recipients_2017"]))
                for r in csv.DictReader(fh)}


def test_expected_spending_is_the_scaled_macro_budget_and_t2_follows_each_municipality(small_world):
    truth = json.loads((small_world / "truth.json").read_text())
    mun = pq.read_table(small_world / "municipalities.parquet")
    scaled_tb = TB_2019 * truth["households"] / NL_HOUSEHOLDS
    expected = np.array([m["expected_cost"] for m in truth["municipalities"]])
    # the gross-up is calibrated at full scale; a 30,000-household world differs by its composition only
    assert expected.sum() == pytest.approx(scaled_tb, rel=0.03)
    rec = _cbs_recipients()
    codes = mun.column("code").to_pylist()
    growth = np.array([rec[c][0] / rec[c][1] for c in codes])
    ok = np.isfinite(growth) & (growth > 0) & (expected > 0)
    noise = np.log(mun.column("spending_t2").to_numpy()[ok] / (expected[ok] * growth[ok]))
    assert abs(noise.mean()) < 0.01 and 0.02 < noise.std() < 0.06     # price-level noise N(0, 0.04)


def _money(households: int, tmp_path):
    from engine.app.pipeline import distribute
    from engine.model.fitted import fit_to_folder
    from engine.model.population import read_population
    from engine.model.predict import predict
    from engine.world.synth import generate

    generate(tmp_path / "w", households=households, seed=20190101)
    pop = read_population(tmp_path / "w")
    fit = fit_to_folder(pop, tmp_path / "fit")
    b = distribute(pop, predict(pop, fit), "2019")
    s, budget = b.data.spending_t, b.budgets.budget
    return {"gap": (b.budgets.tb - s.sum()) / b.budgets.tb, "objective": b.objective_cost.sum() / s.sum() - 1,
            "deficit_share": float((s > budget).mean()), "vangnet": int((b.vangnet > 0).sum()),
            "tb": b.budgets.tb, "households": households}


def test_money_adds_up_on_a_small_world(tmp_path):
    m = _money(200_000, tmp_path)
    f = facts()
    assert m["tb"] == pytest.approx(TB_2019 * 200_000 / NL_HOUSEHOLDS)
    assert f.gap_low <= m["gap"] <= f.gap_high
    assert abs(m["objective"]) < 0.015


@pytest.mark.slow
def test_money_adds_up_on_a_million_households(tmp_path):
    m = _money(1_000_000, tmp_path)
    f = facts()
    assert f.gap_low <= m["gap"] <= f.gap_high                       # published 2016-2022
    assert abs(m["objective"]) < 0.01                                 # objective cost sums to spending
    assert f.deficit_share_2021 <= m["deficit_share"] <= f.deficit_share_2012
    assert f.vangnet_low <= m["vangnet"] <= f.vangnet_high            # requests 2016-2018


# --------------------------------------------------------------------------- the cap with the vangnet

RULE = VangnetRule("2019", 0.075, 0.125, 0.5)


def _vangnet_twin(s, b):
    out = []
    for si, bi in zip(s, b):
        d = si - bi
        band = min(max(d - 0.075 * bi, 0.0), 0.05 * bi)
        out.append(0.5 * band + max(d - 0.125 * bi, 0.0))
    return np.array(out)


def _flags(b, s, flagged):
    n = len(b)
    return pa.table({"code": [f"GM{i:04d}" for i in range(n)], "name": [str(i) for i in range(n)], "budget": b,
                     "actual_spending": s, "flagged": flagged})


def test_vangnet_is_paid_on_the_capped_budget():
    b = np.array([100.0, 100, 200, 100, 100])
    s = np.array([70.0, 95, 100, 120, 111])
    flagged = np.array([True, True, False, False, False])
    table, capped = capped_table(_flags(b, s, flagged), 0.10, "deficit", RULE)
    np.testing.assert_allclose(table.column("vangnet_uncapped").to_numpy(), _vangnet_twin(s, b))
    np.testing.assert_allclose(table.column("vangnet_payout").to_numpy(), _vangnet_twin(s, capped.budget))
    # 20 clawed back from g0 cover the deficits of g3 (20) and g4 (11) pro rata: 20*20/31, 20*11/31
    np.testing.assert_allclose(capped.received, [0, 0, 0, 400 / 31, 220 / 31])
    assert table.column("vangnet_payout").to_numpy().sum() < table.column("vangnet_uncapped").to_numpy().sum()


def test_every_municipality_capped_gives_a_clear_result():
    b = np.array([100.0, 200, 50])
    s = np.array([50.0, 100, 10])
    for how in ("pro_rata", "deficit"):
        c = rob_cap(b, s, np.ones(3, bool), 0.10, how)
        np.testing.assert_allclose(c.clawed_back, [40, 80, 35])
        np.testing.assert_allclose(c.received, 0)
        np.testing.assert_allclose(c.budget, [60, 120, 15])
        assert c.unallocated == pytest.approx(155)
    table, _ = capped_table(_flags(b, s, np.ones(3, bool)), 0.10, "pro_rata", RULE)
    assert np.isfinite(table.column("capped_budget").to_numpy()).all()
    assert float(table.schema.metadata[b"unallocated"]) == pytest.approx(155)


def test_a_capped_municipality_receives_nothing_even_when_in_the_pro_rata_base():
    # g1 is capped (surplus 50 > 10) and g2 has a deficit; the pool of g0 and g1 goes to g2 and g3 only
    b = np.array([100.0, 100, 100, 100])
    s = np.array([60.0, 50, 130, 100])
    c = rob_cap(b, s, np.array([True, True, False, False]), 0.10, "deficit")
    np.testing.assert_allclose(c.clawed_back, [30, 40, 0, 0])
    np.testing.assert_allclose(c.received, [0, 0, 30 + 20, 20])      # deficit 30 first, the other 40 pro rata


# --------------------------------------------------------------------------- macrobudget = "spending"

def test_scenario_macrobudget_spending_sets_tb_to_spending(small_population):
    from engine.app.budget_files import compute_budget
    from engine.app.scenario import load_scenario, regime_toml
    from engine.io.config import DATA as CONFIG_DATA
    from engine.rules.regime import parse_regime
    import tomllib

    s = load_scenario(macrobudget="spending")
    regime = parse_regime(tomllib.loads(regime_toml(s)), CONFIG_DATA / "regimes" / "2019.toml")
    assert regime.macrobudget is None
    n = small_population.municipalities.num_rows
    r = compute_budget(small_population, regime, np.ones(n))
    spending = small_population.municipalities.column("spending_t").to_numpy()
    assert r.budgets.tb == pytest.approx(spending.sum())
    assert r.budgets.budget.sum() == pytest.approx(spending.sum())
    assert load_scenario(macrobudget=5e9).to_dict()["regime"]["macrobudget"] == 5e9
    with pytest.raises(ValueError, match="regime.macrobudget"):
        load_scenario(macrobudget="plenty")


def test_sweep_comparison_shows_full_names_and_the_cap(tmp_path):
    from engine.app.sweep import STAT_COLUMNS, SweepResult, format_comparison

    long = "a variant with a rather long descriptive name, kappa=0.05, redistribute=deficit"
    row = {k: 1.0 for k in STAT_COLUMNS} | {"variant": long, "received_by_deficit_eur": 2.5e6}
    text = format_comparison(SweepResult(out=tmp_path, sweep=None, rows=[row], seconds=1.0))
    assert long in text and "2.50" in text
