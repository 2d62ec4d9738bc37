"""``buig budget`` and ``buig wdeel``: from a population (and objective costs) to files.

:func:`read_costs` reads and checks ``municipal_costs.parquet`` (written by ``buig
predict``); :func:`compute_budget` runs a regime on a population and returns every
number; :func:`write_budget` and :func:`write_wdeel` write them through
:func:`engine.io.outputs.atomic_dir`. Everything is checked before anything is written.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.model import municipal as mm
from engine.rules import redistribution as rd
from engine.io.outputs import atomic_dir, settle
from engine.model.population import Population
from engine.model.published import municipal_linear_cost
from engine.model.spec import load_spec
from engine.app.stages import macrobudget_text
from engine.rules.regime import Regime
from engine.rules.budget import Budgets, Stage, allocate, allocate_stage, budget_stage, hand_out, scale_factor
from engine.rules.vangnet import vangnet_payout
from engine.model.schema import PopulationError, as_strings, check_finite
from engine.rules.wdeel import NEED_NOTE, WdeelResult

COSTS_FILE = "municipal_costs.parquet"
COSTS_COLUMNS = {"code": "string", "objective_cost": "float64", "predicted_households": "float64",
                 "actual_households": "int64"}


def _costs_error(file: Path, column: str | None, row: int | None, problem: str) -> PopulationError:
    return PopulationError("municipal_costs", column, row, f"{problem} (file {file})")


def read_costs(folder: str | Path, codes: np.ndarray) -> dict[str, np.ndarray]:
    """The columns of ``folder/municipal_costs.parquet`` in the order of ``codes``.

    The file must cover exactly the municipalities ``codes``, once each, with finite
    non-negative ``objective_cost``; the error names the file, the column and the first bad row.
    """
    settle(folder)               # a set of files whose commit a killed writer left unfinished
    file = Path(folder) / COSTS_FILE
    if not file.is_file():
        raise _costs_error(file, None, None, "file is missing")
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise _costs_error(file, None, None, f"cannot read: {exc}") from None
    for name, kind in COSTS_COLUMNS.items():
        if name not in table.column_names:
            raise _costs_error(file, name, None, "required column is missing")
        col = table.column(name)
        t = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
        ok = {"string": pa.types.is_string(t) or pa.types.is_large_string(t),
              "float64": pa.types.is_floating(t), "int64": pa.types.is_integer(t)}[kind]
        if not ok:
            raise _costs_error(file, name, None, f"has type {col.type}, expected {kind}")
        nulls = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
        if nulls.size:
            raise _costs_error(file, name, int(nulls[0]), "missing value")
    cost = table.column("objective_cost").to_numpy().astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(cost) | (cost < 0))
    if bad.size:
        raise _costs_error(file, "objective_cost", int(bad[0]), f"value {cost[bad[0]]} is not a finite amount >= 0")
    file_codes = np.asarray(as_strings(table.column("code")).to_pylist(), dtype=object)
    position = {c: i for i, c in enumerate(codes)}
    seen: dict[str, int] = {}
    for row, code in enumerate(file_codes):
        if code not in position:
            raise _costs_error(file, "code", row, f"code {code!r} is not a municipality of the population")
        if code in seen:
            raise _costs_error(file, "code", row, f"duplicate code {code!r} (first in row {seen[code]})")
        seen[code] = row
    missing = [c for c in codes if c not in seen]
    if missing:
        raise _costs_error(file, "code", None, f"municipality {missing[0]} of the population is missing "
                                                f"({len(missing)} missing)")
    order = np.array([seen[c] for c in codes], dtype=np.int64)
    return {name: pc.take(table.column(name), order).to_numpy(zero_copy_only=False)
            for name in COSTS_COLUMNS if name != "code"}


@dataclass(frozen=True)
class BudgetResult:
    """Everything ``buig budget`` writes."""

    regime: Regime
    data: mm.MunicipalData
    objective_cost: np.ndarray
    budgets: Budgets
    vangnet: np.ndarray
    effects: rd.Effects
    seed: rd.SeedTable
    rows: list[dict]
    granite_share: float | None       # municipal model: share of O from the granieten voorraad
    components: dict | None = None    # deductions handed out by their own key (EUR per municipality)
    granite: dict | None = None       # granieten voorraad: derived from durations and the column
    stage: Stage | None = None        # the stage computed (provisional or definitive)
    provisional: tuple[Stage, Budgets] | None = None   # definitive stage: the provisional one beside it
    negative_cost: tuple = ()         # municipal model of published weights: codes whose cost was below 0 (set to 0)
    macrobudget_text: str = ""        # the stage and the macro budget TB comes from (engine.app.stages.macrobudget_text)


def parse_macrobudget(text: str | None) -> float | str | None:
    """``--macrobudget``: a number of EUR, ``"spending"`` (the population's spending in t) or None."""
    if text is None or text == "spending":
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--macrobudget must be an amount in EUR or 'spending', not {text!r}") from None
    if not (value > 0 and np.isfinite(value)):
        raise ValueError(f"--macrobudget must be a positive finite amount, not {text}")
    return value


def compute_budget(pop: Population, regime: Regime, costs: str | Path | np.ndarray | None = None,
                   macrobudget: float | str | None = None, stage: str | None = None) -> BudgetResult:
    """Run ``regime`` on ``pop``: objective costs, budgets, vangnet and redistribution effects.

    The household model takes its objective costs from ``costs`` (a folder with
    ``municipal_costs.parquet``, or an array in the order of the population's municipalities); a
    regime whose ``objective.spec`` is a municipality-level model with published weights (2011-2014:
    ``ape2011`` ... ``ape2014``) computes them from the population's municipal measures when no
    ``costs`` are given; the municipal model (2005) fits its regression on the population and ignores ``costs``. ``macrobudget`` overrides TB of the stage: an amount in EUR, or
    ``"spending"`` for the population's spending in t. ``stage``: ``"provisional"`` or
    ``"definitive"`` (default: the regime's ``budget.stage``); the definitive stage
    (:func:`engine.rules.budget.budget_stage`) also computes the provisional one for
    :func:`engine.app.stages.stage_rows`.
    """
    data = mm.municipal_data(pop)
    granite, negative = None, ()
    if regime.objective_model == "given" and costs is None and _municipal_spec(regime) is not None:
        cost = municipal_linear_cost(_municipal_spec(regime), pop.municipalities, pop.catalogue)
        check_finite("objective cost", cost, data.codes)
        # a linear model can go below 0 where the measures are extreme; the law has no rule for it
        # (the real measures give none): set to 0, as the 2005 model does, and named in the summary
        negative = tuple(data.codes[cost < 0])
        cost = np.maximum(cost, 0.0)
    elif regime.objective_model in ("household", "given"):
        if costs is None:
            spec = f" (spec {regime.objective_spec})" if regime.objective_spec else ""
            raise ValueError(f"regime {regime.name} takes its objective costs from a file{spec}: give --costs DIR "
                             f"(a folder with {COSTS_FILE}, written by buig predict)")
        if isinstance(costs, (str, Path)):
            cost = read_costs(costs, data.codes)["objective_cost"]
        else:
            cost = np.asarray(costs, dtype=np.float64)
            if cost.shape != data.codes.shape or not np.all(np.isfinite(cost) & (cost >= 0)):
                raise ValueError(f"objective costs: expected {len(data.codes)} finite amounts >= 0 in the order "
                                 "of the population's municipalities")
    else:
        fitted = mm.fit(data, mm.regime_spec(regime.objective_variables))
        cost, granite = _granite_phased(data, fitted, regime.granite_weight), fitted.granite_share
    factor = scale_factor(regime, data.households.sum())
    components = hand_out(regime.deductions, _keys(pop, data), factor)
    stage = stage or regime.stage

    def at(name: str, macro) -> tuple[Stage, Budgets]:
        st = budget_stage(regime, name, data.spending_t2, data.households, data.households_t2, data.spending_t, macro)
        b = allocate_stage(st, cost, data.inhabitants)
        if components:
            extra = sum(components.values())
            b = dataclasses.replace(b, budget=b.budget + extra, uncapped=b.uncapped + extra)
        return st, b

    st, b = at(stage, macrobudget)
    check_finite("budget", b.budget, data.codes)
    provisional = at("provisional", None if macrobudget != "spending" else macrobudget) if stage == "definitive" else None
    eff = rd.effects(b.budget, data.spending_t, data.inhabitants)
    seed = rd.seed_table(data, correct_growth=regime.household_growth_correction)
    cost_st = cost * st.cost_factor
    rows = _rows(st.regime, data, cost_st, st.historical_share, st.tb, b, seed, st.historical_cost)
    return BudgetResult(regime=regime, data=data, objective_cost=cost_st, budgets=b,
                        vangnet=vangnet_payout(data.spending_t, b.budget, regime.vangnet), effects=eff,
                        seed=seed, rows=rows, granite_share=granite, components=components,
                        granite=mm.granite_comparison(pop) if regime.objective_model == "municipal" else None,
                        stage=st, provisional=provisional, negative_cost=negative,
                        macrobudget_text=macrobudget_text(st, macrobudget))


def _municipal_spec(regime: Regime):
    """The regime's ``objective.spec`` when it is a municipality-level model (2011-2014), else None."""
    if not regime.objective_spec:
        return None
    spec = load_spec(regime.objective_spec)
    return spec if spec.kind == "municipal" else None


def _keys(pop: Population, data: mm.MunicipalData) -> dict[str, np.ndarray]:
    """Keys a deduction can be handed out by: the numeric columns of the municipalities table."""
    mun = pop.municipalities
    out = {name: mun.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
           for name in mun.column_names if pa.types.is_integer(mun.schema.field(name).type)
           or pa.types.is_floating(mun.schema.field(name).type)}
    return out | {"inhabitants": data.inhabitants, "households": data.households}


def _granite_phased(data: mm.MunicipalData, fitted: mm.MunicipalFit, weight: float) -> np.ndarray:
    """O_g with the granieten voorraad term at ``weight`` of its fitted coefficient (the
    phase-out the letter of 14 May 2004 plans); ``weight`` 1 is the fit itself."""
    if weight == 1.0 or "granieten_voorraad" not in fitted.spec.variables:
        return fitted.objective_cost
    coef = fitted.coef.copy()
    coef[1 + fitted.spec.variables.index("granieten_voorraad")] *= weight
    per_unit = np.maximum(mm.design(data, fitted.spec.variables) @ coef, 0.0)
    return per_unit * (data.households if fitted.spec.per == "household" else data.inhabitants)


def _rows(regime, data, cost, hist, tb, b: Budgets, seed: rd.SeedTable, k=None) -> list[dict]:
    """The rows of redistribution.csv: the 2004 letter's table (``table`` = ``letter_2004``), then the
    regime's budgets (``regime``)."""
    rows = []
    universe, inh = seed.universe, data.inhabitants
    mixes = {"mix": rd.SEED_HISTORICAL_SHARE, "historical": 1.0}
    ref_within = np.where(universe, seed.reference, 0.0)
    seed_rows = {"all_name": f"letter universe (>{seed.min_inhabitants / 1000:g}k)", "table": "letter_2004",
                 "reference": "spending_t"}
    for key, label, pct in seed.columns:
        rows += rd.summary_rows(pct, ref_within, inh, universe, model=key, label=label,
                                historical_share=mixes.get(key, 0.0), **seed_rows)
    o = seed.optimal
    rows += rd.summary_rows(seed.optimal_pct, ref_within, inh, universe, model="optimal_mix",
                            label=f"{100 * (1 - o.share):.1f}% objective 2005 incl. GV + "
                                  f"{100 * o.share:.1f}% historical (minimises mean |effect|)",
                            historical_share=o.share, **seed_rows)
    variants = [("regime_uncapped", "regime budget before the ex-ante cap", None)] if regime.cap else []
    variants += [(f"cap {c.name}", f"regime budget, ex-ante cap {c.name}", c) for c in regime.cap_variants]
    budgets = [("regime", f"regime {regime.name} budget", b.budget)]
    budgets += [(key, label, b.uncapped if c is None
                 else allocate(regime, cost, hist, inh, tb, cap=c, historical_cost=k,
                               mau=0.0 if b.mau_deduction is None else float(b.mau_deduction.sum())).budget)
                for key, label, c in variants]
    for key, label, budget in budgets:
        for ref_name, ref in (("spending_t", data.spending_t), ("historical", hist)):
            e = rd.effects(budget, ref, inh)
            rows += rd.summary_rows(e.pct, e.reference, inh, table="regime", model=key, label=label,
                                    historical_share=np.nan, reference=ref_name)
    return rows


REDISTRIBUTION_FIELDS = ("table", "model", "label", "historical_share", "reference", "size_class", "weighting",
                         *rd.STATISTICS)


def _write_csv(path: Path, rows: list[dict], fields, fmt: str = ".6g") -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:{fmt}}" if isinstance(v, float) else v) for k, v in row.items()})


