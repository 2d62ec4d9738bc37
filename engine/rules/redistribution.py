"""Redistribution effects (herverdeeleffecten) and the comparison table of the 2004 letter (K2004).

Sources: engine/data/SOURCES.md.

The effect of a candidate budget C against a reference R (actual spending or another
budget), after scaling R to the total of C [C~: S13, S18]:

    HE_g = (C_g - R_g) / R_g * 100 %        and        (C_g - R_g) / inhabitants_g  EUR

Municipalities with R_g = 0 have no defined effect; they are counted as ``undefined``
and left out of the statistics. :func:`summarise` gives the letter's statistics (mean
absolute effect, share within +-10% and within +-15%), unweighted or weighted by the
reference budget. :func:`seed_table` rebuilds the five columns of the letter's table on a
population and :func:`optimal_historical_share` finds the historical share of the mix
that minimises the mean absolute effect (the letter chose 27%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.model import municipal as mm
from engine.rules.budget import historical_shares, size_class

# Size classes for reporting (class 0: N < lower; 1: lower <= N <= upper; 2: N > upper).
SIZE_CLASSES = {
    "2019": ((15_000, 40_000), ("<15k", "15-40k", ">40k")),
    "2005": ((40_000, 60_000), ("<40k", "40-60k", ">60k")),
}
SEED_UNIVERSE = 40_000           # the 2004 letter compares the municipalities in the objective model (>40k)
SEED_HISTORICAL_SHARE = 0.27     # [B: K2004]
STATISTICS = ("municipalities", "undefined", "mean_abs_effect_pct", "within_10_pct", "within_15_pct")


@dataclass(frozen=True)
class Effects:
    """Redistribution effects of a candidate budget against a reference."""

    pct: np.ndarray                  # nan where the reference is 0
    eur_per_inhabitant: np.ndarray
    reference: np.ndarray            # the reference scaled to the candidate's total


def effects(candidate: np.ndarray, reference: np.ndarray, inhabitants: np.ndarray) -> Effects:
    """HE_g in % and in EUR per inhabitant, the reference scaled to the candidate's total (per row of a
    2-d ``candidate``: one candidate per row, the same numbers as row by row)."""
    c = np.asarray(candidate, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    r = r * (c.sum(axis=-1, keepdims=True) / r.sum())
    pct = np.full_like(c, np.nan)
    np.divide(c - r, r, out=pct, where=r > 0)
    return Effects(pct=100.0 * pct, eur_per_inhabitant=(c - r) / np.asarray(inhabitants, dtype=np.float64),
                   reference=r)


def summarise(pct: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """The 2004 letter's statistics of effects in %: mean |HE|, % within +-10 and +-15 (nan-safe).

    With ``weights`` (e.g. the reference budget) every statistic is a weighted mean.
    """
    pct = np.asarray(pct, dtype=np.float64)
    ok = np.isfinite(pct)
    a = np.abs(pct[ok])
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64)[ok]
    total = w.sum()
    out = {"municipalities": int(ok.sum()), "undefined": int((~ok).sum())}
    if total <= 0:
        return out | {"mean_abs_effect_pct": np.nan, "within_10_pct": np.nan, "within_15_pct": np.nan}
    return out | {"mean_abs_effect_pct": float(w @ a / total),
                  "within_10_pct": float(100.0 * w @ (a <= 10.0) / total),
                  "within_15_pct": float(100.0 * w @ (a <= 15.0) / total)}


def summary_rows(pct: np.ndarray, weights: np.ndarray, inhabitants: np.ndarray,
                 mask: np.ndarray | None = None, all_name: str = "all", **labels) -> list[dict]:
    """Statistics of one set of effects: all, by the 2019 and the 2005 size classes;
    unweighted and weighted by ``weights`` (the reference budget). ``mask`` restricts all
    rows to some municipalities (the first row is named ``all_name``); ``labels`` are
    copied into every row."""
    n = np.asarray(inhabitants)
    mask = np.ones(n.size, dtype=bool) if mask is None else mask
    groups = [(all_name, mask)]
    for (lo, hi), names in SIZE_CLASSES.values():
        cls = size_class(n, lo, hi)
        groups += [(name, mask & (cls == i)) for i, name in enumerate(names) if (mask & (cls == i)).any()]
    rows = []
    for name, sel in groups:
        for weighting, w in (("unweighted", None), ("budget", weights[sel])):
            rows.append(labels | {"size_class": name, "weighting": weighting} | summarise(pct[sel], w))
    return rows


def share_effects(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Effects in % of candidate shares against reference shares (same totals; any shape
    that broadcasts); nan where the reference is 0."""
    candidate, reference = np.broadcast_arrays(candidate, reference)
    out = np.full(candidate.shape, np.nan)
    np.divide(candidate - reference, reference, out=out, where=reference > 0)
    return 100.0 * out


