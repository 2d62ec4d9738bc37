"""Slow bootstrap checks (run with ``python -m pytest -m slow tests/test_bootstrap_slow.py``).

Requirement: cluster bootstrap standard errors agree with cluster-robust ones within 10%.
200 cluster refits (municipalities resampled with replacement, warm start, frequency
weights: ``engine.uncertainty.bootstrap.Context.cluster_fit``) on a 300,000-household synthetic world;
the sd of each refitted coefficient that enters prediction (volume terms without the
intercept and the fixed effects; all price terms) is compared with its cluster-robust
standard error from the full-sample fit. About 5-8 minutes on 2 cores.

The Monte Carlo error of an sd from 200 refits is about 1/sqrt(2 * 199) = 5% per
coefficient, so "within 10%" is asserted for the typical coefficient (the median ratio of
each component, whose Monte Carlo error is far smaller) and for the pooled ratio
sqrt(mean(sd^2 / se^2)); a single coefficient is allowed up to 10% plus three Monte
Carlo standard errors (25%) before it fails the test.
"""

from __future__ import annotations

import numpy as np
import pytest

REFITS = 200
HOUSEHOLDS = 300_000


@pytest.fixture(scope="module")
def cluster_refits(tmp_path_factory):
    from engine.uncertainty.draws import Context
    from engine.uncertainty.settings import Settings
    from engine.model.fitted import fit_to_folder
    from engine.model.population import read_population
    from engine.world.synth import generate

    root = tmp_path_factory.mktemp("cluster_se")
    generate(root / "pop", households=HOUSEHOLDS, seed=21)
    fit_to_folder(read_population(root / "pop"), root / "fit")
    ctx = Context(Settings(population=str(root / "pop"), coefficients=str(root / "fit"), regime="2019",
                           method="cluster", seed=3))
    idx = {c.name: np.array([i for i, t in enumerate(c.term_names) if t != "intercept"
                             and not t.startswith("municipality[") and np.isfinite(c.cov_cluster[i, i])])
           for c in (ctx.fit.volume, ctx.fit.price)}
    vol, price = [], []
    for r in range(REFITS):
        f = ctx.cluster_fit(ctx.rng(r))
        vol.append(f.volume.params[idx["volume"]])
        price.append(f.price.params[idx["price"]])
    return ctx, idx, np.array(vol), np.array(price)


@pytest.mark.slow
@pytest.mark.parametrize("component", ["volume", "price"])
def test_cluster_bootstrap_se_agree_with_cluster_robust(cluster_refits, component):
    ctx, terms, vol, price = cluster_refits
    comp = ctx.fit.component(component)
    idx = terms[component]
    draws = vol if component == "volume" else price
    boot_sd = draws.std(axis=0, ddof=1)
    se = comp.se("cluster")[idx]
    ratio = boot_sd / se
    pooled = float(np.sqrt(np.mean(ratio ** 2)))
    names = [comp.term_names[i] for i in idx]
    report = ", ".join(f"{n} {r:.2f}" for n, r in zip(names, ratio))
    print(f"\n{component}: {len(idx)} coefficients, {REFITS} refits; bootstrap sd / cluster-robust se: median "
          f"{np.median(ratio):.3f}, pooled {pooled:.3f}, min {ratio.min():.2f}, max {ratio.max():.2f}\n  {report}")
    assert abs(np.median(ratio) - 1) < 0.10, report
    assert abs(pooled - 1) < 0.10, report
    assert np.all(np.abs(ratio - 1) < 0.25), report
