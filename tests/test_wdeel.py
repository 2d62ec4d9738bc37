"""W-deel models of the 2004 letter (K2004): weights, budgets, fit to need, and ``buig wdeel``."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.app.cli import main
from engine.rules.wdeel import budgets, fit_to_need, model_weights, recipients_by_duration, wdeel

# Recipients per municipality (rows) and duration class (columns 0 none, 1 <1y, 2 1-2y,
# 3 2-4y, 4 4-5y, 5 >5y); class 0 never counts.
RECIPIENTS = np.array([
    [9, 10, 0, 0, 0, 0],     # only short
    [0, 0, 10, 0, 0, 0],     # 1-2 years
    [0, 0, 0, 10, 0, 0],     # 2-4 years
    [0, 0, 0, 0, 10, 0],     # 4-5 years
    [0, 0, 0, 0, 0, 10],     # over 5 years
], dtype=float)
TARGET = np.array([20, 10, 10, 5, 5])


def test_duration_weights():
    m = model_weights(RECIPIENTS, TARGET)
    np.testing.assert_array_equal(m["model_1"], [10, 10, 10, 10, 10])       # unweighted
    np.testing.assert_array_equal(m["model_2"], [10, 20, 30, 10, 10])       # 1, 2, 3 and 1 for >4 (classes 4, 5)
    np.testing.assert_array_equal(m["model_3"], [40, 70, 50, 50, 40])       # 4, 7, 5 for 2-5 (3, 4), 4 for >5
    np.testing.assert_array_equal(m["model_4"], TARGET)


def test_budgets_and_fit_to_need():
    m = model_weights(RECIPIENTS, TARGET)
    b = budgets(m["model_3"], 1000.0)
    # shares 40, 70, 50, 50, 40 of 250
    np.testing.assert_allclose(b, [160, 280, 200, 200, 160])
    need = np.array([200, 280, 100, 200, 80.0])
    # (budget - need) / budget: -25%, 0%, 50%, 0%, 50%
    s = fit_to_need(b, need)
    assert s["mean_pct"] == pytest.approx(15.0)
    assert s["sd_pct"] == pytest.approx(np.std([-25, 0, 50, 0, 50], ddof=1))
    assert (s["largest_minus_pct"], s["largest_plus_pct"]) == (-25.0, 50.0)
    # a municipality with budget 0 has no ratio
    s0 = fit_to_need(np.array([0.0, 100.0, 100.0]), np.array([5.0, 50.0, 150.0]))
    assert (s0["municipalities"], s0["zero_budget"], s0["mean_pct"]) == (2, 1, 0.0)


def test_model_2_on_the_seed_example():
    m = model_weights(RECIPIENTS, TARGET)
    b = budgets(m["model_2"], 800.0)
    # shares 10, 20, 30, 10, 10 of 80
    np.testing.assert_allclose(b, [100, 200, 300, 100, 100])


def test_recipients_on_population(small_population):
    r = recipients_by_duration(small_population)
    bij = small_population.households.column("bijstand").to_numpy() == 1
    assert r.shape == (388, 6) and r.sum() == bij.sum() and r[:, 0].sum() == 0


def test_wdeel_on_population(small_population):
    res = wdeel(small_population, 2.0 * small_population.municipalities.column("wdeel_need").to_numpy().sum())
    assert res.total == pytest.approx(2.0 * res.need.sum())          # a budget of its own
    assert [r["model"] for r in res.rows] == ["model_1", "model_2", "model_3", "model_4", "historical"]
    spend = small_population.municipalities.column("spending_t2").to_numpy()
    np.testing.assert_allclose(res.budgets["historical"], res.total * spend / spend.sum())
    with pytest.raises(ValueError, match="budget of its own"):
        wdeel(small_population, None)
    for name, b in res.budgets.items():
        assert b.sum() == pytest.approx(res.total), name
    for r in res.rows:
        assert r["largest_minus_pct"] <= r["mean_pct"] <= r["largest_plus_pct"] <= 100 + 1e-9
        assert r["sd_pct"] > 0


def test_cli_wdeel(small_world, tmp_path):
    out = tmp_path / "out"
    assert main(["wdeel", "--population", str(small_world), "--total", "5e6", "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "wdeel.csv").open()))
    assert [r["model"] for r in rows] == ["model_1", "model_2", "model_3", "model_4", "historical"]
    assert float(rows[0]["total"]) == 5e6
    t = pq.read_table(out / "wdeel_budgets.parquet")
    assert t.num_rows == 388 and np.sum(t.column("budget_model_3").to_numpy()) == pytest.approx(5e6)


def test_cli_wdeel_bad_total(small_world, tmp_path):
    out = tmp_path / "out"
    assert main(["wdeel", "--population", str(small_world), "--total", "-1", "--out", str(out)]) == 2
    assert not out.exists()
