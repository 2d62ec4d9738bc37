"""The model commands of the ``buig`` command line: ``buig fit`` and ``buig predict``
(:mod:`engine.app.cli` parses the options and reports errors)."""

from __future__ import annotations

import time
from pathlib import Path

from engine.app.console import Progress, csv_copies, say_csv_copies, warn_sparse


def run_fit(args, say) -> int:
    """``buig fit``: estimate (or take the published weights of) a spec, print the coefficient table."""
    from engine.model.fitted import fit_to_folder, format_coefficients, published_comparison
    from engine.model.population import read_population

    t0 = time.perf_counter()
    pop = read_population(args.population, args.catalogue)
    fit = fit_to_folder(pop, args.out, spec=args.spec, export=args.export_design, progress=Progress("fit", args.quiet))
    warn_sparse(args, fit)
    if fit.spec.weights is not None:
        say(f"model spec {fit.spec.name}: published weights ({fit.spec.weights.reference}); nothing estimated")
    for c in ((fit.volume, fit.price) if fit.spec.weights is None else ()):
        extra = f", {len(c.dropped_municipalities)} municipalities without variation left out" if c.dropped_municipalities else ""
        extra += f", {c.n_clipped} fractions clipped to [0, 1]" if c.n_clipped else ""
        if c.separated_terms:
            extra += f", levels with no or only outcomes estimated on their own: {', '.join(c.separated_terms)}"
        if c.unestimable_terms:
            extra += (f"; NOT ESTIMABLE (no households in the sample, predicted at the reference level): "
                      f"{', '.join(c.unestimable_terms)}")
        say(f"{c.name}: {c.n_obs:,} households, {len(c.term_names)} terms, {c.iterations} Newton iterations, "
            f"log-likelihood {c.loglik:,.2f}, gradient norm {c.gradient_norm:.1e}, {c.seconds:.1f} s{extra}")
    say(format_coefficients(fit))
    if fit.spec.published and fit.spec.weights is None:
        rows = published_comparison(fit)
        say(f"published values ({fit.spec.published.get('reference', '')}) beside the estimates:\n"
            + "\n".join(f"  {r['component']} {r['term']:<34} published {r['published']:>10.7f}  estimated "
                         f"{r['estimate']:>10.7f}  (se {r['se_cluster']:.4f}, z {r['z_difference']:+.2f})"
                        for r in rows))
    say(f"wrote coefficients.parquet, fit.json, covariances.npz to {args.out} ({time.perf_counter() - t0:.1f} s)")
    say_csv_copies(args, "coefficients.parquet")
    return 0


def run_predict(args, say) -> int:
    """``buig predict``: objective cost per municipality from a fit folder or a spec's published weights."""
    from engine.model.design import households_from_population
    from engine.model.fitted import read_fit
    from engine.io.outputs import atomic_dir
    from engine.model.population import read_population
    from engine.model.predict import municipal_costs_table, predict, rekentool_table
    from engine.model.schema import check_finite

    import pyarrow.parquet as pq

    from engine.model.fitted import fit_model
    from engine.model.spec import load_spec

    if (args.coefficients is None) == (args.spec is None):
        raise ValueError("give either --coefficients (a folder written by buig fit) or --spec (a spec with "
                         "published weights)")
    spec = load_spec(args.spec) if args.spec is not None else None
    if spec is not None and spec.weights is None:
        raise ValueError(f"model spec {spec.name} has no published weights ([weights]): estimate it with "
                         f"`buig fit --spec {args.spec}` and predict with --coefficients")
    pop = read_population(args.population, args.catalogue)
    if spec is not None and spec.kind == "municipal":
        return _predict_municipal(args, pop, spec, say)
    hh = households_from_population(pop)
    fit = read_fit(args.coefficients) if spec is None else fit_model(hh, spec)
    t0 = time.perf_counter()
    pred = predict(hh, fit)
    seconds = time.perf_counter() - t0
    check_finite("objective cost", pred.objective_cost, hh.mun_codes)
    with atomic_dir(args.out) as tmp:
        pq.write_table(municipal_costs_table(pred, pop.municipalities.column("name").to_pylist()),
                       tmp / "municipal_costs.parquet")
        pq.write_table(rekentool := rekentool_table(pred), tmp / "rekentool.parquet")
    wrote = "municipal_costs.parquet, rekentool.parquet"
    if not args.no_xlsx:
        from engine.app.workbook import write_rekentool_workbook

        write_rekentool_workbook(Path(args.out) / "rekentool.xlsx", rekentool, pop.municipalities,
                                 labels=args.labels, synthetic=pop.synthetic)
        wrote += ", rekentool.xlsx"
    wrote += "".join(f", {name}" for name in csv_copies(args, "municipal_costs.parquet", "rekentool.parquet"))
    say(f"objective cost EUR {pred.objective_cost.sum() / 1e6:,.1f} mln over {hh.n_mun} municipalities; "
        f"predicted {pred.predicted.sum():,.0f} vs actual {pred.actual.sum():,} households; "
               f"prediction {seconds:.2f} s ({hh.n / seconds / 1e6:.0f} million households/s); wrote "
               f"{wrote} to {args.out}")
    return 0


def _predict_municipal(args, pop, spec, say) -> int:
    """``buig predict --spec`` of a municipality-level linear model (2011-2014)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.io.outputs import atomic_dir
    from engine.model.published import municipal_linear_cost

    cost = municipal_linear_cost(spec, pop.municipalities, pop.catalogue)
    from engine.model.schema import check_finite

    check_finite("objective cost", cost, np.asarray(pop.municipalities.column("code").to_pylist(), dtype=object))
    mun = pop.municipalities
    table = pa.table({"code": mun.column("code"), "name": mun.column("name"),
                      "households": np.bincount(pop.household_municipality, minlength=mun.num_rows).astype(np.int64),
                      "predicted_households": np.full(mun.num_rows, np.nan),
                      "actual_households": np.full(mun.num_rows, np.nan),
                      "objective_cost": cost, "objective_share": cost / cost.sum()})
    with atomic_dir(args.out) as tmp:
        pq.write_table(table, tmp / "municipal_costs.parquet")
    say(f"municipal model {spec.name} ({spec.weights.reference}): objective cost EUR {cost.sum() / 1e6:,.1f} "
        f"mln over {mun.num_rows} municipalities; wrote municipal_costs.parquet to {args.out}")
    return 0
