"""Coverage of the 95% budget bands over repeated synthetic worlds.

For each of ``--worlds`` synthetic Netherlands (seeds ``--seed``, ``--seed + 1``, ...):

1. generate ``--households`` households (``engine.world.synth.generate``, with its truth);
2. fit the model (``engine.model.fitted.fit_to_folder``);
3. run the parametric bootstrap (``engine.uncertainty.bootstrap.run_bootstrap``, ``--replicates`` draws);
4. compute each municipality's **true expected budget**: the truth's ``objective_cost``
   (``truth.json``: the true coefficients with the common effect that reproduces the
   national expected count, i.e. the model's prediction rule applied to the truth)
   distributed with the same regime, historical shares and TB as the estimate;
5. check whether the 2.5-97.5% band of the budget (``bands_table``) covers it, and the
   same for the budget share and the objective share O_g / sum O.

Coverage is reported per world, overall and by size class of the regime (historical
<= 15k inhabitants, pro rata 15-40k, objective >= 40k). **Degenerate bands** (width 0, as
for a municipality without historical spending, whose budget is 0 in every replicate)
are excluded from every rate. Municipalities at or below 15k inhabitants get a purely
historical budget: their band only moves with the normalisation sum (one number shared
by all of them), so they cover or miss together; the headline rate is therefore given
for the municipalities with an objective weight (> 15k) and separately with them.

Diagnostics, to explain a coverage that is off rather than hide it:

- ``expected_coverage_finite_B``: what a perfect bootstrap gives with B replicates and
  ``numpy.quantile``'s interpolation: a new draw lands between the interpolated order
  statistics k1 = 1 + 0.025 (B - 1) and k2 = 1 + 0.975 (B - 1) with probability
  (k2 - k1) / (B + 1) (0.9405 for B = 200, 0.948 for B = 1000).
- coefficient z-scores (estimate - truth) / cluster-robust se of the volume terms that
  enter prediction and of the price terms: their mean square per world should be about 1;
  above 1 means the covariance the draws come from is too small. Beside it the same with the
  model-based se (the inverse Hessian: the right variance for the volume logit, whose truth
  has independent households given the municipality; not for the fractional price logit,
  whose fractions vary far less than a binomial) and the mean ratio of the cluster-robust
  (CR2, :mod:`engine.model.sandwich`) to the model-based volume se. The mean square of one
  world has a large spread (the z-scores of a world are correlated): compare the mean over
  worlds with its standard error.
- the same z-scores **referred to Student's t** with the se's degrees of freedom (the fit's
  ``df_cluster``, about the effective number of municipalities informing the term), mapped
  to the normal scale (``z_t = Phi^-1(T_df(z))``): an unbiased se estimated from few
  effective clusters is itself noisy, so E[z^2] = df / (df - 2) > 1 even when the variance is
  right; the mean square of ``z_t`` is 1 if the variance and its df are right;
- the price z-scores against the estimator's **target** as well as the truth: the truth
  pays ``PRICE_OVERPAID_SHARE`` of the households 1.0-1.2 times their norm and the design
  clips those fractions to 1, so the fractional logit estimates the coefficients of
  E[min(fraction, 1) | x] = (1 - s) f(x) + s, not those of f (the difference is a bias of the
  model, about +0.003 on the intercept; the z-scores against the target measure the variance
  alone). The target is fitted by plain NumPy Newton iterations on the world's own price
  sample with that expected outcome (:func:`price_target`).
- coverage against a second target, ``realised``: the truth's coefficients with the
  common effect recalibrated to the *realised* national count (the estimate's own rule:
  ``fe_common`` is fitted to realised counts, the truth's ``objective_cost`` to expected
  counts). If coverage against it differs, the level definition matters.
- the z-score of the budget share (point - truth) / bootstrap sd, its mean (bias) and sd
  over the municipalities of each world. The sd is *not* 1 for a right band: the errors of one
  world are nearly one shared error (a few coefficients move every municipality), so the spread
  around the world's own mean is smaller (about 0.74 at 1,000,000 households);
- the truth on the **principal directions** of the replicates' budget shares (> 15k):
  ``z_k = u_k' (point - truth) / sqrt(lambda_k)`` for the two largest eigenvalues ``lambda_k``
  of their covariance (the fraction of the variance each carries beside it). For a right
  bootstrap each is N(0, 1) over worlds: the sum of z_k^2 over worlds is chi-square with one
  degree of freedom per world (two-sided p given). These are the directions the coverage
  depends on; one world adds about one degree of freedom, however many municipalities it has;
- the **reference distribution** of the pooled budget coverage (> 15k) for this number of
  worlds if the bootstrap were exactly right (:func:`reference_coverage`): in each world a
  replicate stands in for the truth; 20,000 pooled rates from one random replicate per world.
  Its 5-95% range and the probability of a pooled rate at least (at most) the observed one say
  how much a pooled coverage over this many worlds can tell.

Flags, on the same worlds (``engine.uncertainty.summaries.flags_table``):

- calibration of ``p_explained`` on the municipalities without a planted effect: the
  Kolmogorov-Smirnov distance from the uniform, pooled over worlds and per world, and the
  counts below 0.01 and 0.05 against the binomial 99% range (``--planted 0``: null worlds);
- on the planted ones (surpluses drawn from ``--planted-surplus``, or with ``--surplus-cycle``
  S1 S2 ... world i plants surpluses of exactly S[i mod n], so that precision and recall can
  be given per size over the worlds of that size): precision, recall and the
  false discovery proportion per world of the Benjamini-Hochberg flags at ``--fdr``, and the
  recall (power) by planted surplus (10%, 15%, 20%, 25%, 30% bins) at ``--fdr`` and ``--level``;
- the between-municipality sd of the band over the truth's sd of municipality effects.

Per-world coverage is reported as a distribution (5th percentile and quartiles) and the
coefficient z-score mean squares with their standard error over worlds.

Outputs in ``--out``: ``coverage_worlds.csv`` (one row per world), ``coverage_municipalities.csv``
(one row per world and municipality), ``coverage_terms.csv`` (one row per world and
coefficient: estimate, truth, target, cluster-robust, model-based and robust se, df, z, z_t), all three rewritten after
every world (a study cut short keeps the worlds it finished), ``coverage_summary.json`` at the
end, and a readable table on stdout. Worlds are generated into ``--out/worlds/`` and removed after use unless ``--keep``.

    python scripts/coverage_study.py --out /tmp/coverage                 # 20 worlds of 1,000,000 households
    python scripts/coverage_study.py --worlds 30 --households 500000 --replicates 1000 --out /tmp/cov

About 10-15 s per world of 1,000,000 households with 1,000 replicates on 2 cores (so the
default study takes 4-5 minutes). Runs in this process by default (``--workers 0``: Numba
uses all cores); ``--workers N`` uses a Dask LocalCluster instead.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

LEVEL = 0.95
CLASSES = ("historical", "pro_rata", "objective")
NULL_LEVELS = (0.01, 0.05)
SURPLUS_BINS = ((0.0, 0.125), (0.125, 0.175), (0.175, 0.225), (0.225, 0.275), (0.275, 1.0))


def mean_se(x) -> tuple[float, float]:
    """Mean over worlds and its standard error (sd / sqrt(worlds))."""
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), (float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan"))


def binomial_99(n: int, p: float) -> tuple[int, int]:
    """The central 99% range of a Binomial(n, p) count."""
    return int(stats.binom.ppf(0.005, n, p)), int(stats.binom.ppf(0.995, n, p))


def flag_summary(worlds: list[dict], muns: list[dict], fdr: float) -> dict:
    """Calibration of p_explained on the municipalities without a planted effect (KS against the
    uniform, pooled and per world; counts below each level against the binomial 99% range) and,
    on the planted ones, recall by planted surplus and precision at false discovery rate ``fdr``."""
    null = np.array([m["p_explained"] for m in muns if not m["planted"]])
    ks = stats.kstest(null, "uniform")
    out = {"null_municipalities": int(null.size), "ks_null_pooled": float(ks.statistic),
           "ks_null_pooled_p": float(ks.pvalue),
           "ks_null_per_world": [round(w["ks_null"], 4) for w in worlds],
           "ks_null_per_world_p_below_0_01": int(sum(w["ks_null_p"] < 0.01 for w in worlds))}
    for a in NULL_LEVELS:
        lo, hi = binomial_99(null.size, a)
        out[f"null_below_{a:g}"] = {"count": int((null < a).sum()), "expected": a * null.size,
                                   "binomial_99": [lo, hi]}
    planted = [m for m in muns if m["planted"] and m["planted_surplus"] is not None]
    flagged = sum(w["flagged_q"] for w in worlds)
    fdp = [w["false_flagged_q"] / w["flagged_q"] if w["flagged_q"] else 0.0 for w in worlds]
    out["fdr"] = fdr
    out["precision_q"] = (sum(w["true_flagged_q"] for w in worlds) / flagged) if flagged else float("nan")
    out["false_discovery_proportion_mean"], out["false_discovery_proportion_se"] = mean_se(fdp)
    out["recall_q"] = (float(np.mean([m["flagged_q"] for m in planted])) if planted else float("nan"))
    out["power_by_surplus"] = []
    for lo, hi in SURPLUS_BINS:
        sel = [m for m in planted if lo <= m["planted_surplus"] < hi]
        if sel:
            out["power_by_surplus"].append({"surplus_from": lo, "surplus_to": hi, "n": len(sel),
                                            "recall_q": float(np.mean([m["flagged_q"] for m in sel])),
                                            "recall_level": float(np.mean([m["flagged_level"] for m in sel]))})
    out["by_world_surplus"] = []
    for setting in sorted({(w["planted_surplus_min"], w["planted_surplus_max"]) for w in worlds}):
        ws = [w for w in worlds if (w["planted_surplus_min"], w["planted_surplus_max"]) == setting]
        seeds = {w["seed"] for w in ws}
        pl = [m for m in planted if m["seed"] in seeds]
        nf = sum(w["flagged_q"] for w in ws)
        out["by_world_surplus"].append({
            "surplus_min": setting[0], "surplus_max": setting[1], "worlds": len(ws), "planted": len(pl),
            "flagged_q": nf, "precision_q": (sum(w["true_flagged_q"] for w in ws) / nf) if nf else float("nan"),
            "recall_q": float(np.mean([m["flagged_q"] for m in pl])) if pl else float("nan"),
            "recall_q_se_between_worlds": mean_se([w["true_flagged_q"] / w["planted"] for w in ws if w["planted"]])[1]})
    return out


def expected_coverage_finite_b(replicates: int, level: float = LEVEL) -> float:
    """Probability that a new draw of the bootstrap distribution falls inside the
    ``numpy.quantile`` (linear) interval of ``replicates`` draws: (k2 - k1) / (B + 1)."""
    a = (1 - level) / 2
    k1 = 1 + a * (replicates - 1)
    k2 = 1 + (1 - a) * (replicates - 1)
    return (k2 - k1) / (replicates + 1)


def principal_z(reps: np.ndarray, point: np.ndarray, truth: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(z, fraction) on the ``k`` principal directions of the replicates ``reps`` (B, G):
    ``z_j = u_j' (point - truth) / sqrt(lambda_j)`` with ``lambda_j, u_j`` the j-th largest
    eigenvalue and eigenvector of their covariance, and the fraction of the total variance of
    each direction. N(0, 1) each if the truth's error is distributed as the replicates' spread."""
    lam, u = np.linalg.eigh(np.cov(reps, rowvar=False))
    lam, u = lam[::-1][:k], u[:, ::-1][:, :k]
    total = float(np.trace(np.cov(reps, rowvar=False)))
    return u.T @ (point - truth) / np.sqrt(lam), lam / total


