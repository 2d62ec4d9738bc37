"""Distribution rules: a regime (one TOML file) turns objective costs into budgets.

A :class:`Regime` is read from ``engine/regimes/<name>.toml`` or a user's own file by
:func:`load_regime`, which validates every key. The rules are pure functions on NumPy
arrays (one entry per municipality, in any order):

- :func:`objective_weight`: the weight m_g * phi of the objective share, by inhabitants;
- :func:`historical_shares`: H_g, the spending share of t-2 corrected for household growth;
- :func:`objective_shares`: s_g = O_g / sum O;
- :func:`distribute`: TB * mix(m_g phi, s_g, H_g), normalised (optionally per size
  compartment), then the ex-ante cap -> :class:`Budgets`;
- :func:`ex_ante_cap`: limit the redistribution effect against a reference budget,
  budget-neutrally;
- :func:`vangnet_payout`: the safety-net payment from the deficit S_g - B_g;
- :func:`total_budget`: TB from the regime's macrobudget and deductions.

``distribute`` is called once per bootstrap replicate, so it does a handful of vectorised
NumPy operations and nothing else (the 2005 regression is fitted once, outside it).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "regimes"
OBJECTIVE_MODELS = ("household", "municipal")
FINANCING = ("ceiling", "proportional")
SCALES = ("households", "none")


@dataclass(frozen=True)
class CapRule:
    """Ex-ante limitation of redistribution effects (domain spec 6.4).

    A municipality keeps its effect (as a fraction of the reference budget) up to
    ``theta``, ``1 - band_share`` of the part between ``theta`` and ``band_to``, and none
    beyond ``band_to``. ``theta == band_to`` is a plain cap at ``theta``; (0.05, 0.10, 0.5)
    is the half-shared 5-10% band. ``financing`` says how gainers pay the losers' top-up.
    """

    name: str
    theta: float
    band_to: float
    band_share: float
    financing: str = "ceiling"

    def retained(self, x: np.ndarray) -> np.ndarray:
        """The part of an effect of size ``x >= 0`` that a municipality keeps."""
        band = np.clip(x - self.theta, 0.0, self.band_to - self.theta)
        return np.minimum(x, self.theta) + (1.0 - self.band_share) * band


@dataclass(frozen=True)
class VangnetRule:
    """Safety net of one year: own risk up to ``own_risk`` * B, ``paid_in_band`` of the
    deficit between ``own_risk`` and ``full_from`` * B, all of it beyond ``full_from`` * B."""

    year: str
    own_risk: float
    full_from: float
    paid_in_band: float


@dataclass(frozen=True)
class Regime:
    """One distribution regime, as read from its TOML file (see ``engine/regimes``)."""

    name: str
    year: int
    historical_up_to: float          # L: m_g = 0 at or below
    objective_from: float            # U: m_g = 1 at or above
    objective_share: float           # phi
    objective_model: str             # "household" (costs file) or "municipal" (2005 regression)
    objective_variables: tuple[str, ...]
    household_growth_correction: bool
    macrobudget: float | None        # EUR; None: the population's spending in t
    scale: str
    reference_households: float
    deductions: tuple[tuple[str, float], ...]
    normalise: bool
    compartments: bool
    cap: CapRule | None
    cap_variants: tuple[CapRule, ...]
    vangnet: VangnetRule
    vangnet_rules: tuple[VangnetRule, ...] = field(default=())
    path: Path | None = None


@dataclass(frozen=True)
class Budgets:
    """The outcome of :func:`distribute`; arrays in the order of the inputs."""

    tb: float
    objective_share: np.ndarray      # s_g
    historical_share: np.ndarray     # H_g
    objective_weight: np.ndarray     # m_g * phi
    uncapped: np.ndarray             # budget before the ex-ante cap
    budget: np.ndarray               # B_g
    residual: float                  # TB - sum B (0 up to rounding in the normalised variant)
    ceiling: float                   # gain ceiling u of the ex-ante cap (nan: no cap applied)


# --------------------------------------------------------------------------- loading

class _Keys:
    """Typed access to a parsed TOML file; every error names the file and the key."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    def error(self, key: str, problem: str) -> ValueError:
        return ValueError(f"regime file {self.path}: key '{key}': {problem}")

    def get(self, key: str, kind: type, table: dict | None = None, prefix: str = ""):
        table = self.data if table is None else table
        node = table
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise self.error(prefix + key, "missing")
            node = node[part]
        full = prefix + key
        if kind is float:
            if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
                raise self.error(full, f"expected a number, got {node!r}")
            return float(node)
        if kind is int and (isinstance(node, bool) or not isinstance(node, int)):
            raise self.error(full, f"expected an integer, got {node!r}")
        if kind is not int and not isinstance(node, kind):
            raise self.error(full, f"expected {kind.__name__}, got {node!r}")
        return node

    def share(self, key: str, table: dict | None = None, prefix: str = "") -> float:
        v = self.get(key, float, table, prefix)
        if not 0.0 <= v <= 1.0:
            raise self.error(prefix + key, f"{v} is outside [0, 1]")
        return v

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        v = self.get(key, str)
        if v not in options:
            raise self.error(key, f"{v!r} is not one of {', '.join(options)}")
        return v


