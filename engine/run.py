"""``buig run``: the main job, from a population to budgets with bands, flags, the cap and a report.

    population -> fit -> predict -> distribute -> bootstrap -> flags -> cap -> report

A :class:`Scenario` holds every value of a run: the population (the built-in synthetic
Netherlands or a folder), the model spec, the regime (with optional overrides of its
keys), the bootstrap settings, the cap level and its redistribution rule. Scenario files
are TOML (``engine/scenarios/default.toml`` documents every key; a file of one's own holds
only the keys it changes). :func:`run` writes every value it used to ``OUT/scenario.toml``,
so ``buig run OUT/scenario.toml --out OTHER`` repeats a run bit for bit.

Files in ``OUT``: ``scenario.toml``, ``regime.toml`` (the regime file used, overrides
applied), ``population/`` (synthetic only), ``coefficients.parquet``, ``fit.json``,
``covariances.npz``, ``municipal_costs.parquet``, ``rekentool.parquet``,
``budgets.parquet``, ``redistribution.csv``, ``replicates.parquet``, ``bands.parquet``,
``flags.parquet``, ``bootstrap.json`` and ``batches/``, ``capped_budgets.parquet``,
``report.html`` and ``run.json`` (stage times, machine).

Every file is written under a temporary name and renamed (:mod:`engine.outputs`), and
``run.json`` is the completion record: :func:`run` deletes it before it replaces the first
output and writes it after the last, so a folder with ``run.json`` holds the outputs of that
one run only, even after a run into it was killed; without it the folder may mix two runs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import platform
import re
import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from engine.outputs import atomic_dir, remove_stale, write_json, write_text

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
DEFAULT_SCENARIO = SCENARIOS / "default.toml"
SYNTHETIC = "synthetic"

# (section, key) of the scenario file -> (Scenario field, type)
FIELDS: dict[tuple[str, str], tuple[str, type]] = {
    ("population", "source"): ("population", str),
    ("population", "households"): ("households", int),
    ("population", "seed"): ("population_seed", int),
    ("population", "planted"): ("planted", int),
    ("population", "planted_effect"): ("planted_effect", float),
    ("population", "policy_sd"): ("policy_sd", float),
    ("model", "spec"): ("spec", str),
    ("regime", "name"): ("regime", str),
    ("regime", "overrides"): ("regime_overrides", dict),
    ("bootstrap", "method"): ("method", str),
    ("bootstrap", "replicates"): ("replicates", int),
    ("bootstrap", "batch_size"): ("batch_size", int),
    ("bootstrap", "seed"): ("bootstrap_seed", int),
    ("bootstrap", "flag_level"): ("flag_level", float),
    ("bootstrap", "between_sd"): ("between_sd", object),
    ("cap", "kappa"): ("kappa", float),
    ("cap", "redistribute"): ("redistribute", str),
}
GENERATOR_KEYS = ("households", "seed", "planted", "planted_effect", "policy_sd")

# Regime keys a scenario may add although the base regime file lacks them (the ex-ante cap of
# 2005.toml switched on elsewhere); below these tables any name is a new entry.
REGIME_OPTIONAL = ("ex_ante_cap.theta", "ex_ante_cap.band_to", "ex_ante_cap.band_share",
                   "ex_ante_cap.financing", "ex_ante_cap.variants")
REGIME_MAPS = ("vangnet.rules", "ex_ante_cap.variants", "budget.deductions")


# --------------------------------------------------------------------------- TOML out

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _toml_str(k)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) if not math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def dump_toml(data: dict, header: str = "") -> str:
    """``data`` (nested dicts of scalars and lists) as TOML that ``tomllib`` reads back equal."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]

    def table(d: dict, path: tuple[str, ...]) -> None:
        if path:
            lines.append(("\n" if lines else "") + "[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in d.items():
            if not isinstance(v, dict):
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                table(v, path + (k,))

    table(data, ())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- scenario

@dataclass(frozen=True)
class Scenario:
    """Every value of a run (see ``engine/scenarios/default.toml`` for their meaning)."""

    population: str                 # "synthetic" or a population folder
    households: int
    population_seed: int
    planted: int
    planted_effect: float
    policy_sd: float
    spec: str
    regime: str
    regime_overrides: dict
    method: str
    replicates: int
    batch_size: int
    bootstrap_seed: int
    flag_level: float
    between_sd: str | float
    kappa: float
    redistribute: str

    @property
    def synthetic(self) -> bool:
        return self.population == SYNTHETIC

    def to_dict(self) -> dict:
        """The scenario as the nested tables of a scenario file (generator keys only when synthetic)."""
        out: dict[str, dict] = {}
        for (section, key), (name, _) in FIELDS.items():
            if section == "population" and key in GENERATOR_KEYS and not self.synthetic:
                continue
            out.setdefault(section, {})[key] = copy.deepcopy(getattr(self, name))
        return out

    def to_toml(self) -> str:
        return dump_toml(self.to_dict(), header=(
            "buig scenario: every value used by the run that wrote this file.\n"
            "Repeat the run exactly: buig run THIS_FILE --out OTHER_FOLDER\n"
            "Meaning of the keys: engine/scenarios/default.toml"))

    def bootstrap_between_sd(self) -> str:
        return "auto" if self.between_sd == "auto" else repr(float(self.between_sd))


def _builtin(value: str, folder: Path) -> bool:
    return "/" not in value and "\\" not in value and not value.endswith(".toml") and (folder / f"{value}.toml").exists()


def _resolve(section: str, key: str, value, base: Path | None):
    """Paths in a scenario file are relative to its folder; written back as absolute paths."""
    from engine.rules import HERE as REGIMES
    from engine.spec import HERE as SPECS

    where = (section, key)
    is_path = isinstance(value, str) and (where == ("population", "source") and value != SYNTHETIC
                                          or where == ("model", "spec") and not _builtin(value, SPECS)
                                          or where == ("regime", "name") and not _builtin(value, REGIMES))
    if not is_path:
        return value
    p = Path(value).expanduser()
    return str((p if p.is_absolute() or base is None else base / p).resolve())


def _typed(where: str, key: str, value, kind: type):
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: key '{key}': expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: key '{key}': expected a number, got {value!r}")
        return float(value)
    if kind in (str, dict) and not isinstance(value, kind):
        raise ValueError(f"{where}: key '{key}': expected {'a string' if kind is str else 'a table'}, got {value!r}")
    return value


def _read_toml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file {path}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} file {path}: not valid TOML: {exc}") from None