def reference_coverage(reps: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per replicate r, the share of the G bands [lo, hi] that contain replicate r itself (B,):
    the world's coverage if its truth were a draw from the bootstrap distribution."""
    return ((lo <= reps) & (reps <= hi)).mean(axis=1)


def pooled_reference(per_world: list[np.ndarray], observed: float, draws: int = 20_000,
                     seed: int = 0) -> dict:
    """Distribution of the pooled coverage (mean of the per-world rates) with one random
    replicate per world as its truth (:func:`reference_coverage` per world): 5/25/50/75/95%
    quantiles and the probabilities of a pooled rate >= and <= ``observed``."""
    rng = np.random.default_rng(seed)
    pooled = np.mean([c[rng.integers(0, c.size, draws)] for c in per_world], axis=0)
    return {"quantiles_5_25_50_75_95": [float(x) for x in np.quantile(pooled, [0.05, 0.25, 0.5, 0.75, 0.95])],
            "p_at_least_observed": float(np.mean(pooled >= observed)),
            "p_at_most_observed": float(np.mean(pooled <= observed)),
            "p_in_0_93_0_97": float(np.mean((pooled >= 0.93) & (pooled <= 0.97)))}


def size_classes(inhabitants: np.ndarray, regime) -> np.ndarray:
    """0 historical (<= historical_up_to), 1 pro rata, 2 objective (>= objective_from)."""
    n = np.asarray(inhabitants, dtype=np.float64)
    return np.where(n <= regime.historical_up_to, 0, np.where(n < regime.objective_from, 1, 2))


def true_parameters(fit, truth: dict) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """The truth's coefficients in the fit's term order: (volume, price, volume terms
    compared, price terms compared). The volume intercept is the truth's common effect."""
    from engine.world import truth as T

    v, p = fit.volume, fit.price
    vp, pp = np.zeros(len(v.term_names)), np.zeros(len(p.term_names))
    v_cmp, p_cmp = [], []
    for i, t in enumerate(v.term_names):
        if t == "intercept":
            vp[i] = truth["volume"]["common_effect"]
        elif not t.startswith("municipality["):
            vp[i] = T.VOLUME.get(t, 0.0)
            v_cmp.append(i)
    for i, t in enumerate(p.term_names):
        pp[i] = T.PRICE.get(t, 0.0)
        p_cmp.append(i)
    return vp, pp, v_cmp, p_cmp


def price_target(ctx, pp: np.ndarray) -> np.ndarray:
    """The price coefficients the fractional logit estimates on this world's price sample: the
    solution b of sum_i x_i (m_i - logistic(x_i b)) = 0 with m_i = (1 - s) f_i + s the expected
    clipped fraction (f_i = logistic(x_i pp) the truth's, s the truth's overpaid share),
    by Newton's method on the dense design (NumPy, not the engine's estimator)."""
    from engine.model.design import component_design, dense_design
    from engine.world import truth as T

    d = component_design(ctx.hh, ctx.fit.spec.price, ctx.fit.norms)
    X = dense_design(d)          # the bijstand households only: about 25 x 400,000 at full scale
    logistic = lambda e: 1.0 / (1.0 + np.exp(-e))  # noqa: E731
    s = T.PRICE_OVERPAID_SHARE
    m = (1 - s) * logistic(X @ pp) + s
    b = pp.copy()
    for _ in range(50):
        mu = logistic(X @ b)
        step = np.linalg.solve(X.T @ (X * (mu * (1 - mu))[:, None]), X.T @ (m - mu))
        b += step
        if np.max(np.abs(step)) < 1e-12:
            return b
    raise RuntimeError("price target: Newton did not converge")


def t_referred(z: np.ndarray, df: np.ndarray) -> np.ndarray:
    """z-scores referred to Student's t with ``df`` and mapped to the normal scale."""
    return np.sign(z) * stats.norm.isf(stats.t.sf(np.abs(z), df))


def realised_level_cost(ctx, vp: np.ndarray, pp: np.ndarray) -> tuple[np.ndarray, float]:
    """Objective cost per municipality with the true coefficients and the common effect
    recalibrated so that the predicted national count equals the realised one."""
    from engine.model.predict import predict, prediction_tables

    fit0 = dataclasses.replace(ctx.fit, volume=dataclasses.replace(ctx.fit.volume, fe_common=0.0))
    target = float(ctx.hh.outcome(ctx.fit.spec.volume.outcome).sum())

    def at(c: float):
        v = vp.copy()
        v[0] = c
        pr = predict(ctx.hh, fit0, ctx.pd, prediction_tables(ctx.hh, fit0, ctx.pd, v, pp))
        return pr.predicted.sum() - target, pr.objective_cost

    c0 = float(vp[0])
    f0, cost = at(c0)
    c1 = c0 + 0.01
    for _ in range(30):                      # secant: the count is smooth and monotone in c
        f1, cost = at(c1)
        if abs(f1) < 1e-9 * target or f1 == f0:
            break
        c0, c1, f0 = c1, c1 - f1 * (c1 - c0) / (f1 - f0), f1
    return cost, c1


def world_surplus(args, seed: int) -> tuple[float, float]:
    """The (min, max) planted surplus of the world with ``seed``: ``--planted-surplus``, or with
    ``--surplus-cycle`` the cycle's value for this world (world i of the study: value i mod n)."""
    if not args.surplus_cycle:
        return tuple(args.planted_surplus)
    s = args.surplus_cycle[(seed - args.seed) % len(args.surplus_cycle)]
    return (s, s)


def study_world(seed: int, args, root: Path) -> tuple[dict, list[dict], list[dict], np.ndarray]:
    """Generate, fit, bootstrap and score one world: its summary row, its rows per
    municipality, its rows per coefficient (z-score against the truth) and its
    :func:`reference_coverage` of the budget bands (> 15k)."""
    from engine.uncertainty.bootstrap import run_bootstrap
    from engine.uncertainty.draws import context
    from engine.uncertainty.settings import Settings
    from engine.uncertainty.summaries import bands_table, flags_table
    from engine.model.fitted import fit_to_folder
    from engine.model.population import read_population
    from engine.rules.budget import allocate
    from engine.world.synth import generate

    world = root / f"world-{seed}"
    t0 = time.perf_counter()
    surplus = world_surplus(args, seed)
    generate(world / "population", households=args.households, seed=seed, planted=args.planted,
             planted_effect=args.planted_effect, planted_surplus=surplus, policy_sd=args.policy_sd)
    t1 = time.perf_counter()
    fit_to_folder(read_population(world / "population"), world / "fit", spec=args.spec)
    t2 = time.perf_counter()
    settings = Settings(population=str(world / "population"), coefficients=str(world / "fit"), regime=args.regime,
                        method="parametric", seed=seed)
    res = run_bootstrap(settings, world / "bootstrap", replicates=args.replicates, batch_size=args.batch_size,
                        workers=args.workers)
    t3 = time.perf_counter()
    ctx = context(settings)
    truth = ctx.truth
    if truth is None:
        raise ValueError(f"{world / 'population'} has no truth.json")
    by_code = {m["code"]: m for m in truth["municipalities"]}
    codes = ctx.hh.mun_codes
    true_cost = np.array([by_code[c]["objective_cost"] for c in codes])

    def targets(cost):
        b = allocate(ctx.regime, cost, ctx.hist, ctx.inhabitants, ctx.tb).budget
        return b, b / b.sum(), cost / cost.sum()

    true_budget, true_share, true_oshare = targets(true_cost)
    vp, pp, v_cmp, p_cmp = true_parameters(ctx.fit, truth)
    real_cost, real_c = realised_level_cost(ctx, vp, pp)
    real_budget, real_share, _ = targets(real_cost)

    bands = bands_table(res)
    col = lambda c: bands.column(c).to_numpy()  # noqa: E731
    b_lo, b_hi = col("budget_q2_5"), col("budget_q97_5")
    s_lo, s_hi = col("share_q2_5"), col("share_q97_5")
    oshare = res.values["objective_cost"] / res.values["objective_cost"].sum(axis=1, keepdims=True)
    o_lo, o_hi = np.quantile(oshare, [0.025, 0.975], axis=0)
    point_budget = res.point_budget
    point_share = point_budget / point_budget.sum()
    share_sd = res.values["share"].std(axis=0, ddof=1)

    degenerate = (b_hi - b_lo) <= 1e-12 * np.maximum(np.abs(point_budget), 1.0)
    cls = size_classes(ctx.inhabitants, ctx.regime)
    cover = {
        "budget": (b_lo <= true_budget) & (true_budget <= b_hi),
        "share": (s_lo <= true_share) & (true_share <= s_hi),
        "objective_share": (o_lo <= true_oshare) & (true_oshare <= o_hi),
        "budget_realised": (b_lo <= real_budget) & (real_budget <= b_hi),
        "share_realised": (s_lo <= real_share) & (real_share <= s_hi),
    }
    z_share = np.where(degenerate, np.nan, (point_share - true_share) / np.where(share_sd > 0, share_sd, np.nan))

    v, p = ctx.fit.volume, ctx.fit.price
    zv = (v.params[v_cmp] - vp[v_cmp]) / v.se("cluster")[v_cmp]
    zp = (p.params[p_cmp] - pp[p_cmp]) / p.se("cluster")[p_cmp]
    zv_model = (v.params[v_cmp] - vp[v_cmp]) / v.se("model")[v_cmp]
    zp_model = (p.params[p_cmp] - pp[p_cmp]) / p.se("model")[p_cmp]
    zp_robust = (p.params[p_cmp] - pp[p_cmp]) / p.se("robust")[p_cmp]     # HC1: no clustering
    pt = price_target(ctx, pp)
    zp_target = (p.params[p_cmp] - pt[p_cmp]) / p.se("cluster")[p_cmp]
    zv_t = t_referred(zv, v.df_cluster[v_cmp])
    zp_t = t_referred(zp, p.df_cluster[p_cmp])
    zp_target_t = t_referred(zp_target, p.df_cluster[p_cmp])

    flags = flags_table(res, args.level)
    p_explained = flags.column("p_explained").to_numpy()
    q_value = flags.column("q_value").to_numpy()
    surplus_pos = flags.column("surplus").to_numpy() > 0
    planted = np.array([bool(by_code[c]["planted"]) for c in codes])
    planted_surplus = truth.get("planted_surplus") or {}
    null_p = p_explained[~planted]
    ks = stats.kstest(null_p, "uniform")
    flag_q = surplus_pos & (q_value <= args.fdr)
    ok = ~degenerate
    objective = ok & (cls > 0)
    row = {"seed": seed, "households": args.households, "replicates": args.replicates,
           "municipalities": len(codes), "degenerate": int(degenerate.sum()),
           "evaluated_gt15k": int(objective.sum()), "evaluated_all": int(ok.sum())}
    for name, c in cover.items():
        row[f"{name}_cov_gt15k"] = float(c[objective].mean())
        row[f"{name}_cov_all"] = float(c[ok].mean())
        for k, label in enumerate(CLASSES):
            m = ok & (cls == k)
            row[f"{name}_cov_{label}"] = float(c[m].mean()) if m.any() else float("nan")
    zs = z_share[objective]
    pz, pfrac = principal_z(res.values["share"][:, objective], point_share[objective], true_share[objective])
    reference = reference_coverage(res.values["budget"][:, objective], b_lo[objective], b_hi[objective])
    row.update({
        "z_share_mean_gt15k": float(np.mean(zs)), "z_share_sd_gt15k": float(np.std(zs, ddof=1)),
        "principal_z1": float(pz[0]), "principal_z2": float(pz[1]),
        "principal_fraction1": float(pfrac[0]), "principal_fraction2": float(pfrac[1]),
        "z2_volume": float(np.mean(zv ** 2)), "z2_price": float(np.mean(zp ** 2)),
        "z2_volume_model_se": float(np.mean(zv_model ** 2)), "z2_price_model_se": float(np.mean(zp_model ** 2)),
        "z2_price_robust_se": float(np.mean(zp_robust ** 2)),
        "z2_price_target": float(np.mean(zp_target ** 2)),
        "z2_volume_t": float(np.mean(zv_t ** 2)), "z2_price_t": float(np.mean(zp_t ** 2)),
        "z2_price_target_t": float(np.mean(zp_target_t ** 2)),
        "df_harmonic_volume": float(stats.hmean(v.df_cluster[v_cmp])),
        "df_harmonic_price": float(stats.hmean(p.df_cluster[p_cmp])),
        "se_ratio_cluster_model_volume": float(np.mean(v.se("cluster")[v_cmp] / v.se("model")[v_cmp])),
        "planted_surplus_min": surplus[0], "planted_surplus_max": surplus[1],
        "n_volume_terms": len(zv), "n_price_terms": len(zp),
        "between_sd": res.between_sd, "between_mean": res.between_mean,
        "truth_effect_sd": float(np.std([m["policy_effect"] for m in truth["municipalities"] if not m["planted"]])),
        "ks_null": float(ks.statistic), "ks_null_p": float(ks.pvalue), "n_null": int(null_p.size),
        **{f"null_below_{a:g}": int((null_p < a).sum()) for a in NULL_LEVELS},
        "flagged_q": int(flag_q.sum()), "true_flagged_q": int((flag_q & planted).sum()),
        "false_flagged_q": int((flag_q & ~planted).sum()), "planted": int(planted.sum()),
        "common_effect_fit": float(v.params[0] + v.fe_common), "common_effect_truth": float(vp[0]),
        "common_effect_truth_realised": float(real_c),
        "objective_cost_point_over_truth": float(res.values["objective_cost"].mean(axis=0).sum() / true_cost.sum()),
        "median_rel_halfwidth_gt15k": float(np.median((b_hi - b_lo)[objective] / 2 / point_budget[objective])),
        "seconds_generate": t1 - t0, "seconds_fit": t2 - t1, "seconds_bootstrap": t3 - t2,
    })
    names = bands.column("name").to_pylist()
    mun_rows = [{"seed": seed, "code": c, "name": names[g], "inhabitants": int(ctx.inhabitants[g]),
                 "size_class": CLASSES[cls[g]], "degenerate": bool(degenerate[g]),
                 "planted": bool(by_code[c]["planted"]), "true_budget": true_budget[g], "point_budget": point_budget[g],
                 "budget_q2_5": b_lo[g], "budget_q97_5": b_hi[g], "covered": bool(cover["budget"][g]),
                 "true_share": true_share[g], "share_q2_5": s_lo[g], "share_q97_5": s_hi[g],
                 "share_covered": bool(cover["share"][g]), "objective_share_covered": bool(cover["objective_share"][g]),
                 "z_share": z_share[g], "planted_surplus": planted_surplus.get(c) if planted[g] else None,
                 "p_explained": p_explained[g], "q_value": q_value[g], "flagged_q": bool(flag_q[g]),
                 "flagged_level": bool(surplus_pos[g] and p_explained[g] < args.level)}
                for g, c in enumerate(codes)]
    term_rows = [{"seed": seed, "component": comp.name, "term": comp.term_names[i], "estimate": comp.params[i],
                  "truth": truth_params[i], "target": target[i], "se_cluster": comp.se("cluster")[i],
                  "se_model": comp.se("model")[i], "se_robust": comp.se("robust")[i], "df": comp.df_cluster[i],
                  "z": z, "z_t": z_t}
                 for comp, truth_params, target, idx, zs, zts in ((v, vp, vp, v_cmp, zv, zv_t),
                                                                  (p, pp, pt, p_cmp, zp, zp_t))
                 for i, z, z_t in zip(idx, zs, zts)]
    if not args.keep:
        shutil.rmtree(world, ignore_errors=True)
    return row, mun_rows, term_rows, reference


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def summarise(worlds: list[dict], muns: list[dict], replicates: int, references: list[np.ndarray] | None = None,
              seed: int = 0) -> dict:
    """Pooled coverage over all worlds (municipality-worlds), with the standard error over worlds,
    the principal-direction z-scores and (``references``: per world :func:`reference_coverage`) the
    pooled coverage a right bootstrap gives over as many worlds."""
    out = {"worlds": len(worlds), "replicates": replicates,
           "expected_coverage_finite_B": expected_coverage_finite_b(replicates)}
    ok = [m for m in muns if not m["degenerate"]]
    for what, key in (("budget", "covered"), ("share", "share_covered"), ("objective_share", "objective_share_covered")):
        for label, sel in (("gt15k", lambda m: m["size_class"] != "historical"), ("all", lambda m: True),
                           *((c, (lambda c: lambda m: m["size_class"] == c)(c)) for c in CLASSES)):
            xs = [m[key] for m in ok if sel(m)]
            if xs:
                p = float(np.mean(xs))
                out[f"{what}_{label}"] = {"coverage": p, "n": len(xs)}
        per_world = [w[f"{what}_cov_gt15k"] for w in worlds]
        out[f"{what}_gt15k"]["per_world_min"] = float(np.min(per_world))
        out[f"{what}_gt15k"]["per_world_max"] = float(np.max(per_world))
        sd = float(np.std(per_world, ddof=1)) if len(per_world) > 1 else float("nan")
        out[f"{what}_gt15k"]["per_world_sd"] = sd
        out[f"{what}_gt15k"]["per_world_q5"] = float(np.quantile(per_world, 0.05))
        out[f"{what}_gt15k"]["per_world_quartiles"] = [float(x) for x in np.quantile(per_world, [0.25, 0.5, 0.75])]
        # municipalities of one world miss together (one coefficient error moves them all):
        # the standard error of the pooled rate is that of the mean of the per-world rates
        out[f"{what}_gt15k"]["se_between_worlds"] = sd / np.sqrt(len(per_world))
    for what in ("budget_realised", "share_realised"):
        out[f"{what}_gt15k"] = {"coverage": float(np.mean([w[f"{what}_cov_gt15k"] for w in worlds]))}
    out["degenerate_per_world"] = sorted({w["degenerate"] for w in worlds})
    out["z2_volume_mean"], out["z2_volume_se"] = mean_se([w["z2_volume"] for w in worlds])
    out["z2_price_mean"], out["z2_price_se"] = mean_se([w["z2_price"] for w in worlds])
    for comp in ("volume", "price"):
        out[f"z2_{comp}_model_se_mean"], out[f"z2_{comp}_model_se_se"] = mean_se(
            [w[f"z2_{comp}_model_se"] for w in worlds])
    for key in ("z2_price_robust_se", "z2_price_target", "z2_volume_t", "z2_price_t", "z2_price_target_t"):
        out[f"{key}_mean"], out[f"{key}_se"] = mean_se([w[key] for w in worlds])
    for comp in ("volume", "price"):
        out[f"df_harmonic_{comp}"] = float(np.mean([w[f"df_harmonic_{comp}"] for w in worlds]))
    out["se_ratio_cluster_model_volume"] = mean_se([w["se_ratio_cluster_model_volume"] for w in worlds])
    out["between_sd_over_truth"] = mean_se([w["between_sd"] / w["truth_effect_sd"] for w in worlds])
    out["n_volume_terms"], out["n_price_terms"] = worlds[0]["n_volume_terms"], worlds[0]["n_price_terms"]
    out["z_share_mean_gt15k"] = float(np.mean([w["z_share_mean_gt15k"] for w in worlds]))
    out["z_share_sd_gt15k"] = float(np.mean([w["z_share_sd_gt15k"] for w in worlds]))
    for j in (1, 2):
        z2 = np.array([w[f"principal_z{j}"] for w in worlds]) ** 2
        cdf = float(stats.chi2.cdf(z2.sum(), z2.size))
        out[f"principal_z{j}"] = {"mean_z2": float(z2.mean()), "chi2_p_two_sided": min(1.0, 2 * min(cdf, 1 - cdf)),
                                  "fraction": float(np.mean([w[f"principal_fraction{j}"] for w in worlds]))}
    if references:
        out["reference_budget_gt15k"] = pooled_reference(references, float(np.mean([w["budget_cov_gt15k"]
                                                                                      for w in worlds])), seed=seed)
    out["planted_budget_coverage"] = float(np.mean([m["covered"] for m in ok if m["planted"]])) if any(
        m["planted"] for m in ok) else float("nan")
    return out


def format_report(worlds: list[dict], s: dict) -> str:
    lines = [f"{'seed':>10} {'budget>15k':>10} {'budget all':>10} {'pro rata':>9} {'objective':>9} {'historical':>10} "
             f"{'share>15k':>9} {'O-share':>8} {'z2 vol':>7} {'z2 price':>8} {'z mean':>7} {'z sd':>5} {'s':>6}"]
    for w in worlds:
        lines.append(f"{w['seed']:>10} {w['budget_cov_gt15k']:>10.3f} {w['budget_cov_all']:>10.3f} "
                     f"{w['budget_cov_pro_rata']:>9.3f} {w['budget_cov_objective']:>9.3f} "
                     f"{w['budget_cov_historical']:>10.3f} {w['share_cov_gt15k']:>9.3f} "
                     f"{w['objective_share_cov_gt15k']:>8.3f} {w['z2_volume']:>7.2f} {w['z2_price']:>8.2f} "
                     f"{w['z_share_mean_gt15k']:>7.2f} {w['z_share_sd_gt15k']:>5.2f} "
                     f"{w['seconds_generate'] + w['seconds_fit'] + w['seconds_bootstrap']:>6.1f}")
    g = s["budget_gt15k"]
    lines += ["",
              f"{s['worlds']} worlds, {s['replicates']} parametric replicates each; a perfect bootstrap with this many "
              f"replicates covers {s['expected_coverage_finite_B']:.4f} (finite-B quantiles)",
              f"degenerate bands excluded (width 0; per world: {s['degenerate_per_world']})",
              f"budget coverage, municipalities > 15k inhabitants: {g['coverage']:.4f} (n = {g['n']}; per world "
              f"{g['per_world_min']:.3f} .. {g['per_world_max']:.3f}, sd {g['per_world_sd']:.3f}; standard error of the "
              f"rate over worlds {g['se_between_worlds']:.3f}); 5th percentile of per-world coverage "
              f"{g['per_world_q5']:.3f}, quartiles " + " / ".join(f"{x:.3f}" for x in g["per_world_quartiles"])]
    for what in ("budget", "share", "objective_share"):
        parts = [f"{lab} {s[f'{what}_{lab}']['coverage']:.4f} (n {s[f'{what}_{lab}']['n']})"
                 for lab in ("gt15k", "all", *CLASSES) if f"{what}_{lab}" in s]
        lines.append(f"  {what:<16} " + "; ".join(parts))
    lines += [f"  against the truth at the realised level: budget {s['budget_realised_gt15k']['coverage']:.4f}, "
              f"share {s['share_realised_gt15k']['coverage']:.4f} (> 15k)",
              f"  planted municipalities: budget coverage {s['planted_budget_coverage']:.3f}",
              f"coefficient z-scores (estimate - truth) / cluster-robust se, mean square over worlds: volume "
              f"{s['z2_volume_mean']:.3f} (se {s['z2_volume_se']:.3f}; {s['n_volume_terms']} terms), price "
              f"{s['z2_price_mean']:.3f} (se {s['z2_price_se']:.3f}; {s['n_price_terms']} terms); 1 if the covariance "
              "is right",
              f"  the same with the model-based se (right for the volume logit only): volume {s['z2_volume_model_se_mean']:.3f} "
              f"(se {s['z2_volume_model_se_se']:.3f}), price {s['z2_price_model_se_mean']:.3f} "
              f"(se {s['z2_price_model_se_se']:.3f}); volume cluster se / model se "
              f"{s['se_ratio_cluster_model_volume'][0]:.3f} (se {s['se_ratio_cluster_model_volume'][1]:.3f})",
              f"  price with the robust (HC1, unclustered) se: {s['z2_price_robust_se_mean']:.3f} "
              f"(se {s['z2_price_robust_se_se']:.3f}); price against the estimator's target (clipped fractions): "
              f"{s['z2_price_target_mean']:.3f} (se {s['z2_price_target_se']:.3f})",
              f"  referred to Student's t with the se's df (harmonic mean df: volume {s['df_harmonic_volume']:.1f}, "
              f"price {s['df_harmonic_price']:.1f}): volume {s['z2_volume_t_mean']:.3f} (se {s['z2_volume_t_se']:.3f}), "
              f"price {s['z2_price_t_mean']:.3f} (se {s['z2_price_t_se']:.3f}), price against the target "
              f"{s['z2_price_target_t_mean']:.3f} (se {s['z2_price_target_t_se']:.3f})",
              f"between-municipality sd / truth's sd of municipality effects: {s['between_sd_over_truth'][0]:.3f} "
              f"(se {s['between_sd_over_truth'][1]:.3f})"]
    f = s["flags"]
    lines += [f"p_explained of the {f['null_municipalities']} municipality-worlds without a planted effect: KS "
              f"{f['ks_null_pooled']:.4f} (p {f['ks_null_pooled_p']:.3g}) pooled; per world "
              f"{min(f['ks_null_per_world']):.3f} .. {max(f['ks_null_per_world']):.3f}, "
              f"{f['ks_null_per_world_p_below_0_01']} of {s['worlds']} worlds with KS p < 0.01"]
    for a in NULL_LEVELS:
        c = f[f"null_below_{a:g}"]
        lines.append(f"  p_explained < {a:g}: {c['count']} (expected {c['expected']:.1f}, binomial 99% range "
                     f"{c['binomial_99'][0]}-{c['binomial_99'][1]})")
    lines.append(f"flags at false discovery rate q = {f['fdr']:g}: precision {f['precision_q']:.3f}, recall "
                 f"{f['recall_q']:.3f}; false discovery proportion per world {f['false_discovery_proportion_mean']:.3f} "
                 f"(se {f['false_discovery_proportion_se']:.3f})")
    for b in f["by_world_surplus"]:
        lines.append(f"  worlds with planted surpluses {100 * b['surplus_min']:.0f}-{100 * b['surplus_max']:.0f}% "
                     f"({b['worlds']} worlds, {b['planted']} planted): precision {b['precision_q']:.3f} "
                     f"({b['flagged_q']} flags), recall {b['recall_q']:.3f} (se {b['recall_q_se_between_worlds']:.3f}) "
                     f"at q = {f['fdr']:g}")
    for b in f["power_by_surplus"]:
        lines.append(f"  planted surplus {100 * b['surplus_from']:.1f}-{100 * min(b['surplus_to'], 1):.1f}%: recall "
                     f"{b['recall_q']:.3f} at q = {f['fdr']:g}, {b['recall_level']:.3f} at level {s['level']:g} per "
                     f"test (n {b['n']})")
    lines += [f"budget share z = (point - truth) / bootstrap sd (> 15k): mean {s['z_share_mean_gt15k']:+.2f}, "
              f"sd {s['z_share_sd_gt15k']:.2f} (averaged over worlds; the sd within a world is below 1 for a right "
              "band: its errors are nearly one shared error)"]
    for j in (1, 2):
        d = s[f"principal_z{j}"]
        lines.append(f"  principal direction {j} of the replicates' shares ({100 * d['fraction']:.1f}% of their "
                     f"variance): mean z^2 over worlds {d['mean_z2']:.3f} (1 if right; chi-square p {d['chi2_p_two_sided']:.3f}, "
                     "one degree of freedom per world)")
    if "reference_budget_gt15k" in s:
        r = s["reference_budget_gt15k"]
        lines.append(f"pooled budget coverage (> 15k) a right bootstrap gives over {s['worlds']} worlds (a replicate as "
                     "truth): 5/25/50/75/95% " + " / ".join(f"{x:.3f}" for x in r["quantiles_5_25_50_75_95"]) +
                     f"; P(>= observed) {r['p_at_least_observed']:.3f}, P(<= observed) {r['p_at_most_observed']:.3f}, "
                     f"P(within 93-97%) {r['p_in_0_93_0_97']:.3f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/coverage_study.py",
                                description="How often the 95%% budget bands cover the true expected budget, "
                                            "over repeated synthetic worlds.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (CSV, JSON; worlds/ while running)")
    p.add_argument("--worlds", type=int, default=20, help="number of synthetic worlds")
    p.add_argument("--households", type=int, default=1_000_000, help="households per world")
    p.add_argument("--replicates", type=int, default=1000, help="parametric bootstrap replicates per world")
    p.add_argument("--seed", type=int, default=1000, help="seed of the first world (then +1, +2, ...); also "
                                                           "the bootstrap seed of that world")
    p.add_argument("--planted", type=int, default=10, help="planted strict-policy municipalities per world "
                                                            "(0: null worlds)")
    p.add_argument("--planted-surplus", type=float, nargs=2, default=(0.10, 0.30), metavar=("MIN", "MAX"),
                   help="planted surpluses drawn uniformly from MIN-MAX (equal: one size)")
    p.add_argument("--surplus-cycle", type=float, nargs="+", default=None, metavar="S",
                   help="instead of --planted-surplus: world i plants surpluses of exactly S[i mod n] (precision "
                        "and recall are then reported per size, over the worlds of that size)")
    p.add_argument("--planted-effect", type=float, default=0.0,
                   help="not 0: a fixed planted effect on the log-odds instead")
    p.add_argument("--level", type=float, default=0.01, help="flag level per test")
    p.add_argument("--fdr", type=float, default=0.1, help="false discovery rate of the BH flags")
    p.add_argument("--policy-sd", type=float, default=0.05, help="sd of the natural policy effects")
    p.add_argument("--spec", default="2019", help="model spec")
    p.add_argument("--regime", default="2019", help="regime of the household model")
    p.add_argument("--batch-size", type=int, default=100, help="replicates per batch")
    p.add_argument("--workers", type=int, default=0, help="0: in this process (Numba on all cores); N: Dask workers")
    p.add_argument("--keep", action="store_true", help="keep each world's population, fit and replicates")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worlds < 1 or args.replicates < 2:
        raise SystemExit("--worlds must be >= 1 and --replicates >= 2")
    if args.surplus_cycle and not all(0 <= x < 1 for x in args.surplus_cycle):
        raise SystemExit("--surplus-cycle values must be in [0, 1)")
    out = Path(args.out)
    root = out / "worlds"
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    worlds, muns, terms, references = [], [], [], []
    for i in range(args.worlds):
        row, rows, trows, reference = study_world(args.seed + i, args, root)
        references.append(reference)
        worlds.append(row)
        muns += rows
        terms += trows
        _write_csv(out / "coverage_worlds.csv", worlds)        # per world as it goes: a study cut short
        _write_csv(out / "coverage_municipalities.csv", muns)  # keeps the worlds it finished
        _write_csv(out / "coverage_terms.csv", terms)
        print(f"world {i + 1}/{args.worlds} (seed {row['seed']}): budget coverage > 15k {row['budget_cov_gt15k']:.3f}, "
              f"all {row['budget_cov_all']:.3f}; "
              f"{row['seconds_generate'] + row['seconds_fit'] + row['seconds_bootstrap']:.1f} s", flush=True)
    s = summarise(worlds, muns, args.replicates, references, seed=args.seed)
    s["flags"] = flag_summary(worlds, muns, args.fdr)
    s["level"] = args.level
    s.update({"households": args.households, "seconds": time.perf_counter() - t0, "cores": os.cpu_count(),
              "loadavg_start": load0, "loadavg_end": os.getloadavg(), "seed": args.seed,
              "planted": args.planted, "planted_effect": args.planted_effect, "policy_sd": args.policy_sd,
              "planted_surplus": list(args.planted_surplus)})
    tmp = out / f".coverage_summary.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "coverage_summary.json")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(format_report(worlds, s))
    print(f"\n{s['seconds']:.0f} s on {os.cpu_count()} cores, load average {load0[0]:.2f} at start, "
          f"{s['loadavg_end'][0]:.2f} at end; wrote coverage_worlds.csv, coverage_municipalities.csv, "
          f"coverage_terms.csv, coverage_summary.json to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
