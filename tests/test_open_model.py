"""The open model: a catalogue of characteristics, labels honoured, specs of any shape,
published weights (checked against the published tables and hand computations)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import statsmodels.api as sm
from scipy import stats
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.app.cli import main
from engine.model.catalogue import CatalogueError, load_catalogue
from engine.model.design import households_from_population
from engine.model.fitted import coefficients_table, fit_model, fit_to_folder, read_fit
from engine.model.labels import read_labels
from engine.model.population import read_population
from engine.model.predict import household_predictions, predict
from engine.model.published import municipal_linear_cost
from engine.model.schema import CATEGORIES
from engine.model.spec import SpecError, load_spec
import naive  # tests/naive.py (pytest puts tests/ on sys.path)

PUBLISHED = Path(__file__).resolve().parent.parent / "engine" / "data" / "published"


def _default_municipalities(pop):
    """The municipalities table with the default catalogue's columns only (the default world also
    carries the 2011-2014 municipal measures)."""
    from engine.model.schema import schema

    return pop.municipalities.select(schema("municipalities").names)


def _write(folder: Path, pop, households=None, neighbourhoods=None, municipalities=None, catalogue: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(households if households is not None else pop.households, folder / "households.parquet")
    pq.write_table(neighbourhoods if neighbourhoods is not None else pop.neighbourhoods,
                   folder / "neighbourhoods.parquet")
    pq.write_table(municipalities if municipalities is not None else _default_municipalities(pop),
                   folder / "municipalities.parquet")
    if catalogue is not None:
        (folder / "catalogue.toml").write_text(catalogue, encoding="utf-8")
    return folder


CHILDREN = '''include = "default"
[characteristics.n_children]
level = "household"
kind = "categorical"
labels = ["none", "one", "two_or_more"]
doc = "children in the household"
source = "test"
'''

SPEC_CHILDREN = '''name = "children"
[volume]
outcome = "bijstand_or_lks"
sample = "all"
fixed_effects = "none"
continuous = ["share_non_working"]
[volume.factors]
household_type = "single"
n_children = "none"
[price]
outcome = "fraction"
sample = "bijstand"
fixed_effects = "none"
[price.factors]
household_type = "single"
'''


@pytest.fixture(scope="module")
def children_world(small_population, tmp_path_factory):
    """The small world with a user-declared characteristic correlated with the outcome."""
    h = small_population.households
    rng = np.random.default_rng(3)
    y = (h.column("bijstand").to_numpy() | h.column("lks").to_numpy()).astype(float)
    kids = np.minimum(rng.poisson(0.6 + 0.8 * y), 2).astype(np.int8)
    field = pa.field("n_children", pa.int8(), nullable=False,
                     metadata={"labels": json.dumps(["none", "one", "two_or_more"])})
    folder = tmp_path_factory.mktemp("children")
    _write(folder, small_population, households=h.append_column(field, pa.array(kids)), catalogue=CHILDREN)
    (folder / "children.toml").write_text(SPEC_CHILDREN, encoding="utf-8")
    return folder


def test_user_characteristic_fits_and_predicts_like_statsmodels(children_world, tmp_path):
    pop = read_population(children_world)
    assert "n_children" in pop.catalogue
    fit = fit_to_folder(pop, tmp_path / "fit", spec=children_world / "children.toml", export=True)
    terms = list(fit.volume.term_names)
    assert "n_children[one]" in terms and "n_children[two_or_more]" in terms
    design = pq.read_table(tmp_path / "fit" / "design_volume.parquet")
    X = np.column_stack([design.column(t).to_numpy() for t in terms])
    ref = sm.Logit(design.column("_y").to_numpy(), X).fit(method="newton", tol=1e-13, disp=0)
    np.testing.assert_allclose(fit.volume.params, ref.params, rtol=1e-6, atol=1e-9)
    # the spec is recorded by content: the folder reads back after the spec file is gone
    moved = tmp_path / "spec_gone.toml"
    (children_world / "children.toml").rename(moved)
    try:
        back = read_fit(tmp_path / "fit")
    finally:
        moved.rename(children_world / "children.toml")
    assert back.spec == fit.spec
    costs = predict(households_from_population(pop), back).objective_cost
    assert costs.shape == (388,) and np.all(np.isfinite(costs)) and costs.sum() > 0
    assert main(["predict", "--population", str(children_world), "--coefficients", str(tmp_path / "fit"),
                 "--out", str(tmp_path / "pred"), "--quiet"]) == 0


def test_coefficient_table_like_statsmodels(children_world, tmp_path):
    pop = read_population(children_world)
    fit = fit_to_folder(pop, tmp_path / "fit", spec=children_world / "children.toml", export=True)
    design = pq.read_table(tmp_path / "fit" / "design_volume.parquet")
    terms = list(fit.volume.term_names)
    X = np.column_stack([design.column(t).to_numpy() for t in terms])
    groups = households_from_population(pop).municipality()
    y = design.column("_y").to_numpy().astype(np.float64)
    ref = sm.Logit(y, X).fit(method="newton", tol=1e-13, disp=0)
    # the cluster covariance is CR2 (tests/naive.py builds it from the hat-matrix blocks);
    # z on that se, p and the 95% interval from Student's t with the effective number of
    # clusters as degrees of freedom
    se = np.sqrt(np.diag(naive.cr2_covariance(X, y, ref.params, groups)))
    df = naive.cluster_df(X, ref.params, groups)
    z = ref.params / se
    t = coefficients_table(fit).to_pandas()
    t = t[t.component == "volume"]
    np.testing.assert_allclose(t.se_cluster, se, rtol=1e-4)
    np.testing.assert_allclose(t.df, df, rtol=1e-6)
    np.testing.assert_allclose(t.z, z, rtol=1e-4)
    np.testing.assert_allclose(t.p_value, 2 * stats.t.sf(np.abs(z), df), rtol=1e-3, atol=1e-12)
    q = stats.t.ppf(0.975, df)
    np.testing.assert_allclose(t.ci_low, ref.params - q * se, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(t.ci_high, ref.params + q * se, rtol=1e-5, atol=1e-8)
    # the leading-order df against Bell and McCaffrey's exact Satterthwaite df (with the
    # leverage): within 5% with df of 38-106, and above it (the leverage lowers the exact one)
    bm = naive.bell_mccaffrey_df(X, ref.params, groups)
    np.testing.assert_allclose(df, bm, rtol=0.05)
    assert np.all((df > bm) & (df <= len(np.unique(groups))))


def test_undeclared_column_and_unknown_characteristic_are_refused(children_world, tmp_path, capsys):
    folder = tmp_path / "no_catalogue"
    pop = read_population(children_world)
    _write(folder, pop, households=pq.read_table(children_world / "households.parquet"))
    assert main(["validate", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "households.n_children" in err and "not declared" in err.replace("nor declared", "not declared")
    # with the catalogue given on the command line it is valid
    (tmp_path / "cat.toml").write_text(CHILDREN, encoding="utf-8")
    assert main(["validate", str(folder), "--catalogue", str(tmp_path / "cat.toml"), "--quiet"]) == 0
    spec = tmp_path / "typo.toml"
    spec.write_text(SPEC_CHILDREN.replace("n_children = ", "n_kids = "), encoding="utf-8")
    with pytest.raises(SpecError, match="'n_kids' is not declared in the catalogue"):
        fit_model(pop, load_spec(spec))


@pytest.mark.parametrize("edit, key", [
    (lambda s: s.replace("sample = \"all\"", "sample = \"all\"\nsampel = \"all\""), "sampel"),
    (lambda s: s + "\n[extra]\n", "extra"),
    (lambda s: s.replace("[price]\n", "[price]\nmodle = \"norm\"\n"), "modle"),
])
def test_unknown_spec_keys_are_named(tmp_path, edit, key):
    path = tmp_path / "s.toml"
    path.write_text(edit(SPEC_CHILDREN), encoding="utf-8")
    with pytest.raises(ValueError, match=f"unknown key '{key}'"):
        load_spec(path)


# --------------------------------------------------------------------------- labels

def _relabel(table: pa.Table, column: str, order: list[str]) -> pa.Table:
    """The column's codes rewritten for labels in ``order``, with that metadata."""
    canon = CATEGORIES[column]
    lut = np.array([order.index(lab) for lab in canon], dtype=np.int8)
    codes = lut[table.column(column).to_numpy()]
    field = pa.field(column, pa.int8(), nullable=False, metadata={"labels": json.dumps(order)})
    return table.set_column(table.column_names.index(column), field, pa.array(codes))