def budget_table(r: BudgetResult) -> pa.Table:
    """budgets.parquet: one row per municipality."""
    d, b = r.data, r.budgets
    cols = {
        "code": pa.array(d.codes.tolist(), pa.string()), "name": pa.array(d.names.tolist(), pa.string()),
        "inhabitants": d.inhabitants.astype(np.int64), "objective_cost": r.objective_cost,
        "objective_share": b.objective_share, "historical_share": b.historical_share,
        "objective_weight": b.objective_weight, "historical_budget": b.historical_share * b.budget.sum(),
        "budget_uncapped": b.uncapped, "budget": b.budget, "actual_spending": d.spending_t,
        "surplus": b.budget - d.spending_t, "redistribution_effect_pct": r.effects.pct,
        "redistribution_effect_eur_per_inhabitant": r.effects.eur_per_inhabitant, "vangnet_payout": r.vangnet,
    }
    meta = {"regime": r.regime.name, "regime_file": str(r.regime.path), "tb": repr(b.tb),
            "stage": r.stage.name if r.stage is not None else "provisional", "macrobudget": r.macrobudget_text,
            "residual": repr(b.residual), "cap_ceiling": repr(b.ceiling),
            "redistribution_effect": "(budget - spending_t scaled to sum budget) / that, in %"}
    return pa.table(cols).replace_schema_metadata(meta)