def _known_keys() -> str:
    return ", ".join(f"{s}.{k}" for s, k in FIELDS)


def _apply_tables(values: dict, data: dict, where: str, base: Path | None) -> None:
    """Set ``values`` (field -> value) from the nested tables of a scenario file."""
    for section, table in data.items():
        if any(s == section for s, _ in FIELDS) and not isinstance(table, dict):
            raise ValueError(f"{where}: '{section}' must be a table ([{section}] with its keys), not {table!r}")
        if not isinstance(table, dict) or not any(s == section for s, _ in FIELDS):
            raise ValueError(f"{where}: unknown section {section!r}; a scenario has the tables "
                             f"population, model, regime, bootstrap and cap (keys: {_known_keys()})")
        for key, value in table.items():
            if (section, key) not in FIELDS:
                raise ValueError(f"{where}: unknown key '{section}.{key}'; known keys: {_known_keys()}")
            name, kind = FIELDS[(section, key)]
            values[name] = _typed(where, f"{section}.{key}", _resolve(section, key, value, base), kind)


@functools.cache
def _synthetic_municipalities() -> int:
    from engine.synth import load_geography

    return len(load_geography().mun_code)


def validate_scenario(s: Scenario, where: str = "scenario") -> Scenario:
    """Check the values that the stages would reject late, the model spec and the regime with its
    overrides included; the error names the key."""
    from engine.bootstrap import METHODS
    from engine.cap import REDISTRIBUTION
    from engine.spec import load_spec

    def bad(key: str, problem: str) -> ValueError:
        return ValueError(f"{where}: key '{key}': {problem}")

    if s.method not in METHODS:
        raise bad("bootstrap.method", f"{s.method!r} is not one of {', '.join(METHODS)}")
    if s.redistribute not in REDISTRIBUTION:
        raise bad("cap.redistribute", f"{s.redistribute!r} is not one of {', '.join(REDISTRIBUTION)}")
    for key, v in (("bootstrap.replicates", s.replicates), ("bootstrap.batch_size", s.batch_size)):
        if v < 1:
            raise bad(key, f"must be at least 1, not {v}")
    for key, v in (("bootstrap.seed", s.bootstrap_seed), ("population.seed", s.population_seed)):
        if v < 0:
            raise bad(key, f"a seed must be >= 0, not {v}")
    if not 0 < s.flag_level < 1:
        raise bad("bootstrap.flag_level", f"must lie between 0 and 1, not {s.flag_level}")
    if not 0 <= s.kappa <= 1:                 # a surplus never exceeds the budget: kappa >= 1 caps nothing
        raise bad("cap.kappa", f"must lie between 0 and 1 (a fraction of the budget), not {s.kappa}")
    if s.between_sd != "auto" and (isinstance(s.between_sd, bool) or not isinstance(s.between_sd, (int, float))
                                   or not s.between_sd >= 0):
        raise bad("bootstrap.between_sd", f"must be \"auto\" or a number >= 0, not {s.between_sd!r}")
    if s.synthetic:
        for key, v in (("population.households", s.households), ("population.planted", s.planted),
                       ("population.policy_sd", s.policy_sd)):
            if not v >= 0:
                raise bad(key, f"must be >= 0, not {v}")
        if s.households < _synthetic_municipalities():
            raise bad("population.households", f"the synthetic Netherlands needs at least "
                      f"{_synthetic_municipalities()} households (one per municipality), not {s.households}")
    try:
        load_spec(s.spec)
    except (FileNotFoundError, ValueError) as exc:
        raise bad("model.spec", str(exc)) from None
    try:
        regime_toml(s)
    except FileNotFoundError as exc:
        raise bad("regime.name", str(exc)) from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return s