def _cap_rule(k: _Keys, name: str, table: dict, prefix: str, financing: str) -> CapRule:
    theta = k.share("theta", table, prefix)
    band_to = k.share("band_to", table, prefix)
    if band_to < theta:
        raise k.error(prefix + "band_to", f"{band_to} is below theta {theta} (thresholds must be ordered)")
    return CapRule(name, theta, band_to, k.share("band_share", table, prefix), financing)


def _cap(k: _Keys) -> tuple[CapRule | None, tuple[CapRule, ...]]:
    if not k.get("ex_ante_cap.enabled", bool):
        return None, ()
    financing = k.get("ex_ante_cap.financing", str)
    if financing not in FINANCING:
        raise k.error("ex_ante_cap.financing", f"{financing!r} is not one of {', '.join(FINANCING)}")
    section = k.get("ex_ante_cap", dict)
    main = _cap_rule(k, "main", section, "ex_ante_cap.", financing)
    variants = []
    for name, table in section.get("variants", {}).items():
        prefix = f"ex_ante_cap.variants.{name}."
        if not isinstance(table, dict):
            raise k.error(prefix[:-1], "expected a table")
        variants.append(_cap_rule(k, name, table, prefix, financing))
    return main, tuple(variants)


def _vangnet(k: _Keys) -> tuple[VangnetRule, tuple[VangnetRule, ...]]:
    rules = []
    for year, table in k.get("vangnet.rules", dict).items():
        prefix = f"vangnet.rules.{year}."
        own, full = k.share("own_risk", table, prefix), k.share("full_from", table, prefix)
        if full < own:
            raise k.error(prefix + "full_from", f"{full} is below own_risk {own} (thresholds must be ordered)")
        rules.append(VangnetRule(year, own, full, k.share("paid_in_band", table, prefix)))
    year = str(k.get("vangnet.year", str))
    chosen = [r for r in rules if r.year == year]
    if not chosen:
        raise k.error("vangnet.year", f"no rule for year {year!r} in [vangnet.rules]")
    return chosen[0], tuple(rules)


def _budget(k: _Keys) -> tuple[float | None, tuple[tuple[str, float], ...]]:
    raw = k.get("budget", dict).get("macrobudget")
    if raw == "spending_t":
        macro = None
    else:
        macro = k.get("budget.macrobudget", float)
        if macro <= 0:
            raise k.error("budget.macrobudget", f"{macro} is negative" if macro < 0 else "0 is not positive")
    deductions = []
    for name in k.get("budget.deductions", dict):
        v = k.get(f"budget.deductions.{name}", float)
        if v < 0:
            raise k.error(f"budget.deductions.{name}", f"{v} is negative")
        deductions.append((name, v))
    if macro is not None and sum(v for _, v in deductions) >= macro:
        raise k.error("budget.deductions", f"the deductions (EUR {sum(v for _, v in deductions):,.2f}) are not "
                                           f"below the macrobudget (EUR {macro:,.2f}): nothing would be left to "
                                           "distribute")
    return macro, tuple(deductions)


