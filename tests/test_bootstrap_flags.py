"""Flags as a statistical test: the between-municipality sd, p_explained, q-values, null worlds.

Independent references: simulated fixed effects with a known spread (plain NumPy), brute-force
Monte Carlo of the spending band, statsmodels' Benjamini-Hochberg, and synthetic worlds
without planted effects (where p_explained must be uniform) and with them (where the false
discovery proportion under BH must stay at or below q on average).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from scipy import stats

from engine.model.fit import ComponentFit
from engine.uncertainty.draws import between_sd_estimate
from engine.uncertainty.summaries import bh_qvalues, explained_probability


def _fake_fit(effects: np.ndarray, own_var: np.ndarray, ref_var_share: float = 1.0, dropped=(), nan_ref=False):
    """A fit whose volume component has the municipality effects ``effects`` (as intercept +
    fixed effects against municipality 0) with independent sampling variances ``own_var``:
    V of (intercept, fe_1..fe_G-1) is that of a_0 and a_g - a_0, so every fixed effect carries
    the reference's variance."""
    G = effects.size
    params = np.concatenate([[effects[0]], effects[1:] - effects[0]])
    V = np.zeros((G, G))
    V[0, 0] = own_var[0]
    V[0, 1:] = V[1:, 0] = -own_var[0]
    V[1:, 1:] = own_var[0] + np.diag(own_var[1:])
    names = ("intercept",) + tuple(f"municipality[M{g:03d}]" for g in range(1, G))
    codes = np.array([f"M{g:03d}" for g in range(G)], dtype=object)
    params = params.copy()
    for c in dropped:
        params[int(c[1:])] = np.nan
        V[int(c[1:]), :] = V[:, int(c[1:])] = np.nan
    comp = ComponentFit(name="volume", term_names=names, params=params, cov_model=V, cov_robust=V, cov_cluster=V,
                        loglik=0.0, iterations=1, gradient_norm=0.0, n_obs=1, n_clusters=G, n_clipped=0,
                        dropped_municipalities=tuple(dropped), seconds=0.0, fe_common=-effects[0])   # level 0

    @dataclasses.dataclass
    class Fit:
        volume: ComponentFit
        mun_codes: np.ndarray

    return Fit(comp, codes)


def test_between_sd_recovers_the_spread_despite_a_noisy_reference():
    """The reference municipality's error is in every fixed effect's variance but does not
    spread them: subtracting it (the old estimate) gives 0; contrasts against the mean recover tau."""
    rng = np.random.default_rng(1)
    G, tau = 388, 0.08
    est = []
    for _ in range(40):
        own = rng.uniform(0.2, 3.0, G) * tau ** 2          # heteroscedastic: small and large municipalities
        own[0] = 25 * tau ** 2                             # a small, noisy reference
        a = 0.3 + rng.normal(0, tau, G) + rng.normal(0, np.sqrt(own))
        est.append(between_sd_estimate(_fake_fit(a, own)).sd)
    est = np.array(est)
    assert abs(np.mean(est) / tau - 1) < 0.05, est
    assert np.all(np.abs(est / tau - 1) < 0.3)


def test_between_sd_is_robust_to_a_few_planted_municipalities():
    rng = np.random.default_rng(2)
    G, tau = 388, 0.06
    own = np.full(G, 0.5 * tau ** 2)
    a = rng.normal(0, tau, G) + rng.normal(0, np.sqrt(own))
    a[:10] -= 0.5                                          # ten strict municipalities
    assert abs(between_sd_estimate(_fake_fit(a, own)).sd / tau - 1) < 0.2
    # the mean effect (true: 0): the bounded-influence estimate is dragged far less than the plain mean
    robust, plain = [], []
    for _ in range(30):
        a = rng.normal(0, tau, G) + rng.normal(0, np.sqrt(own))
        a[:10] -= 0.5
        robust.append(abs(between_sd_estimate(_fake_fit(a, own)).mean))
        plain.append(abs(a.mean()))
    assert np.mean(robust) < 0.6 * np.mean(plain)


