"""Published national facts of the bijstand budget, read from ``engine/data/published``.

:func:`national_gaps` derives the national surplus (+) or deficit (-) of each published year as a
share of the macro budget, (macro budget - spending) / macro budget; :func:`facts` gathers the
ranges a run's summary and the calibration tests compare a population with (sources in
``engine/data/published/SOURCES.md``).
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass

from engine.io.config import DATA

FOLDER = DATA / "published"


def _rows(name: str) -> list[dict]:
    with (FOLDER / name).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _number(text: str) -> float:
    m = re.search(r"-?\d+(?:\.\d+)?", text)
    if not m:
        raise ValueError(f"{FOLDER}: {text!r} holds no number")
    return float(m.group())


def macrobudget(year: int, stage: str = "definitief") -> float:
    """The published macro budget of ``year`` at ``stage``, EUR."""
    for r in _rows("macrobudget_buig_2016_2024.csv"):
        if int(r["budget_year"]) == year and r["stage"] == stage:
            return 1e6 * float(r["macrobudget_mln_eur"])
    raise KeyError(f"no published macro budget for {year} ({stage})")


@functools.cache
def national_gaps() -> dict[int, float]:
    """Year -> (macro budget - spending) / macro budget, from the published national outcomes.

    A deficit or surplus in EUR mln is divided by the definitive macro budget of its year; one given
    in % of the macro budget is taken as it is; 2022 is (macro budget incl. vangnet - spending) /
    macro budget.
    """
    rows = _rows("vangnet_and_saldo_summary.csv")
    gaps: dict[int, float] = {}
    for r in rows:
        year, ind, value, unit = int(r["year"]), r["indicator"], _number(r["value"]), r["unit"]
        if ind not in ("macro_deficit", "macro_surplus"):
            continue
        sign = -1.0 if ind == "macro_deficit" else 1.0
        if unit.startswith("pct"):
            gaps[year] = sign * value / 100.0
        elif unit.startswith("mln_eur") and "pct" not in unit:
            gaps[year] = sign * 1e6 * value / macrobudget(year)
    by = {(int(r["year"]), r["indicator"]): _number(r["value"]) for r in rows}
    if (2022, "macrobudget_incl_vangnet") in by and (2022, "bijstandslasten") in by:
        macro, spent = by[(2022, "macrobudget_incl_vangnet")], by[(2022, "bijstandslasten")]
        gaps[2022] = (macro - spent) / macro
    return dict(sorted(gaps.items()))


@dataclass(frozen=True)
class Facts:
    """Ranges of the published national outcomes (shares as fractions)."""

    gap_low: float                  # largest published deficit, 2016-2022 (negative)
    gap_high: float                 # largest published surplus, 2016-2022
    deficit_share_2012: float       # municipalities in deficit, 2012 (national deficit 0.4%)
    deficit_share_2021: float       # "more than a quarter", 2021 (national surplus 3.8%)
    deficit_10_share_2012: float    # municipalities with a deficit of 10% or more, 2012
    vangnet_low: int                # fewest vangnet requests, 2016-2018
    vangnet_high: int               # most vangnet requests, 2016-2018
    price_per_uitkering_2018: float  # EUR


@functools.cache
def facts() -> Facts:
    gaps = [g for y, g in national_gaps().items() if 2016 <= y <= 2022]
    by = {(int(r["year"]), r["indicator"]): _number(r["value"]) for r in _rows("vangnet_and_saldo_summary.csv")}
    requests = [v for (y, ind), v in by.items() if ind == "vangnet_requests"]
    return Facts(gap_low=min(gaps), gap_high=max(gaps), deficit_share_2012=by[(2012, "share_municipalities_deficit")] / 100,
                 deficit_share_2021=by[(2021, "share_municipalities_deficit")] / 100,
                 deficit_10_share_2012=by[(2012, "share_municipalities_deficit_ge_10pct")] / 100,
                 vangnet_low=int(min(requests)), vangnet_high=int(max(requests)),
                 price_per_uitkering_2018=by[(2018, "avg_price_per_uitkering")])
