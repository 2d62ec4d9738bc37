"""What a bootstrap yields, summarised: bands, flags and the replicates table, and their files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.io.outputs import atomic_dir, write_json
from engine.uncertainty.settings import QUANTILES, Settings
from engine.uncertainty.store import DICTIONARY_COLUMNS, replicate_table


@dataclass(frozen=True)
class BootstrapResult:
    settings: Settings
    replicates: int
    codes: np.ndarray
    names: np.ndarray
    point_budget: np.ndarray
    spending: np.ndarray
    between_sd: float
    values: dict[str, np.ndarray]       # REPLICATE_COLUMNS -> (replicates, n_mun)
    seconds: float
    computed: int                       # replicates computed in this run (the rest were resumed)
    inputs: str = ""                    # inputs_digest(settings)
    elasticity: np.ndarray | None = None   # d log(cost) / d (log-odds shift) per municipality
    between_left_out: tuple[str, ...] = ()  # municipalities left out of the between-sd estimate
    between_mean: float = 0.0           # mean municipality effect relative to the common effect


def bands_table(res: BootstrapResult) -> pa.Table:
    """Per municipality the point budget and the QUANTILES of budget, share and effect."""
    cols = {"code": res.codes.tolist(), "name": res.names.tolist(), "point_budget": res.point_budget}
    for c in ("budget", "share", "effect_pct"):
        q = np.quantile(res.values[c], QUANTILES, axis=0)
        for qi, v in zip(QUANTILES, q):
            cols[f"{c}_q{qi * 100:g}".replace(".", "_")] = v
        cols[f"{c}_sd"] = res.values[c].std(axis=0, ddof=1) if res.replicates > 1 else np.zeros(len(res.codes))
    return pa.table(cols)


# Gauss-Hermite nodes and weights (probabilists'): E f(Z), Z ~ N(0, 1), is sum w_k f(x_k)
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(48)
_GH_W = _GH_W / _GH_W.sum()


def explained_probability(cost: np.ndarray, outcome_sd: np.ndarray, spending: np.ndarray,
                          shift_sd: np.ndarray, shift_mean: np.ndarray | float = 0.0) -> np.ndarray:
    """P(simulated spending <= actual spending) per municipality, averaged over replicates.

    Replicate r of municipality g simulates spending as (c + s Z) exp(m + a U), Z, U ~ N(0, 1)
    independent: c = ``cost[r, g]``, s = ``outcome_sd[r, g]`` (bijstand drawn from p),
    a = ``shift_sd[g]`` and m = ``shift_mean[g]`` (sd and mean of the municipality effects
    x the spending elasticity). Given r the
    probability is an integral over one of Z, U, the other in closed form (normal cdf),
    by 48-point Gauss-Hermite over the one whose integrand is smoother: Z when a >= s / c
    (then P = E_Z[Phi(log(S / (c + s Z)) / a)], 1 where c + s Z <= 0), else U
    (P = E_U[Phi((S exp(-a U) - c) / s)]). The mean over replicates is the Rao-Blackwellised
    form of the share of replicates whose simulated spending is at or below S: the same
    quantity without the Monte Carlo error of the outcome and municipality draws, and
    resolving p-values far below 1 / replicates (needed for error-rate control over 388 tests)."""
    from scipy.special import ndtr

    c = np.asarray(cost, dtype=np.float64)
    sd = np.asarray(outcome_sd, dtype=np.float64)
    S = np.broadcast_to(np.asarray(spending, dtype=np.float64) * np.exp(-np.asarray(shift_mean, dtype=np.float64)),
                        c.shape)
    a = np.broadcast_to(np.asarray(shift_sd, dtype=np.float64), c.shape)
    rel = np.where(c > 0, sd / np.where(c > 0, c, 1.0), np.inf)
    over_z = (a > 0) & (a >= rel)
    out = np.empty(c.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # integrate over Z: the municipality effect in closed form
        cz = c[over_z][:, None] + sd[over_z][:, None] * _GH_X[None, :]
        inner = np.where(cz > 0, ndtr(np.log(S[over_z][:, None] / np.where(cz > 0, cz, 1.0)) / a[over_z][:, None]),
                         1.0)
        out[over_z] = inner @ _GH_W
        # integrate over U: the outcome in closed form (a step where its sd is 0)
        m = ~over_z
        level = S[m][:, None] * np.exp(-a[m][:, None] * _GH_X[None, :]) - c[m][:, None]
        s_m = sd[m][:, None]
        inner = np.where(s_m > 0, ndtr(level / np.where(s_m > 0, s_m, 1.0)), (level >= 0).astype(np.float64))
        out[m] = inner @ _GH_W
    return np.clip(out, 0.0, 1.0).mean(axis=0)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (adjusted p-values) of the p-values ``p``: q_(i) =
    min over j >= i of m p_(j) / j, at most 1 (m = number of p-values; NaN stays NaN and
    does not count). Rejecting q <= Q keeps the expected false discovery proportion at or
    below Q for independent (or positively dependent) tests."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    m = ok.size
    adj = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(adj[::-1])[::-1], 1.0)
    return q


def flags_table(res: BootstrapResult, level: float = 0.01, fdr: float | None = None) -> pa.Table:
    """Per municipality ``p_explained``, its Benjamini-Hochberg ``q_value`` and ``flagged``.

    ``p_explained`` (:func:`explained_probability`) is the p-value of the one-sided test of
    H0: "the municipality's actual spending is a draw of what the model predicts for it",
    spending = sum over its households of bijstand ~ Bernoulli(logistic(x beta + c + u))
    times the predicted fraction of the norm, with the coefficients (beta, gamma) uncertain
    as the bootstrap draws them, the outcome drawn (normal approximation of the sum) and
    u ~ N(between_mean, between_sd^2) the municipality's own effect around the model (its
    mean: the typical municipality's effect relative to the common effect). A small value
    says the spending is lower than the model and its natural spread explain.
    ``flagged``: ``surplus > 0`` and ``p_explained < level`` (per test), or with ``fdr``
    ``surplus > 0`` and ``q_value <= fdr`` (false discovery rate over all municipalities);
    the schema metadata ``flag_rule`` says which."""
    sim = res.values["simulated_spending"]
    if res.elasticity is None:
        raise ValueError("the bootstrap result has no spending elasticity (rerun the bootstrap)")
    p_explained = explained_probability(res.values["objective_cost"], res.values["outcome_sd"], res.spending,
                                        res.between_sd * res.elasticity, res.between_mean * res.elasticity)
    if not np.isfinite(p_explained).all():
        g = int(np.flatnonzero(~np.isfinite(p_explained))[0])
        raise ValueError(f"flags: p_explained is not finite for municipality {res.codes[g]} (row {g})")
    q = bh_qvalues(p_explained)
    lo, hi = np.quantile(sim, [0.025, 0.975], axis=0)
    surplus = res.point_budget - res.spending
    flagged = (surplus > 0) & ((q <= fdr) if fdr is not None else (p_explained < level))
    rule = f"q_value <= {fdr!r} (Benjamini-Hochberg)" if fdr is not None else f"p_explained < {level!r} (per test)"
    return pa.table({
        "code": res.codes.tolist(), "name": res.names.tolist(), "budget": res.point_budget,
        "actual_spending": res.spending, "surplus": surplus,
        "spending_band_q2_5": lo, "spending_band_q97_5": hi, "p_explained": p_explained, "q_value": q,
        "flagged": flagged, "spending_elasticity": res.elasticity,
    }).replace_schema_metadata({"level": repr(level), "fdr": repr(fdr), "flag_rule": rule,
                                "between_sd": repr(res.between_sd),
                                "between_mean": repr(res.between_mean),
                                "between_sd_left_out": ",".join(res.between_left_out),
                                "replicates": str(res.replicates)})


def replicates_table(res: BootstrapResult) -> pa.Table:
    return replicate_table(0, res.values, res.codes)


def write_results(res: BootstrapResult, out: str | Path, level: float = 0.01,
                  fdr: float | None = None) -> dict[str, pa.Table]:
    """replicates.parquet, bands.parquet, flags.parquet and bootstrap.json, committed as one set
    (:func:`engine.io.outputs.atomic_dir`): a kill never leaves new flags beside old bands. Flags
    at ``level`` per test, or at false discovery rate ``fdr`` when given. Returns the tables
    written (``"replicates"``, ``"bands"``, ``"flags"``), so a caller need not compute them again."""
    out = Path(out)
    record = {"settings": res.settings.key(), "inputs": res.inputs}
    tables = {"replicates": replicates_table(res), "bands": bands_table(res), "flags": flags_table(res, level, fdr)}
    with atomic_dir(out) as tmp:
        for name, table in tables.items():
            pq.write_table(table, tmp / f"{name}.parquet",
                           use_dictionary=DICTIONARY_COLUMNS if name == "replicates" else True)
        write_json(tmp / "bootstrap.json", {**record, "replicates": res.replicates, "flag_level": level,
                                             "flag_fdr": fdr, "between_sd": res.between_sd,
                                             "between_mean": res.between_mean,
                                             "between_sd_left_out": list(res.between_left_out),
                                             "seconds": res.seconds, "computed": res.computed})
    return tables
