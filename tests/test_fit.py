"""Estimation: kernels against NumPy twins, estimates against statsmodels, invariances, truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import statsmodels.api as sm
from scipy import stats
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.model.design import JOINT_OFF, component_design, dense_design, households_from_population
from engine.model.fit import EstimationError, _Evaluator, fit_component
from engine.model.fitted import fit_model, fit_to_folder, read_fit
from engine.model.norms import load_norms
from engine.model.population import from_tables
from engine.model.spec import ComponentSpec, load_spec
from kernels.config import N_VIRTUAL
from kernels.glm import linear_predictor, logit_pass
import naive  # tests/naive.py (pytest puts tests/ on sys.path)

NORMS = load_norms(2019)
NORMS_FILE = naive.DATA / "norms" / "2019.toml"


def subset_population(pop, n_largest: int):
    """The population restricted to its ``n_largest`` municipalities (by households)."""
    counts = np.bincount(pop.household_municipality, minlength=pop.municipalities.num_rows)
    keep = np.sort(np.argsort(-counts, kind="stable")[:n_largest])
    codes = pa.array(pop.municipality_codes[keep].tolist())
    mun = pop.municipalities.take(pa.array(keep))
    nb = pop.neighbourhoods.filter(pc.is_in(pop.neighbourhoods.column("municipality"), value_set=codes))
    h = pop.households.filter(pa.array(np.isin(pop.household_municipality, keep)))
    h = h.set_column(1, "municipality", h.column("municipality").cast(pa.string()))
    h = h.set_column(2, "neighbourhood", h.column("neighbourhood").cast(pa.string()))
    return from_tables(h, nb, mun, catalogue=pop.catalogue)


@pytest.fixture(scope="module")
def big12(small_population):
    return subset_population(small_population, 12)


def _spec(component: str, **changes) -> ComponentSpec:
    """A component of the 2019 spec; for 7,000-household samples without the disability
    benefit factor, too rare among bijstand households (log-odds -3.7) to be estimated."""
    comp = getattr(load_spec(), component)
    comp = dataclasses.replace(comp, factors=tuple(f for f in comp.factors if f[0] != "other_benefit"))
    return dataclasses.replace(comp, **changes)


def _naive(pop, comp: ComponentSpec, d):
    """The naive one-hot design and outcome of ``comp`` straight from the population's Arrow
    columns (tests/naive.py), checked against the engine's term names and outcome."""
    t = {"households": pop.households, "neighbourhoods": pop.neighbourhoods, "municipalities": pop.municipalities}
    as_dict = {"factors": dict(comp.factors), "continuous": list(comp.continuous), "sample": comp.sample,
               "fixed_effects": comp.fixed_effects, "outcome": comp.outcome}
    X, names, y, _ = naive.component_data(t, as_dict, naive.read_toml(NORMS_FILE))
    assert tuple(names) == d.layout.term_names
    np.testing.assert_allclose(d.y, y, rtol=1e-15)
    return X, y, naive.household_municipality(t)


