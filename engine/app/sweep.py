"""``buig sweep``: sensitivity sweeps over scenario variants, one Dask task per variant.

A sweep file (TOML) holds:

- ``scenario`` (optional): a base scenario file (default: the built-in default scenario);
- ``out`` (optional): the output folder (``--out`` overrides it);
- ``[base]``: keys of a scenario file shared by every variant (e.g. ``bootstrap.replicates``);
- ``[grid]``: dotted scenario keys with a list of values each; every combination is a variant;
- ``[[variant]]`` (optional): explicit variants, each with a ``name`` and dotted keys; with a
  ``[grid]`` too, every explicit variant is combined with every grid point.

Keys are those of a scenario file (``model.spec``, ``cap.kappa``, ``bootstrap.method``, ...)
and ``regime.overrides.<key of the regime file>`` (``objective_weight.historical_up_to``,
``objective_weight.objective_share`` (phi), ...). The population is the same for every
variant (generated once into ``OUT/population`` when synthetic); ``population.*`` keys may
not vary. Each model spec is fitted once, in this process as in ``buig run``, into
``OUT/fits``; then every variant runs the rest of :func:`engine.app.pipeline.run` (predict,
distribute, its bootstrap in the task's process, flags, cap, report) as one Dask task
into ``OUT/variants/NN-name``.
``OUT/comparison.csv`` has one row per variant: the varied keys, TB, spending and their gap,
the municipalities in deficit, the 2004 letter's statistics of the redistribution effect against
spending (mean absolute effect, share within +-10% and +-15%) before and after the cap, the
median relative width of the 95% budget band, the municipalities flagged and capped, the euros
clawed back and where they went (to municipalities in deficit, to others, unallocated), and
the vangnet before and after the cap (:func:`engine.app.pipeline.statistics`). Every task is a pure function of its scenario and
the fitted coefficients, so the results do not depend on the number of workers: a variant
equals ``buig run`` of its ``scenario.toml`` bit for bit.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.io.outputs import atomic_file, folder_lock, remove_stale, write_json
from engine.app.pipeline import check_scheduler, run, statistics
from engine.app.scenario import FIELDS, Scenario, load_scenario, validate_scenario, with_overrides
from engine.io.config import read_toml

STAT_COLUMNS = ("tb", "spending_eur", "gap_pct", "objective_cost_eur", "objective_vs_spending_pct", "municipalities",
                "deficit_municipalities", "mean_abs_effect_pct", "within_10_pct", "within_15_pct",
                "median_band_width_pct", "flagged", "capped", "clawed_back_eur", "vangnet_eur",
                "vangnet_municipalities", "capped_mean_abs_effect_pct", "capped_within_10_pct", "capped_within_15_pct",
                "received_by_deficit_eur", "received_by_others_eur", "unallocated_eur", "capped_vangnet_eur",
                "capped_vangnet_municipalities")
SWEEP_KEYS = ("scenario", "out", "base", "grid", "variant")


@dataclass(frozen=True)
class Variant:
    name: str
    folder: str                 # under OUT/variants
    changes: dict               # dotted key -> value
    scenario: Scenario


@dataclass(frozen=True)
class Sweep:
    path: Path | None
    base: Scenario
    variants: tuple[Variant, ...]
    keys: tuple[str, ...]       # the dotted keys that vary (columns of comparison.csv)
    out: str | None


@dataclass(frozen=True)
class SweepResult:
    out: Path
    sweep: Sweep
    rows: list[dict]            # one per variant, in the order of sweep.variants
    seconds: float


def _dotted(d: dict, prefix: str = "") -> dict:
    """Nested tables -> {"a.b.c": leaf}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= _dotted(v, key + ".")
        else:
            out[key] = v
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")[:60] or "variant"


def _short(key: str, value) -> str:
    v = Path(value).stem if key == "model.spec" and isinstance(value, str) else value
    return f"{key.split('.')[-1]}={v}"