def test_between_sd_is_zero_without_spread_and_finite_with_degenerate_municipalities():
    rng = np.random.default_rng(3)
    G = 388
    own = np.full(G, 0.01)
    a = rng.normal(0, 0.1, G)                            # all spread is sampling error
    assert between_sd_estimate(_fake_fit(a, own)).sd < 0.03
    b = rng.normal(0, 0.1, G) + rng.normal(0, 0.1, G)
    r = between_sd_estimate(_fake_fit(b, own, dropped=("M005", "M100")))
    assert np.isfinite(r.sd) and r.sd > 0.05
    assert r.left_out == ("M005", "M100") and r.used == G - 2


def test_between_sd_on_a_fit_with_an_all_bijstand_municipality(small_world, tmp_path):
    """A municipality whose every household has the outcome: its fixed effect is dropped by the fit;
    the between sd stays finite and names it."""
    import pyarrow as pa

    from engine.model.fitted import fit_model
    from engine.model.population import read_population

    pop = read_population(small_world)
    hh = pop.households
    mun = np.asarray(hh.column("municipality").to_pylist(), dtype=object)
    code = "GM0518"                                       # 's-Gravenhage: a large one
    bij = hh.column("bijstand").to_numpy().copy()
    bij[mun == code] = 1
    lks = hh.column("lks").to_numpy().copy()
    lks[mun == code] = 0
    hh = hh.set_column(hh.column_names.index("bijstand"), "bijstand", pa.array(bij, pa.int8()))
    hh = hh.set_column(hh.column_names.index("lks"), "lks", pa.array(lks, pa.int8()))
    pop = dataclasses.replace(pop, households=hh)
    fit = fit_model(pop)
    assert code in fit.volume.dropped_municipalities
    codes = np.asarray(pop.municipalities.column("code").to_pylist(), dtype=object)
    r = between_sd_estimate(fit, codes)
    assert np.isfinite(r.sd) and np.isfinite(r.mean)
    assert code in r.left_out


def _brute_force(cost, sd, S, a, m, n, rng):
    z = rng.standard_normal((n,) + cost.shape)
    u = rng.standard_normal((n,) + cost.shape)
    sim = (cost + sd * z) * np.exp(m + a * u)
    return (sim <= S).mean(axis=(0, 1))


def test_explained_probability_agrees_with_brute_force_monte_carlo():
    rng = np.random.default_rng(4)
    R, G = 6, 400
    cost = rng.uniform(1e4, 1e7, G) * np.exp(rng.normal(0, 0.02, (R, G)))
    rel = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), G))    # outcome sd relative to cost
    sd = cost * rel
    a = np.where(rng.random(G) < 0.2, 0.0, rng.uniform(0, 0.2, G))
    m = rng.normal(0, 0.03, G)
    S = cost[0] * np.exp(rng.normal(0, 0.1, G))
    S[:5] = 0.0                                              # no spending at all
    sd[:, 5:10] = 0.0                                        # no outcome randomness
    p = explained_probability(cost, sd, S, a, m)
    ref = _brute_force(cost, sd, S, a, m, 20_000, rng)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p, ref, atol=4 * 0.5 / np.sqrt(20_000 * R) + 1e-3)


def test_bh_qvalues_match_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(5)
    p = np.concatenate([rng.random(370), rng.random(18) * 1e-3])
    q = bh_qvalues(p)
    np.testing.assert_allclose(q, multipletests(p, method="fdr_bh")[1], rtol=1e-12)
    for Q in (0.05, 0.1, 0.2):
        np.testing.assert_array_equal(q <= Q, multipletests(p, alpha=Q, method="fdr_bh")[0])
    with_nan = p.copy()
    with_nan[3] = np.nan
    q2 = bh_qvalues(with_nan)
    assert np.isnan(q2[3])
    np.testing.assert_allclose(np.delete(q2, 3), multipletests(np.delete(p, 3), method="fdr_bh")[1], rtol=1e-12)


