"""The ``buig`` command line.

    buig synth    --households N --seed S --out DIR     generate a synthetic Netherlands
    buig validate DIR                                   check a population folder
    buig fit      --population DIR --out DIR            estimate the volume and price models
    buig predict  --population DIR --coefficients DIR --out DIR
    buig predict  --population DIR --spec NAME|FILE --out DIR
                                                        objective cost per municipality (fitted, or
                                                        from the published weights of a spec)
    buig run      [SCENARIO.toml] --out DIR             the main job: population -> fit -> predict -> budgets
                                                        -> bootstrap -> flags -> cap -> report.html
    buig sweep    SWEEP.toml [--out DIR]                a grid of scenario variants as Dask tasks

Every subcommand has ``--help``. Errors in the input are reported as one line naming the
table, column and first offending row, with exit status 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.io.memory import command_line_memory
from engine.model.fit import EstimationError
from engine.model.schema import PopulationError
from engine.app.console import Progress, say, say_csv_copies, warn_sparse
from engine.uncertainty.settings import DEFAULT_BATCH, METHODS

DEFAULT_SEED = 20190101


def cmd_synth(args) -> int:
    from engine.app.scenario import check_sizes
    from engine.world.synth import generate

    check_sizes(households=args.households)
    s = generate(args.out, households=args.households, seed=args.seed, planted=args.planted,
                 planted_effect=args.planted_effect, planted_surplus=_min_max(args.planted_surplus),
                 policy_sd=args.policy_sd, progress=Progress("synth", args.quiet), truth_model=args.truth)
    say(args, f"synthetic Netherlands: {s.households:,} households in {s.municipalities} municipalities, "
               f"{s.neighbourhoods:,} neighbourhoods; {s.bijstand:,} bijstand and {s.lks:,} LKS households; "
               f"{s.seconds:.1f} s -> {s.out}")
    return 0


def _min_max(text: str) -> tuple[float, float]:
    """``--planted-surplus MIN,MAX`` (or one number: both)."""
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--planted-surplus must be MIN,MAX (two numbers), not {text!r}") from None
    if len(parts) not in (1, 2):
        raise ValueError(f"--planted-surplus must be MIN,MAX (two numbers), not {text!r}")
    return (parts[0], parts[-1])


def _check_fdr(fdr: float | None) -> None:
    if fdr is not None and not 0 < fdr < 1:
        raise ValueError(f"--fdr must lie between 0 and 1, not {fdr}")


def cmd_validate(args) -> int:
    from engine.model.population import read_population

    pop = read_population(args.population, args.catalogue)
    say(args, f"{args.population}: valid ({pop.households.num_rows:,} households, "
               f"{pop.neighbourhoods.num_rows:,} neighbourhoods, {pop.municipalities.num_rows} municipalities"
               f"{', synthetic' if pop.synthetic else ''})")
    return 0


def cmd_fit(args) -> int:
    from engine.app.model_commands import run_fit

    return run_fit(args, lambda text: say(args, text))


def cmd_predict(args) -> int:
    from engine.app.model_commands import run_predict

    return run_predict(args, lambda text: say(args, text))


def cmd_bootstrap(args) -> int:
    from engine.uncertainty.bootstrap import run_bootstrap
    from engine.uncertainty.settings import Settings
    from engine.uncertainty.summaries import write_results

    from engine.app.scenario import check_sizes
    from engine.io.outputs import folder_lock
    from engine.model.spec import load_spec
    from engine.rules.regime import load_regime
    _check_fdr(args.fdr)

    # every option is checked before anything is written
    if not 0 < args.level < 1:
        raise ValueError(f"--level must lie between 0 and 1, not {args.level}")
    check_sizes(replicates=args.replicates)
    coefficients = args.coefficients or str(Path(args.out) / "fit")
    settings = Settings(population=args.population, coefficients=coefficients, regime=args.regime,
                        method=args.method, seed=args.seed, between_sd=args.between_sd)
    load_regime(args.regime)
    if args.coefficients is None:
        load_spec(args.spec)
    with folder_lock(args.out, "bootstrap"):
        if args.coefficients is None and not (Path(coefficients) / "coefficients.parquet").exists():
            from engine.model.fitted import fit_to_folder
            from engine.model.population import read_population

            say(args, f"no --coefficients given: fitting the model into {coefficients}")
            fit = fit_to_folder(read_population(args.population), coefficients, spec=args.spec)
            warn_sparse(args, fit)
        res = run_bootstrap(settings, args.out, replicates=args.replicates, batch_size=args.batch_size,
                            workers=args.workers, scheduler=args.scheduler, progress=Progress("bootstrap", args.quiet))
        written = write_results(res, args.out, level=args.level, fdr=args.fdr)
    flags = written["flags"].column("flagged").to_numpy()
    rule = f"at false discovery rate {args.fdr}" if args.fdr is not None else f"at level {args.level} per test"
    say(args, f"{res.replicates} {args.method} replicates ({res.computed} computed, "
               f"{res.replicates - res.computed} resumed) in {res.seconds:.1f} s; between-municipality sd "
               f"{res.between_sd:.3f}; {int(flags.sum())} municipalities flagged {rule}; wrote "
               f"replicates.parquet, bands.parquet, flags.parquet to {args.out}")
    say_csv_copies(args, "replicates.parquet", "bands.parquet", "flags.parquet")
    return 0


def cmd_cap(args) -> int:
    import numpy as np
    import pyarrow.parquet as pq

    from engine.rules.cap import capped_table
    from engine.io.outputs import atomic_dir, settle

    settle(args.bootstrap)          # a set of files whose commit a killed writer left unfinished
    flags_file = Path(args.bootstrap) / "flags.parquet"
    if not flags_file.exists():
        raise FileNotFoundError(f"{flags_file} is missing: run `buig bootstrap` first")
    f = pq.read_table(flags_file)
    record = Path(args.bootstrap) / "bootstrap.json"      # its regime's vangnet rule, paid on the capped budgets
    vangnet = None
    if record.exists():
        import json

        from engine.rules.regime import load_regime

        vangnet = load_regime(json.loads(record.read_text())["settings"]["regime"]).vangnet
    table, capped = capped_table(f, args.kappa, args.redistribute, vangnet)
    with atomic_dir(args.out) as tmp:
        pq.write_table(table, tmp / "capped_budgets.parquet")
    say(args, f"kappa {args.kappa}: {int((capped.clawed_back > 0).sum())} municipalities capped, "
               f"EUR {capped.total / 1e6:,.2f} mln clawed back and redistributed ({args.redistribute}) to "
               f"{int((capped.received > 0).sum())} municipalities; total budget changed by "
               f"{np.sum(capped.budget) - np.sum(table.column('budget').to_numpy()):+.2e}"
               + (f" (EUR {capped.unallocated / 1e6:,.2f} mln unallocated: every municipality is capped)"
                  if capped.unallocated else "") + f"; wrote capped_budgets.parquet to {args.out}")
    say_csv_copies(args, "capped_budgets.parquet")
    return 0


def _scenario_overrides(args) -> dict:
    """The quick-run options of ``buig run`` / ``buig sweep`` as Scenario fields."""
    o = {}
    if getattr(args, "population", None):
        o["population"] = args.population
    if args.households is not None:
        o["households"] = args.households
    if args.replicates is not None:
        o["replicates"] = args.replicates
    if args.seed is not None:
        o["population_seed"], o["bootstrap_seed"] = args.seed, args.seed + 1
    if getattr(args, "macrobudget", None) is not None:
        from engine.app.budget_files import parse_macrobudget

        o["macrobudget"] = "regime" if args.macrobudget == "regime" else parse_macrobudget(args.macrobudget)
    return o


def cmd_run(args) -> int:
    from engine.app.pipeline import format_summary, run
    from engine.app.scenario import load_scenario

    overrides = _scenario_overrides(args)
    scenario = load_scenario(args.scenario, **overrides)
    if not scenario.synthetic and args.households is not None:
        raise ValueError("--households sets the size of the synthetic population; it cannot be combined with "
                         "--population (or a scenario whose population.source is a folder)")
    result = run(scenario, args.out, workers=args.workers, scheduler=args.scheduler, xlsx=not args.no_xlsx,
                 formats=("parquet", "csv") if args.format == "csv" else ("parquet",), labels=args.labels,
                 progress=lambda label: Progress(label, args.quiet), say=lambda text: say(args, text))
    warn_sparse(args, result.fit)
    say(args, "\n" + format_summary(result))
    return 0


def cmd_sweep(args) -> int:
    from engine.app.sweep import format_comparison, load_sweep, run_sweep

    sweep = load_sweep(args.sweep, **_scenario_overrides(args))
    result = run_sweep(sweep, args.out, workers=args.workers, scheduler=args.scheduler,
                       progress=lambda label: Progress(label, args.quiet), say=lambda text: say(args, text))
    say(args, "\n" + format_comparison(result))
    return 0


def cmd_budget(args) -> int:
    from engine.app.budget_commands import run_budget

    return run_budget(args, lambda text: say(args, text))


def cmd_wdeel(args) -> int:
    from engine.app.budget_commands import run_wdeel

    return run_wdeel(args, lambda text: say(args, text))


def build_parser() -> argparse.ArgumentParser:
    from engine import __version__
    from engine.app.labels import LANGUAGES
    from engine.world.synth import REAL_HOUSEHOLDS

    parser = argparse.ArgumentParser(prog="buig", description="The Dutch bijstand (BUIG) distribution model: "
                                     "simulation, uncertainty and capping.")
    parser.add_argument("--version", action="version", version=f"buig {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_outputs(p: argparse.ArgumentParser, xlsx: bool = False) -> None:
        p.add_argument("--format", choices=("parquet", "csv"), default="parquet",
                       help="csv: also a CSV copy next to every Parquet table (default: %(default)s)")
        if xlsx:
            p.add_argument("--no-xlsx", action="store_true", help="do not write rekentool.xlsx")
            p.add_argument("--labels", choices=LANGUAGES, default="en",
                           help="household types in rekentool.xlsx (and the report) as codes (en) or in Dutch "
                                "(nl) (default: %(default)s)")

    def add_dask(p: argparse.ArgumentParser, default: str = "the number of cores") -> None:
        p.add_argument("--workers", type=int, default=None,
                       help=f"local worker processes (default: {default}; 0: no Dask, in this process; -1: one per core)")
        p.add_argument("--scheduler", default=None,
                       help="address of a Dask scheduler (or set DASK_SCHEDULER_ADDRESS); workers must see the same "
                            "paths")
        p.add_argument("--tls-ca-file", default=None,
                       help="TLS to a tls:// scheduler: the CA certificate (PEM) that signed the cluster's certificates")
        p.add_argument("--tls-cert", default=None, help="TLS: this client's certificate (PEM)")
        p.add_argument("--tls-key", default=None, help="TLS: this client's private key (PEM)")

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--quiet", action="store_true", help="print nothing but errors")
        p.set_defaults(fn=fn)
        return p

    p = add("synth", cmd_synth, "Generate a synthetic Netherlands (Parquet tables and truth.json) into a folder.")
    p.add_argument("--households", type=int, default=REAL_HOUSEHOLDS,
                   help=f"number of households (default: the real total, {REAL_HOUSEHOLDS:,})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    p.add_argument("--planted", type=int, default=10,
                   help="municipalities (>40k inhabitants) with a planted strict policy (an unexplained surplus) (default: %(default)s)")
    p.add_argument("--planted-surplus", default="0.10,0.30",
                   help="MIN,MAX: each planted municipality saves a share of its expected spending drawn uniformly "
                        "from this range (default: %(default)s)")
    p.add_argument("--planted-effect", type=float, default=0.0,
                   help="not 0: instead a fixed planted effect on the log-odds of bijstand (default: %(default)s)")
    p.add_argument("--truth", choices=("default", "realistic", "scp2015"), default="default",
                   help="the world's model: default (8 factors, the 2019 spec's size), realistic (43 household "
                        "indicators and 8 neighbourhood / region characteristics more: spec realistic), or scp2015 "
                        "(outcomes from the published 2015 model itself: spec scp2015) (default: %(default)s)")
    p.add_argument("--policy-sd", type=float, default=0.05,
                   help="sd of every municipality's natural policy effect on the log-odds (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder")

    def add_catalogue(p: argparse.ArgumentParser) -> None:
        p.add_argument("--catalogue", default=None,
                       help="catalogue of the population's characteristics: a built-in name or a TOML file "
                            "(default: catalogue.toml in the population folder, else the built-in default)")

    p = add("validate", cmd_validate, "Check a population folder; exit 2 with the first error on a bad one.")
    p.add_argument("population", help="population folder")
    add_catalogue(p)

    p = add("budget", cmd_budget, "Budgets of a distribution regime: budgets.parquet (one row per "
                                  "municipality) and redistribution.csv (the 2004 letter's table and the regime's effects).")
    add_outputs(p)
    p.add_argument("--population", required=True, help="population folder")
    p.add_argument("--costs", help="folder with municipal_costs.parquet from buig predict "
                                   "(required for the household model, e.g. regime 2019; "
                                   "the regimes 2011-2014 compute it from the municipal measures when not given)")
    p.add_argument("--regime", default="2019", help="2019, 2005 or the path of a regime TOML file (default: %(default)s)")
    p.add_argument("--macrobudget", help="override TB: an amount in EUR, or 'spending' for the "
                                         "population's spending in t (default: from the regime file)")
    p.add_argument("--stage", choices=("provisional", "definitive"), help="definitive: the newer macro budget and "
                   "households one year later, beside the provisional budget in stages.csv (default: the regime's)")
    p.add_argument("--out", required=True, help="output folder")

    p = add("wdeel", cmd_wdeel, "The four W-deel models of the 2004 letter and a historical distribution against need: "
                                "wdeel.csv and wdeel_budgets.parquet.")
    add_outputs(p)
    p.add_argument("--population", required=True, help="population folder")
    p.add_argument("--total", type=float, required=True,
                   help="W-deel budget in EUR: a budget of its own, not the sum of need")
    p.add_argument("--out", required=True, help="output folder")

    p = add("fit", cmd_fit, "Estimate the volume (logit) and price (fractional logit) components.")
    add_outputs(p)
    p.add_argument("--population", required=True, help="population folder")
    p.add_argument("--spec", default="2019", help="model spec: a built-in name or a TOML file (default: %(default)s)")
    p.add_argument("--export-design", action="store_true",
                   help="also write the dense design of each component (small populations only)")
    add_catalogue(p)
    p.add_argument("--out", required=True, help="output folder")

    p = add("predict", cmd_predict, "Objective cost per municipality and the rekentool breakdown.")
    add_outputs(p, xlsx=True)
    p.add_argument("--population", required=True, help="population folder")
    p.add_argument("--coefficients", default=None, help="folder written by `buig fit`")
    p.add_argument("--spec", default=None, help="instead of --coefficients: a model spec with published weights "
                                                "(built in: scp2015, ape2011 ... ape2014; or a TOML file)")
    add_catalogue(p)
    p.add_argument("--out", required=True, help="output folder")

    p = add("bootstrap", cmd_bootstrap, "Monte Carlo bands on every municipality's budget and flags for "
                                        "unexplained surpluses (Dask).")
    add_outputs(p)
    p.add_argument("--population", required=True, help="population folder (workers read it themselves)")
    p.add_argument("--coefficients", help="folder written by `buig fit` (default: fit into OUT/fit)")
    p.add_argument("--spec", default="2019", help="model spec when fitting here (default: %(default)s)")
    p.add_argument("--regime", default="2019", help="regime of the household model: name or TOML file (default: %(default)s)")
    p.add_argument("--replicates", type=int, default=200, help="number of replicates (default: %(default)s)")
    p.add_argument("--method", choices=METHODS, default="parametric",
                   help="parametric: coefficient draws from the cluster-robust covariance; cluster: resampling "
                        "municipalities and refitting; score: the same resamples, one-step (score) refits; "
                        "outcome (published weights): the coefficients as they are, outcome randomness only")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="replicates per Dask task (default: "
                        + ", ".join(f"{n} for {m}" for m, n in DEFAULT_BATCH.items()) + ")")
    add_dask(p)
    p.add_argument("--level", type=float, default=0.01,
                   help="flag a surplus when p_explained (the probability under the spending band of spending at or "
                        "below the actual) is below this, per test (default: %(default)s)")
    p.add_argument("--fdr", type=float, default=None, metavar="Q",
                   help="flag instead when the Benjamini-Hochberg q-value is at most Q: false discovery rate control "
                        "over all municipalities (flags.parquet holds q_value either way)")
    p.add_argument("--between-sd", default="auto",
                   help="sd of municipality effects around the model in the spending band: auto (robust, from the "
                        "fixed effects), or a number; 0: coefficient and outcome randomness only (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes and recomputes nothing written)")

    p = add("cap", cmd_cap, "The Rob cap: claw back the surplus above kappa x budget of flagged municipalities.")
    add_outputs(p)
    p.add_argument("--bootstrap", required=True, help="folder written by `buig bootstrap` (flags.parquet)")
    p.add_argument("--kappa", type=float, required=True, help="surplus kept, as a fraction of the budget (e.g. 0.1)")
    p.add_argument("--redistribute", choices=("pro_rata", "deficit"), default="pro_rata",
                   help="give the clawed-back euros pro rata to budget, or to deficit municipalities (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder")

    p = add("run", cmd_run, "The main job: population (the built-in synthetic Netherlands unless --population "
                            "is given) -> fit -> predict -> budgets -> bootstrap bands -> flags -> cap -> report.html. "
                            "Every value used is written to OUT/scenario.toml; `buig run OUT/scenario.toml --out "
                            "OTHER` repeats the run exactly.")
    add_outputs(p, xlsx=True)
    p.add_argument("scenario", nargs="?", default=None,
                   help="scenario TOML file (default: the built-in engine/data/scenarios/default.toml; a file of your own "
                        "needs only the keys it changes)")
    p.add_argument("--out", required=True, help="output folder (a rerun of the same scenario resumes the bootstrap)")
    p.add_argument("--population", help="a population folder in the buig schema (default: generate the synthetic "
                                        "Netherlands into OUT/population)")
    p.add_argument("--households", type=int, default=None,
                   help=f"households of the synthetic population (scenario default: {REAL_HOUSEHOLDS:,})")
    p.add_argument("--replicates", type=int, default=None, help="bootstrap replicates (scenario default: 1000)")
    p.add_argument("--macrobudget", default=None, help="TB: 'regime' (the regime file's), 'spending' (the "
                                                        "population's spending in t) or EUR (scenario key "
                                                        "regime.macrobudget; default: the scenario's)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed S: the synthetic population's seed S and the bootstrap's seed S + 1")
    add_dask(p, default="0 unless a scheduler is given: in this process with Numba on every core, measured "
                        "fastest on one machine")

    p = add("sweep", cmd_sweep, "Sensitivity sweep: a grid of scenario variants (model spec, regime parameters, "
                                "kappa), each run with its bootstrap as a Dask task; writes comparison.csv and one "
                                "output folder per variant.")
    p.add_argument("sweep", help="sweep TOML file (examples: scripts/sweep_thresholds.toml, scripts/sweep_kappa.toml)")
    p.add_argument("--out", default=None, help="output folder (default: the sweep file's `out`, else "
                                               "sweep-<file name>)")
    p.add_argument("--households", type=int, default=None, help="override the households of the synthetic population")
    p.add_argument("--replicates", type=int, default=None, help="override the bootstrap replicates of every variant")
    p.add_argument("--macrobudget", default=None, help="TB of every variant: 'regime', 'spending' or EUR")
    p.add_argument("--seed", type=int, default=None, help="seed S: population seed S and bootstrap seed S + 1")
    add_dask(p)
    return parser


def command() -> int:
    """The ``buig`` command and ``python -m engine``: :func:`main` on ``sys.argv`` after the command's
    memory settings (:func:`engine.io.memory.command_line_memory`), which :func:`main` itself leaves alone."""
    command_line_memory()
    return main()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        address = getattr(args, "scheduler", None) or os.environ.get("DASK_SCHEDULER_ADDRESS") or ""
        tls = [getattr(args, k, None) for k in ("tls_ca_file", "tls_cert", "tls_key")]
        if any(tls):
            from engine.uncertainty.executor import use_tls

            if not address.startswith("tls://"):
                raise ValueError("--tls-ca-file, --tls-cert and --tls-key secure the connection to a scheduler: "
                                 "give its address as --scheduler tls://HOST:PORT" + (f", not {address}" if address else ""))
            use_tls(*tls)
        if address.startswith("tls://"):
            import dask

            if not dask.config.get("distributed.comm.tls.ca-file", None):
                raise ValueError(f"the scheduler at {address} speaks TLS: give --tls-ca-file, --tls-cert and --tls-key "
                                 "(or set them in Dask's configuration, distributed.comm.tls.*)")
        if hasattr(args, "workers"):
            from engine.uncertainty.executor import resolve_workers

            args.workers = resolve_workers(args.workers)
        return args.fn(args)
    except PopulationError as exc:
        print(f"buig: invalid input: {exc}", file=sys.stderr)
        return 2
    except EstimationError as exc:
        print(f"buig: cannot estimate the model: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"buig: {exc}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError) as exc:
        hint = (f"; is the Dask scheduler at {address} running? (leave --scheduler out for a local cluster)"
                if address and "scheduler" not in str(exc) else "")
        print(f"buig: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(("\n" if sys.stderr.isatty() else "")         # ends a progress bar's line
              + "buig: interrupted; run the same command again to resume (finished bootstrap batches are kept)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