def load_sweep(path: str | Path, **overrides) -> Sweep:
    """Read a sweep file; ``overrides`` are :class:`engine.app.scenario.Scenario` fields applied to the
    base of every variant (e.g. ``households=50_000, replicates=20``)."""
    path = Path(path)
    where = f"sweep {path}"
    data = read_toml(path, "sweep")
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; a sweep file has {', '.join(SWEEP_KEYS)}")
    here = path.resolve().parent
    scenario_file = data.get("scenario")
    base = load_scenario(None if not scenario_file else here / scenario_file)
    base = with_overrides(base, _dotted(data.get("base", {})), f"{where} [base]", base=here)
    fields = {name: f"{section}.{key}" for (section, key), (name, _) in FIELDS.items()}
    base = with_overrides(base, {fields[k]: v for k, v in overrides.items()}, "override")

    grid = _dotted(data.get("grid", {}))
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: [grid] key '{k}' needs a non-empty list of values, not {values!r}")
    explicit = data.get("variant", [])
    if not isinstance(explicit, list) or not all(isinstance(v, dict) for v in explicit):
        raise ValueError(f"{where}: variants are written as [[variant]] tables")
    if not grid and not explicit:
        raise ValueError(f"{where}: nothing to sweep; give a [grid] of values or [[variant]] tables")
    named = [(str(v.get("name", "")), _dotted({k: x for k, x in v.items() if k != "name"})) for v in explicit]
    named = named or [("", {})]
    keys: list[str] = []
    variants = []
    for name, changes in named:
        for combo in itertools.product(*grid.values()):
            point = dict(zip(grid, combo))
            clash = set(point) & set(changes)
            if clash:
                raise ValueError(f"{where}: key '{sorted(clash)[0]}' is both in [grid] and in variant {name!r}")
            every = changes | point
            bad = [k for k in every if k.startswith("population.")]
            if bad:
                raise ValueError(f"{where}: '{bad[0]}' cannot vary within a sweep (every variant runs on the same "
                                 "population); set it in [base] and run one sweep per population")
            for k in every:
                if k not in keys:
                    keys.append(k)
            label = ", ".join([name] * bool(name) + [_short(k, v) for k, v in point.items()]) or \
                ", ".join(_short(k, v) for k, v in changes.items()) or "base"
            i = len(variants) + 1
            scenario = with_overrides(base, every, f"{where} variant {label!r}", base=here)
            variants.append(Variant(name=label, folder=f"{i:02d}-{_slug(label)}", changes=every, scenario=scenario))
    return Sweep(path=path, base=base, variants=tuple(variants), keys=tuple(keys), out=data.get("out"))


# --------------------------------------------------------------------------- tasks

def variant_task(scenario: Scenario, out: str, coefficients: str, dask_threads: dict[str, int] | None = None) -> dict:
    """One variant's run (its bootstrap in this process); returns its statistics. As a Dask
    task (``dask_threads`` given) Numba gets this worker's share of the host's cores."""
    if dask_threads:
        from engine.uncertainty.executor import limit_numba_to_host_share

        limit_numba_to_host_share(dask_threads)
    return statistics(run(scenario, out, workers=0, coefficients=coefficients))


# --------------------------------------------------------------------------- driver

def run_sweep(sweep: Sweep, out: str | Path | None = None, *, workers: int | None = None,
              scheduler: str | None = None, progress: Callable[[str], Callable[[int, int], None]] | None = None,
              say: Callable[[str], None] | None = None) -> SweepResult:
    """Run every variant of ``sweep`` (one Dask task each; ``workers=0``: one by one in this
    process) and write ``comparison.csv`` and ``sweep.json`` into ``out``."""
    if workers != 0:
        check_scheduler(scheduler)
    t0 = time.perf_counter()
    tell = say or (lambda text: None)
    stem = sweep.path.stem if sweep.path else "sweep"
    out = Path(out or sweep.out or f"sweep-{stem}")
    base = sweep.base
    # every variant is checked before anything is written (its regime with overrides included)
    for v in sweep.variants:
        validate_scenario(v.scenario, f"variant {v.name!r}")
    if not base.synthetic and not Path(base.population).is_dir():
        raise FileNotFoundError(f"population folder {base.population} does not exist")
    with folder_lock(out, "sweep"):                      # one sweep per folder (refused at once)
        return _run_sweep(sweep, out, workers, scheduler, progress, tell, t0)