def test_kernel_and_assembly_match_numpy(big12):
    hh = households_from_population(big12)
    d = component_design(hh, load_spec().volume)
    rng = np.random.default_rng(0)
    theta = rng.normal(0, 0.3, d.layout.n_params)
    theta[0] = -3
    X, y, mun = _naive(big12, load_spec().volume, d)
    ll, g, H, meat = naive.logit_pass(X, y, theta)
    ev = _Evaluator(d)
    st_ = ev.run(theta)
    np.testing.assert_allclose(st_.ll, ll, rtol=1e-12)
    np.testing.assert_allclose(st_.g, g, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(st_.H, H, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(ev.run(theta, mode=1).H, meat, rtol=1e-10, atol=1e-9)
    level_coef, nb_eta = d.layout.tables(theta, d.nb_cont, d.nb_mun)
    eta = linear_predictor(d.codes, d.layout.cols, d.layout.lev_off, level_coef, d.nbhd, nb_eta)
    np.testing.assert_allclose(eta, X @ theta, rtol=1e-12, atol=1e-12)
    # cluster score sums per municipality
    p = naive.logistic(X @ theta)
    S = np.stack([np.bincount(mun, weights=X[:, k] * (y - p), minlength=ev.n_mun) for k in range(X.shape[1])], 1)
    np.testing.assert_allclose(ev.cluster_scores(ev.run(theta, mode=1, clusters=True)), S, atol=1e-9)


def test_raw_kernel_histograms_match_bincount(big12):
    hh = households_from_population(big12)
    d = component_design(hh, load_spec().volume)
    ev = _Evaluator(d)
    lay = d.layout
    theta = np.zeros(lay.n_params)
    level_coef, nb_eta = lay.tables(theta, d.nb_cont, d.nb_mun)
    S = ev.Q.shape[0]
    out = logit_pass(d.joint, JOINT_OFF, ev.M @ level_coef, ev.slot_ptr, ev.slot_idx, S, d.nbhd, nb_eta, hh.n_nb,
                     d.nb_cont, d.nb_mun, ev.n_mun, d.y, np.zeros(0), 0, True, N_VIRTUAL)
    g_s, a_nb, a_ms, a_xs, a_ss, s_ms = out[1], out[3], out[4], out[5], out[6], out[7]
    q = 0.25                                                # p = 1/2 everywhere
    mun = d.nb_mun[d.nbhd]
    np.testing.assert_allclose(a_nb, q * np.bincount(d.nbhd, minlength=hh.n_nb))
    # slot -> (factor column, code): the slots are the parameters of the non-reference levels
    slot_par = ev.Q.indices
    level_of = {int(lay.level_param[l]): l for l in range(lay.n_levels_total) if lay.level_param[l] >= 0}

    def has(s):
        l = level_of[int(slot_par[s])]
        k = int(np.searchsorted(lay.lev_off, l, side="right")) - 1
        return d.codes[:, lay.cols[k]] == l - lay.lev_off[k]

    a, b = 0, S - 1                                         # household_type's first level, wealth's last
    ha, hb = has(a), has(b)
    np.testing.assert_allclose(a_ss[a, a], q * ha.sum())
    np.testing.assert_allclose(a_ss[a, b], q * (ha & hb).sum())
    np.testing.assert_allclose(a_ss[b, a], q * (ha & hb).sum())
    np.testing.assert_allclose(a_ms[:, b], q * np.bincount(mun, weights=hb, minlength=ev.n_mun))
    np.testing.assert_allclose(a_xs[0, a], q * d.nb_cont[d.nbhd[ha], 0].sum())
    r = d.y - 0.5
    np.testing.assert_allclose(g_s[a], r[ha].sum(), atol=1e-9)
    np.testing.assert_allclose(s_ms[:, b], np.bincount(mun, weights=r * hb, minlength=ev.n_mun), atol=1e-9)


def _statsmodels_fit(X, y, groups, glm: bool):
    model = sm.GLM(y, X, family=sm.families.Binomial()) if glm else sm.Logit(y, X)
    kw = dict(tol=1e-13, maxiter=200) if glm else dict(method="newton", tol=1e-13, maxiter=200, disp=0)
    base = model.fit(**kw)
    hc1 = model.fit(cov_type="HC1", **kw)
    cl = model.fit(cov_type="cluster", cov_kwds={"groups": groups}, **kw)
    return base.params, base.bse, hc1.bse, cl.bse


def _small_spec():
    """The 2019 spec reduced for 7,000-household samples (see _spec)."""
    price = _spec("price", factors=(("household_type", "single"), ("age_class", "27-34"),
                                    ("education", "high"), ("health", "none")), continuous=("share_non_working",))
    return dataclasses.replace(load_spec(), volume=_spec("volume"), price=price)


@pytest.mark.parametrize("component", ["volume", "price"])
def test_estimates_agree_with_statsmodels(big12, component):
    hh = households_from_population(big12)
    comp = getattr(_small_spec(), component)
    d = component_design(hh, comp, NORMS)
    f = fit_component(d, mun_codes=hh.mun_codes, cluster_kind="cr1")
    assert not f.dropped_municipalities
    assert f.gradient_norm < 1e-8
    X, y, mun = _naive(big12, comp, d)
    rows = slice(None) if comp.sample == "all" else big12.households.column("bijstand").to_numpy() == 1
    params, se_model, se_hc1, se_cl = _statsmodels_fit(X, y, mun[rows], component == "price")
    np.testing.assert_allclose(f.params, params, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(f.se("model"), se_model, rtol=1e-4)
    # statsmodels' "HC1" for Logit/GLM is computed with use_correction=False, i.e. it is
    # HC0 (statsmodels/base/covtype.py); ours is the textbook HC1 with n/(n-k), as glum's
    n, k = X.shape
    np.testing.assert_allclose(f.se("robust"), se_hc1 * np.sqrt(n / (n - k)), rtol=1e-4)
    np.testing.assert_allclose(f.se("cluster"), se_cl, rtol=1e-4)


@pytest.mark.parametrize("component", ["volume", "price"])
def test_cr2_cluster_covariance_against_the_hat_matrix(big12, component):
    """The default cluster covariance is CR2: against the n_g x n_g hat-matrix blocks of
    tests/naive.py (with the municipality fixed effects as dummies for the volume), and
    larger than CR1 on the terms the large municipalities dominate; its degrees of freedom
    against tests/naive.py's effective number of clusters."""
    hh = households_from_population(big12)
    comp = getattr(_small_spec(), component)
    d = component_design(hh, comp, NORMS)
    f = fit_component(d, mun_codes=hh.mun_codes)
    cr1 = fit_component(d, mun_codes=hh.mun_codes, cluster_kind="cr1")
    X, y, mun = _naive(big12, comp, d)
    rows = slice(None) if comp.sample == "all" else big12.households.column("bijstand").to_numpy() == 1
    want = naive.cr2_covariance(X, np.asarray(y, dtype=np.float64), f.params, mun[rows])
    np.testing.assert_allclose(f.cov_cluster, want, rtol=1e-6, atol=1e-12 * np.abs(want).max())
    np.testing.assert_array_equal(f.params, cr1.params)
    # degrees of freedom: the effective number of municipalities per term, at most about one
    # above Bell and McCaffrey's exact ones, which count the leverage (12 municipalities: df
    # 3-9, the exact 0.8-1.1 lower); none for the levels one municipality alone determines
    # (the fixed effects and, with them, the intercept)
    shared = np.arange(X.shape[1]) if d.layout.fe_start < 0 else np.arange(1, d.layout.fe_start)
    assert np.all(np.isnan(np.delete(f.df_cluster, shared)))
    np.testing.assert_allclose(f.df_cluster[shared], naive.cluster_df(X, f.params, mun[rows])[shared], rtol=1e-6)
    assert np.all(cr1.df_cluster[shared] == f.n_clusters - 1)
    some = shared[:12]
    gap = f.df_cluster[some] - naive.bell_mccaffrey_df(X, f.params, mun[rows], terms=some)
    assert np.all((gap > 0) & (gap < 1.3)), gap
    # CR1's G/(G-1) factor is small against the clusters' own leverage: CR2 is larger on average
    assert np.mean(f.se("cluster") / cr1.se("cluster")) > 1


def test_price_reports_clipped_fractions(small_population):
    hh = households_from_population(small_population)
    d = component_design(hh, load_spec().price, NORMS)
    frac = hh.benefit_paid[hh.bijstand == 1] / NORMS.table().ravel()[hh.norm_index(NORMS)][hh.bijstand == 1]
    assert d.n_clipped == int(((frac < 0) | (frac > 1)).sum()) > 0
    assert d.y.min() >= 0 and d.y.max() <= 1


def test_fixed_effect_separation_drops_municipalities(small_population):
    fit = fit_model(small_population)
    counts = np.bincount(small_population.household_municipality,
                         weights=small_population.households.column("bijstand").to_numpy()
                         + small_population.households.column("lks").to_numpy(), minlength=388)
    no_outcome = set(small_population.municipality_codes[counts == 0])
    assert set(fit.volume.dropped_municipalities) == no_outcome
    terms = list(fit.volume.term_names)
    for code in no_outcome:
        assert np.isnan(fit.volume.params[terms.index(f"municipality[{code}]")])
    assert np.isfinite(fit.volume.params[:34]).all()


def test_level_separation_is_left_out_of_the_shared_estimate_with_a_finite_own_estimate(big12):
    hh = households_from_population(big12)
    codes = hh.codes.copy()
    y = hh.bijstand | hh.lks
    codes[(y == 1) & (codes[:, 4] == 2), 4] = 0            # no private renter has the outcome
    hh2 = dataclasses.replace(hh, codes=codes)
    d = component_design(hh2, _spec("volume"))
    f = fit_component(d)
    term = "housing[private_rent]"
    i = f.term_names.index(term)
    assert f.separated_terms == (term,) and np.isfinite(f.params[i]) and np.isnan(f.se("cluster")[i])
    # the shared estimate is the fit without the private renters (their term dropped): statsmodels
    X = dense_design(d)                  # the layout itself is checked against tests/naive.py above
    rows = codes[:, 4] != 2
    keep_cols = [j for j, t in enumerate(f.term_names) if j != i and np.isfinite(f.params[j])]
    ref = sm.GLM(d.y[rows].astype(float), X[np.ix_(rows, keep_cols)], family=sm.families.Binomial()).fit(tol=1e-12)
    np.testing.assert_allclose(f.params[keep_cols], ref.params, atol=1e-6)
    # its own estimate: the renters' predicted outcomes with the common effect are half a household
    theta = np.nan_to_num(f.params.copy())
    theta[d.layout.fe_start:] = 0.0
    eta = X[~rows] @ theta + f.fe_common
    assert abs((1 / (1 + np.exp(-eta))).sum() - 0.5) < 1e-6


def test_degenerate_municipality_is_left_out_and_reported(big12, tmp_path):
    from engine.model.predict import predict

    hh = households_from_population(big12)
    mun = hh.municipality()
    target = 3
    bij = hh.bijstand.copy()
    bij[mun == target] = 1                                  # everyone there on bijstand
    hh2 = dataclasses.replace(hh, bijstand=bij)
    fit = fit_model(hh2)
    code = str(hh.mun_codes[target])
    assert code in fit.volume.dropped_municipalities
    assert np.isnan(fit.volume.params[fit.volume.term_names.index(f"municipality[{code}]")])
    # the others' shared estimate is the one without that municipality (fit on the rest alone)
    rest = fit_model(hh2, weight=(mun != target).astype(float))
    shared = [j for j, t in enumerate(fit.volume.term_names)
              if not t.startswith("municipality[") and t not in fit.volume.separated_terms]
    np.testing.assert_allclose(fit.volume.params[shared], rest.volume.params[shared], atol=1e-8)
    pred = predict(hh2, fit)
    assert np.isfinite(pred.objective_cost).all() and pred.objective_cost[target] > 0


def test_nothing_estimable_left_is_an_error(big12):
    hh = households_from_population(big12)
    y = hh.bijstand | hh.lks
    codes = hh.codes.copy()
    codes[:, 4] = np.where(y == 1, 2, np.where(codes[:, 4] == 2, 0, codes[:, 4]))   # outcome <=> private rent
    with pytest.raises(EstimationError, match="nothing estimable is left"):
        fit_component(component_design(dataclasses.replace(hh, codes=codes), _spec("volume")))


@pytest.mark.parametrize("seed", [2, 3, 10])
def test_small_worlds_fit(seed, tmp_path):
    """Worlds of 30,000 households fit; seeds 2, 3 and 10 have no bijstand household with a full
    disability benefit (a separated level before sparse levels were handled)."""
    _small_world_fits(seed, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
def test_small_worlds_fit_20_seeds(seed, tmp_path):
    _small_world_fits(seed, tmp_path)


def _small_world_fits(seed, tmp_path):
    from engine.model.population import read_population
    from engine.model.predict import predict
    from engine.world.synth import generate

    generate(tmp_path, households=30_000, seed=seed)
    pop = read_population(tmp_path)
    fit = fit_model(pop)
    for c in (fit.volume, fit.price):
        assert c.gradient_norm < 1e-8
        named = [j for j, t in enumerate(c.term_names)
                 if not t.startswith("municipality[") and t not in c.unestimable_terms]
        assert np.isfinite(c.params[named]).all(), c.name
    assert np.isfinite(predict(households_from_population(pop), fit).objective_cost).all()


def test_level_without_households_is_reported_not_estimable(big12):
    hh = households_from_population(big12)
    codes = hh.codes.copy()
    codes[codes[:, 2] == 5, 2] = 0                          # nobody is antillean any more
    hh2 = dataclasses.replace(hh, codes=codes)
    f = fit_component(component_design(hh2, _spec("volume")))
    i = f.term_names.index("migration[antillean]")
    assert f.unestimable_terms == ("migration[antillean]",) and np.isnan(f.params[i])
    assert np.isfinite(np.delete(f.params, i)).all() and np.isnan(f.se("cluster")[i])
    assert f.gradient_norm < 1e-8


def test_fit_is_bit_identical_for_any_number_of_blas_threads(small_world, tmp_path):
    import os
    import subprocess
    import sys

    outs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        out = tmp_path / f"fit{threads}"
        res = subprocess.run([sys.executable, "-m", "engine", "fit", "--population", str(small_world),
                              "--out", str(out), "--quiet"], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        outs.append(out)
    a, b = (read_fit(o) for o in outs)
    for comp in ("volume", "price"):
        ca, cb = a.component(comp), b.component(comp)
        np.testing.assert_array_equal(ca.params, cb.params)
        for kind in ("model", "robust", "cluster"):
            np.testing.assert_array_equal(getattr(ca, f"cov_{kind}"), getattr(cb, f"cov_{kind}"))
        assert ca.fe_common == cb.fe_common


def test_collinear_design_names_terms(big12):
    hh = households_from_population(big12)
    nb_cont = hh.nb_cont.copy()
    nb_cont[:, 1] = 2.0 * nb_cont[:, 0]                     # liveability = 2 x share_non_working
    hh2 = dataclasses.replace(hh, nb_cont=nb_cont)
    with pytest.raises(EstimationError, match=r"collinear") as err:
        fit_component(component_design(hh2, _spec("volume", fixed_effects="none")))
    assert "share_non_working" in str(err.value) and "liveability" in str(err.value)


@settings(max_examples=5)
@given(seed=st.integers(0, 2**32 - 1))
def test_permuting_households_changes_nothing(big12, seed):
    hh = households_from_population(big12)
    perm = np.random.default_rng(seed).permutation(hh.n)
    hp = dataclasses.replace(hh, codes=np.ascontiguousarray(hh.codes[perm]), nbhd=hh.nbhd[perm],
                             bijstand=hh.bijstand[perm], lks=hh.lks[perm], benefit_paid=hh.benefit_paid[perm],
                             adults_sharing=hh.adults_sharing[perm],
                             adults_sharing_under_27=hh.adults_sharing_under_27[perm])
    spec = _spec("volume")
    a = fit_component(component_design(hh, spec))
    b = fit_component(component_design(hp, spec))
    np.testing.assert_allclose(b.params, a.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.se("cluster"), a.se("cluster"), rtol=1e-9)


@settings(max_examples=3)
@given(half=st.sampled_from([0.5, 0.25]))
def test_duplicating_households_with_split_weight_changes_nothing(big12, half):
    hh = households_from_population(big12)
    k = int(round(1 / half))
    rep = lambda a: np.ascontiguousarray(np.repeat(a, k, axis=0))  # noqa: E731
    hd = dataclasses.replace(hh, codes=rep(hh.codes), nbhd=rep(hh.nbhd), bijstand=rep(hh.bijstand), lks=rep(hh.lks),
                             benefit_paid=rep(hh.benefit_paid), adults_sharing=rep(hh.adults_sharing),
                             adults_sharing_under_27=rep(hh.adults_sharing_under_27))
    spec = _spec("volume")
    a = fit_component(component_design(hh, spec))
    b = fit_component(component_design(hd, spec, weight=np.full(hd.n, half)))
    np.testing.assert_allclose(b.params, a.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.se("model"), a.se("model"), rtol=1e-9)
    assert b.loglik == pytest.approx(a.loglik, rel=1e-12)


def test_fit_files_roundtrip_and_export(big12, tmp_path):
    fit = fit_to_folder(big12, tmp_path, spec=_small_spec(), export=True)
    coef = pq.read_table(tmp_path / "coefficients.parquet")
    assert coef.column_names == ["component", "term", "estimate", "se_model", "se_robust", "se_cluster",
                                 "df", "z", "p_value", "ci_low", "ci_high"]
    # the fixed effects and the volume's intercept: no df, z, p and interval on the robust se (normal)
    t = coef.to_pandas()
    own = t.term.str.startswith("municipality[") | ((t.term == "intercept") & (t.component == "volume"))
    assert own.sum() == sum(n.startswith("municipality[") for n in fit.volume.term_names) + 1 > 1
    o = t[own]
    assert o.df.isna().all() and t[~own].df.notna().all()
    np.testing.assert_allclose(o.z, o.estimate / o.se_robust, rtol=1e-12)
    np.testing.assert_allclose(o.p_value, 2 * stats.norm.sf(np.abs(o.z)), rtol=1e-9)
    np.testing.assert_allclose(o.ci_high - o.estimate, stats.norm.ppf(0.975) * o.se_robust, rtol=1e-9)
    back = read_fit(tmp_path, spec=_small_spec())
    assert read_fit(tmp_path).spec == _small_spec()       # recorded by content, not by path
    np.testing.assert_array_equal(back.volume.params, fit.volume.params)
    np.testing.assert_array_equal(back.price.cov_cluster, fit.price.cov_cluster)
    np.testing.assert_array_equal(back.volume.df_cluster, fit.volume.df_cluster)
    design = pq.read_table(tmp_path / "design_volume.parquet")
    assert design.column_names[:-2] == list(fit.volume.term_names) and design.column_names[-2:] == ["_y", "_w"]
    # any other tool refits the exported design to the same coefficients
    X = np.column_stack([design.column(t).to_numpy() for t in fit.volume.term_names])
    refit = sm.Logit(design.column("_y").to_numpy(), X).fit(method="newton", tol=1e-13, disp=0)
    np.testing.assert_allclose(refit.params, fit.volume.params, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_recovers_the_truth_on_a_million_households(tmp_path):
    from engine.model.population import read_population
    from engine.world.synth import generate

    generate(tmp_path, households=1_000_000, seed=11)
    pop = read_population(tmp_path)
    fit = fit_model(pop)
    truth = pop.truth
    z = []
    v = fit.volume
    names = list(v.term_names)
    for i, t in enumerate(names):
        if t == "intercept" or t.startswith("municipality["):
            continue
        z.append((v.params[i] - truth["volume"].get(t, 0.0)) / v.se("model")[i])
    # municipality effects: intercept + fixed effect against the true alpha_g
    alpha = {m["code"]: m["alpha"] for m in truth["municipalities"]}
    codes = pop.municipality_codes
    cov = v.cov_model
    z.append((v.params[0] - alpha[codes[0]]) / np.sqrt(cov[0, 0]))
    for i, t in enumerate(names):
        if t.startswith("municipality[") and np.isfinite(v.params[i]):
            est = v.params[0] + v.params[i]
            se = np.sqrt(cov[0, 0] + cov[i, i] + 2 * cov[0, i])
            z.append((est - alpha[t[len("municipality["):-1]]) / se)
    p = fit.price
    for i, t in enumerate(p.term_names):
        z.append((p.params[i] - truth["price"].get(t, 0.0)) / p.se("robust")[i])
    z = np.abs(np.array(z))
    assert len(z) > 400
    assert np.mean(z <= 3) >= 0.95, f"{np.mean(z <= 3):.3f} of {len(z)} within 3 s.e."


def test_probabilities_of_exactly_zero_or_one_give_no_nan():
    from numba import njit

    from kernels.glm import log_sigmoid_pair, loglik_term

    @njit
    def terms(eta, y):
        out = np.empty((eta.size, 4))
        for i in range(eta.size):
            p, logp, log1mp = log_sigmoid_pair(eta[i])
            out[i] = p, logp, log1mp, loglik_term(y[i], logp, log1mp)
        return out

    eta = np.array([-np.inf, -1e4, -800.0, -40.0, 0.0, 40.0, 800.0, 1e4, np.inf])
    for y in (0.0, 1.0, 0.3):
        got = terms(eta, np.full(eta.size, y))
        assert not np.isnan(got).any(), (y, got)
        p, ll = got[:, 0], got[:, 3]
        assert ((p >= 0) & (p <= 1)).all() and p[0] == 0 and p[-1] == 1 and p[4] == 0.5
        assert (ll <= 0).all()
        finite = slice(1, -1)
        want = -y * np.logaddexp(0, -eta[finite]) - (1 - y) * np.logaddexp(0, eta[finite])
        np.testing.assert_allclose(ll[finite], want, rtol=1e-12, atol=1e-300)
    assert terms(eta[[0, -1]], np.array([0.0, 1.0]))[:, 3].tolist() == [0.0, 0.0]       # certain and right
    assert terms(eta[[0, -1]], np.array([1.0, 0.0]))[:, 3].tolist() == [-np.inf, -np.inf]  # certain and wrong



def test_pilot_start_reaches_the_same_estimate(big12, monkeypatch):
    """A large sample starts from a pilot fit on every 8th row (engine.model.fit._pilot_start):
    the same estimate as the plain start, to the convergence tolerance, in fewer iterations."""
    import engine.model.fit as F

    hh = households_from_population(big12)
    d = component_design(hh, load_spec().volume, NORMS)
    monkeypatch.setattr(F, "PILOT_MIN_ROWS", 10 ** 12)
    plain = fit_component(d, mun_codes=hh.mun_codes, tol=1e-10)
    monkeypatch.setattr(F, "PILOT_MIN_ROWS", d.n)          # this sample, not its pilot
    piloted = fit_component(d, mun_codes=hh.mun_codes, tol=1e-10)
    fin = np.isfinite(plain.params)
    np.testing.assert_array_equal(np.isfinite(piloted.params), fin)
    np.testing.assert_allclose(piloted.params[fin], plain.params[fin], rtol=0, atol=1e-7)
    np.testing.assert_allclose(piloted.se("cluster")[fin], plain.se("cluster")[fin], rtol=1e-6)
    assert piloted.iterations < plain.iterations


def test_cr2_does_not_depend_on_the_row_order(big12):
    """Rows in any order (a municipality's rows not contiguous: engine.model.sandwich reorders
    them for its per-municipality pass) give the same CR2 covariance."""
    hh = households_from_population(big12)
    d = component_design(hh, load_spec().volume, NORMS)
    perm = np.random.default_rng(3).permutation(d.n)
    shuffled = dataclasses.replace(d, codes=d.codes[perm], joint=d.joint[perm], nbhd=d.nbhd[perm], y=d.y[perm])
    a, b = fit_component(d), fit_component(shuffled)
    np.testing.assert_allclose(b.params, a.params, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(b.cov_cluster, a.cov_cluster, rtol=1e-7, atol=1e-12 * np.nanmax(np.abs(a.cov_cluster)))
