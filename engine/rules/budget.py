"""The budget rules: TB, the objective weight, the shares, the mix, compartments, the ex-ante cap.

Pure functions on NumPy arrays (one entry per municipality, in any order):

- :func:`total_budget`: TB from the regime's macrobudget and deductions;
- :func:`objective_weight`: the weight m_g * phi of the objective share, by inhabitants;
- :func:`historical_shares`: H_g, the spending share of t-2 corrected for household growth;
- :func:`objective_shares`: s_g = O_g / sum O;
- :func:`allocate`: TB * mix(m_g phi, s_g, H_g), normalised (optionally per size
  compartment), then the ex-ante cap -> :class:`Budgets`;
- :func:`ex_ante_cap`: limit the redistribution effect against a reference budget,
  budget-neutrally.

``allocate`` is called once per bootstrap replicate, so it does a handful of vectorised
NumPy operations and nothing else (the 2005 regression is fitted once, outside it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.rules.regime import CapRule, Regime


@dataclass(frozen=True)
class Budgets:
    """The outcome of :func:`allocate`; arrays in the order of the inputs."""

    tb: float
    objective_share: np.ndarray      # s_g
    historical_share: np.ndarray     # H_g
    objective_weight: np.ndarray     # m_g * phi
    uncapped: np.ndarray             # budget before the ex-ante cap
    budget: np.ndarray               # B_g
    residual: float                  # TB - sum B (0 up to rounding in the normalised variant)
    ceiling: float                   # gain ceiling u of the ex-ante cap (nan: no cap applied)


def total_budget(regime: Regime, population_households: float, spending_t: float) -> float:
    """TB: the macrobudget (or the population's spending in t) minus the deductions.

    With ``scale = "households"`` the national amounts are multiplied by
    ``population_households / reference_households`` (a sample gets its proportional part).
    """
    with np.errstate(over="ignore", invalid="ignore"):          # checked just below
        factor = population_households / regime.reference_households if regime.scale == "households" else 1.0
        deducted = factor * sum(v for _, v in regime.deductions)
        macro = spending_t if regime.macrobudget is None else factor * regime.macrobudget
        tb = float(macro - deducted)
    if not math.isfinite(tb):
        raise ValueError(f"regime {regime.name}: the budget to distribute (TB) is not finite ({tb}): check "
                         f"budget.macrobudget, the deductions and reference_households ({regime.reference_households})")
    if tb <= 0:
        raise ValueError(f"regime {regime.name}: the budget to distribute (TB = {tb:,.2f}) is not positive")
    return tb


def size_class(inhabitants: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """0 below ``lower``, 1 from ``lower`` up to and including ``upper``, 2 above (int8)."""
    n = np.asarray(inhabitants, dtype=np.float64)
    return np.where(n < lower, 0, np.where(n <= upper, 1, 2)).astype(np.int8)


def objective_weight(inhabitants: np.ndarray, regime: Regime) -> np.ndarray:
    """m_g * phi: 0 at or below L inhabitants, phi at or above U, linear in between."""
    n = np.asarray(inhabitants, dtype=np.float64)
    lo, hi = regime.historical_up_to, regime.objective_from
    return np.clip((n - lo) / (hi - lo), 0.0, 1.0) * regime.objective_share


def _shares(values: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"{what}: values must be finite and non-negative")
    with np.errstate(over="ignore"):
        total = v.sum()
    if not math.isfinite(total):
        raise ValueError(f"{what}: the sum overflows (values up to {v.max():.3g}); the amounts are not in EUR")
    if total <= 0:
        raise ValueError(f"{what}: the total is not positive")
    return v / total


def objective_shares(objective_cost: np.ndarray) -> np.ndarray:
    """s_g = O_g / sum O."""
    return _shares(objective_cost, "objective cost")


def historical_shares(spending_t2: np.ndarray, households: np.ndarray, households_t2: np.ndarray,
                      correct: bool = True) -> np.ndarray:
    """H_g = L_g / sum L with L_g = spending(t-2) * households(t-1) / households(t-2).

    Without ``correct`` (or where households(t-2) is 0) L_g is spending(t-2) itself.
    """
    s = np.asarray(spending_t2, dtype=np.float64)
    hh, hh2 = np.asarray(households, dtype=np.float64), np.asarray(households_t2, dtype=np.float64)
    growth = np.divide(hh, hh2, out=np.ones_like(s), where=hh2 > 0) if correct else 1.0
    return _shares(s * growth, "historical spending (t-2)")


def _gain_ceiling(gain: np.ndarray, ref: np.ndarray, amount: float) -> float:
    """u >= 0 with sum ref * max(gain - u, 0) == amount (gains > 0; the amount is feasible)."""
    order = np.argsort(-gain)
    g, r = gain[order], ref[order]
    a, rr = np.cumsum(r * g), np.cumsum(r)
    nxt = np.append(g[1:], 0.0)
    j = int(np.searchsorted(a - nxt * rr, amount))   # cut first reaches the amount at j
    j = min(j, g.size - 1)
    return max(float((a[j] - amount) / rr[j]), 0.0)


def ex_ante_cap(budget: np.ndarray, reference: np.ndarray, rule: CapRule) -> tuple[np.ndarray, float]:
    """Limit the redistribution effect e_g = B_g / R_g - 1 against ``reference``, budget-neutrally.

    Losers get ``R_g * (1 - rule.retained(-e_g))`` (for a plain cap: the floor
    (1 - theta) R_g). The top-up T is paid by the gainers:

    - ``"ceiling"``: every gain is cut to a common ceiling u, solved so that the cuts sum
      to T; u >= theta exactly when the gains beyond theta suffice, so then nobody gaining
      less than theta pays;
    - ``"proportional"``: in proportion to ``R_g * (e_g - retained(e_g))``, the part of the
      gain the same rule would neutralise; if those parts sum to less than T the
      ``"ceiling"`` rule is used.

    If all gains together are below T (possible only when budget and reference have
    different totals), gains are cut to 0 and the top-ups scaled down to what they pay.
    Municipalities with reference 0 are left alone. Returns the budgets and u (nan when
    the proportional rule applied or nobody lost more than the rule allows).
    """
    b = np.asarray(budget, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    ok = r > 0
    e = np.divide(b, r, out=np.zeros_like(b), where=ok) - 1.0
    loser, gainer = ok & (e < 0), ok & (e > 0)
    floor = r * (1.0 - rule.retained(np.maximum(-e, 0.0)))
    topup = np.where(loser, np.maximum(floor - b, 0.0), 0.0)
    need = float(topup.sum())
    if need <= 0:
        return b.copy(), math.nan
    gains = np.where(gainer, b - r, 0.0)
    if gains.sum() <= need:                              # infeasible: cut all gains, scale top-ups
        return np.where(gainer, r, b + topup * (gains.sum() / need)), 0.0
    if rule.financing == "proportional":
        part = np.where(gainer, r * (e - rule.retained(np.maximum(e, 0.0))), 0.0)
        if part.sum() >= need:
            return b + topup - need * part / part.sum(), math.nan
    idx = np.flatnonzero(gainer)
    u = _gain_ceiling(e[idx], r[idx], need)
    out = b + topup
    out[idx] = np.minimum(b[idx], (1.0 + u) * r[idx])
    return out, u


def allocate(regime: Regime, objective_cost: np.ndarray, historical_share: np.ndarray,
               inhabitants: np.ndarray, tb: float, cap: CapRule | None | str = "regime") -> Budgets:
    """Budgets of one regime: B_g = TB * mix(m_g phi, s_g, H_g), then the ex-ante cap.

    raw_g = w_g s_g + (1 - w_g) H_g with w_g = :func:`objective_weight`. Normalised:
    B = TB raw / sum raw (with compartments: TB is first split over the three size classes
    by objective share, each class normalised on its own); literal: B = TB raw. The
    ex-ante cap (``cap``: the regime's own by default, or a :class:`CapRule`, or ``None``)
    compares with the historical budget (sum B) H_g and keeps the total.
    """
    s = objective_shares(objective_cost)
    h = np.asarray(historical_share, dtype=np.float64)
    w = objective_weight(inhabitants, regime)
    raw = w * s + (1.0 - w) * h
    if not regime.normalise:
        budget = tb * raw
    elif regime.compartments:
        cls = size_class(inhabitants, regime.historical_up_to, regime.objective_from)
        raw_c = np.bincount(cls, weights=raw, minlength=3)
        empty = (raw_c <= 0)[cls]                       # a class with no historical or objective mass
        if empty.any():
            raw = np.where(empty, s, raw)
            raw_c = np.bincount(cls, weights=raw, minlength=3)
        share_c = np.bincount(cls, weights=s, minlength=3)
        budget = tb * raw * (share_c / np.where(raw_c > 0, raw_c, 1.0))[cls]
    else:
        budget = tb * (raw / raw.sum())
    rule = regime.cap if isinstance(cap, str) else cap
    capped, ceiling = (budget, math.nan) if rule is None else ex_ante_cap(budget, budget.sum() * h, rule)
    return Budgets(tb=tb, objective_share=s, historical_share=h, objective_weight=w, uncapped=budget,
                   budget=capped, residual=float(tb - capped.sum()), ceiling=ceiling)
