"""Prediction: kernels against NumPy twins, calibration, invariances, files."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.model.design import FACTOR_COLUMNS, households_from_population
from engine.model.fitted import fit_model
from engine.model.design import JOINT_GROUPS
from engine.model.predict import household_predictions, predict, prediction_design
from engine.model.schema import CATEGORIES
from kernels.vexp import exp_array
import naive  # tests/naive.py (pytest puts tests/ on sys.path)


@pytest.fixture(scope="module")
def fitted(small_population):
    hh = households_from_population(small_population)
    return hh, fit_model(hh)


def test_vectorised_exp_matches_numpy():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-708, 709, 400_001), rng.normal(0, 5, 200_000), [0.0, 1.0, -1.0]])
    rel = np.abs(exp_array(x) / np.exp(x) - 1)
    assert rel.max() < 4e-16
    edge = exp_array(np.array([np.inf, 709.5, -np.inf, -800.0, np.nan]))
    assert edge[0] == np.inf and edge[1] == np.inf
    assert 0 < edge[2] < 1e-300 and 0 < edge[3] < 1e-300 and np.isnan(edge[4])
    assert 1.0 / (1.0 + edge[0]) == 0.0 and 1.0 / (1.0 + edge[2]) == 1.0


def test_joint_codes_decode_to_the_factors(small_population):
    hh = households_from_population(small_population)
    from engine.model.norms import load_norms
    pd_ = prediction_design(hh, load_norms(2019))
    n_levels = [len(CATEGORIES[f]) for f in FACTOR_COLUMNS]
    assert pd_.groups == JOINT_GROUPS and all(np.prod([n_levels[k] for k in g]) <= 256 for g in JOINT_GROUPS)
    assert sorted(k for g in pd_.groups for k in g) == list(range(len(FACTOR_COLUMNS)))
    for g, members in enumerate(pd_.groups):
        code = pd_.combo[:, g].astype(np.int64)
        for k in reversed(members):
            np.testing.assert_array_equal(code % n_levels[k], hh.codes[:, k])
            code //= n_levels[k]
    np.testing.assert_array_equal(pd_.type_of_code[pd_.combo[:, 0]], hh.column("household_type"))
    n_types = len(CATEGORIES["household_type"])
    mun = np.asarray(small_population.neighbourhood_municipality, dtype=np.int64)[small_population.household_neighbourhood]
    np.testing.assert_array_equal(pd_.group, mun * n_types + hh.column("household_type"))
    np.testing.assert_array_equal(pd_.code_sizes, [np.prod([n_levels[k] for k in g]) for g in pd_.groups])


def _numpy_twin(pop, fit):
    """p, f, N per household with naive one-hot designs from the Arrow columns (tests/naive.py):
    the spec and norm files read as TOML, the fixed effects replaced by the fit's common effect."""
    t = {"households": pop.households, "neighbourhoods": pop.neighbourhoods, "municipalities": pop.municipalities}
    spec = naive.read_toml(fit.spec.path)
    Xv, vnames = naive.component_one_hot(t, spec["volume"])
    Xp, pnames = naive.component_one_hot(t, spec["price"])          # every household, not the estimation sample
    assert tuple(vnames) == fit.volume.term_names and tuple(pnames) == fit.price.term_names
    beta = np.nan_to_num(fit.volume.params.copy())
    fe = np.asarray([n.startswith("municipality[") for n in vnames])
    beta[fe] = 0.0
    p = naive.logistic(Xv @ beta + fit.volume.fe_common)
    f = naive.logistic(Xp @ fit.price.params)
    N = naive.gross_norms(t, naive.read_toml(naive.DATA / "norms" / f"{spec['norms']}.toml"))
    return p, f, N, naive.household_municipality(t)


def test_prediction_matches_numpy_twin(small_population, fitted):
    hh, fit = fitted
    p, f, N, mun = _numpy_twin(small_population, fit)
    got = household_predictions(hh, fit)
    np.testing.assert_allclose(got["p"], p, rtol=1e-13)
    np.testing.assert_allclose(got["f"], f, rtol=1e-13)
    np.testing.assert_allclose(got["N"], N, rtol=1e-15)
    pred = predict(hh, fit)
    typ = small_population.households.column("household_type").to_numpy()
    group = mun * 5 + typ
    for name, values in (("predicted", p), ("fraction_sum", p * f), ("norm_sum", p * N), ("expected_cost", p * f * N),
                         ("cost_slope", p * (1 - p) * f * N), ("cost_variance", p * (1 - p) * (f * N) ** 2)):
        want = np.bincount(group, weights=values, minlength=hh.n_mun * 5).reshape(hh.n_mun, 5)
        np.testing.assert_allclose(getattr(pred, name), want, rtol=1e-11, atol=1e-9)
    np.testing.assert_array_equal(pred.actual, np.bincount(group, weights=hh.bijstand | hh.lks,
                                                           minlength=hh.n_mun * 5).reshape(hh.n_mun, 5))