def mix_effects(objective: np.ndarray, historical: np.ndarray, reference: np.ndarray,
                h: np.ndarray) -> np.ndarray:
    """Effects in % of the mixes (1 - h) objective + h historical (shares summing to 1)
    against ``reference`` (also shares), for every h: shape (len(h), municipalities)."""
    h = np.asarray(h, dtype=np.float64)[:, None]
    return share_effects((1.0 - h) * objective + h * historical, reference)


@dataclass(frozen=True)
class OptimalShare:
    """The historical share that minimises the mean absolute effect."""

    grid_share: float                # best point of the grid 0, 0.01, ..., 1
    share: float                     # exact minimiser (the effect is piecewise linear in h)
    mean_abs_effect_pct: float
    grid: np.ndarray
    grid_mae: np.ndarray


def optimal_historical_share(objective: np.ndarray, historical: np.ndarray, reference: np.ndarray,
                             step: float = 0.01) -> OptimalShare:
    """Grid search of h in [0, 1] for the mix (1 - h) objective + h historical, refined exactly.

    All three arguments are shares of the same municipalities (each summing to 1). The mean
    absolute effect is convex and piecewise linear in h with a kink where a municipality's
    effect crosses 0, so the exact minimum lies at one of those kinks or an end point.
    """
    o, hs, r = (np.asarray(v, dtype=np.float64) for v in (objective, historical, reference))
    grid = np.linspace(0.0, 1.0, int(round(1.0 / step)) + 1)
    grid_mae = np.nanmean(np.abs(mix_effects(o, hs, r, grid)), axis=1)
    d = hs - o
    kinks = np.divide(r - o, d, out=np.full_like(d, -1.0), where=d != 0)
    candidates = np.concatenate([[0.0, 1.0], kinks[(kinks > 0) & (kinks < 1)]])
    mae = np.nanmean(np.abs(mix_effects(o, hs, r, candidates)), axis=1)
    best = int(np.argmin(mae))
    return OptimalShare(grid_share=float(grid[int(np.argmin(grid_mae))]), share=float(candidates[best]),
                        mean_abs_effect_pct=float(mae[best]), grid=grid, grid_mae=grid_mae)


@dataclass(frozen=True)
class SeedTable:
    """The 2004 letter's table on a population: effects of five distributions against spending."""

    columns: tuple[tuple[str, str, np.ndarray], ...]   # (key, label, effects in %)
    universe: np.ndarray                               # municipalities compared (bool)
    min_inhabitants: float
    reference: np.ndarray                              # reference spending (unscaled)
    optimal: OptimalShare
    optimal_pct: np.ndarray                            # effects of the mix with the optimal share
    fits: tuple[mm.MunicipalFit, ...]
    target: str = "t"                                  # the year the models are estimated on (mm.fit)

    @property
    def granite_share(self) -> float:
        """The granieten voorraad's weight in model 2005 incl. GV: its share of the objective cost
        (the letter of 14 May 2004: "Binnen het model heeft dit kenmerk een gewicht van 37%")."""
        return self.fits[-1].granite_share

    def summary(self) -> dict[str, dict]:
        """Statistics of every column over the universe (unweighted)."""
        return {key: summarise(pct[self.universe]) for key, _, pct in self.columns}


