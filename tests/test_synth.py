"""The synthetic Netherlands: determinism, calibration to CBS, plausibility, truth."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.model.population import read_population
from engine.model.schema import CATEGORIES
from engine.world.geography import allocate_households, largest_remainder, load_geography
from engine.world.synth import REAL_HOUSEHOLDS, generate
from engine.world.truth import HOUSEHOLDS_PER_RECIPIENT

FILES = ("households.parquet", "neighbourhoods.parquet", "municipalities.parquet", "truth.json")


def test_largest_remainder_exact_total():
    out = largest_remainder(np.array([1.0, 1.0, 1.0]), 10)
    assert out.sum() == 10 and sorted(out) == [3, 3, 4]
    assert largest_remainder(np.array([5.0, 0.0]), 4, minimum=1).tolist() == [3, 1]


def test_geography_is_the_real_2017_one():
    geo = load_geography()
    assert len(geo.mun_code) == 388 and len(geo.wk_code) == 3_070
    assert geo.households.sum() == REAL_HOUSEHOLDS
    assert 30 <= len(geo.region_code) <= 40          # about 35 labour-market regions
    assert len(set(geo.province)) == 12
    assert geo.rec2017.sum() == 508_460               # SOURCES.md: gemeente sum 2017


def test_full_scale_allocation_matches_scaled_real_counts():
    geo = load_geography()
    n = allocate_households(geo, REAL_HOUSEHOLDS)
    assert n.sum() == REAL_HOUSEHOLDS
    expected = geo.wk_households * REAL_HOUSEHOLDS / geo.wk_households.sum()
    # each municipality is rounded once and then its wijken: at most 2 households off
    assert np.abs(n - expected).max() <= 2
    half = allocate_households(geo, REAL_HOUSEHOLDS // 2)
    assert np.abs(half - expected / 2).max() <= 2


def test_determinism_and_seed(small_world, tmp_path):
    again = tmp_path / "again"
    generate(again, households=30_000, seed=7, threads=1)
    for f in FILES:
        assert (small_world / f).read_bytes() == (again / f).read_bytes(), f
    other = tmp_path / "other"
    generate(other, households=30_000, seed=8)
    assert (small_world / "households.parquet").read_bytes() != (other / "households.parquet").read_bytes()


def test_row_groups_by_municipality(small_world):
    f = pq.ParquetFile(small_world / "households.parquet")
    assert f.metadata.num_row_groups == 388
    first = f.read_row_group(0, columns=["municipality"]).column(0)
    assert len(set(first.to_pylist())) == 1


def test_every_municipality_and_wijk_totals(small_population):
    geo = load_geography()
    counts = np.bincount(small_population.household_neighbourhood, minlength=3070)
    assert (counts == allocate_households(geo, 30_000)).all()
    assert (np.bincount(small_population.household_municipality, minlength=388) >= 20).all()


def test_national_share_and_municipal_calibration(small_population):
    geo = load_geography()
    h = small_population.households
    share = (h.column("bijstand").to_numpy().sum() + h.column("lks").to_numpy().sum()) / h.num_rows
    target = HOUSEHOLDS_PER_RECIPIENT * geo.rec2017.sum() / REAL_HOUSEHOLDS
    assert abs(share - target) < 0.005
    truth = small_population.truth
    expected = np.array([m["expected_households"] for m in truth["municipalities"]])
    n_g = np.bincount(small_population.household_municipality, minlength=388)
    scaled_cbs = HOUSEHOLDS_PER_RECIPIENT * geo.rec2017 * n_g / geo.households
    assert np.corrcoef(expected, scaled_cbs)[0, 1] >= 0.99
    not_planted = ~np.array([m["planted"] for m in truth["municipalities"]])
    target = np.array([m["target_households"] for m in truth["municipalities"]])
    np.testing.assert_allclose(expected[not_planted], target[not_planted], rtol=1e-6)


def test_planted_municipalities(small_population):
    truth = small_population.truth
    planted = [m for m in truth["municipalities"] if m["planted"]]
    assert len(planted) == 10 and truth["planted"] == [m["code"] for m in planted]
    inh = dict(zip(small_population.municipality_codes,
                   small_population.municipalities.column("inhabitants").to_numpy()))
    assert all(inh[m["code"]] > 40_000 for m in planted)
    assert all(m["expected_households"] < m["target_households"] for m in planted)


def test_marginals_are_plausible(small_population):
    h = small_population.households
    share = {c: np.bincount(h.column(c).to_numpy(), minlength=len(CATEGORIES[c])) / h.num_rows
             for c in ("household_type", "housing", "migration", "education", "other_benefit", "health")}
    assert 0.30 < share["household_type"][0] < 0.45            # one-person households (CBS ~38%)
    assert 0.05 < share["household_type"][1] < 0.12            # single parents
    assert 0.40 < share["housing"][0] < 0.65                   # owner-occupied
    assert 0.65 < share["migration"][0] < 0.85                 # no migration background
    assert 0.03 < share["other_benefit"][2] + share["other_benefit"][3] < 0.09   # disability benefit
    assert 0.05 < share["health"][2] < 0.15                    # work limitation
    bij = h.column("bijstand").to_numpy() == 1
    paid = h.column("benefit_paid").to_numpy()[bij]
    assert 9_000 < paid.mean() < 18_000                        # EUR per bijstand household per year
    dur = h.column("duration_class").to_numpy()
    assert (dur[bij] > 0).all() and (dur[~bij & (h.column("lks").to_numpy() == 0)] == 0).all()


def test_neighbourhood_and_regional_factors_vary(small_population):
    nb = small_population.neighbourhoods
    snw = nb.column("share_non_working").to_numpy()
    assert 0.15 < snw.mean() < 0.40 and snw.std() > 0.03
    assert abs(nb.column("liveability").to_numpy().mean()) < 1e-9
    jobs = small_population.municipalities.column("jobs_availability").to_numpy()
    assert len(np.unique(jobs)) >= 30 and 0.35 <= jobs.min() and jobs.max() <= 1.3


def test_municipality_table(small_population):
    m = small_population.municipalities
    spend = m.column("spending_t").to_numpy()
    paid = np.bincount(small_population.household_municipality,
                       weights=small_population.households.column("benefit_paid").to_numpy(), minlength=388)
    np.testing.assert_allclose(spend, paid)
    s2 = m.column("spending_t2").to_numpy()
    assert 0.7 < s2.sum() / spend.sum() < 1.3
    # tiny counts at 30,000 households: the relation is still clear
    assert np.corrcoef(m.column("granieten_voorraad").to_numpy(), spend)[0, 1] > 0.7


def test_truth_file(small_world):
    truth = json.loads((small_world / "truth.json").read_text())
    assert truth["volume"]["wealth[single_wealth]"] == pytest.approx(-2.0799440)
    assert truth["volume"]["other_benefit[ao_partial]"] == pytest.approx(-3.6719088)
    assert len(truth["municipalities"]) == 388
    # the common effect reproduces the national expected number of households
    effects = np.array([m["policy_effect"] for m in truth["municipalities"]])
    assert sum(m["objective_households"] for m in truth["municipalities"]) == pytest.approx(
        sum(m["expected_households"] for m in truth["municipalities"]), rel=1e-9)
    alpha = np.array([m["alpha"] for m in truth["municipalities"]])
    np.testing.assert_allclose(alpha - effects, truth["volume"]["common_effect"])


def test_too_few_households(tmp_path):
    with pytest.raises(ValueError, match="at least"):
        generate(tmp_path / "x", households=100)
    assert not (tmp_path / "x" / "households.parquet").exists()


@pytest.mark.slow
def test_full_scale_world(tmp_path):
    s = generate(tmp_path / "nl", seed=1)
    pop = read_population(tmp_path / "nl")
    geo = load_geography()
    assert pop.households.num_rows == REAL_HOUSEHOLDS == s.households
    counts = np.bincount(pop.household_neighbourhood, minlength=3070)
    assert (counts == allocate_households(geo, REAL_HOUSEHOLDS)).all()
    h = pop.households
    share = (h.column("bijstand").to_numpy().sum() + h.column("lks").to_numpy().sum()) / h.num_rows
    assert abs(share - HOUSEHOLDS_PER_RECIPIENT * geo.rec2017.sum() / REAL_HOUSEHOLDS) < 0.005
    realised = np.bincount(pop.household_municipality, weights=h.column("bijstand").to_numpy()
                           + h.column("lks").to_numpy(), minlength=388)
    assert np.corrcoef(realised, geo.rec2017)[0, 1] >= 0.99