def test_cost_elasticity_is_the_slope_of_the_log_cost(fitted):
    """sum p (1 - p) f N / sum p f N against a central difference of two predictions with the common
    effect (every household's log-odds) moved by +-1e-4."""
    hh, fit = fitted
    shifted = lambda d: predict(hh, dataclasses.replace(fit, volume=dataclasses.replace(  # noqa: E731
        fit.volume, fe_common=fit.volume.fe_common + d))).objective_cost
    up, down = shifted(1e-4), shifted(-1e-4)
    got = predict(hh, fit).cost_elasticity
    np.testing.assert_allclose(got, (np.log(up) - np.log(down)) / 2e-4, rtol=1e-6)
    assert (got > 0).all() and (got < 1).all()        # p (1 - p) < p


def test_common_effect_reproduces_the_national_count(fitted):
    hh, fit = fitted
    pred = predict(hh, fit)
    assert pred.predicted.sum() == pytest.approx(pred.actual.sum(), rel=1e-9)


def test_household_with_p_zero_contributes_nothing(fitted):
    hh, fit = fitted
    terms = list(fit.volume.term_names)
    params = fit.volume.params.copy()
    params[terms.index("wealth[family_wealth]")] = -np.inf
    fit0 = dataclasses.replace(fit, volume=dataclasses.replace(fit.volume, params=params))
    got = household_predictions(hh, fit0)
    rich = hh.column("wealth") == CATEGORIES["wealth"].index("family_wealth")
    assert rich.any() and (got["p"][rich] == 0).all() and (got["E"][rich] == 0).all()
    assert np.isfinite(got["E"]).all()
    keep = ~rich
    sub = dataclasses.replace(hh, codes=np.ascontiguousarray(hh.codes[keep]), nbhd=hh.nbhd[keep],
                              bijstand=hh.bijstand[keep], lks=hh.lks[keep], benefit_paid=hh.benefit_paid[keep],
                              adults_sharing=hh.adults_sharing[keep],
                              adults_sharing_under_27=hh.adults_sharing_under_27[keep])
    whole, part = predict(hh, fit0), predict(sub, fit0)
    for name in ("expected_cost", "cost_slope", "cost_variance"):     # finite: p (1 - p) of p = 0 is 0, not NaN
        assert np.isfinite(getattr(whole, name)).all()
        np.testing.assert_allclose(getattr(whole, name), getattr(part, name), rtol=1e-12, atol=1e-9)


@settings(max_examples=5)
@given(seed=st.integers(0, 2**32 - 1))
def test_permuting_households_changes_no_cost(fitted, seed):
    hh, fit = fitted
    perm = np.random.default_rng(seed).permutation(hh.n)
    hp = dataclasses.replace(hh, codes=np.ascontiguousarray(hh.codes[perm]), nbhd=hh.nbhd[perm],
                             bijstand=hh.bijstand[perm], lks=hh.lks[perm], benefit_paid=hh.benefit_paid[perm],
                             adults_sharing=hh.adults_sharing[perm],
                             adults_sharing_under_27=hh.adults_sharing_under_27[perm])
    a, b = predict(hh, fit), predict(hp, fit)
    np.testing.assert_allclose(b.expected_cost, a.expected_cost, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(b.actual, a.actual)


def test_cli_fit_and_predict(small_world, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "engine", *a], capture_output=True, text=True)  # noqa: E731
    res = run("fit", "--population", str(small_world), "--out", str(tmp_path / "fit"))
    assert res.returncode == 0, res.stderr
    import re
    assert re.search(r"volume: [\d,]+ households, 421 terms, \d+ Newton iterations", res.stdout)
    assert "municipalities without variation left out" in res.stdout
    res = run("predict", "--population", str(small_world), "--coefficients", str(tmp_path / "fit"),
              "--out", str(tmp_path / "pred"))
    assert res.returncode == 0, res.stderr
    costs = pq.read_table(tmp_path / "pred" / "municipal_costs.parquet")
    rek = pq.read_table(tmp_path / "pred" / "rekentool.parquet")
    assert costs.num_rows == 388 and rek.num_rows == 388 * 5
    per_mun = rek.column("expected_cost").to_numpy().reshape(388, 5).sum(1)
    np.testing.assert_allclose(per_mun, costs.column("objective_cost").to_numpy(), rtol=1e-12)
    assert costs.column("objective_share").to_numpy().sum() == pytest.approx(1.0, abs=1e-12)
    res = run("predict", "--population", str(small_world), "--coefficients", str(tmp_path / "nothing"),
              "--out", str(tmp_path / "pred2"))
    assert res.returncode == 2 and "coefficients.parquet is missing" in res.stderr
    assert not (tmp_path / "pred2").exists() or not any((tmp_path / "pred2").iterdir())