def _run_sweep(sweep: Sweep, out: Path, workers, scheduler, progress, tell, t0) -> SweepResult:
    from engine.model.fitted import fit_to_folder
    from engine.model.population import read_population
    from engine.world.synth import generate

    base = sweep.base
    remove_stale(out)                                   # temporary files of a killed sweep
    (out / "comparison.csv").unlink(missing_ok=True)    # written last: present = every variant of this sweep
    if base.synthetic:
        pop_dir = out / "population"
        tell(f"population: generating the synthetic Netherlands ({base.households:,} households) into {pop_dir}")
        generate(pop_dir, **base.generator_options(), progress=progress("synth") if progress else None)
    else:
        pop_dir = Path(base.population)
    pop_dir = pop_dir.resolve()
    variants = [with_overrides(v.scenario, {"population.source": str(pop_dir)}) for v in sweep.variants]
    specs = list(dict.fromkeys(s.spec for s in variants))
    fit_dirs = {spec: str((out / "fits" / f"{i + 1:02d}-{_slug(Path(spec).stem)}").resolve())
                for i, spec in enumerate(specs)}
    folders = [str((out / "variants" / v.folder).resolve()) for v in sweep.variants]
    write_json(out / "sweep.json", {"sweep": str(sweep.path), "population": str(pop_dir), "keys": list(sweep.keys),
                                    "variants": [{"name": v.name, "folder": f, "changes": v.changes}
                                                 for v, f in zip(sweep.variants, folders)]})
    tell(f"sweep: {len(variants)} variants x {base.replicates} replicates, {len(specs)} model spec(s)")
    bar = progress("sweep") if progress else None
    rows: list[dict | None] = [None] * len(variants)
    if bar:
        bar(0, len(variants))
    # The fits run here, as in `buig run`: their last bits depend on the BLAS thread count (Dask workers run
    # single-threaded BLAS), so fitting here keeps every variant bit-identical to `buig run` of its scenario.
    pop = read_population(pop_dir)
    for spec in specs:
        tell(f"fit: model spec {spec} into {fit_dirs[spec]}")
        fit_to_folder(pop, fit_dirs[spec], spec=spec, progress=progress("fit") if progress else None)
    del pop
    if workers == 0 and not scheduler:
        for i, s in enumerate(variants):
            rows[i] = variant_task(s, folders[i], fit_dirs[s.spec])
            if bar:
                bar(i + 1, len(variants))
    else:
        from dask.distributed import as_completed

        from engine.uncertainty.executor import client_for, dask_threads_per_host

        cores = os.cpu_count() or 1
        with client_for(cores if workers is None else workers, scheduler) as client:
            threads = dask_threads_per_host(client)
            tag = f"{os.getpid()}-{time.time_ns()}"
            futures = {client.submit(variant_task, s, folders[i], fit_dirs[s.spec], threads, pure=False,
                                     key=f"buig-variant-{i}-{tag}"): i for i, s in enumerate(variants)}
            done = 0
            for fut in as_completed(futures):
                rows[futures[fut]] = fut.result()
                done += 1
                if bar:
                    bar(done, len(variants))
    table = [{"variant": v.name, "folder": f"variants/{v.folder}",
              **{k: v.changes.get(k, "") for k in sweep.keys}, **row}
             for v, row in zip(sweep.variants, rows)]
    with atomic_file(out / "comparison.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["variant", "folder", *sweep.keys, *STAT_COLUMNS])
        w.writeheader()
        for r in table:
            w.writerow({k: (repr(x) if isinstance(x, float) else x) for k, x in r.items()})
    return SweepResult(out=out, sweep=sweep, rows=table, seconds=time.perf_counter() - t0)


def format_comparison(r: SweepResult) -> str:
    """The comparison table on one screen."""
    width = max(12, max(len(row["variant"]) for row in r.rows))      # names in full, never cut short
    head = (f"{'variant':<{width}} {'gap':>6} {'mean|HE|':>9} {'<=10%':>6} {'<=15%':>6} {'band':>6} {'flagged':>8} "
            f"{'capped':>7} {'moved':>8} {'to def.':>8} {'capped|HE|':>11} {'vangnet':>8} {'after':>8}")
    lines = [head, "-" * len(head)]
    for row in r.rows:
        lines.append(f"{row['variant']:<{width}} {row['gap_pct']:>5.1f}% {row['mean_abs_effect_pct']:>8.1f}% "
                     f"{row['within_10_pct']:>5.0f}% {row['within_15_pct']:>5.0f}% {row['median_band_width_pct']:>5.1f}% "
                     f"{row['flagged']:>8} {row['capped']:>7} {row['clawed_back_eur'] / 1e6:>8.2f} "
                     f"{row['received_by_deficit_eur'] / 1e6:>8.2f} {row['capped_mean_abs_effect_pct']:>10.1f}% "
                     f"{row['vangnet_eur'] / 1e6:>8.2f} {row['capped_vangnet_eur'] / 1e6:>8.2f}")
    lines.append("")
    lines.append("gap: (TB - spending) / TB; mean|HE|: mean absolute redistribution effect against spending; <=10%, "
                 "<=15%: share of municipalities within; band: median width of the 95% budget band, % of the budget; "
                 "moved: EUR mln clawed back by the cap, to def.: of which to municipalities in deficit; capped|HE|: "
                 "mean |effect| of the capped budgets; vangnet, after: EUR mln before and after the cap")
    lines.append(f"{r.out / 'comparison.csv'}; per variant {r.out / 'variants'}/NN-name/ (report.html each); "
                 f"{len(r.rows)} variants in {r.seconds:.0f} s")
    return "\n".join(lines)