def load_scenario(path: str | Path | None = None, **overrides) -> Scenario:
    """The scenario of a file (missing keys from the built-in default), then ``overrides``.

    ``overrides`` are :class:`Scenario` field names, e.g. ``households=50_000,
    replicates=20``; a relative ``population``, ``spec`` or ``regime`` path in them is
    relative to the current folder. Errors name the file and the key.
    """
    values: dict = {}
    _apply_tables(values, _read_toml(DEFAULT_SCENARIO, "scenario"), str(DEFAULT_SCENARIO), DEFAULT_SCENARIO.parent)
    where = "scenario"
    if path is not None:
        path = Path(path)
        where = f"scenario {path}"
        _apply_tables(values, _read_toml(path, "scenario"), where, path.resolve().parent)
    fields = {name: (section, key, kind) for (section, key), (name, kind) in FIELDS.items()}
    for name, value in overrides.items():
        if name not in fields:
            raise TypeError(f"load_scenario: unknown field {name!r}; fields: {', '.join(fields)}")
        section, key, kind = fields[name]
        values[name] = _typed("override", name, _resolve(section, key, value, Path.cwd()), kind)
    return validate_scenario(Scenario(**values), where)


def with_overrides(s: Scenario, changes: dict, where: str = "override", base: Path | None = None) -> Scenario:
    """A copy of ``s`` with dotted scenario keys replaced: ``{"cap.kappa": 0.05,
    "model.spec": "my.toml", "regime.overrides.objective_weight.historical_up_to": 10_000}``.
    Relative paths are relative to ``base`` (default: the current folder)."""
    values = dataclasses.asdict(s)
    values["regime_overrides"] = copy.deepcopy(s.regime_overrides)
    for dotted, value in changes.items():
        parts = dotted.split(".")
        if parts[:2] == ["regime", "overrides"] and len(parts) > 2:
            node = values["regime_overrides"]
            for p in parts[2:-1]:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ValueError(f"{where}: key '{dotted}': {p!r} is not a table")
            node[parts[-1]] = copy.deepcopy(value)
            continue
        if len(parts) != 2 or tuple(parts) not in FIELDS:
            raise ValueError(f"{where}: unknown key '{dotted}'; known keys: {_known_keys()}, "
                             "regime.overrides.<key of the regime file>")
        name, kind = FIELDS[(parts[0], parts[1])]
        values[name] = _typed(where, dotted, _resolve(parts[0], parts[1], value, base or Path.cwd()), kind)
    return validate_scenario(Scenario(**values), where)


