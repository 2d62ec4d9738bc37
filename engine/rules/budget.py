"""The budget rules: TB, the objective weight, the shares, the mix, compartments, the ex-ante cap.

Pure functions on NumPy arrays (one entry per municipality, in any order):

- :func:`total_budget`: TB from the regime's macrobudget and deductions;
- :func:`objective_weight`: the weight m_g * phi of the objective share, by inhabitants;
- :func:`historical_shares`: H_g, the spending share of t-2 corrected for household growth;
- :func:`objective_shares`: s_g = O_g / sum O;
- :func:`allocate`: the regime's formula (the engine's mix of shares, or the Besluit's
  euro formulas of 2007 and 2015), then the ex-ante cap and the MAU deduction -> :class:`Budgets`;
- :func:`hand_out`: deductions handed out by their own key (e.g. an allowance per permit holder);
- :func:`ex_ante_cap`: limit the redistribution effect against a reference budget,
  budget-neutrally;
- :func:`budget_stage` / :func:`allocate_stage`: the provisional or the definitive budget
  (newer macro budget, household counts one year later).

``allocate`` is called once per bootstrap replicate, so it does a handful of vectorised
NumPy operations and nothing else (the 2005 regression is fitted once, outside it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from engine.rules.regime import STAGES, CapRule, Deduction, Regime


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
    mau_deduction: np.ndarray | None = None   # Besluit art. 4(6) / 2(8): TBMAU taken from each


def scale_factor(regime: Regime, population_households: float) -> float:
    """The part of the national amounts a population gets: ``population_households /
    reference_households`` with ``scale = "households"``, else 1 (inf when it overflows: :func:`total_budget`
    refuses it by name)."""
    if regime.scale != "households":
        return 1.0
    with np.errstate(over="ignore", divide="ignore"):
        return float(np.float64(population_households) / regime.reference_households)


def total_budget(regime: Regime, population_households: float, spending_t: float) -> float:
    """TB: the macrobudget (or the population's spending in t) minus the deductions.

    With ``scale = "households"`` the national amounts are multiplied by
    ``population_households / reference_households`` (a sample gets its proportional part).
    """
    factor = scale_factor(regime, population_households)
    with np.errstate(over="ignore", invalid="ignore"):          # checked just below
        deducted = factor * sum(d.amount for d in regime.deductions)
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
    return _shares(historical_costs(spending_t2, households, households_t2, correct), "historical spending (t-2)")


def historical_costs(spending_t2: np.ndarray, households: np.ndarray, households_t2: np.ndarray,
                     correct: bool = True) -> np.ndarray:
    """L_g (K_g) in EUR: spending(t-2) * households(t-1) / households(t-2) (Besluit WWB 2007
    art. 1(h); Besluit Participatiewet art. 1(1)(f)); uncorrected where households(t-2) is 0."""
    s = np.asarray(spending_t2, dtype=np.float64)
    hh, hh2 = np.asarray(households, dtype=np.float64), np.asarray(households_t2, dtype=np.float64)
    growth = np.divide(hh, hh2, out=np.ones_like(s), where=hh2 > 0) if correct else 1.0
    return s * growth


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


def hand_out(deductions: tuple[Deduction, ...], keys: dict[str, np.ndarray], factor: float = 1.0
             ) -> dict[str, np.ndarray]:
    """The deductions with a key, handed out: ``factor * amount * key_g / sum key`` per municipality.

    ``keys`` maps a key name to its value per municipality; a deduction whose key is missing
    there, or whose key sums to 0, is an error (the amount would vanish).
    """
    out = {}
    for d in deductions:
        if d.key == "none":
            continue
        if d.key not in keys:
            raise ValueError(f"deduction {d.name}: key {d.key!r} is not a column of the municipalities table")
        k = np.asarray(keys[d.key], dtype=np.float64)
        if not np.all(np.isfinite(k) & (k >= 0)) or k.sum() <= 0:
            raise ValueError(f"deduction {d.name}: key {d.key!r} must be finite, >= 0 and not 0 everywhere")
        out[d.name] = factor * d.amount * k / k.sum()
    return out


def cap_groups(regime: Regime, inhabitants: np.ndarray) -> np.ndarray:
    """Which municipalities the ex-ante limitation compares with each other: a group id per
    municipality, -1 for those outside it.

    Only municipalities budgeted (partly) by the objective model have a redistribution effect
    (Besluit WWB 2007, annex part B; the letter K2004: the limitation applies to the municipalities in
    the objective model), and it is budget-neutral within each compartment: with
    ``compartments`` the size classes 1 and 2 are groups of their own, otherwise all
    municipalities with m_g > 0 form one group.
    """
    w = objective_weight(inhabitants, regime)
    if regime.formula == "shares" and regime.compartments:
        cls = size_class(inhabitants, regime.historical_up_to, regime.objective_from).astype(np.int64)
        return np.where(w > 0, cls, -1)
    return np.where(w > 0, 0, -1)


def capped_in_groups(budget: np.ndarray, historical_share: np.ndarray, groups: np.ndarray,
                     rule: CapRule) -> tuple[np.ndarray, float]:
    """:func:`ex_ante_cap` within each group: the reference of g is its group's total budget
    times its historical share within the group, so no euro moves between groups."""
    out = np.array(budget, dtype=np.float64)
    h = np.asarray(historical_share, dtype=np.float64)
    ceiling = math.nan
    for grp in np.unique(groups[groups >= 0]):
        sel = groups == grp
        hs = h[sel].sum()
        if hs <= 0 or sel.sum() < 2:
            continue
        out[sel], u = ex_ante_cap(out[sel], out[sel].sum() * h[sel] / hs, rule)
        ceiling = u if math.isnan(ceiling) else ceiling
    return out, ceiling


def mau_deduction(regime: Regime, inhabitants: np.ndarray, u: np.ndarray, amount: float) -> np.ndarray:
    """B_g = TBMAU * m_g U_g / sum(m U) over the municipalities above ``mau.lower`` inhabitants
    (Besluit WWB 2007 art. 4(6); Besluit Participatiewet art. 2(8)); ``amount`` is TBMAU."""
    if amount <= 0:
        return np.zeros_like(u)
    n = np.asarray(inhabitants, dtype=np.float64)
    lo, hi = regime.mau.lower, regime.mau.upper
    m = np.where(n > lo, np.clip((n - lo) / (hi - lo), 0.0, 1.0), 0.0)
    mu = m * u
    if mu.sum() <= 0:
        raise ValueError(f"regime {regime.name}: no municipality above {lo:,.0f} inhabitants to bear the MAU")
    return amount * mu / mu.sum()


def _besluit_2007(m: np.ndarray, cost: np.ndarray, k: np.ndarray, total: float) -> np.ndarray:
    """Besluit WWB 2007 art. 4(1), 5-7: G = K (art. 5), m O + (1 - m) K (art. 6), O (art. 7);
    U = G / TG x total."""
    g = m * cost + (1.0 - m) * k
    if g.sum() <= 0:
        raise ValueError("budget bases G: the total is not positive")
    return total * g / g.sum()


def _besluit_2015(m: np.ndarray, small: np.ndarray, cost: np.ndarray, h: np.ndarray, total: float,
                  transition: float) -> np.ndarray:
    """Besluit Participatiewet art. 2-5 and 8a with the annex's calibration.

    B_klein = TL_klein / TL (art. 2(4)); the small municipalities get G / TG_klein of
    total x B_klein with G = L (art. 2(1), 3). The others share total x B_15dzd: BL = L /
    TL_15dzd x total x B_15dzd (art. 4(2)), G = m O + (1 - m) BL (art. 4(1), 5), the objective
    costs calibrated so that sum G = total x B_15dzd with the historical parts fixed (annex:
    "zo geijkt ... De eerst voor middelgrote gemeenten bepaalde historische delen ... staan
    hierbij vast"), so U = G. Art. 8a: U = (t L / TL_15dzd + (1 - t) G / TG_15dzd) x total x B_15dzd.
    """
    u = np.where(small, total * h, 0.0)           # G / TG_klein x total x TL_klein / TL = total L / TL
    big = ~small
    hb = h[big].sum()
    b15 = total * hb                              # B_15dzd = 1 - B_klein
    if not big.any() or b15 <= 0:
        return u
    bl = b15 * h[big] / hb
    fixed = (1.0 - m[big]) * bl
    mo = m[big] * cost[big]
    scale = (b15 - fixed.sum()) / mo.sum() if mo.sum() > 0 else 0.0
    g = scale * mo + fixed                        # sums to b15
    u[big] = transition * bl + (1.0 - transition) * g
    return u


@dataclass(frozen=True)
class Basis:
    """What :func:`allocate` derives from the regime, the historical shares and the inhabitants
    alone (:func:`allocation_basis`): the same for every objective cost, so a bootstrap computes
    it once for all its replicates."""

    historical_share: np.ndarray
    weight: np.ndarray           # m_g (phi): objective_weight
    small: np.ndarray            # at most historical_up_to inhabitants (besluit_2015)
    groups: np.ndarray           # cap_groups


def allocation_basis(regime: Regime, historical_share: np.ndarray, inhabitants: np.ndarray) -> Basis:
    """The :class:`Basis` of ``allocate(regime, ..., historical_share, inhabitants, ...)``."""
    return Basis(historical_share=np.asarray(historical_share, dtype=np.float64),
                 weight=objective_weight(inhabitants, regime),
                 small=np.asarray(inhabitants, dtype=np.float64) <= regime.historical_up_to,
                 groups=cap_groups(regime, inhabitants))


def allocate(regime: Regime, objective_cost: np.ndarray, historical_share: np.ndarray,
             inhabitants: np.ndarray, tb: float, cap: CapRule | None | str = "regime",
             historical_cost: np.ndarray | None = None, mau: float | None = None,
             basis: Basis | None = None) -> Budgets:
    """Budgets of one regime: the regime's formula, the ex-ante cap, the MAU deduction.

    ``regime.formula``:

    - ``"shares"``: raw_g = w_g s_g + (1 - w_g) H_g with w_g = :func:`objective_weight`.
      Normalised: B = TB raw / sum raw (with compartments: TB is first split over the three
      size classes by objective share, each class normalised on its own); literal: B = TB raw.
    - ``"besluit_2007"``: Besluit WWB 2007 art. 4-7 on euro amounts (needs
      ``historical_cost``, K_g in EUR).
    - ``"besluit_2015"``: Besluit Participatiewet art. 2-5, 8a (see :func:`_besluit_2015`).

    The Besluit formulas distribute TB + TBMAU (``mau``: EUR, default the regime's
    amount unscaled) and then deduct TBMAU from the municipalities above 25,000 inhabitants
    (:func:`mau_deduction`), so the budgets sum to TB. The ex-ante cap (``cap``: the
    regime's own by default, a :class:`CapRule`, or ``None``) compares each municipality in
    the objective model with its historical budget within its group (:func:`cap_groups`).
    ``basis``: :func:`allocation_basis` of the same regime, historical shares and inhabitants,
    computed before (else here).
    """
    s = objective_shares(objective_cost)
    basis = basis or allocation_basis(regime, historical_share, inhabitants)
    h, w = basis.historical_share, basis.weight
    tbmau = regime.mau.amount if mau is None else float(mau)
    if regime.formula == "shares":
        tbmau = 0.0
        budget = _shares_budget(regime, s, h, w, inhabitants, tb)
    elif regime.formula == "besluit_2007":
        if historical_cost is None:
            raise ValueError(f"regime {regime.name} mixes euro amounts (Besluit WWB 2007 art. 6, "
                             "G = m O + (1 - m) K): the historical costs K in EUR are needed")
        k = np.asarray(historical_cost, dtype=np.float64)
        if k.shape != h.shape or not np.all(np.isfinite(k) & (k >= 0)):
            raise ValueError("historical costs K: expected finite amounts >= 0, one per municipality")
        budget = _besluit_2007(w, np.asarray(objective_cost, dtype=np.float64), k, tb + tbmau)
    else:
        budget = _besluit_2015(w, basis.small, np.asarray(objective_cost, dtype=np.float64), h, tb + tbmau,
                               regime.transition_historical)
    rule = regime.cap if isinstance(cap, str) else cap
    capped, ceiling = ((budget, math.nan) if rule is None
                       else capped_in_groups(budget, h, basis.groups, rule))
    mau_b = mau_deduction(regime, inhabitants, capped, tbmau)
    uncapped = budget - (mau_deduction(regime, inhabitants, budget, tbmau) if rule is not None else mau_b)
    final = capped - mau_b
    if not np.all(np.isfinite(final)):
        raise ValueError(f"regime {regime.name}: budgets are not finite")
    return Budgets(tb=tb, objective_share=s, historical_share=h, objective_weight=w, uncapped=uncapped,
                   budget=final, residual=float(tb - final.sum()), ceiling=ceiling,
                   mau_deduction=mau_b if tbmau > 0 else None)


def _shares_budget(regime: Regime, s, h, w, inhabitants, tb: float) -> np.ndarray:
    raw = w * s + (1.0 - w) * h
    if not regime.normalise:
        return tb * raw
    if regime.compartments:
        cls = size_class(inhabitants, regime.historical_up_to, regime.objective_from)
        raw_c = np.bincount(cls, weights=raw, minlength=3)
        empty = (raw_c <= 0)[cls]                       # a class with no historical or objective mass
        if empty.any():
            raw = np.where(empty, s, raw)
            raw_c = np.bincount(cls, weights=raw, minlength=3)
        share_c = np.bincount(cls, weights=s, minlength=3)
        return tb * raw * (share_c / np.where(raw_c > 0, raw_c, 1.0))[cls]
    return tb * (raw / raw.sum())


@dataclass(frozen=True)
class Stage:
    """What one budget stage distributes (:func:`budget_stage`); arrays per municipality."""

    name: str                    # "provisional" or "definitive"
    regime: Regime               # with the stage's macro budget
    households: np.ndarray       # the household counts the stage uses
    cost_factor: np.ndarray      # objective cost at this stage = objective cost x cost_factor
    historical_share: np.ndarray
    historical_cost: np.ndarray  # K / L in EUR
    tb: float
    mau: float                   # TBMAU, EUR (scaled as the regime says)


def stage_households(households: np.ndarray, households_t2: np.ndarray, stage: str) -> np.ndarray:
    """Household counts of a stage: provisional, 1 Jan t-1 as given; definitive, one year later,
    grown by the municipality's own trend: households(t-1)^2 / households(t-2) (unchanged where
    households(t-2) is 0). The letter of 14 May 2004 (K2004): at the definitive determination in
    September of the budget year a more recent count of households, so growth municipalities get more."""
    hh = np.asarray(households, dtype=np.float64)
    if stage == "provisional":
        return hh.copy()
    hh2 = np.asarray(households_t2, dtype=np.float64)
    return hh * np.divide(hh, hh2, out=np.ones_like(hh), where=hh2 > 0)


def budget_stage(regime: Regime, stage: str, spending_t2: np.ndarray, households: np.ndarray,
                 households_t2: np.ndarray, spending_t: np.ndarray, macrobudget: float | str | None = None) -> Stage:
    """The inputs of the ``stage`` budget of ``regime``.

    Definitive: the regime's ``definitive_macrobudget`` (the published one of its year) and the
    households of :func:`stage_households` in the historical costs (L = spending(t-2) x households /
    households(t-2)) and the objective cost (cost per household unchanged, times the newer count).
    Inhabitants, and so the objective weights, stay at 1 Jan t-1 (Besluit Participatiewet art. 2(6)).
    The scale of a sample (``scale = "households"``) is the provisional count's. ``macrobudget``
    replaces TB: EUR, or ``"spending"`` (the spending in t).
    """
    if stage not in STAGES:
        raise ValueError(f"budget stage {stage!r} is not one of {', '.join(STAGES)}")
    if stage == "definitive" and regime.macrobudget is not None and macrobudget is None:
        if regime.definitive_macrobudget is None:
            raise ValueError(f"regime {regime.name}: no definitive macro budget of {regime.year} is published "
                             "(engine/data/published/macrobudget_buig_2016_2024.csv); set "
                             "budget.definitive_macrobudget in the regime file or give a macro budget")
        regime = replace(regime, macrobudget=regime.definitive_macrobudget)
    hh = np.asarray(households, dtype=np.float64)
    hh_stage = stage_households(hh, households_t2, stage)
    spent = float(np.sum(spending_t))
    if macrobudget == "spending":
        tb = spent
    elif macrobudget is not None:
        tb = float(macrobudget)
    else:
        tb = total_budget(regime, hh.sum(), spent)
    cost = historical_costs(spending_t2, hh_stage, households_t2, regime.household_growth_correction)
    return Stage(name=stage, regime=regime, households=hh_stage,
                 cost_factor=np.divide(hh_stage, hh, out=np.ones_like(hh), where=hh > 0),
                 historical_share=_shares(cost, "historical spending (t-2)"), historical_cost=cost,
                 tb=tb, mau=scale_factor(regime, hh.sum()) * regime.mau.amount)


def allocate_stage(st: Stage, objective_cost: np.ndarray, inhabitants: np.ndarray,
                   cap: CapRule | None | str = "regime", basis: Basis | None = None) -> Budgets:
    """:func:`allocate` of a stage: its macro budget, historical costs and objective costs
    (``basis``: ``allocation_basis(st.regime, st.historical_share, inhabitants)``, or None)."""
    return allocate(st.regime, np.asarray(objective_cost, dtype=np.float64) * st.cost_factor, st.historical_share,
                    inhabitants, st.tb, cap=cap, historical_cost=st.historical_cost, mau=st.mau, basis=basis)