# ---------------------------------------------------------------- synthetic worlds

def _world(root, households: int, seed: int, planted: int, replicates: int, **gen):
    from engine.model.fitted import fit_to_folder
    from engine.model.population import read_population
    from engine.uncertainty.bootstrap import run_bootstrap
    from engine.uncertainty.settings import Settings
    from engine.world.synth import generate

    w = root / f"w{seed}"
    generate(w / "pop", households=households, seed=seed, planted=planted, **gen)
    fit_to_folder(read_population(w / "pop"), w / "fit")
    s = Settings(population=str(w / "pop"), coefficients=str(w / "fit"), regime="2019", seed=seed)
    return run_bootstrap(s, w / "boot", replicates=replicates, batch_size=replicates, workers=0)


def _binomial_99(n: int, level: float) -> tuple[int, int]:
    return int(stats.binom.ppf(0.005, n, level)), int(stats.binom.ppf(0.995, n, level))


def _check_null(results, level: float = 0.05):
    from engine.uncertainty.summaries import flags_table

    p = np.concatenate([flags_table(r, level).column("p_explained").to_numpy() for r in results])
    assert np.all(np.isfinite(p))
    ks = stats.kstest(p, "uniform")
    lo, hi = _binomial_99(p.size, level)
    n_low = int((p < level).sum())
    print(f"\n{len(results)} null worlds: KS {ks.statistic:.4f} (p {ks.pvalue:.3f}); p < {level}: {n_low} "
          f"(binomial 99% range {lo}-{hi})")
    assert ks.pvalue > 0.01, ks
    assert lo <= n_low <= hi
    return p


def test_null_worlds_small(tmp_path):
    """Two worlds of 500,000 households without planted effects: pooled p_explained uniform.
    (Below about 300,000 households the normal approximation of the outcome of small
    municipalities, a handful of bijstand households each, and the noise of their fixed effects
    make the p-values visibly non-uniform; calibration matters at full scale, see the slow test.)"""
    _check_null([_world(tmp_path, 500_000, seed, planted=0, replicates=50) for seed in (31, 32)])


NULL_HOUSEHOLDS = int(os.environ.get("BUIG_NULL_HOUSEHOLDS", 7_794_075))
NULL_WORLDS = int(os.environ.get("BUIG_NULL_WORLDS", 10))


@pytest.mark.slow
def test_null_worlds_at_scale(tmp_path):
    """At least 10 worlds (default full scale: outcome noise as small as in the real data) without
    planted effects: pooled and per-world p_explained uniform, flag counts within the binomial 99%
    range, and the between sd within 20% of the truth's spread of municipality effects."""
    results, ratios = [], []
    for i in range(NULL_WORLDS):
        res = _world(tmp_path, NULL_HOUSEHOLDS, 500 + i, planted=0, replicates=200)
        truth = json.loads((tmp_path / f"w{500 + i}" / "pop" / "truth.json").read_text())
        ratios.append(res.between_sd / np.std([m["policy_effect"] for m in truth["municipalities"]]))
        results.append(res)
        shutil.rmtree(tmp_path / f"w{500 + i}" / "pop")     # results are in memory: free the disk
    _check_null(results, 0.01)
    _check_null(results, 0.05)
    print(f"between sd / truth: {np.round(ratios, 3)}")
    assert abs(np.mean(ratios) - 1) < 0.2


@pytest.mark.slow
def test_bh_keeps_the_false_discovery_proportion_in_planted_worlds(tmp_path):
    """Worlds with 10 planted surpluses of 10-30%: BH at q = 0.1 keeps the false discovery
    proportion at or below 0.1 on average."""
    from engine.uncertainty.summaries import flags_table

    fdp = []
    for i in range(NULL_WORLDS):
        res = _world(tmp_path, NULL_HOUSEHOLDS, 700 + i, planted=10, replicates=200)
        planted = set(json.loads((tmp_path / f"w{700 + i}" / "pop" / "truth.json").read_text())["planted"])
        f = flags_table(res, fdr=0.1).to_pydict()
        flagged = {c for c, x in zip(f["code"], f["flagged"]) if x}
        fdp.append(len(flagged - planted) / max(len(flagged), 1))
    print(f"\nfalse discovery proportion per world at q = 0.1: {np.round(fdp, 3)}")
    assert np.mean(fdp) <= 0.1 + 2 * np.std(fdp, ddof=1) / np.sqrt(len(fdp))