def test_reordered_labels_give_the_same_estimates(small_population, tmp_path):
    h = small_population.households
    order = list(reversed(CATEGORIES["household_type"]))
    h2 = _relabel(_relabel(h, "household_type", order), "wealth", list(np.roll(CATEGORIES["wealth"], 2)))
    # and one column as strings
    mig = np.asarray(CATEGORIES["migration"], dtype=object)[h.column("migration").to_numpy()]
    h2 = h2.set_column(h2.column_names.index("migration"), "migration", pa.array(mig, pa.string()))
    folder = _write(tmp_path / "relabelled", small_population, households=h2)
    pop2 = read_population(folder)
    for c in ("household_type", "wealth", "migration"):
        np.testing.assert_array_equal(pop2.households.column(c).to_numpy(), h.column(c).to_numpy())
    spec = load_spec(Path(__file__).parent.parent / "engine" / "data" / "specs" / "2019.toml")
    import dataclasses
    vol = dataclasses.replace(spec.volume, fixed_effects="none",
                              factors=tuple(f for f in spec.volume.factors if f[0] != "other_benefit"))
    spec = dataclasses.replace(spec, volume=vol, price=dataclasses.replace(spec.price, factors=(("age_class", "27-34"),)))
    a = fit_model(small_population, spec).volume.params
    b = fit_model(pop2, spec).volume.params
    np.testing.assert_array_equal(a, b)


