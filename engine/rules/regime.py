"""Distribution regimes: one TOML file per regime, read and validated into a :class:`Regime`.

A :class:`Regime` is read from ``engine/data/regimes/<name>.toml`` or a user's own file by
:func:`load_regime`, which validates every key (errors name the file and the key). The
rules that turn a regime and objective costs into budgets are in
:mod:`engine.rules.budget` and :mod:`engine.rules.vangnet`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.io.config import Keys, read_toml, resolve

OBJECTIVE_MODELS = ("household", "municipal", "given")
FINANCING = ("ceiling", "proportional")
SCALES = ("households", "none")
# How budgets follow from objective costs and historical costs (engine.rules.budget.allocate):
#   "shares":       B = TB * (m s + (1 - m) H), normalised (the engine's own mix of shares);
#   "besluit_2007": Besluit WWB 2007 art. 4-7: G = m O + (1 - m) K in EUR, U = G / TG * (TB + TBMAU);
#   "besluit_2015": Besluit Participatiewet art. 2-5 (and 8a): the compartment of small
#                   municipalities (B_klein = TL_klein / TL), G = m O + (1 - m) BL with BL in EUR.
FORMULAS = ("shares", "besluit_2007", "besluit_2015")
# Budget stages (engine.rules.budget.budget_stage): the provisional budget (autumn t-1) and the
# definitive one (autumn t) with the newer macro budget and household counts one year later.
STAGES = ("provisional", "definitive")
# Keys of a deduction that is handed out: "none" (kept out of the distribution) or a column of
# the municipalities table (or "inhabitants" / "households") whose share decides each part.


@dataclass(frozen=True)
class CapRule:
    """Ex-ante limitation of redistribution effects [C: S13, S27] (engine/data/SOURCES.md).

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
class Deduction:
    """An amount taken from the macrobudget before distribution (EUR, national level).

    ``key`` ``"none"``: not handed out by the model (a reserve); otherwise the name of the
    municipalities column whose share decides what each municipality gets.
    """

    name: str
    amount: float
    key: str = "none"


@dataclass(frozen=True)
class Mau:
    """The multi-year supplement (MAU) of Besluit WWB 2007 art. 4(6) / Besluit Participatiewet
    art. 2(8): TBMAU is distributed with TB and deducted from the municipalities above ``lower``
    inhabitants in proportion to m U, m = 1 at or above ``upper``, (n - lower) / (upper - lower) below."""

    amount: float = 0.0
    lower: float = 25_000.0
    upper: float = 40_000.0


@dataclass(frozen=True)
class Regime:
    """One distribution regime, as read from its TOML file (see ``engine/regimes``)."""

    name: str
    year: int
    historical_up_to: float          # L: m_g = 0 at or below
    objective_from: float            # U: m_g = 1 at or above
    objective_share: float           # phi
    objective_model: str             # "household" / "given" (costs file) or "municipal" (2005 regression)
    objective_variables: tuple[str, ...]
    household_growth_correction: bool
    macrobudget: float | None        # EUR; None: the population's spending in t
    scale: str
    reference_households: float
    deductions: tuple[Deduction, ...]
    normalise: bool
    compartments: bool
    cap: CapRule | None
    cap_variants: tuple[CapRule, ...]
    vangnet: VangnetRule
    vangnet_rules: tuple[VangnetRule, ...] = field(default=())
    path: Path | None = None
    formula: str = "shares"          # see FORMULAS
    mau: Mau = Mau()
    transition_historical: float = 0.0   # Besluit Participatiewet art. 8a: 0.5 (2015-16), 0.25 (2017)
    kostendelers_cut_off_age: int | None = None   # None: no kostendelersnorm (before 2015)
    objective_spec: str = ""         # the published model whose costs the regime expects (e.g. ape2011)
    granite_weight: float = 1.0      # municipal model: the part of the granieten voorraad term kept
    stage: str = "provisional"       # see STAGES
    definitive_macrobudget: float | None = None   # EUR; None: not published (or TB = spending)


# --------------------------------------------------------------------------- loading

def _cap_rule(k: Keys, name: str, table: dict, prefix: str, financing: str) -> CapRule:
    theta = k.share("theta", table, prefix)
    band_to = k.share("band_to", table, prefix)
    if band_to < theta:
        raise k.error(prefix + "band_to", f"{band_to} is below theta {theta} (thresholds must be ordered)")
    return CapRule(name, theta, band_to, k.share("band_share", table, prefix), financing)


def _cap(k: Keys) -> tuple[CapRule | None, tuple[CapRule, ...]]:
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


def _vangnet(k: Keys) -> tuple[VangnetRule, tuple[VangnetRule, ...]]:
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


def _deduction(k: Keys, name: str) -> Deduction:
    key = f"budget.deductions.{name}"
    raw = k.get("budget", dict)["deductions"][name]
    if isinstance(raw, dict):
        amount = k.get(key + ".amount", float)
        column = k.get(key + ".key", str)
    else:
        amount, column = k.get(key, float), "none"
    if amount < 0:
        raise k.error(key + (".amount" if isinstance(raw, dict) else ""), f"{amount} is negative")
    return Deduction(name, amount, column)


