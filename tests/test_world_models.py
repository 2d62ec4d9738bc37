"""Synthetic worlds that carry the real models: --truth realistic and --truth scp2015."""

from __future__ import annotations

import dataclasses
import json
import tomllib

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.app.cli import main
from engine.model.catalogue import load_catalogue
from engine.model.fitted import fit_model
from engine.model.population import read_population
from engine.model.schema import PopulationError
from engine.model.spec import load_spec
from engine.world.synth import generate


@pytest.fixture(scope="module")
def realistic_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("realistic")
    generate(out, households=60_000, seed=5, truth_model="realistic")
    return out


def test_scp2015_world_is_reproduced_by_the_published_spec(tmp_path):
    world, pred = tmp_path / "scp", tmp_path / "pred"
    assert main(["synth", "--households", "20000", "--seed", "2", "--truth", "scp2015", "--planted", "0",
                 "--policy-sd", "0", "--out", str(world), "--quiet"]) == 0
    truth = json.loads((world / "truth.json").read_text())
    assert truth["truth_model"] == "scp2015"
    assert main(["predict", "--population", str(world), "--spec", "scp2015", "--out", str(pred), "--quiet"]) == 0
    got = pq.read_table(pred / "municipal_costs.parquet").column("predicted_households").to_numpy()
    want = np.array([m["expected_households"] for m in truth["municipalities"]])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # no LKS in 2015, and the outcomes are draws from p
    h = pq.read_table(world / "households.parquet", columns=["bijstand", "lks"])
    assert h.column("lks").to_numpy().sum() == 0
    n, e = h.column("bijstand").to_numpy().sum(), want.sum()
    assert abs(n - e) < 4 * np.sqrt(e)
    # published weights: a bootstrap of outcome randomness only (the price without factors included)
    from engine.model.fitted import fit_to_folder
    from engine.uncertainty.bootstrap import run_bootstrap
    from engine.uncertainty.settings import Settings

    fit_to_folder(read_population(world), tmp_path / "fit", spec="scp2015")
    s = Settings(population=str(world), coefficients=str(tmp_path / "fit"), regime="2019", method="outcome",
                 seed=1, between_sd=0.0)
    res = run_bootstrap(s, tmp_path / "boot", replicates=4, batch_size=2, workers=0)
    cost = res.values["objective_cost"]
    assert np.all(np.isfinite(cost)) and np.all(cost == cost[0])        # no coefficient draws
    with pytest.raises(ValueError, match='use method "outcome"'):
        run_bootstrap(Settings(population=str(world), coefficients=str(tmp_path / "fit"), regime="2019",
                               method="parametric", seed=1), tmp_path / "boot2", replicates=2, workers=0)


def test_realistic_world_has_the_size_of_the_real_model(realistic_world):
    pop = read_population(realistic_world)
    cat = pop.catalogue
    assert cat.name == "realistic"
    spec = load_spec("realistic")
    hh_ind = [c for c in spec.volume.indicators if cat.get(c).level == "household"]
    area = [c for c in spec.volume.indicators + spec.volume.continuous if cat.get(c).level != "household"]
    assert len(hh_ind) >= 40 and len(area) - 3 >= 6       # beyond the default world's three area terms
    for name in ("corop", "households_15_64", "low_income_pct", "log_woz", "labour_market_chances_higher"):
        assert name in cat
    corop = pop.municipalities.column("corop").to_pylist()
    assert sorted(set(corop), key=int) == [str(i) for i in range(1, 41)]
    # shares of indicators without conditions follow the catalogue's share
    raw = tomllib.loads((realistic_world / "catalogue.toml").read_text())["characteristics"]
    for name in ("mental_health_care", "insurance_arrears", "self_employed", "no_work_history"):
        share = pop.households.column(name).to_numpy().mean()
        assert share == pytest.approx(raw[name]["synth"]["share"], rel=0.15), name
    # plausible dependence: single-parent heads are single parents, one sex each
    t = pop.households.column("household_type").to_numpy()
    f = pop.households.column("single_parent_female_head").to_numpy()
    m = pop.households.column("single_parent_male_head").to_numpy()
    assert np.all((f + m) == (t == 1))
    assert 0.75 < f[t == 1].mean() < 0.95