def write_budget(r: BudgetResult, out: str | Path) -> None:
    """Write budgets.parquet and redistribution.csv into ``out`` (atomically), and for a definitive
    budget ``stages.csv`` (:func:`engine.app.stages.stage_rows`)."""
    from engine.app.stages import STAGES_FILE, stage_rows

    with atomic_dir(out) as tmp:
        pq.write_table(budget_table(r), tmp / "budgets.parquet")
        _write_csv(tmp / "redistribution.csv", r.rows, REDISTRIBUTION_FIELDS)
        if r.provisional is not None:
            rows = stage_rows(r)
            _write_csv(tmp / STAGES_FILE, rows, rows[0], fmt=".17g")      # amounts to the cent and beyond
    if r.provisional is None:
        (Path(out) / STAGES_FILE).unlink(missing_ok=True)   # of an earlier definitive run into the same folder


def write_wdeel(r: WdeelResult, pop: Population, out: str | Path) -> None:
    """Write wdeel.csv (one row per model) and wdeel_budgets.parquet into ``out`` (atomically)."""
    mun = pop.municipalities
    cols = {"code": mun.column("code"), "name": mun.column("name"), "need": r.need}
    cols |= {f"budget_{name}": v for name, v in r.budgets.items()}
    with atomic_dir(out) as tmp:
        rows = [row | {"total": r.total} for row in r.rows]
        _write_csv(tmp / "wdeel.csv", rows, rows[0])
        pq.write_table(pa.table(cols).replace_schema_metadata({"need": NEED_NOTE}), tmp / "wdeel_budgets.parquet")
