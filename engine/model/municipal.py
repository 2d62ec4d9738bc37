"""The municipality-level objective model of the 2005 regime (letter K2004; sources in engine/data/SOURCES.md).

Before the household model, the objective budget came from a regression over
municipalities: spending per household (2004: per inhabitant) on the economic and social
structure of the municipality. The 2004 letter adds the *granieten voorraad*, the persons more
than 4 years on bijstand at a frozen date, which the municipality can no longer influence.

:func:`municipal_data` collects, per municipality, the structure variables (shares
computed from the household table, neighbourhood factors averaged over the households,
regional factors from the municipality table) and the spending and household counts.
:func:`fit` estimates one :class:`MunicipalSpec` by weighted least squares and returns the
objective cost O_g = max(fitted per unit, 0) x units of every municipality.

The three specifications of the 2004 letter's table (our reading of the letter):

- ``MODEL_2004``: spending per *inhabitant* on the social structure only (single
  parents, non-western migration, social rent), weights = inhabitants;
- ``MODEL_2005``: spending per *household* on the social structure plus the extended
  economic-structure cluster the letter lists (low-educated, non-working adults,
  jobs per person in the labour force, regional job growth), weights = households;
- ``MODEL_2005_GV``: ``MODEL_2005`` plus the granieten voorraad per household.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from engine.model.population import Population
from engine.model.schema import CATEGORIES

NONWESTERN = ("moroccan", "turkish", "surinamese", "antillean", "other_non_western")
# household column -> the levels whose share in the municipality is a variable
HOUSEHOLD_SHARES = {
    "share_single_parent": ("household_type", ("single_parent",)),
    "share_non_western": ("migration", NONWESTERN),
    "share_social_rent": ("housing", ("social_rent",)),
    "share_low_educated": ("education", ("low",)),
}
NEIGHBOURHOOD_MEANS = {"share_non_working": "share_non_working", "liveability": "liveability"}
MUNICIPALITY_COLUMNS = ("jobs_availability", "job_growth")
VARIABLES = (*HOUSEHOLD_SHARES, *NEIGHBOURHOOD_MEANS, *MUNICIPALITY_COLUMNS, "granieten_voorraad")

SOCIAL = ("share_single_parent", "share_non_western", "share_social_rent")
ECONOMIC = ("share_low_educated", "share_non_working", "jobs_availability", "job_growth")


@dataclass(frozen=True)
class MunicipalSpec:
    """One municipality-level model: regressors and the unit spending is divided by."""

    name: str
    label: str
    variables: tuple[str, ...]
    per: str = "household"          # "household" or "inhabitant"


MODEL_2004 = MunicipalSpec("model_2004", "objective model 2004 (per inhabitant, social structure)", SOCIAL, "inhabitant")
MODEL_2005 = MunicipalSpec("model_2005", "objective model 2005 excl. granieten voorraad", SOCIAL + ECONOMIC)
MODEL_2005_GV = MunicipalSpec("model_2005_gv", "objective model 2005 incl. granieten voorraad",
                          SOCIAL + ECONOMIC + ("granieten_voorraad",))


@dataclass(frozen=True)
class MunicipalData:
    """Municipality-level inputs of the distribution, in the population's municipality order."""

    codes: np.ndarray
    names: np.ndarray
    inhabitants: np.ndarray
    households: np.ndarray
    households_t2: np.ndarray
    spending_t2: np.ndarray
    spending_t: np.ndarray
    variables: dict                 # name -> float64 array (see VARIABLES)

    def __len__(self) -> int:
        return len(self.codes)


def _column(table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.float64)


def municipal_data(pop: Population) -> MunicipalData:
    """Collect the municipality-level inputs and structure variables of a population."""
    mun, hh = pop.municipalities, pop.households
    g, n = pop.household_municipality, mun.num_rows
    count = np.bincount(g, minlength=n).astype(np.float64)
    variables = {}
    for name, (column, levels) in HOUSEHOLD_SHARES.items():
        codes = [CATEGORIES[column].index(lev) for lev in levels]
        hit = np.isin(hh.column(column).to_numpy(), codes)
        variables[name] = np.bincount(g, weights=hit, minlength=n) / count
    for name, column in NEIGHBOURHOOD_MEANS.items():
        per_household = _column(pop.neighbourhoods, column)[pop.household_neighbourhood]
        variables[name] = np.bincount(g, weights=per_household, minlength=n) / count
    for name in MUNICIPALITY_COLUMNS:
        variables[name] = _column(mun, name)
    households = _column(mun, "households")
    variables["granieten_voorraad"] = granite_from_durations(pop) / np.maximum(households, 1.0)
    return MunicipalData(
        codes=pop.municipality_codes, names=np.asarray(mun.column("name").to_pylist(), dtype=object),
        inhabitants=_column(mun, "inhabitants"), households=households,
        households_t2=_column(mun, "households_t2"), spending_t2=_column(mun, "spending_t2"),
        spending_t=_column(mun, "spending_t"), variables=variables)


