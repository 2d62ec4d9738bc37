"""Provisional and definitive budgets: the newer macro budget and household counts one year later."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.app.cli import main
from engine.app.scenario import load_scenario, regime_toml
from engine.rules.budget import allocate_stage, budget_stage, stage_households
from engine.rules.regime import load_regime, parse_regime
from engine.io.config import read_toml
from test_redistribution import costs  # noqa: F401  (fixture: municipal_costs.parquet of the truth)

PROVISIONAL_2019, DEFINITIVE_2019 = 6_219.7e6, 6_072.6e6     # rijksoverheid.nl 1 Oct 2018; imk.nl 2019


def _regime():
    return dataclasses.replace(load_regime("2019"), scale="none")     # national amounts as they are


def _both(inhabitants, cost, spending_t2, hh, hh_t2):
    r = _regime()
    args = (np.asarray(spending_t2, float), np.asarray(hh, float), np.asarray(hh_t2, float), np.ones(len(hh)))
    out = {}
    for stage in ("provisional", "definitive"):
        st = budget_stage(r, stage, *args)
        out[stage] = allocate_stage(st, np.asarray(cost, float), np.asarray(inhabitants, float)).budget
    return out


def test_published_stages_of_2019():
    r = load_regime("2019")
    assert r.stage == "provisional" and r.macrobudget == PROVISIONAL_2019 and r.definitive_macrobudget == DEFINITIVE_2019


def test_two_objective_municipalities_by_hand():
    """Both above 40,000 inhabitants (m = 1): U = TB x O / sum O (Besluit Participatiewet art. 5, annex).
    A grew from 90 to 100 households, B shrank from 110 to 100; one year later A has 100 x 100/90 and
    B 100 x 100/110 households, so O_A : O_B = 1/0.9 : 1/1.1 = 0.55 : 0.45."""
    b = _both([50_000, 60_000], [1000.0, 1000.0], [500.0, 500.0], [100, 100], [90, 110])
    np.testing.assert_allclose(b["provisional"], [3_109.85e6, 3_109.85e6], rtol=1e-12)
    np.testing.assert_allclose(b["definitive"], [0.55 * 6_072.6e6, 0.45 * 6_072.6e6], rtol=1e-12)
    np.testing.assert_allclose(b["definitive"] - b["provisional"], [230.08e6, -377.18e6], rtol=1e-12)


def test_two_historical_municipalities_by_hand():
    """Both at most 15,000 inhabitants: U = TB x L / TL (art. 2(4), 3), L = spending(t-2) x households /
    households(t-2) (art. 1(1)(f)). Provisional: L = 400 x 100/80 = 500 and 600 x 100/100 = 600;
    definitive, with 125 and 100 households: L = 400 x 125/80 = 625 and 600."""
    b = _both([10_000, 12_000], [1.0, 1.0], [400.0, 600.0], [100, 100], [80, 100])
    np.testing.assert_allclose(b["provisional"], [6_219.7e6 * 5 / 11, 6_219.7e6 * 6 / 11], rtol=1e-12)
    np.testing.assert_allclose(b["definitive"], [6_072.6e6 * 25 / 49, 6_072.6e6 * 24 / 49], rtol=1e-12)
    # C gains 271.13 mln, D loses 418.95 mln
    np.testing.assert_allclose(b["definitive"] - b["provisional"],
                               [6_072.6e6 * 25 / 49 - 6_219.7e6 * 5 / 11, 6_072.6e6 * 24 / 49 - 6_219.7e6 * 6 / 11])
    assert b["definitive"][0] - b["provisional"][0] == pytest.approx(271.129e6, rel=1e-5)


def test_stage_households_and_errors():
    np.testing.assert_allclose(stage_households([100, 50, 7], [80, 50, 0], "definitive"), [125, 50, 7])
    np.testing.assert_array_equal(stage_households([100, 50], [80, 50], "provisional"), [100, 50])
    with pytest.raises(ValueError, match="not one of provisional, definitive"):
        budget_stage(_regime(), "final", np.ones(2), np.ones(2), np.ones(2), np.ones(2))
    path = load_regime("2025").path
    data = read_toml(path, "regime")
    data["budget"]["stage"] = "definitive"
    with pytest.raises(ValueError, match=r"key 'budget.stage': no definitive macro budget of 2025"):
        parse_regime(data, path)
    data["budget"]["definitive_macrobudget"] = 7e9
    assert parse_regime(data, path).definitive_macrobudget == 7e9


def test_scenario_stage_key():
    s = load_scenario(stage="definitive", households=30_000)
    assert 'stage = "definitive"' in regime_toml(s)
    with pytest.raises(ValueError, match="key 'regime.stage'"):
        load_scenario(stage="final")


def test_budget_cli_definitive_writes_the_differences(small_world, costs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    assert main(["budget", "--population", str(small_world), "--costs", str(costs), "--regime", "2019",
                 "--stage", "definitive", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "definitive budget" in text and "provisional TB EUR" in text and "stages.csv" in text
    rows = list(csv.DictReader((out / "stages.csv").open(encoding="utf-8")))
    assert len(rows) == 388
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    scale = col("households_provisional").sum() / 7_794_075
    assert col("budget_definitive").sum() == pytest.approx(DEFINITIVE_2019 * scale, rel=1e-9)
    assert col("budget_provisional").sum() == pytest.approx(PROVISIONAL_2019 * scale, rel=1e-9)
    t = pq.read_table(out / "budgets.parquet")
    np.testing.assert_allclose(t.column("budget").to_numpy(), col("budget_definitive"), rtol=1e-5)
    assert t.schema.metadata[b"stage"] == b"definitive"
    # growth municipalities get more than the national change, shrinking ones less
    ok = col("budget_provisional") > 0
    growth, rel = col("household_growth_pct")[ok], col("difference_vs_national_pct")[ok]
    assert ok.sum() > 380 and np.corrcoef(growth, rel)[0, 1] > 0.95
    mean_growth = 100 * (col("households_definitive")[ok].sum() / col("households_provisional")[ok].sum() - 1)
    assert np.all(rel[growth > mean_growth + 1] > 0) and np.all(rel[growth < mean_growth - 1] < 0)
    # a provisional run into the same folder removes the old differences
    assert main(["budget", "--population", str(small_world), "--costs", str(costs), "--regime", "2019",
                 "--out", str(out), "--quiet"]) == 0
    assert not (out / "stages.csv").exists()


def test_budget_says_its_stage_and_macro_budget(small_world, costs, tmp_path, capsys):  # noqa: F811
    scale = 30_000 / 7_794_075               # the small world's households against the Netherlands'
    for stage, amount in (("provisional", PROVISIONAL_2019), ("definitive", DEFINITIVE_2019)):
        out = tmp_path / stage
        assert main(["budget", "--population", str(small_world), "--costs", str(costs), "--regime", "2019",
                     "--stage", stage, "--out", str(out)]) == 0
        text = capsys.readouterr().out
        which = "the published definitive" if stage == "definitive" else "the provisional"
        line = (f"{stage} budget 2019: {which} macro budget EUR {amount / 1e6:,.1f} mln, x {scale:.6f} for this "
                f"population's households; TB EUR {amount * scale / 1e6:,.1f} mln")
        assert line in text.splitlines()
        assert pq.read_table(out / "budgets.parquet").schema.metadata[b"macrobudget"].decode() == line
    out = tmp_path / "spending"
    assert main(["budget", "--population", str(small_world), "--costs", str(costs), "--regime", "2019",
                 "--macrobudget", "spending", "--out", str(out)]) == 0
    spent = pq.read_table(small_world / "municipalities.parquet").column("spending_t").to_numpy().sum()
    assert (f"provisional budget 2019: macro budget = the population's spending in t; TB EUR {spent / 1e6:,.1f} mln"
            in capsys.readouterr().out.splitlines())