def test_realistic_spec_recovers_the_truth(realistic_world):
    pop = read_population(realistic_world)
    spec = load_spec("realistic")
    spec = dataclasses.replace(spec, volume=dataclasses.replace(spec.volume, fixed_effects="none"),
                               price=dataclasses.replace(spec.price, factors=(("age_class", "27-34"),)))
    fit = fit_model(pop, spec).volume
    truth = pop.truth["volume"]
    z = []
    for i, t in enumerate(fit.term_names):
        if t in ("intercept", "share_non_working") or t.startswith("municipality["):
            continue
        z.append((fit.params[i] - truth.get(t, 0.0)) / fit.se("model")[i])
    z = np.abs(np.asarray(z))
    assert len(z) > 70
    # without municipality effects the calibrated levels leak a little into area terms: a loose bound
    assert np.median(z) < 1.5 and np.mean(z < 3) > 0.85, np.round(z, 1)


def test_declared_column_missing_is_still_an_error(realistic_world, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(realistic_world, bad)
    h = pq.read_table(bad / "households.parquet").drop_columns(["youth_care"])
    pq.write_table(h, bad / "households.parquet")
    with pytest.raises(PopulationError, match="households.youth_care: required column is missing"):
        read_population(bad)


def test_default_world_is_unchanged(small_world):
    pop = read_population(small_world)
    default = load_catalogue("default")
    # the default characteristics and, beyond them, only the municipal measures of the 2011-2014 model
    assert pop.catalogue.name == "default_municipal" and len(default.factors()) == 8
    extra = [e for e in pop.catalogue.entries if e.name not in default]
    assert [e.name for e in pop.catalogue.entries[:len(default.entries)]] == [e.name for e in default.entries]
    assert len(extra) == 14 and {e.level for e in extra} == {"municipality"}
    assert pop.truth["truth_model"] == "default"


def test_realistic_fit_agrees_with_statsmodels(realistic_world):
    """The realistic spec with municipality fixed effects (51 household factors in 8 joint codes:
    the pass's per-slot pair sums) against statsmodels' Logit on the exported dense design."""
    import statsmodels.api as sm

    from engine.model.design import component_design, dense_design, households_from_population
    from engine.model.fit import fit_component

    hh = households_from_population(read_population(realistic_world))
    rows = np.flatnonzero(hh.municipality() < 80)    # 79 fixed effects: a dense design statsmodels fits quickly
    per_row = ("codes", "nbhd", "bijstand", "lks", "benefit_paid", "adults_sharing", "adults_sharing_under_27")
    hh = dataclasses.replace(hh, **{f: np.ascontiguousarray(getattr(hh, f)[rows]) for f in per_row})
    spec = load_spec("realistic")
    assert len(hh.joint.sizes) >= 8
    d = component_design(hh, spec.volume)
    fit = fit_component(d, mun_codes=hh.mun_codes, cluster_kind="cr1")    # statsmodels' cluster covariance
    keep = ~np.isin(hh.mun_codes[hh.municipality()], np.asarray(fit.dropped_municipalities, dtype=object))
    X = dense_design(d)
    separated = [fit.term_names.index(t) for t in fit.separated_terms]   # their households carry no information
    for j in separated:
        keep &= X[:, j] == 0
    cols = np.setdiff1d(np.flatnonzero(np.isfinite(fit.params)), separated)
    X = X[keep][:, cols]
    y = d.y[keep].astype(float)
    ref = sm.Logit(y, X).fit(method="newton", tol=1e-13, maxiter=100, disp=0, cov_type="cluster",
                             cov_kwds={"groups": hh.municipality()[keep]})
    np.testing.assert_allclose(fit.params[cols], ref.params, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(fit.se("cluster")[cols], ref.bse, rtol=1e-4)
