"""The provisional and the definitive budget side by side (``buig budget --stage definitive``).

The provisional budget of year t is set in autumn t-1, the definitive one in autumn t with the newer
macro budget (2019: EUR 6,219.7 mln provisional, EUR 6,072.6 mln definitive; engine/data/published/
macrobudget_buig_2016_2024.csv) and, as the letter of 14 May 2004 (K2004) announced for growth
municipalities, a more recent count of households (:func:`engine.rules.budget.budget_stage`).
:func:`stage_rows` is ``stages.csv``: one row per municipality; :func:`format_stages` the text
``buig budget`` prints.
"""

from __future__ import annotations

import numpy as np

STAGES_FILE = "stages.csv"
STAGE_COLUMNS = ("code", "name", "inhabitants", "households_provisional", "households_definitive",
                 "household_growth_pct", "objective_weight", "budget_provisional", "budget_definitive",
                 "difference_eur", "difference_pct", "difference_vs_national_pct")


def _arrays(r) -> dict[str, np.ndarray]:
    p_stage, p_budget = r.provisional
    d_stage, b = r.stage, r.budgets.budget
    bp = p_budget.budget
    diff = b - bp
    pct = np.divide(100 * diff, bp, out=np.full_like(bp, np.nan), where=bp > 0)
    national = 100 * (b.sum() / bp.sum() - 1)
    return {"households_provisional": p_stage.households, "households_definitive": d_stage.households,
            "household_growth_pct": 100 * (d_stage.cost_factor - 1), "objective_weight": r.budgets.objective_weight,
            "budget_provisional": bp, "budget_definitive": b, "difference_eur": diff, "difference_pct": pct,
            "difference_vs_national_pct": pct - national}


def stage_rows(r) -> list[dict]:
    """Rows of ``stages.csv`` from a definitive :class:`engine.app.budget_files.BudgetResult`:
    per municipality both household counts, the growth (%), the objective weight, both budgets,
    the difference in EUR and %, and the difference in % minus the national one (the part due to
    the newer household counts: positive for growth municipalities)."""
    a = _arrays(r)
    d = r.data
    out = []
    for i in range(len(d.codes)):
        row = {"code": str(d.codes[i]), "name": str(d.names[i]), "inhabitants": int(d.inhabitants[i])}
        row |= {k: float(a[k][i]) for k in STAGE_COLUMNS[3:]}
        out.append(row)
    return out


def format_stages(r, top: int = 5) -> str:
    """The two stages on one screen: TBs, the national change, and the largest gains and losses
    relative to the national change, with their household growth."""
    a = _arrays(r)
    p_stage, p_budget = r.provisional
    bp, b = p_budget.budget, r.budgets.budget
    rel = a["difference_vs_national_pct"]
    growth = a["household_growth_pct"]
    ok = np.isfinite(rel)
    corr = float(np.corrcoef(growth[ok], rel[ok])[0, 1]) if ok.sum() > 2 and growth[ok].std() > 0 else float("nan")
    lines = [f"provisional TB EUR {p_stage.tb:,.2f} (sum of budgets {bp.sum():,.2f}); definitive TB EUR "
             f"{r.stage.tb:,.2f} (sum {b.sum():,.2f}): {100 * (b.sum() / bp.sum() - 1):+.2f}% nationally",
             f"households one year later (each municipality's own trend): {a['households_definitive'].sum():,.0f} "
             f"against {a['households_provisional'].sum():,.0f}; {int((rel[ok] > 0).sum())} municipalities gain "
             f"more than the national change, {int((rel[ok] < 0).sum())} less; correlation of that with household "
             f"growth {corr:.3f}",
             f"{'municipality':<28}{'growth %':>10}{'provisional':>16}{'definitive':>16}{'diff %':>9}{'vs nat. %':>10}"]
    order = np.argsort(np.where(ok, rel, 0.0))
    picks = list(order[::-1][:top]) + list(order[:top])
    for i in picks:
        lines.append(f"{str(r.data.names[i])[:27]:<28}{growth[i]:>10.2f}{bp[i]:>16,.0f}{b[i]:>16,.0f}"
                     f"{a['difference_pct'][i]:>9.2f}{rel[i]:>10.2f}")
    return "\n".join(lines)


def macrobudget_text(st, macrobudget=None) -> str:
    """One line: which budget stage a result distributes and which macro budget its TB comes from
    (``st``: the :class:`engine.rules.budget.Stage`; ``macrobudget``: the override, EUR or
    ``"spending"``, as :func:`engine.app.budget_files.compute_budget` got it)."""
    from engine.rules.budget import scale_factor

    reg = st.regime
    head = f"{st.name} budget {reg.year}"
    if macrobudget == "spending" or (macrobudget is None and reg.macrobudget is None):
        return f"{head}: macro budget = the population's spending in t; TB EUR {st.tb / 1e6:,.1f} mln"
    if macrobudget is not None:
        return f"{head}: macro budget given, TB EUR {st.tb / 1e6:,.1f} mln"
    which = "the published definitive" if st.name == "definitive" else "the provisional"
    factor = scale_factor(reg, float(np.sum(st.households / st.cost_factor)))
    scaled = "" if factor == 1.0 else f", x {factor:.6f} for this population's households"
    return f"{head}: {which} macro budget EUR {reg.macrobudget / 1e6:,.1f} mln{scaled}; TB EUR {st.tb / 1e6:,.1f} mln"

