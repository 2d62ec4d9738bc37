"""Van der Klaauw's combined model (spec ``combined``): one fractional logit of expected expenditure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.model.design import component_design, households_from_population
from engine.model.fit import fit_component
from engine.model.fitted import fit_model, read_fit, write_fit
from engine.model.predict import household_predictions, predict
from engine.model.spec import load_spec
from test_fit import NORMS, _naive, _statsmodels_fit, big12  # noqa: F401  (fixture)


def _combined_small():
    """The combined volume component without the disability-benefit factor (too rare for a
    7,000-household sample, as in test_fit._spec)."""
    comp = load_spec("combined").volume
    return dataclasses.replace(comp, factors=tuple(f for f in comp.factors if f[0] != "other_benefit"))


def test_combined_spec_reads_and_refuses_mixtures(tmp_path):
    s = load_spec("combined")
    assert s.combined and s.volume.outcome == "expenditure" and s.price.fixed
    assert not load_spec("2019").combined
    text = s.path.read_text(encoding="utf-8")
    bad = tmp_path / "bad.toml"
    # an expenditure outcome times an estimated price would count the price twice
    head = text[:text.rindex("[price]")]
    bad.write_text(head + '[price]\noutcome = "fraction"\nsample = "bijstand"\nfixed_effects = "none"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="must be \\[price\\] model = \"norm\""):
        load_spec(bad)
    bad.write_text("combined = true\n" + text, encoding="utf-8")
    with pytest.raises(ValueError, match="unknown key 'combined'"):
        load_spec(bad)


def test_combined_outcome_is_paid_over_norm_for_all(big12):
    hh = households_from_population(big12)
    d = component_design(hh, load_spec("combined").volume, NORMS)
    assert d.n == hh.n
    recipients = (hh.bijstand | hh.lks) == 1
    assert np.all(d.y[~recipients] == 0) and np.all(d.y[recipients] > 0) and d.y.max() <= 1


def test_combined_estimates_agree_with_statsmodels_glm(big12):
    hh = households_from_population(big12)
    comp = _combined_small()
    d = component_design(hh, comp, NORMS)
    f = fit_component(d, mun_codes=hh.mun_codes, cluster_kind="cr1")
    assert not f.dropped_municipalities and f.gradient_norm < 1e-8
    X, y, mun = _naive(big12, comp, d)
    params, se_model, se_hc1, se_cl = _statsmodels_fit(X, y, mun, glm=True)
    np.testing.assert_allclose(f.params, params, rtol=1e-6, atol=1e-9)
    n, k = X.shape
    np.testing.assert_allclose(f.se("robust"), se_hc1 * np.sqrt(n / (n - k)), rtol=1e-4)
    np.testing.assert_allclose(f.se("cluster"), se_cl, rtol=1e-4)


def test_combined_predicts_expected_fraction_times_norm(small_population, tmp_path):
    fit = fit_model(small_population, "combined")
    assert fit.price.iterations == 0                                 # f = 1: nothing estimated
    hh = households_from_population(small_population)
    v = household_predictions(hh, fit)
    np.testing.assert_array_equal(v["E"], v["p"] * v["N"])          # f = 1 exactly
    # the fixed effects replaced by the common effect: sum of expected fractions = sum of observed ones
    y = component_design(hh, fit.spec.volume, fit.norms).y
    assert v["p"].sum() == pytest.approx(y.sum(), rel=1e-9)
    pred = predict(hh, fit)
    np.testing.assert_allclose(pred.objective_cost.sum(), v["E"].sum(), rtol=1e-10)
    assert pred.actual.sum() == int(((hh.bijstand | hh.lks) == 1).sum())
    write_fit(fit, tmp_path)
    back = read_fit(tmp_path)
    assert back.spec.combined and back.spec == fit.spec
    np.testing.assert_array_equal(predict(hh, back).objective_cost, pred.objective_cost)


def test_combined_draw_cells_equal_the_prediction(small_population):
    """The bootstrap's cell kernel with a price component of no factors (f = 1) gives the prediction's
    costs (it read a factor that is not there before kernels.draws.factor_terms started from 1)."""
    from engine.model.predict import prediction_design
    from engine.uncertainty.cells import draw_cells

    fit = fit_model(small_population, "combined")
    hh = households_from_population(small_population)
    pd_ = prediction_design(hh, fit.norms)
    cells = draw_cells(hh, fit, pd_)
    sums = cells.sums([(fit, None, None), (fit, fit.volume.params, fit.price.params)])
    np.testing.assert_allclose(sums[:, 0], predict(hh, fit, pd_).objective_cost, rtol=1e-9)
    np.testing.assert_array_equal(sums[:, 0], sums[:, 1])
