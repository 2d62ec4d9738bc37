"""``buig run``: the main job, from a population to budgets with bands, flags, the cap and a report.

    population -> fit -> predict -> distribute -> bootstrap -> flags -> cap -> report

:func:`run` takes a :class:`engine.app.scenario.Scenario` and writes every value it used to
``OUT/scenario.toml``, so ``buig run OUT/scenario.toml --out OTHER`` repeats a run bit for bit.

Files in ``OUT``: ``scenario.toml``, ``regime.toml`` (the regime file used, overrides
applied), ``population/`` (synthetic only), ``coefficients.parquet``, ``fit.json``,
``covariances.npz``, ``municipal_costs.parquet``, ``rekentool.parquet``,
``budgets.parquet``, ``redistribution.csv``, ``replicates.parquet``, ``bands.parquet``,
``flags.parquet``, ``bootstrap.json`` and ``batches/``, ``capped_budgets.parquet``,
``rekentool.xlsx``, ``report.html`` and ``run.json`` (stage times, machine); on request a
CSV copy of every Parquet table (``NAME.csv``).

Every file is written under a temporary name and renamed (:mod:`engine.io.outputs`), and
``run.json`` is the completion record: :func:`run` deletes it before it replaces the first
output and writes it after the last, so a folder with ``run.json`` holds the outputs of that
one run only, even after a run into it was killed; without it the folder may mix two runs.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from engine.app.scenario import Scenario, load_scenario, scenario_regime, validate_scenario, write_regime
from engine.app.labels import check_language
from engine.io.outputs import atomic_dir, folder_lock, remove_stale, write_csv_copies, write_json, write_text
from engine.model.schema import check_finite

# --------------------------------------------------------------------------- API steps

def distribute(pop, costs, regime="2019", macrobudget=None):
    """Budgets of a regime on a population: :class:`engine.app.budget_files.BudgetResult`.

    ``costs``: a :class:`engine.model.predict.Prediction`, an array of objective costs in the
    order of the population's municipalities, or a folder with ``municipal_costs.parquet``
    (ignored by a regime of the municipal model). ``regime``: a name, a TOML file or a
    :class:`engine.rules.regime.Regime`. ``macrobudget``: an amount in EUR or ``"spending"``.
    """
    from engine.app.budget_files import compute_budget
    from engine.rules.regime import Regime, load_regime

    regime = regime if isinstance(regime, Regime) else load_regime(regime)
    cost = getattr(costs, "objective_cost", costs)
    return compute_budget(pop, regime, cost, macrobudget)


# --------------------------------------------------------------------------- the job

@dataclass(frozen=True)
class RunResult:
    """What :func:`run` computed (the population itself is not kept: it is in ``population_dir``)."""

    out: Path
    scenario: Scenario
    population_dir: Path
    synthetic: bool
    households: int
    fit: object                 # engine.model.fitted.ModelFit
    prediction: object          # engine.model.predict.Prediction
    budget: object              # engine.app.budget_files.BudgetResult
    bootstrap: object           # engine.uncertainty.bootstrap.BootstrapResult
    capped: object              # engine.rules.cap.Capped
    flagged: np.ndarray
    stages: dict                # stage -> seconds
    report: Path | None
    bands: object = None        # bands.parquet as written (engine.uncertainty.summaries.bands_table)


OUTPUTS = ("scenario.toml", "regime.toml", "coefficients.parquet", "fit.json", "covariances.npz",
           "municipal_costs.parquet", "rekentool.parquet", "budgets.parquet", "redistribution.csv",
           "replicates.parquet", "bands.parquet", "flags.parquet", "capped_budgets.parquet", "rekentool.xlsx",
           "report.html", "run.json")
FORMATS = ("parquet", "csv")
FIT_FILES = ("coefficients.parquet", "fit.json", "covariances.npz")


def _check_folder(out: Path, s: Scenario) -> None:
    """Refuse a folder whose bootstrap results belong to another scenario (a rerun would resume them)."""
    has_results = (out / "bootstrap.json").exists() or (out / "batches").exists()
    f = out / "scenario.toml"
    if not has_results:
        return
    if not f.exists():
        raise ValueError(f"{out} holds bootstrap results but no scenario.toml: use a new --out folder")
    try:
        old = load_scenario(f)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"{out} holds a scenario.toml that cannot be read ({exc}); use a new --out folder") from None
    if old != s:
        a, b = old.to_dict(), s.to_dict()
        diff = [f"{sec}.{k}" for sec in b for k in b[sec] if a.get(sec, {}).get(k) != b[sec][k]]
        raise ValueError(f"{out} holds a run of another scenario (it differs in {', '.join(diff) or 'population'}); "
                         f"use a new --out folder, or delete {out} to replace that run")


def _check_total_budget(s: Scenario, regime, pop) -> None:
    """The TB of ``regime`` (the scenario's, overrides applied) is positive and finite for this
    population, before anything is written (for a synthetic one of ``households`` households,
    when TB does not depend on its spending)."""
    from engine.rules.budget import total_budget

    if pop is not None:
        total_budget(regime, float(pop.municipalities.column("households").to_numpy().sum()),
                     float(pop.municipalities.column("spending_t").to_numpy().sum()))
    elif regime.macrobudget is not None:
        total_budget(regime, float(s.households), 0.0)


def _write_scenario(out: Path, s: Scenario) -> None:
    write_text(out / "scenario.toml", s.to_toml())


def _copy_fit(src: Path, out: Path) -> None:
    if src.resolve() == out.resolve():
        return
    with atomic_dir(out) as tmp:
        for name in FIT_FILES:
            shutil.copyfile(src / name, tmp / name)


def run(scenario: Scenario, out: str | Path, **options) -> RunResult:
    """Run ``scenario`` into folder ``out`` (see the module docstring for the files).

    The bootstrap runs in this process with Numba on every core (``workers=None`` without a
    scheduler, or ``workers=0``: on 2 busy cores 1000 replicates took 34-35 s here against
    43-68 s on a 2-worker ``LocalCluster``, and the run peaked at 1.3 GiB against 3.2 GiB,
    since every Dask worker loads the population); ``workers=N``: a ``LocalCluster`` of N workers; ``scheduler`` (or
    ``DASK_SCHEDULER_ADDRESS``): a Dask cluster, as in :func:`engine.uncertainty.bootstrap.run_bootstrap`. ``coefficients``: a folder written by ``buig fit`` for the scenario's spec on
    the same population, used instead of fitting (copied into ``out``). ``progress(label)``
    returns a ``(done, total)`` callback for a long stage; ``say`` gets one line per stage.
    A rerun into the same folder with the same scenario resumes the bootstrap. One run per
    folder: a second run (or bootstrap, sweep) into ``out`` while this one runs is refused at once.
    ``xlsx``: write ``rekentool.xlsx``; ``formats``: ``("parquet", "csv")`` adds a CSV copy next
    to every Parquet table (a run without it removes CSV copies of an earlier one);
    ``labels``: household types in the report and workbook as codes (``en``) or Dutch (``nl``).
    """
    with folder_lock(out, "run"):      # an OS lock on the folder itself: a failed check adds no file
        return _run(scenario, out, **options)


def _run(scenario: Scenario, out: str | Path, *, workers: int | None = None, scheduler: str | None = None,
         coefficients: str | Path | None = None, report: bool = True, xlsx: bool = True, formats=("parquet",),
         labels: str = "en", progress: Callable[[str], Callable[[int, int], None]] | None = None,
         say: Callable[[str], None] | None = None) -> RunResult:
    from engine.uncertainty.bootstrap import run_bootstrap
    from engine.uncertainty.settings import Settings
    from engine.uncertainty.summaries import write_results
    from engine.app.budget_files import budget_table, compute_budget, write_budget
    from engine.app.workbook import FILE as WORKBOOK, write_rekentool_workbook
    from engine.rules.cap import capped_table
    from engine.model.design import households_from_population
    from engine.model.fitted import fit_model, read_fit, save_fit
    from engine.model.population import read_population
    from engine.model.predict import municipal_costs_table, predict, rekentool_table
    from engine.model.spec import load_spec
    from engine.world.synth import generate

    out = Path(out)
    bar = progress or (lambda label: None)
    tell = say or (lambda text: None)
    stages: dict[str, float] = {}
    t_start = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        stages[name] = stages.get(name, 0.0) + now - t
        t = now

    _check_folder(out, scenario)
    check_language(labels)
    if set(formats) - set(FORMATS) or "parquet" not in formats:
        raise ValueError(f"--format must be parquet or csv (Parquet is always written), not {','.join(formats)}")
    if workers is None and not (scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")):
        workers = 0
    if workers != 0:
        check_scheduler(scheduler)
    pop_dir = out / "population" if scenario.synthetic else Path(scenario.population)
    if not scenario.synthetic and not pop_dir.is_dir():
        raise FileNotFoundError(f"population folder {pop_dir} does not exist: give a folder with households.parquet, "
                                "neighbourhoods.parquet and municipalities.parquet (see README), or leave "
                                "--population out to generate the synthetic Netherlands")
    # Every input is checked before anything is written: a run that fails on bad input leaves OUT as it was.
    validate_scenario(scenario)
    if not scenario.synthetic:
        pop = read_population(pop_dir)
        lap("read + validate")
    regime_text, regime = scenario_regime(scenario)       # parsed once for the run
    _check_total_budget(scenario, regime, None if scenario.synthetic else pop)
    fit = None                                # estimated (or read) before anything is written when it can be
    if coefficients is not None:
        fit = read_fit(coefficients)
        want = load_spec(scenario.spec)
        if fit.spec != want:          # by content: the same spec in another folder is the same spec
            raise ValueError(f"coefficients in {coefficients} are of model spec {fit.spec.name} (recorded in its "
                             f"fit.json), which differs from the scenario's {want.path}")
    elif not scenario.synthetic:
        tell(f"fit: model spec {scenario.spec}")
        fit = fit_model(pop, scenario.spec, progress=bar("fit"))
        lap("fit")
    from kernels import cache_is_warm

    if not cache_is_warm():
        tell(f"first run: Numba compiles the kernels as they are first used (about 25 s more on 2 cores, once; "
             f"cached in {os.environ['NUMBA_CACHE_DIR']})")
    remove_stale(out)                        # temporary files of a killed run
    # run.json is the completion record: gone before the first output is replaced, written after the
    # last, so that while it exists every output in OUT belongs to the run it describes.
    (out / "run.json").unlink(missing_ok=True)
    regime_path = write_regime(scenario, out, regime_text)
    regime = dataclasses.replace(regime, path=regime_path)   # as read back from the file written
    _write_scenario(out, scenario)
    if scenario.synthetic:
        tell(f"population: generating the synthetic Netherlands ({scenario.households:,} households) into {pop_dir}")
        generate(pop_dir, **scenario.generator_options(), progress=bar("synth"))
        lap("population")
        pop = read_population(pop_dir)
        lap("read + validate")
    households, synthetic = pop.households.num_rows, pop.synthetic

    if coefficients is None:
        if fit is None:
            tell(f"fit: model spec {scenario.spec}")
            fit = fit_model(pop, scenario.spec, progress=bar("fit"))
        save_fit(fit, out, catalogue=pop.catalogue)
    else:
        _copy_fit(Path(coefficients), out)
    lap("fit")

    hh = households_from_population(pop)
    pred = predict(hh, fit)
    check_finite("objective cost", pred.objective_cost, hh.mun_codes)
    names = pop.municipalities.column("name").to_pylist()
    with atomic_dir(out) as tmp:
        pq.write_table(municipal_costs_table(pred, names), tmp / "municipal_costs.parquet")
        pq.write_table(rekentool := rekentool_table(pred), tmp / "rekentool.parquet")
    del hh
    lap("predict")

    budget = compute_budget(pop, regime, costs=out)
    write_budget(budget, out)
    if xlsx:
        write_rekentool_workbook(out / WORKBOOK, rekentool, pop.municipalities,
                                 budget_table(budget), labels=labels, synthetic=pop.synthetic)
    else:
        (out / WORKBOOK).unlink(missing_ok=True)
    del pop                                   # the bootstrap reads the population itself
    lap("distribute")

    tell(f"bootstrap: {scenario.replicates} {scenario.method} replicates")
    settings = Settings(population=str(pop_dir), coefficients=str(out), regime=str(regime_path),
                        method=scenario.method, seed=scenario.bootstrap_seed,
                        between_sd=scenario.bootstrap_between_sd())
    boot = run_bootstrap(settings, out, replicates=scenario.replicates, batch_size=scenario.batch_size,
                         workers=workers, scheduler=scheduler, progress=bar("bootstrap"))
    written = write_results(boot, out, level=scenario.flag_level, fdr=scenario.fdr())
    lap("bootstrap")

    flags = written["flags"]
    table, capped = capped_table(flags, scenario.kappa, scenario.redistribute, budget.regime.vangnet)
    with atomic_dir(out) as tmp:
        pq.write_table(table, tmp / "capped_budgets.parquet")
    lap("flags + cap")

    report_path = None
    if report:
        from engine.app.report.page import write_report

        report_path = write_report(out, labels=labels)
        lap("report")
    parquet = [name for name in OUTPUTS if name.endswith(".parquet")]
    if "csv" in formats:
        write_csv_copies(out, parquet)
    else:
        for name in parquet:
            (out / name).with_suffix(".csv").unlink(missing_ok=True)
    stages["total"] = time.perf_counter() - t_start
    write_json(out / "run.json", {
        "scenario": scenario.to_dict(), "population": str(pop_dir.resolve()), "synthetic": synthetic,
        "households": households, "workers": workers, "scheduler": scheduler,
        "coefficients_from": None if coefficients is None else str(Path(coefficients).resolve()),
        "stages_seconds": stages, "machine": machine()})
    return RunResult(out=out, scenario=scenario, population_dir=pop_dir, synthetic=synthetic, households=households,
                     fit=fit, prediction=pred, budget=budget, bootstrap=boot, capped=capped,
                     flagged=flags.column("flagged").to_numpy(zero_copy_only=False), stages=stages,
                     report=report_path, bands=written["bands"])


def check_scheduler(address: str | None) -> None:
    """Fail fast, before any work, when a Dask scheduler is named but cannot be reached."""
    import socket
    from urllib.parse import urlsplit

    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        return
    u = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = u.hostname, u.port
    except ValueError:
        host = port = None
    if u.scheme not in ("tcp", "tls") or not host or not port:
        return                                           # other transports: let Dask try
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach the Dask scheduler at {address} ({exc}); start it (`dask scheduler`), "
                              "check the address, or leave --scheduler out to use a local cluster") from None


def machine() -> dict:
    from engine import __version__

    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"buig": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "cores": os.cpu_count(), "load_average": load}


# --------------------------------------------------------------------------- summaries

def statistics(r: RunResult) -> dict:
    """The headline numbers of a run (also one row of a sweep's comparison table)."""
    from engine.uncertainty.summaries import bands_table
    from engine.rules.redistribution import effects, summarise
    from engine.rules.vangnet import vangnet_payout

    eff = summarise(r.budget.effects.pct)
    bands = r.bands if r.bands is not None else bands_table(r.bootstrap)
    point = bands.column("point_budget").to_numpy()
    pos = point > 0                            # a municipality without budget has no relative width
    width = (bands.column("budget_q97_5").to_numpy()[pos] - bands.column("budget_q2_5").to_numpy()[pos]) / point[pos]
    b, d, c = r.budget.budgets, r.budget.data, r.capped
    spending = float(d.spending_t.sum())
    after = summarise(effects(c.budget, d.spending_t, d.inhabitants).pct)
    vangnet_capped = vangnet_payout(d.spending_t, c.budget, r.budget.regime.vangnet)
    in_deficit = d.spending_t > b.budget
    return {"tb": b.tb, "spending_eur": spending, "gap_pct": 100 * (b.tb - spending) / b.tb,
            "objective_cost_eur": float(r.budget.objective_cost.sum()),
            "objective_vs_spending_pct": 100 * (float(r.budget.objective_cost.sum()) / spending - 1),
            "municipalities": int(len(b.budget)), "deficit_municipalities": int(in_deficit.sum()),
            "mean_abs_effect_pct": eff["mean_abs_effect_pct"], "within_10_pct": eff["within_10_pct"],
            "within_15_pct": eff["within_15_pct"], "median_band_width_pct": float(100 * np.median(width)),
            "flagged": int(r.flagged.sum()), "capped": int((c.clawed_back > 0).sum()),
            "clawed_back_eur": c.total, "vangnet_eur": float(r.budget.vangnet.sum()),
            "vangnet_municipalities": int((r.budget.vangnet > 0).sum()),
            "capped_mean_abs_effect_pct": after["mean_abs_effect_pct"], "capped_within_10_pct": after["within_10_pct"],
            "capped_within_15_pct": after["within_15_pct"],
            "received_by_deficit_eur": float(c.received[in_deficit].sum()),
            "received_by_others_eur": float(c.received[~in_deficit].sum()), "unallocated_eur": c.unallocated,
            "capped_vangnet_eur": float(vangnet_capped.sum()),
            "capped_vangnet_municipalities": int((vangnet_capped > 0).sum())}


def money_lines(st: dict) -> list[str]:
    """TB against spending, municipalities in deficit, the vangnet and the objective cost, beside the
    published national outcomes (``engine/data/published``): a population whose money does not add up
    shows at once."""
    from engine.world.published import facts

    f = facts()
    gap = st["gap_pct"]
    word = "surplus" if gap >= 0 else "deficit"
    lines = [f"TB EUR {st['tb'] / 1e6:,.1f} mln, spending in t EUR {st['spending_eur'] / 1e6:,.1f} mln: national "
             f"{word} {abs(gap):.1f}% of TB (published 2016-2022: {100 * f.gap_low:+.1f}% to "
             f"{100 * f.gap_high:+.1f}%)",
             f"{st['deficit_municipalities']} of {st['municipalities']} municipalities in deficit "
             f"({100 * st['deficit_municipalities'] / max(st['municipalities'], 1):.0f}%; published: "
             f"{100 * f.deficit_share_2012:.0f}% in 2012, more than {100 * f.deficit_share_2021:.0f}% in 2021); "
             f"vangnet EUR {st['vangnet_eur'] / 1e6:,.1f} mln to {st['vangnet_municipalities']} municipalities "
             f"(published: {f.vangnet_low}-{f.vangnet_high} requests a year, 2016-2018)",
             f"objective cost EUR {st['objective_cost_eur'] / 1e6:,.1f} mln, {st['objective_vs_spending_pct']:+.1f}% "
             "against spending"]
    note = money_note(gap, "a scenario can set [regime] macrobudget = \"spending\"")
    return lines + ([note] if note else [])


def money_note(gap_pct: float, remedy: str) -> str | None:
    """A note when TB and spending (``gap_pct``: (TB - spending) / TB in %) differ by more than the
    published national outcomes of 2016-2022 do (``engine/data/published``), else None."""
    from engine.world.published import facts

    f = facts()
    if f.gap_low <= gap_pct / 100 <= f.gap_high:
        return None
    return (f"note: TB and spending differ by {abs(gap_pct):.0f}% of TB, outside the published range: this "
            f"population's money does not add up to the macro budget ({remedy})")


def format_summary(r: RunResult) -> str:
    """One screen: time per stage, the headline numbers and where the outputs are."""
    s, st = r.scenario, statistics(r)
    lines = []
    if r.synthetic:
        lines.append("SYNTHETIC POPULATION: generated by buig, calibrated to CBS aggregates of 2017; not real "
                     "households or spending.")
    lines.append(f"{r.households:,} households in {st['municipalities']} municipalities ({r.population_dir}); "
                 f"spec {Path(s.spec).stem}, regime {Path(s.regime).stem}"
                 f"{' with overrides' if s.regime_overrides else ''}")
    lines.append("")
    lines.append(f"{'stage':<18}{'seconds':>9}")
    for name, sec in r.stages.items():
        if name == "total":
            lines.append(f"{'-' * 27}")
        lines.append(f"{name:<18}{sec:>9.1f}")
    lines.append("")
    lines.append(r.budget.macrobudget_text)
    lines += money_lines(st)
    lines.append(f"redistribution effect against spending: mean |effect| {st['mean_abs_effect_pct']:.1f}%, "
                 f"{st['within_10_pct']:.0f}% of municipalities within +-10%, {st['within_15_pct']:.0f}% within +-15%")
    boot = r.bootstrap
    lines.append(f"bootstrap: {boot.replicates} {s.method} replicates ({boot.computed} computed now); median band "
                 f"width (95%) {st['median_band_width_pct']:.1f}% of the budget")
    rule = f"false discovery rate {s.fdr():g}" if s.fdr() else f"level {s.flag_level:g} per test"
    lines.append(f"flags: {st['flagged']} municipalities with a surplus the model does not explain ({rule}); "
                 f"cap kappa {s.kappa:g}: {st['capped']} capped, EUR "
                 f"{st['clawed_back_eur'] / 1e6:,.2f} mln redistributed ({s.redistribute}; EUR "
                 f"{st['received_by_deficit_eur'] / 1e6:,.2f} mln to municipalities in deficit); vangnet after the "
                 f"cap EUR {st['capped_vangnet_eur'] / 1e6:,.1f} mln to {st['capped_vangnet_municipalities']}")
    if st["unallocated_eur"] > 0:
        lines.append(f"cap: every municipality is capped, so EUR {st['unallocated_eur'] / 1e6:,.2f} mln clawed back "
                     "goes to no municipality (back to the macro budget)")
    lines.append("")
    out = r.out
    if r.report is not None:
        lines.append(f"report:  {r.report}  (open in a browser; one file, no network needed)")
    if (out / "rekentool.xlsx").exists():
        lines.append(f"excel:   {out / 'rekentool.xlsx'}  (per municipality and household type, filterable)")
    lines.append(f"tables:  {out}/ budgets.parquet, redistribution.csv, bands.parquet, flags.parquet, "
                 "capped_budgets.parquet, rekentool.parquet, municipal_costs.parquet, replicates.parquet")
    lines.append(f"repeat:  buig run {out / 'scenario.toml'} --out OTHER_FOLDER")
    return "\n".join(lines)
