"""The budget commands of the ``buig`` command line: ``buig budget`` and ``buig wdeel``
(:mod:`engine.app.cli` parses the options and reports errors)."""

from __future__ import annotations

import math
from pathlib import Path

from engine.app.console import say_csv_copies


def run_budget(args, say) -> int:
    """``buig budget``: the budgets of a regime, the stages and the 2004 letter's table."""
    from engine.app.budget_files import compute_budget, parse_macrobudget, write_budget
    from engine.app.pipeline import money_note
    from engine.model.population import read_population
    from engine.rules.redistribution import format_seed_table
    from engine.rules.regime import load_regime

    regime = load_regime(args.regime)
    macrobudget = parse_macrobudget(args.macrobudget)
    pop = read_population(args.population)
    r = compute_budget(pop, regime, args.costs, macrobudget, stage=args.stage)
    write_budget(r, args.out)
    b = r.budgets
    say(f"regime {regime.name}, {r.stage.name} budget: TB EUR {b.tb:,.2f} over {len(b.budget)} municipalities; "
               f"sum of budgets EUR {b.budget.sum():,.2f} (residual {b.residual:,.2f}); "
               f"vangnet EUR {r.vangnet.sum():,.2f} to {(r.vangnet > 0).sum()} municipalities\n{r.macrobudget_text}")
    note = money_note(100 * (b.tb - r.data.spending_t.sum()) / b.tb, "--macrobudget spending distributes the "
                      "population's own spending")
    if note:
        say(note)
    if regime.objective_spec and args.costs is None and regime.objective_model == "given":
        neg = r.negative_cost
        say(f"objective cost from the municipal measures and the published weights of {regime.objective_spec}: "
            f"EUR {r.objective_cost.sum():,.2f}" + (f"; {len(neg)} municipalities below 0 set to 0 (first {neg[0]}), "
                                                      f"{_in_model(r, neg)} of them in the model (above "
                                                      f"{regime.historical_up_to:,.0f} inhabitants)" if neg else ""))
    if r.granite is not None:
        g = r.granite
        say(f"granieten voorraad (bijstand households > 4 years at the base date, from duration_class): "
                   f"{g['derived_total']:,.0f}; its weight in the municipal model {100 * r.granite_share:.1f}% of O "
                   f"(regime weight {regime.granite_weight:g}); the municipalities column (not used) says "
                   f"{g['column_total']:,.0f}, {g['municipalities_differing']} municipalities differ, "
                   f"correlation {g['correlation']:.3f}")
    if r.components:
        say("handed out by their own key: " + ", ".join(f"{k} EUR {v.sum():,.2f}" for k, v in r.components.items()))
    if r.provisional is not None:
        from engine.app.stages import STAGES_FILE, format_stages
        say("\n" + format_stages(r) + f"\n-> {Path(args.out) / STAGES_FILE}")
    say("\nredistribution effects against spending in t (the table of the 2004 letter, K2004):\n" + format_seed_table(r.seed))
    say(f"\n-> {Path(args.out) / 'budgets.parquet'}, {Path(args.out) / 'redistribution.csv'}")
    say_csv_copies(args, "budgets.parquet")
    return 0


def _in_model(r, codes) -> int:
    """How many of ``codes`` the objective model weighs (m > 0): below that the cost is not used."""
    return int(sum(w > 0 for c, w in zip(r.data.codes, r.budgets.objective_weight) if c in set(codes)))


def run_wdeel(args, say) -> int:
    """``buig wdeel``: the W-deel models against need for a given total."""
    from engine.app.budget_files import write_wdeel
    from engine.model.population import read_population
    from engine.rules.wdeel import NEED_NOTE, format_rows, wdeel

    if args.total is not None and not (args.total > 0 and math.isfinite(args.total)):
        raise ValueError(f"--total must be a positive finite amount in EUR, not {args.total}")
    pop = read_population(args.population)
    r = wdeel(pop, args.total)
    write_wdeel(r, pop, args.out)
    say(f"W-deel total EUR {r.total:,.2f}; (budget - need) / budget per municipality:\n"
               + format_rows(r.rows) + f"\n{NEED_NOTE}\n-> {Path(args.out) / 'wdeel.csv'}")
    say_csv_copies(args, "wdeel_budgets.parquet")
    return 0