def _flat_overrides(d: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """The leaves of a nested overrides table as (key path, value)."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flat_overrides(v, prefix + (k,))
        else:
            out.append((prefix + (k,), v))
    return out


def regime_file(s: Scenario) -> Path:
    from engine.rules import HERE

    return HERE / f"{s.regime}.toml" if _builtin(s.regime, HERE) else Path(s.regime)


def merged_regime(s: Scenario) -> dict:
    """The scenario's regime file as a dict, its overrides applied (each key checked)."""
    path = regime_file(s)
    base = _read_toml(path, "regime")
    data = copy.deepcopy(base)
    for parts, value in _flat_overrides(s.regime_overrides):
        node, known = base, True
        for p in parts:
            if isinstance(node, dict) and p in node:
                node = node[p]
            else:
                known = False
                break
        dotted = ".".join(parts)
        in_map = any(".".join(parts[:i]) in REGIME_MAPS for i in range(1, len(parts)))
        if not (known or dotted in REGIME_OPTIONAL or in_map):
            raise ValueError(f"regime override '{dotted}' is not a key of the regime file {path}; "
                             "see that file for its keys")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"regime override '{dotted}': {p!r} is not a table in {path}")
        node[parts[-1]] = copy.deepcopy(value)
    return data


def regime_toml(s: Scenario) -> str:
    """The text of ``OUT/regime.toml``: the scenario's regime file with its overrides applied,
    validated in memory (errors name the regime file and the key; nothing is written)."""
    from engine.rules import parse_regime

    path = regime_file(s)
    data = merged_regime(s)
    try:
        regime = parse_regime(data, path)
    except ValueError as exc:
        raise ValueError(f"{exc} (after the scenario's regime.overrides)" if s.regime_overrides else str(exc)) from None
    if regime.objective_model != "household":
        raise ValueError(f"regime {regime.name} uses the municipal model (objective.model = "
                         f"{regime.objective_model!r}); buig run needs a regime of the household model such "
                         "as 2019 (use `buig budget --regime 2005` for the municipal model)")
    header = (f"Regime used by this run: {path}"
              + (" with the scenario's regime.overrides applied." if s.regime_overrides else "."))
    try:
        return dump_toml(data, header)
    except TypeError as exc:                       # e.g. a TOML date in an override
        raise ValueError(f"regime.overrides: {exc}") from None


def write_regime(s: Scenario, out: Path) -> Path:
    """``out/regime.toml``: the regime used (overrides applied), validated before it is written."""
    path = out / "regime.toml"
    write_text(path, regime_toml(s))
    return path


# --------------------------------------------------------------------------- API steps

def distribute(pop, costs, regime="2019", macrobudget=None):
    """Budgets of a regime on a population: :class:`engine.budget.BudgetResult`.

    ``costs``: a :class:`engine.predict.Prediction`, an array of objective costs in the
    order of the population's municipalities, or a folder with ``municipal_costs.parquet``
    (ignored by a regime of the municipal model). ``regime``: a name, a TOML file or a
    :class:`engine.rules.Regime`. ``macrobudget``: an amount in EUR or ``"spending"``.
    """
    from engine.budget import compute_budget
    from engine.rules import Regime, load_regime

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
    fit: object                 # engine.model.ModelFit
    prediction: object          # engine.predict.Prediction
    budget: object              # engine.budget.BudgetResult
    bootstrap: object           # engine.bootstrap.BootstrapResult
    capped: object              # engine.cap.Capped
    flagged: np.ndarray
    stages: dict                # stage -> seconds
    report: Path | None


OUTPUTS = ("scenario.toml", "regime.toml", "coefficients.parquet", "fit.json", "covariances.npz",
           "municipal_costs.parquet", "rekentool.parquet", "budgets.parquet", "redistribution.csv",
           "replicates.parquet", "bands.parquet", "flags.parquet", "capped_budgets.parquet", "report.html",
           "run.json")
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


def _write_scenario(out: Path, s: Scenario) -> None:
    write_text(out / "scenario.toml", s.to_toml())


def _copy_fit(src: Path, out: Path) -> None:
    if src.resolve() == out.resolve():
        return
    with atomic_dir(out) as tmp:
        for name in FIT_FILES:
            shutil.copyfile(src / name, tmp / name)


