"""Redistribution effects, the 2004 letter's table, and the ``buig budget`` command."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.rules import redistribution as rd
from engine.app.budget_files import read_costs
from engine.app.cli import main
from engine.model.municipal import MODEL_2005_GV, fit, municipal_data
from engine.io.config import DATA
from engine.model.schema import PopulationError


# --------------------------------------------------------------------------- hand-computed cases

def test_effects_against_scaled_reference():
    candidate = np.array([110, 90, 100, 200, 0.0])      # sum 500
    reference = np.array([50, 50, 50, 100, 0.0])        # sum 250 -> scaled x2: 100, 100, 100, 200, 0
    e = rd.effects(candidate, reference, np.array([10, 20, 10, 10, 10.0]))
    np.testing.assert_allclose(e.reference, [100, 100, 100, 200, 0])
    np.testing.assert_allclose(e.pct, [10, -10, 0, 0, np.nan])           # (C - R) / R; R = 0 undefined
    np.testing.assert_allclose(e.eur_per_inhabitant, [1, -0.5, 0, 0, 0])  # (C - R) / inhabitants


def test_effects_of_many_candidates_are_those_row_by_row():
    rng = np.random.default_rng(3)
    cand, ref, inh = rng.uniform(1, 9, (5, 388)), rng.uniform(1, 9, 388), rng.uniform(1e3, 1e5, 388)   # pairwise sums
    ref[2] = 0.0                                   # undefined there, in every row
    whole = rd.effects(cand, ref, inh)
    for i, row in enumerate(cand):
        one = rd.effects(row, ref, inh)
        for got, want in ((whole.pct[i], one.pct), (whole.eur_per_inhabitant[i], one.eur_per_inhabitant),
                          (whole.reference[i], one.reference)):
            np.testing.assert_array_equal(got, want)
    assert np.isnan(whole.pct[:, 2]).all()


def test_summarise_unweighted_and_weighted():
    pct = np.array([5, -12, 20, -10, np.nan])
    s = rd.summarise(pct)
    # |HE| = 5, 12, 20, 10: mean 11.75; within 10: {5, 10} = 2/4; within 15: {5, 12, 10} = 3/4
    assert s == {"municipalities": 4, "undefined": 1, "mean_abs_effect_pct": 11.75,
                 "within_10_pct": 50.0, "within_15_pct": 75.0}
    w = rd.summarise(pct, np.array([1, 1, 2, 4, 9.0]))
    # weights 1, 1, 2, 4 (sum 8): mean (5 + 12 + 40 + 40) / 8; within 10 (1 + 4) / 8; within 15 (1 + 1 + 4) / 8
    assert w["mean_abs_effect_pct"] == pytest.approx(97 / 8)
    assert (w["within_10_pct"], w["within_15_pct"]) == (62.5, 75.0)


def test_optimal_historical_share_on_the_grid():
    ref = np.full(5, 0.2)
    obj = np.array([0.1, 0.3, 0.2, 0.2, 0.2])
    hist = np.array([0.3, 0.2, 0.1, 0.2, 0.2])
    # mix = 0.1 + 0.2h, 0.3 - 0.1h, 0.2 - 0.1h, 0.2, 0.2; |effect| / 100 = |5h - 2.5| / 5 ... summed:
    # |h - 0.5| + 0.5 (1 - h) + 0.5 h = |h - 0.5| + 0.5 -> minimum at h = 0.5, MAE = 0.5 / 5 = 10%
    o = rd.optimal_historical_share(obj, hist, ref)
    assert o.share == pytest.approx(0.5) and o.grid_share == pytest.approx(0.5)
    assert o.mean_abs_effect_pct == pytest.approx(10.0)


def test_optimal_historical_share_off_the_grid():
    ref = np.full(5, 0.2)
    obj = np.array([0.1, 0.3, 0.2, 0.2, 0.2])
    hist = np.array([0.33, 0.07, 0.2, 0.2, 0.2])
    # mix_0 = 0.1 + 0.23h and mix_1 = 0.3 - 0.23h both hit 0.2 at h = 10/23 = 0.4348: MAE 0
    o = rd.optimal_historical_share(obj, hist, ref)
    assert o.share == pytest.approx(10 / 23) and o.mean_abs_effect_pct == pytest.approx(0.0, abs=1e-9)
    assert o.grid_share == pytest.approx(0.43)


# --------------------------------------------------------------------------- seed table on a population

@pytest.fixture(scope="module")
def data(small_population):
    return municipal_data(small_population)


@pytest.fixture(scope="module")
def seed(data):
    return rd.seed_table(data)


def test_seed_table_structure(seed, data):
    keys = [k for k, _, _ in seed.columns]
    assert keys == ["historical", "model_2004", "model_2005", "model_2005_gv", "mix"]
    assert seed.universe.sum() == (data.inhabitants > 40_000).sum() > 100
    for key, stats in seed.summary().items():
        assert stats["municipalities"] + stats["undefined"] == seed.universe.sum()
        assert 0 < stats["mean_abs_effect_pct"] < 200, key
        assert 0 <= stats["within_10_pct"] <= stats["within_15_pct"] <= 100, key
    for _, _, pct in seed.columns:
        assert np.all(np.isnan(pct[~seed.universe]) | (pct[~seed.universe] == -100))


def test_seed_mix_column_is_73_27(seed, data):
    hist = dict((k, p) for k, _, p in seed.columns)
    # the mix's effect is the share-weighted mix of the two effects (same reference)
    np.testing.assert_allclose(hist["mix"], 0.73 * hist["model_2005_gv"] + 0.27 * hist["historical"])


def test_optimal_share_beats_the_grid(seed):
    o = seed.optimal
    assert 0.0 <= o.share <= 1.0 and abs(o.share - o.grid_share) <= 0.01 + 1e-12
    assert o.mean_abs_effect_pct <= o.grid_mae.min() + 1e-9
    assert o.grid_mae[int(round(100 * o.grid_share))] == pytest.approx(o.grid_mae.min())
    stats = rd.summarise(seed.optimal_pct[seed.universe])
    assert stats["mean_abs_effect_pct"] == pytest.approx(o.mean_abs_effect_pct)


def test_historical_matches_its_own_spending(data):
    """Against spending in t-2 the historical column differs only by household growth."""
    t = rd.seed_table(data, reference=data.spending_t2)
    assert t.summary()["historical"]["mean_abs_effect_pct"] < 5


def test_regression_fits_and_granite(data):
    f = fit(data, MODEL_2005_GV)
    assert 0 < f.r2 <= 1 and f.names[-1] == "granieten_voorraad"
    assert np.all(f.objective_cost >= 0) and f.objective_cost.sum() > 0
    assert -1 < f.granite_share < 1


# --------------------------------------------------------------------------- costs file and CLI

@pytest.fixture(scope="module")
def costs(small_world, tmp_path_factory):
    """municipal_costs.parquet from the synthetic truth (what buig predict would estimate)."""
    truth = json.loads((small_world / "truth.json").read_text())["municipalities"]
    out = tmp_path_factory.mktemp("costs")
    table = pa.table({"code": [m["code"] for m in truth], "objective_cost": [m["objective_cost"] for m in truth],
                      "predicted_households": [m["objective_households"] for m in truth],
                      "actual_households": np.zeros(len(truth), np.int64)})
    pq.write_table(table, out / "municipal_costs.parquet")
    return out


def test_budget_2019_writes_files(small_world, costs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["budget", "--population", str(small_world), "--costs", str(costs), "--regime", "2019",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["budgets.parquet", "redistribution.csv"]
    t = pq.read_table(out / "budgets.parquet")
    assert t.num_rows == 388
    for col in ("code", "name", "inhabitants", "objective_cost", "objective_share", "historical_share",
                "objective_weight", "budget", "actual_spending", "surplus", "redistribution_effect_pct",
                "vangnet_payout"):
        assert col in t.column_names, col
    tb = float(t.schema.metadata[b"tb"])
    assert abs(np.sum(t.column("budget").to_numpy()) - tb) < 0.01
    assert tb == pytest.approx(6_219_700_000 * 30_000 / 7_794_075)
    rows = list(csv.DictReader((out / "redistribution.csv").open()))
    models = {r["model"] for r in rows if r["table"] == "letter_2004"}
    assert models == {"historical", "model_2004", "model_2005", "model_2005_gv", "mix", "optimal_mix"}
    assert {r["size_class"] for r in rows if r["table"] == "regime"} >= {"all", "<15k", "15-40k", ">40k",
                                                                          "<40k", "40-60k", ">60k"}
    assert "table of the 2004 letter" in capsys.readouterr().out


def test_budget_2005_needs_no_costs(small_world, tmp_path):
    out = tmp_path / "out"
    assert main(["budget", "--population", str(small_world), "--regime", "2005", "--out", str(out), "--quiet"]) == 0
    t = pq.read_table(out / "budgets.parquet")
    b, h = t.column("budget").to_numpy(), t.column("historical_budget").to_numpy()
    n = t.column("inhabitants").to_numpy()
    # the 10% ex-ante cap among the municipalities of the objective model, within each compartment
    for sel in ((n > 40_000) & (n <= 60_000), n > 60_000):
        sel &= h > 0
        ref = b[sel].sum() * h[sel] / h[sel].sum()
        assert np.min(b[sel] / ref - 1) >= -0.10 - 1e-9
    assert np.sum(b) == pytest.approx(np.sum(t.column("actual_spending").to_numpy()), abs=0.01)
    rows = list(csv.DictReader((out / "redistribution.csv").open()))
    assert {r["model"] for r in rows} >= {"cap 5%", "cap 7.5%", "cap 5-10% half", "regime_uncapped"}


def _untouched(out, argv, capsys, words):
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(argv + ["--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err


def test_bad_regime_file_exit_2(small_world, costs, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    text = (DATA / "regimes" / "2019.toml").read_text(encoding="utf-8")
    bad.write_text(text.replace("objective_from = 40_000", "objective_from = 10_000"), encoding="utf-8")
    _untouched(tmp_path / "out", ["budget", "--population", str(small_world), "--costs", str(costs),
                                  "--regime", str(bad)], capsys, [str(bad), "objective_weight.objective_from"])


def test_missing_costs_exit_2(small_world, tmp_path, capsys):
    _untouched(tmp_path / "out", ["budget", "--population", str(small_world), "--regime", "2019"],
               capsys, ["--costs"])


def _costs_variant(costs, tmp_path, change):
    t = pq.read_table(costs / "municipal_costs.parquet")
    folder = tmp_path / "costs"
    folder.mkdir()
    pq.write_table(change(t), folder / "municipal_costs.parquet")
    return folder


def _set_value(t, column, row, value):
    vals = t.column(column).to_pylist()
    vals[row] = value
    return t.set_column(t.column_names.index(column), column, pa.array(vals, t.schema.field(column).type))


@pytest.mark.parametrize("change, words", [
    (lambda t: t.slice(1), ["municipal_costs.code", "is missing", "GM"]),
    (lambda t: _set_value(t, "code", 5, "GM9999"), ["municipal_costs.code, row 5", "GM9999"]),
    (lambda t: _set_value(t, "code", 7, t.column("code")[3].as_py()), ["municipal_costs.code, row 7", "duplicate"]),
    (lambda t: _set_value(t, "objective_cost", 2, -1.0), ["municipal_costs.objective_cost, row 2"]),
    (lambda t: t.drop_columns(["predicted_households"]), ["municipal_costs.predicted_households", "missing"]),
    (lambda t: t.set_column(1, "objective_cost", t.column("objective_cost").cast(pa.string())),
     ["municipal_costs.objective_cost", "expected float64"]),
])
def test_mismatched_costs_exit_2(small_world, costs, tmp_path, capsys, change, words):
    folder = _costs_variant(costs, tmp_path, change)
    _untouched(tmp_path / "out", ["budget", "--population", str(small_world), "--costs", str(folder)],
               capsys, words + ["municipal_costs.parquet"])


def test_read_costs_reorders(costs, small_population, tmp_path):
    t = pq.read_table(costs / "municipal_costs.parquet")
    folder = _costs_variant(costs, tmp_path, lambda t: t.take(np.arange(t.num_rows)[::-1]))
    got = read_costs(folder, small_population.municipality_codes)
    np.testing.assert_array_equal(got["objective_cost"], t.column("objective_cost").to_numpy())
    with pytest.raises(PopulationError, match="file is missing"):
        read_costs(tmp_path, small_population.municipality_codes)


# --------------------------------------------------------------------------- the same-year table (K2004)

def test_seed_table_estimates_and_compares_within_the_same_year(data):
    """The letter's table is "geschat op uitgaven 2002" and compares with the spending of 2002: with
    spending in t exactly linear in model 2005's variables per household, models 2005 (excl. and incl.
    GV) fit it exactly and their effects are 0; estimated on t-2 (the budget's practice) they are not."""
    import dataclasses

    v = data.variables
    per_household = 2000 + 9000 * v["share_single_parent"] + 4000 * v["share_low_educated"] + 30 * v["job_growth"]
    exact = dataclasses.replace(data, spending_t=per_household * data.households)
    same = rd.seed_table(exact)
    cols = {k: p for k, _, p in same.columns}
    u = same.universe
    for key in ("model_2005", "model_2005_gv"):
        np.testing.assert_allclose(cols[key][u], 0.0, atol=1e-8)
    np.testing.assert_allclose(cols["mix"][u], 0.27 * cols["historical"][u], atol=1e-8)
    older = rd.seed_table(exact, target="t2")
    assert np.abs({k: p for k, _, p in older.columns}["model_2005"][u]).max() > 1.0
    assert same.target == "t" and "estimated on spending in t" in rd.format_seed_table(same)


def test_same_year_fit_against_numpy_and_the_granite_weight(data):
    """model 2005 incl. GV on spending(t) per household by weighted least squares (NumPy's lstsq on
    sqrt-weighted rows), and the granieten voorraad's weight = its term's share of the objective cost."""
    f = fit(data, MODEL_2005_GV, target="t")
    X = np.column_stack([np.ones(len(data))] + [data.variables[n] for n in MODEL_2005_GV.variables])
    w = data.households
    y = data.spending_t / w
    coef = np.linalg.lstsq(X * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    np.testing.assert_allclose(f.coef, coef, rtol=1e-7, atol=1e-6)
    cost = np.maximum(X @ coef, 0) * w
    np.testing.assert_allclose(f.objective_cost, cost, rtol=1e-7)
    gv = coef[-1] * np.sum(X[:, -1] * w) / cost.sum()
    assert f.granite_share == pytest.approx(gv, rel=1e-6)
    assert rd.seed_table(data).granite_share == pytest.approx(gv, rel=1e-6)
    assert "(the letter: 37%)" in rd.format_seed_table(rd.seed_table(data))
    with pytest.raises(ValueError, match="target must be one of t2, t"):
        fit(data, MODEL_2005_GV, target="t1")