def test_planted_alpha_gives_the_drawn_surplus():
    """The planted effect lowers the expected cost by exactly the drawn surplus (plain NumPy check)."""
    from engine.world.synth import planted_alpha

    rng = np.random.default_rng(6)
    eta0 = rng.normal(0, 1.2, 5000)
    price = rng.uniform(5e3, 2e4, 5000)
    alpha = -3.9
    cost = lambda a: np.sum(price / (1 + np.exp(-(a + eta0))))  # noqa: E731
    for s in (0.1, 0.2, 0.3):
        assert abs(cost(planted_alpha(alpha, eta0, price, 0.0, s)) / cost(alpha) - (1 - s)) < 1e-9
    assert planted_alpha(alpha, eta0, price, -0.7, 0.2) == alpha - 0.7


def test_planted_surpluses_are_drawn_in_the_range(tmp_path):
    from engine.world.synth import generate

    generate(tmp_path / "w", households=20_000, seed=3, planted=10, planted_surplus=(0.1, 0.3))
    truth = json.loads((tmp_path / "w" / "truth.json").read_text())
    s = np.array(list(truth["planted_surplus"].values()))
    assert sorted(truth["planted_surplus"]) == sorted(truth["planted"]) and s.size == 10
    assert np.all((s >= 0.1) & (s <= 0.3)) and s.std() > 0.02
    with pytest.raises(ValueError, match="planted-surplus"):
        generate(tmp_path / "x", households=20_000, seed=3, planted_surplus=(0.3, 0.1))


def test_flags_by_fdr_or_level_and_the_rule_in_the_metadata(tmp_path):
    """A hand-made result: three clear surpluses among 40 municipalities; flags per test and by BH."""
    from engine.app.cli import main
    from engine.uncertainty.settings import Settings
    from engine.uncertainty.summaries import BootstrapResult, flags_table

    G, R = 40, 30
    rng = np.random.default_rng(7)
    cost = 1e6 * np.exp(rng.normal(0, 0.01, (R, G)))
    spending = 1e6 * np.exp(rng.normal(0, 0.05, G))
    spending[:3] = 0.7e6                                   # 30% below the model: p about 1e-12
    res = BootstrapResult(settings=Settings("p", "c", "2019"), replicates=R, codes=np.array([f"G{g}" for g in range(G)]),
                          names=np.array([f"n{g}" for g in range(G)], dtype=object), point_budget=np.full(G, 1e6),
                          spending=spending, between_sd=0.05, values={"objective_cost": cost,
                          "outcome_sd": np.full((R, G), 1e4), "simulated_spending": cost}, seconds=0.0, computed=R,
                          elasticity=np.ones(G))
    by_level, by_fdr = flags_table(res, level=0.05), flags_table(res, fdr=0.1)
    p = by_level.column("p_explained").to_numpy()
    q = by_fdr.column("q_value").to_numpy()
    surplus = by_level.column("surplus").to_numpy() > 0
    np.testing.assert_array_equal(by_level.column("flagged").to_numpy(), surplus & (p < 0.05))
    np.testing.assert_array_equal(by_fdr.column("flagged").to_numpy(), surplus & (q <= 0.1))
    assert by_fdr.column("flagged").to_numpy()[:3].all() and np.all(p[:3] < 1e-6)
    assert b"Benjamini-Hochberg" in by_fdr.schema.metadata[b"flag_rule"]
    assert b"per test" in by_level.schema.metadata[b"flag_rule"]
    assert main(["bootstrap", "--population", str(tmp_path), "--fdr", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
