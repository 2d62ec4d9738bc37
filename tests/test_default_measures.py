"""The default synthetic world carries the 14 measures of the 2011-2014 municipal model, and the
regimes 2011-2014 run on it alone (``buig budget --regime 2011 --population DIR``).

Independent references: the measures that are shares of households are recounted from the
household table with plain NumPy; the objective cost is computed by hand from the published
weights (engine/data/published/weights_ape_gemeentemodel_2011_2014.csv, the Regeling's annex)."""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.app.cli import main
from engine.model.schema import CATEGORIES

PUBLISHED = Path(__file__).resolve().parents[1] / "engine" / "data" / "published"
# the annex's measures 1-13 in their published order, then the fixed amount (14)
APE = ("low_income_pct", "single_parent_15_44_pct", "disability_benefit_pct", "migrants_15_64_pct",
       "low_educated_15_64_pct", "rental_dwellings_pct", "client_potential_pct", "urban_inhabitants_pct",
       "employed_labour_force_pct", "trade_hospitality_jobs_pct", "job_growth_pct",
       "jobs_per_labour_force_pct", "population_growth_15_64")


def _codes(column: str, *labels: str) -> list[int]:
    return [CATEGORIES[column].index(lab) for lab in labels]


def test_default_world_measures_are_the_households_shares(small_world, small_population):
    pop = small_population
    mun = pq.read_table(small_world / "municipalities.parquet")
    for name in APE + ("households_15_64",):
        assert name in mun.column_names
        assert np.all(np.isfinite(mun.column(name).to_numpy()))
    hh, g, n = pop.households, pop.household_municipality, mun.num_rows
    count = np.bincount(g, minlength=n).astype(float)
    col = lambda c: hh.column(c).to_numpy()  # noqa: E731
    urban = pop.neighbourhoods.column("urbanity").to_numpy()[pop.household_neighbourhood]
    want = {
        "single_parent_15_44_pct": (col("household_type") == _codes("household_type", "single_parent")[0])
        & np.isin(col("age_class"), _codes("age_class", "18-20", "21-26", "27-34", "35-44")),
        "disability_benefit_pct": np.isin(col("other_benefit"), _codes("other_benefit", "ao_partial", "ao_full")),
        "migrants_15_64_pct": col("migration") != _codes("migration", "dutch")[0],
        "low_educated_15_64_pct": col("education") == _codes("education", "low")[0],
        "rental_dwellings_pct": col("housing") != _codes("housing", "owner")[0],
        "urban_inhabitants_pct": urban <= 3,
    }
    for name, hit in want.items():
        np.testing.assert_allclose(mun.column(name).to_numpy(), 100 * np.bincount(g, weights=hit, minlength=n) / count,
                                   rtol=1e-12, err_msg=name)
    np.testing.assert_array_equal(mun.column("households_15_64").to_numpy(), count)
    np.testing.assert_allclose(mun.column("job_growth_pct").to_numpy(), 100 * mun.column("job_growth").to_numpy())
    np.testing.assert_allclose(mun.column("jobs_per_labour_force_pct").to_numpy(),
                               100 * mun.column("jobs_availability").to_numpy())
    # the drawn measures vary with the municipality and are not constant
    for name in ("low_income_pct", "client_potential_pct", "employed_labour_force_pct"):
        assert mun.column(name).to_numpy().std() > 0


@pytest.mark.parametrize("year", [2011, 2014])
def test_regime_of_the_municipal_model_runs_on_the_default_population(small_world, tmp_path, year):
    out = tmp_path / "b"
    assert main(["budget", "--regime", str(year), "--population", str(small_world), "--out", str(out),
                 "--quiet"]) == 0
    b = pq.read_table(out / "budgets.parquet")
    mun = pq.read_table(small_world / "municipalities.parquet")
    assert b.column("code").to_pylist() == mun.column("code").to_pylist()
    with open(PUBLISHED / "weights_ape_gemeentemodel_2011_2014.csv", encoding="utf-8") as fh:
        rows = sorted((r for r in csv.DictReader(fh) if r["budget_year"] == str(year)), key=lambda r: int(r["nr"]))
    assert len(rows) == 14
    cost = b.column("objective_cost").to_numpy()
    inh = mun.column("inhabitants").to_numpy()
    # two municipalities of the model by hand: the largest, and the largest one of 25,000-40,000
    mixed = np.flatnonzero((inh > 25_000) & (inh < 40_000))
    for gi in (int(np.argmax(inh)), int(mixed[np.argmax(inh[mixed])])):
        x = [mun.column(c)[gi].as_py() for c in APE]
        unit = float(rows[13]["gewicht"]) + sum(float(r["gewicht"]) * v for r, v in zip(rows[:13], x))
        assert unit > 0
        assert cost[gi] == pytest.approx(mun.column("households_15_64")[gi].as_py() * unit, rel=1e-12)
    assert np.all(cost >= 0)
    regime = tomllib.loads((PUBLISHED.parent / "regimes" / f"{year}.toml").read_text(encoding="utf-8"))["budget"]
    tb = regime["macrobudget"] * mun.column("households").to_numpy().sum() / regime["reference_households"]
    assert b.column("budget").to_numpy().sum() == pytest.approx(tb, rel=1e-9)


def test_budget_notes_money_that_does_not_add_up(small_world, tmp_path, capsys):
    # the default world spends at 2019 prices and volumes; the 2011 macro budget is a quarter lower
    assert main(["budget", "--regime", "2011", "--population", str(small_world), "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    mun = pq.read_table(small_world / "municipalities.parquet")
    regime = tomllib.loads((PUBLISHED.parent / "regimes" / "2011.toml").read_text(encoding="utf-8"))["budget"]
    tb = regime["macrobudget"] * mun.column("households").to_numpy().sum() / regime["reference_households"]
    gap = 100 * (tb - mun.column("spending_t").to_numpy().sum()) / tb
    assert gap < -4.7                   # beyond the published range of 2016-2022
    assert f"note: TB and spending differ by {abs(gap):.0f}% of TB" in out
    assert "objective cost from the municipal measures and the published weights of ape2011" in out
    assert main(["budget", "--regime", "2011", "--population", str(small_world), "--macrobudget", "spending",
                 "--out", str(tmp_path / "s")]) == 0
    assert "note: TB and spending" not in capsys.readouterr().out