def run(scenario: Scenario, out: str | Path, *, workers: int | None = None, scheduler: str | None = None,
        coefficients: str | Path | None = None, report: bool = True,
        progress: Callable[[str], Callable[[int, int], None]] | None = None,
        say: Callable[[str], None] | None = None) -> RunResult:
    """Run ``scenario`` into folder ``out`` (see the module docstring for the files).

    The bootstrap runs in this process with Numba on every core (``workers=None`` without a
    scheduler, or ``workers=0``: on 2 busy cores 1000 replicates took 34-35 s here against
    43-68 s on a 2-worker ``LocalCluster``, and the run peaked at 1.3 GiB against 3.2 GiB,
    since every Dask worker loads the population); ``workers=N``: a ``LocalCluster`` of N workers; ``scheduler`` (or
    ``DASK_SCHEDULER_ADDRESS``): a Dask cluster, as in :func:`engine.bootstrap.run_bootstrap`. ``coefficients``: a folder written by ``buig fit`` for the scenario's spec on
    the same population, used instead of fitting (copied into ``out``). ``progress(label)``
    returns a ``(done, total)`` callback for a long stage; ``say`` gets one line per stage.
    A rerun into the same folder with the same scenario resumes the bootstrap.
    """
    from engine.bootstrap import Settings, flags_table, run_bootstrap, write_results
    from engine.budget import compute_budget, write_budget
    from engine.cap import capped_table
    from engine.design import households_from_population
    from engine.model import fit_to_folder, read_fit
    from engine.population import read_population
    from engine.predict import municipal_costs_table, predict, rekentool_table
    from engine.rules import load_regime
    from engine.spec import load_spec
    from engine.synth import generate

    out = Path(out)
    bar = progress or (lambda label: None)
    tell = say or (lambda text: None)
    stages: dict[str, float] = {}
    t_start = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        stages[name] = now - t
        t = now

    _check_folder(out, scenario)
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
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out)                        # temporary files of a killed run
    # run.json is the completion record: gone before the first output is replaced, written after the
    # last, so that while it exists every output in OUT belongs to the run it describes.
    (out / "run.json").unlink(missing_ok=True)
    regime_path = write_regime(scenario, out)
    _write_scenario(out, scenario)
    if scenario.synthetic:
        tell(f"population: generating the synthetic Netherlands ({scenario.households:,} households) into {pop_dir}")
        generate(pop_dir, households=scenario.households, seed=scenario.population_seed, planted=scenario.planted,
                 planted_effect=scenario.planted_effect, policy_sd=scenario.policy_sd, progress=bar("synth"))
        lap("population")
        pop = read_population(pop_dir)
        lap("read + validate")
    households, synthetic = pop.households.num_rows, pop.synthetic

    if coefficients is None:
        tell(f"fit: model spec {scenario.spec}")
        fit = fit_to_folder(pop, out, spec=scenario.spec, progress=bar("fit"))
    else:
        fit = read_fit(coefficients)
        want = load_spec(scenario.spec)
        if fit.spec.path.resolve() != want.path.resolve():
            raise ValueError(f"coefficients in {coefficients} are of model spec {fit.spec.path}, the scenario's is "
                             f"{want.path}")
        _copy_fit(Path(coefficients), out)
    lap("fit")

    hh = households_from_population(pop)
    pred = predict(hh, fit)
    names = pop.municipalities.column("name").to_pylist()
    with atomic_dir(out) as tmp:
        pq.write_table(municipal_costs_table(pred, names), tmp / "municipal_costs.parquet")
        pq.write_table(rekentool_table(pred), tmp / "rekentool.parquet")
    del hh
    lap("predict")

    budget = compute_budget(pop, load_regime(regime_path), costs=out)
    write_budget(budget, out)
    del pop                                   # the bootstrap reads the population itself
    lap("distribute")

    tell(f"bootstrap: {scenario.replicates} {scenario.method} replicates")
    settings = Settings(population=str(pop_dir), coefficients=str(out), regime=str(regime_path),
                        method=scenario.method, seed=scenario.bootstrap_seed,
                        between_sd=scenario.bootstrap_between_sd())
    boot = run_bootstrap(settings, out, replicates=scenario.replicates, batch_size=scenario.batch_size,
                         workers=workers, scheduler=scheduler, progress=bar("bootstrap"))
    write_results(boot, out, level=scenario.flag_level)
    lap("bootstrap")

    flags = flags_table(boot, scenario.flag_level)
    table, capped = capped_table(flags, scenario.kappa, scenario.redistribute)
    with atomic_dir(out) as tmp:
        pq.write_table(table, tmp / "capped_budgets.parquet")
    lap("flags + cap")

    report_path = None
    if report:
        from engine.report import write_report

        report_path = write_report(out)
        lap("report")
    stages["total"] = time.perf_counter() - t_start
    write_json(out / "run.json", {
        "scenario": scenario.to_dict(), "population": str(pop_dir.resolve()), "synthetic": synthetic,
        "households": households, "workers": workers, "scheduler": scheduler,
        "coefficients_from": None if coefficients is None else str(Path(coefficients).resolve()),
        "stages_seconds": stages, "machine": machine()})
    return RunResult(out=out, scenario=scenario, population_dir=pop_dir, synthetic=synthetic, households=households,
                     fit=fit, prediction=pred, budget=budget, bootstrap=boot, capped=capped,
                     flagged=flags.column("flagged").to_numpy(zero_copy_only=False), stages=stages,
                     report=report_path)


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
    from engine.bootstrap import bands_table
    from engine.redistribution import summarise

    eff = summarise(r.budget.effects.pct)
    bands = bands_table(r.bootstrap)
    point = bands.column("point_budget").to_numpy()
    pos = point > 0                            # a municipality without budget has no relative width
    width = (bands.column("budget_q97_5").to_numpy()[pos] - bands.column("budget_q2_5").to_numpy()[pos]) / point[pos]
    b = r.budget.budgets
    return {"tb": b.tb, "municipalities": int(len(b.budget)),
            "mean_abs_effect_pct": eff["mean_abs_effect_pct"], "within_10_pct": eff["within_10_pct"],
            "within_15_pct": eff["within_15_pct"], "median_band_width_pct": float(100 * np.median(width)),
            "flagged": int(r.flagged.sum()), "capped": int((r.capped.clawed_back > 0).sum()),
            "clawed_back_eur": r.capped.total, "vangnet_eur": float(r.budget.vangnet.sum()),
            "vangnet_municipalities": int((r.budget.vangnet > 0).sum())}


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
    lines.append(f"TB EUR {st['tb'] / 1e6:,.1f} mln over {st['municipalities']} municipalities; vangnet EUR "
                 f"{st['vangnet_eur'] / 1e6:,.1f} mln to {st['vangnet_municipalities']} municipalities")
    lines.append(f"redistribution effect against spending: mean |effect| {st['mean_abs_effect_pct']:.1f}%, "
                 f"{st['within_10_pct']:.0f}% of municipalities within +-10%, {st['within_15_pct']:.0f}% within +-15%")
    boot = r.bootstrap
    lines.append(f"bootstrap: {boot.replicates} {s.method} replicates ({boot.computed} computed now); median band "
                 f"width (95%) {st['median_band_width_pct']:.1f}% of the budget")
    lines.append(f"flags: {st['flagged']} municipalities with a surplus the model does not explain (level "
                 f"{s.flag_level:g}); cap kappa {s.kappa:g}: {st['capped']} capped, EUR "
                 f"{st['clawed_back_eur'] / 1e6:,.2f} mln redistributed ({s.redistribute})")
    if boot.replicates * s.flag_level < 5:
        lines.append(f"note: {boot.replicates} replicates are few for flag level {s.flag_level:g} (a municipality is "
                     "flagged when hardly any replicate spends as little); use at least "
                     f"{math.ceil(10 / s.flag_level):,} replicates (--replicates) for stable flags")
    lines.append("")
    out = r.out
    if r.report is not None:
        lines.append(f"report:  {r.report}  (open in a browser; one file, no network needed)")
    lines.append(f"tables:  {out}/ budgets.parquet, redistribution.csv, bands.parquet, flags.parquet, "
                 "capped_budgets.parquet, rekentool.parquet, municipal_costs.parquet, replicates.parquet")
    lines.append(f"repeat:  buig run {out / 'scenario.toml'} --out OTHER_FOLDER")
    return "\n".join(lines)