def load_regime(name_or_path: str | Path) -> Regime:
    """Read and validate a regime: ``"2019"``, ``"2005"`` or the path of a TOML file.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and
    the key for a missing key, a wrong type, a share outside [0, 1] or unordered thresholds.
    """
    text = str(name_or_path)
    path = HERE / f"{text}.toml" if (HERE / f"{text}.toml").exists() and "/" not in text else Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"no regime file {path}; built-in regimes: "
                                f"{', '.join(sorted(p.stem for p in HERE.glob('*.toml')))}")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"regime file {path}: not valid TOML: {exc}") from None
    return parse_regime(data, path)


def parse_regime(data: dict, path: Path) -> Regime:
    """Validate the parsed TOML ``data`` of a regime; errors name ``path`` and the key."""
    k = _Keys(path, data)
    lower = k.get("objective_weight.historical_up_to", float)
    upper = k.get("objective_weight.objective_from", float)
    if lower < 0:
        raise k.error("objective_weight.historical_up_to", f"{lower} is negative")
    if upper <= lower:
        raise k.error("objective_weight.objective_from",
                      f"{upper:g} is not above historical_up_to {lower:g} (thresholds must be ordered)")
    k.choice("objective_weight.rule", ("pro_rata",))
    variables = k.get("objective.variables", list)
    if not all(isinstance(v, str) for v in variables):
        raise k.error("objective.variables", "expected a list of names")
    model = k.choice("objective.model", OBJECTIVE_MODELS)
    if model == "municipal":
        from engine.municipal_model import VARIABLES
        unknown = [v for v in variables if v not in VARIABLES]
        if unknown or not variables:
            raise k.error("objective.variables", f"unknown variable {unknown[0]!r}; known: {', '.join(VARIABLES)}"
                          if unknown else "the municipal model needs at least one variable")
    macro, deductions = _budget(k)
    normalise = k.get("budget.normalise", bool)
    compartments = k.get("budget.compartments", bool)
    if compartments and not normalise:
        raise k.error("budget.compartments", "compartments need the normalised variant (budget.normalise = true)")
    ref_hh = k.get("budget.reference_households", float)
    if ref_hh <= 0:
        raise k.error("budget.reference_households", f"{ref_hh} is not positive")
    cap, variants = _cap(k)
    vangnet, vangnet_rules = _vangnet(k)
    return Regime(
        name=k.get("name", str), year=k.get("year", int), historical_up_to=lower, objective_from=upper,
        objective_share=k.share("objective_weight.objective_share"), objective_model=model,
        objective_variables=tuple(variables),
        household_growth_correction=k.get("historical.household_growth_correction", bool),
        macrobudget=macro, scale=k.choice("budget.scale", SCALES), reference_households=ref_hh,
        deductions=deductions, normalise=normalise, compartments=compartments, cap=cap, cap_variants=variants,
        vangnet=vangnet, vangnet_rules=vangnet_rules, path=path)


# --------------------------------------------------------------------------- rules

def total_budget(regime: Regime, population_households: float, spending_t: float) -> float:
    """TB: the macrobudget (or the population's spending in t) minus the deductions.

    With ``scale = "households"`` the national amounts are multiplied by
    ``population_households / reference_households`` (a sample gets its proportional part).
    """
    factor = population_households / regime.reference_households if regime.scale == "households" else 1.0
    deducted = factor * sum(v for _, v in regime.deductions)
    macro = spending_t if regime.macrobudget is None else factor * regime.macrobudget
    tb = float(macro - deducted)
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
    total = v.sum()
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


def distribute(regime: Regime, objective_cost: np.ndarray, historical_share: np.ndarray,
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


def vangnet_payout(spending: np.ndarray, budget: np.ndarray, rule: VangnetRule) -> np.ndarray:
    """Safety-net payment per municipality from the deficit d = S - B (domain spec 8):

    ``paid_in_band * clip(d - t1 B, 0, (t2 - t1) B) + max(d - t2 B, 0)``.
    """
    b = np.asarray(budget, dtype=np.float64)
    d = np.asarray(spending, dtype=np.float64) - b
    t1, t2 = rule.own_risk, rule.full_from
    return rule.paid_in_band * np.clip(d - t1 * b, 0.0, (t2 - t1) * b) + np.maximum(d - t2 * b, 0.0)