LONG_DURATION = tuple(CATEGORIES["duration_class"].index(c) for c in ("4-5", "gt5"))   # > 4 years


def granite_from_durations(pop: Population) -> np.ndarray:
    """The granieten voorraad per municipality: bijstand households more than 4 years on
    bijstand (duration class 4-5 or >5) at the population's reference date, which is the
    frozen base date (the letter of 14 May 2004: persons more than 4 years on bijstand on
    1-1-2002, fixed once). One benefit per household: a couple counts once. LKS households
    are not counted (LKS did not exist at the base date)."""
    hh = pop.households
    long = (hh.column("bijstand").to_numpy() == 1) & np.isin(hh.column("duration_class").to_numpy(), LONG_DURATION)
    return np.bincount(pop.household_municipality, weights=long,
                       minlength=pop.municipalities.num_rows).astype(np.float64)


def granite_comparison(pop: Population) -> dict:
    """The derived granieten voorraad against the municipalities table's own column (kept for
    schema compatibility, not used): totals, municipalities that differ, correlation."""
    derived = granite_from_durations(pop)
    column = _column(pop.municipalities, "granieten_voorraad")
    corr = float(np.corrcoef(derived, column)[0, 1]) if derived.std() > 0 and column.std() > 0 else float("nan")
    return {"derived_total": float(derived.sum()), "column_total": float(column.sum()),
            "municipalities_differing": int(np.sum(derived != column)), "correlation": corr}


@dataclass(frozen=True)
class MunicipalFit:
    """A fitted municipality-level model."""

    spec: MunicipalSpec
    names: tuple[str, ...]          # "intercept" and the variables
    coef: np.ndarray
    r2: float                       # weighted R^2 of spending per unit
    objective_cost: np.ndarray      # O_g, EUR
    granite_share: float            # share of sum O that the granieten voorraad term contributes


def design(data: MunicipalData, variables: tuple[str, ...]) -> np.ndarray:
    """The regression matrix [1, x_1, ..., x_k] (one row per municipality)."""
    unknown = [v for v in variables if v not in data.variables]
    if unknown:
        raise ValueError(f"unknown variable(s) of the municipal model: {', '.join(unknown)}; "
                         f"known: {', '.join(VARIABLES)}")
    return np.column_stack([np.ones(len(data))] + [data.variables[v] for v in variables])


def wls(y: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """Weighted least squares: coefficients and weighted R^2 (rows with weight 0 drop out)."""
    sw = np.sqrt(w)
    coef = scipy.linalg.lstsq(x * sw[:, None], y * sw, lapack_driver="gelsy")[0]
    mean = np.sum(w * y) / np.sum(w)
    r2 = 1.0 - np.sum(w * (y - x @ coef) ** 2) / np.sum(w * (y - mean) ** 2)
    return coef, float(r2)


TARGETS = ("t2", "t")


def fit(data: MunicipalData, spec: MunicipalSpec, target: str = "t2") -> MunicipalFit:
    """Fit ``spec`` on spending per unit and predict every municipality's objective cost.

    ``target = "t2"`` (a budget's practice: the latest known spending): per household y =
    spending(t-2) / households(t-2), weights households(t-2), cost = fitted x households(t-1).
    ``target = "t"`` (the letter of 14 May 2004, whose table is "geschat op uitgaven 2002" and compares
    with the spending of 2002): y = spending(t) / households, weights and cost by the same
    households. Per inhabitant: spending / inhabitants, weights and cost by inhabitants (only
    one inhabitant count is available). Negative fitted values are set to 0 before they become a cost.
    """
    if target not in TARGETS:
        raise ValueError(f"model {spec.name}: target must be one of {', '.join(TARGETS)}, not {target!r}")
    x = design(data, spec.variables)
    if spec.per == "household":
        units_t2, units = (data.households_t2 if target == "t2" else data.households), data.households
    elif spec.per == "inhabitant":
        units_t2 = units = data.inhabitants
    else:
        raise ValueError(f"model {spec.name}: per must be 'household' or 'inhabitant', not {spec.per!r}")
    spending = data.spending_t2 if target == "t2" else data.spending_t
    y = np.divide(spending, units_t2, out=np.zeros(len(data)), where=units_t2 > 0)
    coef, r2 = wls(y, x, units_t2)
    fitted = np.maximum(x @ coef, 0.0)
    cost = fitted * units
    granite = 0.0
    if "granieten_voorraad" in spec.variables:
        j = 1 + spec.variables.index("granieten_voorraad")
        granite = float(coef[j] * np.sum(x[:, j] * units) / cost.sum())
    return MunicipalFit(spec=spec, names=("intercept",) + spec.variables, coef=coef, r2=r2,
                        objective_cost=cost, granite_share=granite)


def regime_spec(variables: tuple[str, ...]) -> MunicipalSpec:
    """The model of a regime file with ``objective.model = "municipal"``."""
    return MunicipalSpec("regime", "objective model of the regime", tuple(variables))