def _within(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v = np.where(mask, values, 0.0)
    return v / v.sum()


def seed_table(data: mm.MunicipalData, reference: np.ndarray | None = None,
               min_inhabitants: float = SEED_UNIVERSE, historical_share: float = SEED_HISTORICAL_SHARE,
               correct_growth: bool = True, target: str = "t") -> SeedTable:
    """The five columns of the 2004 letter's table on ``data``, against ``reference`` (default:
    spending in t), over the municipalities above ``min_inhabitants``:

    1. 100% historical (spending share of t-2, corrected for household growth);
    2. 100% objective model 2004 (:data:`engine.model.municipal.MODEL_2004`);
    3. 100% objective model 2005 without the granieten voorraad;
    4. 100% objective model 2005 with it;
    5. ``1 - historical_share`` objective model 2005 with it + ``historical_share`` historical.

    The models are fitted on all municipalities, on the spending of ``target`` (default ``"t"``:
    the same year as the comparison, as the letter's table, "geschat op uitgaven 2002", compares
    with the spending of 2002; ``"t2"``: the budget's practice, see :func:`engine.model.municipal.fit`);
    every distribution is restricted to the universe and scaled to its total spending, as the letter
    compares the budgets of the municipalities in the objective model with their own spending.
    """
    ref = data.spending_t if reference is None else np.asarray(reference, dtype=np.float64)
    universe = data.inhabitants > min_inhabitants
    fits = tuple(mm.fit(data, spec, target) for spec in (mm.MODEL_2004, mm.MODEL_2005, mm.MODEL_2005_GV))
    hist = _within(historical_shares(data.spending_t2, data.households, data.households_t2, correct_growth),
                   universe)
    shares = [hist] + [_within(f.objective_cost, universe) for f in fits]
    r = _within(ref, universe)
    h = historical_share
    shares.append((1.0 - h) * shares[3] + h * hist)
    labels = [("historical", "100% historical")] + [(f.spec.name, "100% " + f.spec.label) for f in fits]
    labels.append(("mix", f"{100 * (1 - h):g}% objective 2005 incl. GV + {100 * h:g}% historical"))
    columns = tuple((key, label, share_effects(s, r)) for (key, label), s in zip(labels, shares))
    optimal = optimal_historical_share(shares[3][universe], hist[universe], r[universe])
    optimal_pct = mix_effects(shares[3], hist, r, [optimal.share])[0]
    return SeedTable(columns=columns, universe=universe, min_inhabitants=min_inhabitants, reference=ref,
                     optimal=optimal, optimal_pct=optimal_pct, fits=fits, target=target)


def format_seed_table(table: SeedTable) -> str:
    """The 2004 letter's table as text: one row per statistic, one column per distribution."""
    stats = table.summary()
    keys = [k for k, _, _ in table.columns]
    lines = [f"{'':<28}" + "".join(f"{i + 1:>12}" for i in range(len(keys)))]
    for name, label in (("mean_abs_effect_pct", "mean |effect| (%)"), ("within_10_pct", "within +-10% (%)"),
                        ("within_15_pct", "within +-15% (%)")):
        lines.append(f"{label:<28}" + "".join(f"{stats[k][name]:>12.1f}" for k in keys))
    lines += [f"  {i + 1}: {label}" for i, (_, label, _) in enumerate(table.columns)]
    o = table.optimal
    lines.append(f"municipalities compared: {int(table.universe.sum())} (>{table.min_inhabitants:,.0f} inhabitants); "
                 f"optimal historical share {100 * o.share:.1f}% (grid {100 * o.grid_share:.0f}%), "
                 f"mean |effect| {o.mean_abs_effect_pct:.2f}% (the letter: 27%)")
    year = "t, the year compared (as the letter)" if table.target == "t" else "t-2"
    lines.append(f"models estimated on spending in {year}; the granieten voorraad's weight in model 2005 incl. GV: "
                 f"{100 * table.granite_share:.1f}% of the objective cost (the letter: 37%)")
    return "\n".join(lines)