def test_wrong_label_is_refused_naming_everything(small_population, tmp_path, capsys):
    h = small_population.households
    order = list(CATEGORIES["household_type"])
    order[1] = "singel_parent"
    field = pa.field("household_type", pa.int8(), nullable=False, metadata={"labels": json.dumps(order)})
    bad = h.set_column(h.column_names.index("household_type"), field, h.column("household_type"))
    first = int(np.flatnonzero(h.column("household_type").to_numpy() == 1)[0])
    folder = _write(tmp_path / "bad", small_population, households=bad)
    assert main(["validate", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"households.household_type, row {first}: label 'singel_parent' (code 1) is not a label" in err
    assert "expected: 0 = single, 1 = single_parent, 2 = couple_no_children" in err


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_random_relabelings_and_column_orders_change_nothing(small_population, data):
    h = small_population.households.slice(0, 2000)
    canon = read_labels("households", h)
    t = h
    for c in ("household_type", "age_class", "migration", "education", "housing", "health", "other_benefit",
              "wealth", "duration_class"):
        kind = data.draw(st.sampled_from(["permuted", "strings", "dictionary", "as is"]), label=c)
        if kind == "permuted":
            t = _relabel(t, c, data.draw(st.permutations(list(CATEGORIES[c])), label=f"{c} order"))
        elif kind in ("strings", "dictionary"):
            arr = pa.array(np.asarray(CATEGORIES[c], dtype=object)[t.column(c).to_numpy()], pa.string())
            if kind == "dictionary":
                arr = arr.dictionary_encode()
            t = t.set_column(t.column_names.index(c), c, arr)
    names = data.draw(st.permutations(t.column_names), label="column order")
    got = read_labels("households", t.select(names))
    for c in canon.column_names:
        assert got.column(c).to_pylist() == canon.column(c).to_pylist(), c


def test_catalogue_errors_name_the_entry(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('include = "default"\n[characteristics.x]\nlevel = "household"\nkind = "categorial"\n',
                 encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"\[characteristics.x\]: kind 'categorial'"):
        load_catalogue(p)
    p.write_text('include = "default"\n[characteristics.x]\nlevel = "household"\nkind = "indicator"\nlables = 1\n',
                 encoding="utf-8")
    with pytest.raises(ValueError, match="unknown key 'lables'"):
        load_catalogue(p)
    assert len(load_catalogue("realistic").factors()) >= 48


# --------------------------------------------------------------------------- published weights

def _published_csv(name: str) -> list[dict]:
    with open(PUBLISHED / name, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_scp2015_spec_carries_the_published_table():
    spec = load_spec("scp2015")
    rows = {r["variabele"]: float(r["gewicht"]) for r in _published_csv("weights_2015_scp_multiniveau_huishouden.csv")}
    assert spec.weights.volume["intercept"] == rows["Constante"]
    assert spec.weights.volume["person_work_limitation"] == rows["Aanwezigheid van een persoon met een arbeidsbeperking"]
    assert spec.weights.volume["household_type[couple_no_children]"] == rows["Paar zonder kinderen"]
    assert spec.weights.volume["migration[turkish]"] == rows["Hebben van een niet-westerse achtergrond"]
    corop = {r["corop_nr"]: float(r["gewicht"]) for r in _published_csv("weights_2015_scp_corop.csv")}
    assert spec.weights.region == corop and spec.weights.region_column == "corop"
    nonzero = sorted(v for v in spec.weights.volume.values() if v != 0.0)
    assert sorted(set(nonzero)) == sorted(set(rows.values()))    # every published weight, nothing else
    assert spec.price.fixed


SCP_CATALOGUE_COLUMNS = ("single_parent_female_head", "single_parent_male_head", "person_15_24", "person_55_65",
                         "person_low_education", "person_higher_education", "person_work_limitation",
                         "person_disability_benefit", "liveability_moderate", "log_woz",
                         "labour_market_chances_higher", "employed_per_potential", "corop")


def _subset_catalogue(names) -> str:
    """A catalogue: the default plus the realistic catalogue's entries ``names`` (as TOML)."""
    from engine.io.config import dump_toml

    real = load_catalogue("realistic")
    return dump_toml({"include": "default", "characteristics": {
        n: {k: v for k, v in real.get(n).to_dict().items() if k != "synth"} for n in names}})


def test_scp2015_predicts_a_hand_computed_household(small_population, tmp_path):
    pop = small_population
    rng = np.random.default_rng(5)
    h, nb, mun = pop.households, pop.neighbourhoods, _default_municipalities(pop)
    sp = h.column("household_type").to_numpy() == 1
    female = sp & (rng.random(h.num_rows) < 0.85)
    cols = {"single_parent_female_head": female, "single_parent_male_head": sp & ~female}
    for c in SCP_CATALOGUE_COLUMNS[2:8]:
        cols[c] = rng.random(h.num_rows) < 0.2
    for c, v in cols.items():
        h = h.append_column(c, pa.array(v.astype(np.int8)))
    nb = nb.append_column("liveability_moderate", pa.array((rng.random(nb.num_rows) < 0.15).astype(np.int8)))
    nb = nb.append_column("log_woz", pa.array(rng.normal(12.2, 0.3, nb.num_rows)))
    mun = mun.append_column("labour_market_chances_higher", pa.array(rng.uniform(0.1, 0.4, mun.num_rows)))
    mun = mun.append_column("employed_per_potential", pa.array(rng.uniform(0.6, 0.75, mun.num_rows)))
    mun = mun.append_column("corop", pa.array([str(1 + i % 40) for i in range(mun.num_rows)]))
    folder = _write(tmp_path / "scp", pop, h, nb, mun, catalogue=_subset_catalogue(SCP_CATALOGUE_COLUMNS))
    pop2 = read_population(folder)
    hh = households_from_population(pop2)
    fit = fit_model(hh, load_spec("scp2015"))
    v = household_predictions(hh, fit)
    # by hand, from the published CSVs (not the spec), for a few households
    w = {r["variabele"]: float(r["gewicht"]) for r in _published_csv("weights_2015_scp_multiniveau_huishouden.csv")}
    corop = {r["corop_nr"]: float(r["gewicht"]) for r in _published_csv("weights_2015_scp_corop.csv")}
    names = [r["variabele"] for r in _published_csv("weights_2015_scp_multiniveau_huishouden.csv")]
    hrow = {c: pop2.households.column(c).to_numpy() for c in pop2.households.column_names if c not in
            ("municipality", "neighbourhood")}
    nbi, mi = pop2.household_neighbourhood, pop2.household_municipality
    for i in (0, int(np.flatnonzero(female)[0]), int(np.flatnonzero(sp & ~female)[0]),
              int(np.flatnonzero(hrow["housing"] == 0)[0])):
        t, m, nrow, g = hrow["household_type"][i], hrow["migration"][i], nbi[i], mi[i]
        x = [hrow["single_parent_female_head"][i], hrow["single_parent_male_head"][i], t == 2, t == 3,
             hrow["person_15_24"][i], hrow["person_55_65"][i], hrow["housing"][i] == 0, m >= 2,
             hrow["person_low_education"][i], hrow["person_higher_education"][i],
             hrow["person_work_limitation"][i], hrow["person_disability_benefit"][i],
             nb.column("log_woz")[nrow].as_py(), nb.column("liveability_moderate")[nrow].as_py(),
             mun.column("labour_market_chances_higher")[g].as_py(), mun.column("employed_per_potential")[g].as_py(), 1.0]
        eta = sum(w[n] * float(xi) for n, xi in zip(names, x)) + corop[str(1 + g % 40)]
        assert v["p"][i] == pytest.approx(1 / (1 + math.exp(-eta)), rel=1e-12)
        assert v["f"][i] == 1.0          # no price model: the norm amount
    assert main(["predict", "--population", str(folder), "--spec", "scp2015", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0


APE_NAMES = ("low_income_pct", "single_parent_15_44_pct", "disability_benefit_pct", "migrants_15_64_pct",
             "low_educated_15_64_pct", "rental_dwellings_pct", "client_potential_pct", "urban_inhabitants_pct",
             "employed_labour_force_pct", "trade_hospitality_jobs_pct", "job_growth_pct",
             "jobs_per_labour_force_pct", "population_growth_15_64")


@pytest.mark.parametrize("year", [2011, 2012, 2013, 2014])
def test_ape_specs_reproduce_a_hand_computation(small_population, tmp_path, year):
    mun = _default_municipalities(small_population)
    rng = np.random.default_rng(year)
    values = {c: rng.uniform(0.5, 40.0, mun.num_rows) for c in APE_NAMES}
    values["employed_labour_force_pct"] = rng.uniform(90, 97, mun.num_rows)
    per = rng.integers(1000, 90_000, mun.num_rows).astype(np.float64)
    for c in APE_NAMES:
        mun = mun.append_column(c, pa.array(values[c]))
    mun = mun.append_column("households_15_64", pa.array(per))
    folder = _write(tmp_path / "ape", small_population, municipalities=mun,
                    catalogue=_subset_catalogue(APE_NAMES + ("households_15_64",)))
    pop = read_population(folder)
    cost = municipal_linear_cost(load_spec(f"ape{year}"), pop.municipalities, pop.catalogue)
    rows = sorted((r for r in _published_csv("weights_ape_gemeentemodel_2011_2014.csv")
                   if r["budget_year"] == str(year)), key=lambda r: int(r["nr"]))
    for g in (0, 200):                   # two municipalities by hand
        unit = float(rows[13]["gewicht"]) + sum(float(r["gewicht"]) * values[c][g] for r, c in zip(rows[:13], APE_NAMES))
        assert cost[g] == pytest.approx(per[g] * unit, rel=1e-12)
    out = tmp_path / "costs"
    assert main(["predict", "--population", str(folder), "--spec", f"ape{year}", "--out", str(out), "--quiet"]) == 0
    np.testing.assert_array_equal(pq.read_table(out / "municipal_costs.parquet").column("objective_cost").to_numpy(),
                                  cost)


def test_published_weights_refuse_draws_and_offer_the_outcome_band(small_population):
    from engine.uncertainty.draws import check_method

    pop = small_population
    spec = load_spec("2019")
    fit = fit_model(pop, spec)
    import dataclasses

    from engine.model.spec import Weights
    published = dataclasses.replace(fit, spec=dataclasses.replace(spec, weights=Weights(reference="test")))
    for method in ("parametric", "cluster"):
        with pytest.raises(ValueError, match='use method "outcome"'):
            check_method(published, method)
    check_method(published, "outcome")
    check_method(fit, "parametric")