def _budget(k: Keys) -> tuple[float | None, tuple[Deduction, ...]]:
    raw = k.get("budget", dict).get("macrobudget")
    if raw in ("spending_t", "spending"):          # TB = the population's spending in t
        macro = None
    else:
        macro = k.get("budget.macrobudget", float)
        if macro <= 0:
            raise k.error("budget.macrobudget", f"{macro} is negative" if macro < 0 else "0 is not positive")
    deductions = [_deduction(k, name) for name in k.get("budget.deductions", dict)]
    if macro is not None and sum(d.amount for d in deductions) >= macro:
        raise k.error("budget.deductions", f"the deductions (EUR {sum(d.amount for d in deductions):,.2f}) are not "
                                           f"below the macrobudget (EUR {macro:,.2f}): nothing would be left to "
                                           "distribute")
    return macro, tuple(deductions)


def load_regime(name_or_path: str | Path) -> Regime:
    """Read and validate a regime: a budget year (``"2005"``-``"2007"``, ``"2011"``-``"2025"``)
    or the path of a TOML file.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and
    the key for a missing key, a wrong type, a share outside [0, 1] or unordered thresholds.
    """
    path = resolve("regime", name_or_path)
    data = read_toml(path, "regime")
    return parse_regime(data, path)


def parse_regime(data: dict, path: Path) -> Regime:
    """Validate the parsed TOML ``data`` of a regime; errors name ``path`` and the key."""
    k = Keys(f"regime file {path}", data)
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
        from engine.model.municipal import VARIABLES
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
    formula, mau, transition, cut_off, spec = _law(k)
    stage, definitive = _stage(k, k.get("year", int), macro)
    return Regime(stage=stage, definitive_macrobudget=definitive,
        name=k.get("name", str), year=k.get("year", int), historical_up_to=lower, objective_from=upper,
        objective_share=k.share("objective_weight.objective_share"), objective_model=model,
        objective_variables=tuple(variables),
        household_growth_correction=k.get("historical.household_growth_correction", bool),
        macrobudget=macro, scale=k.choice("budget.scale", SCALES), reference_households=ref_hh,
        deductions=deductions, normalise=normalise, compartments=compartments, cap=cap, cap_variants=variants,
        vangnet=vangnet, vangnet_rules=vangnet_rules, path=path, formula=formula, mau=mau,
        transition_historical=transition, kostendelers_cut_off_age=cut_off, objective_spec=spec,
        granite_weight=k.share("objective.granite_weight") if "granite_weight" in k.get("objective", dict) else 1.0)


def _law(k: Keys) -> tuple[str, Mau, float, int | None, str]:
    """The optional keys of the law's own formulas (absent: the engine's mix of shares)."""
    budget = k.get("budget", dict)
    formula = k.choice("budget.formula", FORMULAS) if "formula" in budget else "shares"
    mau = Mau()
    if "mau" in k.data:
        amount, lower, upper = (k.get(f"mau.{x}", float) for x in ("amount", "lower", "upper"))
        if amount < 0:
            raise k.error("mau.amount", f"{amount} is negative")
        if upper <= lower:
            raise k.error("mau.upper", f"{upper:g} is not above lower {lower:g} (thresholds must be ordered)")
        mau = Mau(amount, lower, upper)
    transition = k.share("transition.historical") if "transition" in k.data else 0.0
    if transition and formula != "besluit_2015":
        raise k.error("transition.historical", "the transition of Besluit Participatiewet art. 8a needs "
                                               'budget.formula = "besluit_2015"')
    cut_off = None
    if "kostendelersnorm" in k.data and k.get("kostendelersnorm.applies", bool):
        cut_off = k.get("kostendelersnorm.cut_off_age", int)
        if not 18 <= cut_off <= 30:
            raise k.error("kostendelersnorm.cut_off_age", f"{cut_off} is not an age between 18 and 30")
    spec = k.get("objective.spec", str) if "spec" in k.get("objective", dict) else ""
    return formula, mau, transition, cut_off, spec


def _stage(k: Keys, year: int, macro: float | None) -> tuple[str, float | None]:
    """``budget.stage`` (optional, default provisional) and the definitive macro budget: the key
    ``budget.definitive_macrobudget`` if given, else the published one of the regime's year
    (engine/data/published/macrobudget_buig_2016_2024.csv, stage "definitief"); with TB = spending
    there is none (both stages distribute the spending in t)."""
    from engine.world.published import macrobudget as published

    budget = k.get("budget", dict)
    stage = k.choice("budget.stage", STAGES) if "stage" in budget else "provisional"
    if macro is None:
        return stage, None
    if "definitive_macrobudget" in budget:
        definitive = k.get("budget.definitive_macrobudget", float)
        if not definitive > 0:
            raise k.error("budget.definitive_macrobudget", f"{definitive} is not positive")
        return stage, definitive
    try:
        definitive = published(year, "definitief")
    except KeyError:
        if stage == "definitive":
            raise k.error("budget.stage", f"no definitive macro budget of {year} is published (engine/data/published/"
                                          "macrobudget_buig_2016_2024.csv): set budget.definitive_macrobudget") from None
        definitive = None
    return stage, definitive
