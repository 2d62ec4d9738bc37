"""Scenarios of ``buig run``: every value of a run, read from TOML, checked, and written back.

A :class:`Scenario` holds the population (the built-in synthetic Netherlands or a folder),
the model spec, the regime (with optional overrides of its keys), the bootstrap settings,
the cap level and its redistribution rule. Scenario files are TOML
(``engine/data/scenarios/default.toml`` documents every key; a file of one's own holds only
the keys it changes; paths in it are relative to its folder). Built-in names and files are
resolved by :func:`engine.io.config.resolve`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from engine.io.config import DATA, dump_toml, is_name, read_toml, resolve, typed
from engine.io.outputs import write_text

DEFAULT_SCENARIO = DATA / "scenarios" / "default.toml"
SYNTHETIC = "synthetic"

# (section, key) of the scenario file -> (Scenario field, type)
FIELDS: dict[tuple[str, str], tuple[str, type]] = {
    ("population", "source"): ("population", str),
    ("population", "households"): ("households", int),
    ("population", "seed"): ("population_seed", int),
    ("population", "planted"): ("planted", int),
    ("population", "planted_effect"): ("planted_effect", float),
    ("population", "planted_surplus"): ("planted_surplus", list),
    ("population", "policy_sd"): ("policy_sd", float),
    ("model", "spec"): ("spec", str),
    ("regime", "name"): ("regime", str),
    ("regime", "overrides"): ("regime_overrides", dict),
    ("regime", "macrobudget"): ("macrobudget", object),
    ("regime", "stage"): ("stage", str),
    ("bootstrap", "method"): ("method", str),
    ("bootstrap", "replicates"): ("replicates", int),
    ("bootstrap", "batch_size"): ("batch_size", int),
    ("bootstrap", "seed"): ("bootstrap_seed", int),
    ("bootstrap", "flag_level"): ("flag_level", float),
    ("bootstrap", "flag_fdr"): ("flag_fdr", float),
    ("bootstrap", "between_sd"): ("between_sd", object),
    ("cap", "kappa"): ("kappa", float),
    ("cap", "redistribute"): ("redistribute", str),
}
GENERATOR_KEYS = ("households", "seed", "planted", "planted_effect", "planted_surplus", "policy_sd")

# Regime keys a scenario may add although the base regime file lacks them (the ex-ante cap of
# 2005.toml switched on elsewhere); below these tables any name is a new entry.
REGIME_OPTIONAL = ("ex_ante_cap.theta", "ex_ante_cap.band_to", "ex_ante_cap.band_share",
                   "ex_ante_cap.financing", "ex_ante_cap.variants", "budget.stage", "budget.definitive_macrobudget")
REGIME_MAPS = ("vangnet.rules", "ex_ante_cap.variants", "budget.deductions")


# --------------------------------------------------------------------------- scenario

@dataclass(frozen=True)
class Scenario:
    """Every value of a run (see ``engine/data/scenarios/default.toml`` for their meaning)."""

    population: str                 # "synthetic" or a population folder
    households: int
    population_seed: int
    planted: int
    planted_effect: float
    planted_surplus: list
    policy_sd: float
    spec: str
    regime: str
    regime_overrides: dict
    method: str
    replicates: int
    batch_size: int
    bootstrap_seed: int
    flag_level: float
    flag_fdr: float
    between_sd: str | float
    kappa: float
    redistribute: str
    macrobudget: str | float = "regime"   # "regime", "spending" or EUR (replaces the regime's budget.macrobudget)
    stage: str = "regime"                 # "regime", "provisional" or "definitive" (the regime's budget.stage)

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
            "Meaning of the keys: engine/data/scenarios/default.toml"))

    def fdr(self) -> float | None:
        """The false discovery rate the flags use (None: the per-test ``flag_level``)."""
        return self.flag_fdr if self.flag_fdr > 0 else None

    def generator_options(self) -> dict:
        """The keyword arguments of :func:`engine.world.synth.generate` for a synthetic scenario."""
        return {"households": self.households, "seed": self.population_seed, "planted": self.planted,
                "planted_effect": self.planted_effect, "planted_surplus": tuple(self.planted_surplus),
                "policy_sd": self.policy_sd}

    def bootstrap_between_sd(self) -> str:
        return "auto" if self.between_sd == "auto" else repr(float(self.between_sd))


def _resolve(section: str, key: str, value, base: Path | None):
    """Paths in a scenario file are relative to its folder; written back as absolute paths.
    Built-in spec and regime names stay names."""
    where = (section, key)
    is_path = isinstance(value, str) and (where == ("population", "source") and value != SYNTHETIC
                                          or where in (("model", "spec"), ("regime", "name")) and not is_name(value))
    if not is_path:
        return value
    p = Path(value).expanduser()
    return str((p if p.is_absolute() or base is None else base / p).resolve())


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
            values[name] = typed(where, f"{section}.{key}", _resolve(section, key, value, base), kind)


@functools.cache
def _synthetic_municipalities() -> int:
    from engine.world.geography import load_geography

    return len(load_geography().mun_code)


# memory per unit, measured on the 2-core machine: a whole `buig run` peaked at 1.39 GiB for
# 7.79 M households (about 190 bytes each); a replicate holds 5 values per municipality, kept
# twice (the replicate table and the summaries)
BYTES_PER_HOUSEHOLD = 190
BYTES_PER_REPLICATE_MUNICIPALITY = 5 * 8 * 2


def _memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_sizes(households: int | None = None, replicates: int | None = None, municipalities: int = 388,
                where: str = "--") -> None:
    """Refuse, before anything runs, a size whose arrays cannot fit in this machine's memory;
    the message gives the memory it would need. ``where``: ``"--"`` for options, else the file."""
    have = _memory()
    for key, n, per in (("households", households, BYTES_PER_HOUSEHOLD),
                        ("replicates", replicates, BYTES_PER_REPLICATE_MUNICIPALITY * municipalities)):
        if n is None or n * per <= have:
            continue
        name = f"--{key}" if where == "--" else f"{where}: key '{'population' if key == 'households' else 'bootstrap'}.{key}'"
        raise ValueError(f"{name} {n:,} would need about {_gib(n * per)} of memory; this machine has {_gib(have)}")


def _gib(b: float) -> str:
    return f"{b / 2 ** 30:,.1f} GiB" if b < 2 ** 50 else f"{b / 2 ** 50:,.1f} PiB"


def validate_scenario(s: Scenario, where: str = "scenario") -> Scenario:
    """Check the values that the stages would reject late, the model spec and the regime with its
    overrides included; the error names the key."""
    from engine.uncertainty.bootstrap import METHODS
    from engine.rules.cap import REDISTRIBUTION
    from engine.model.spec import load_spec

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
    check_sizes(s.households if s.synthetic else None, s.replicates, where=where)
    if not 0 < s.flag_level < 1:
        raise bad("bootstrap.flag_level", f"must lie between 0 and 1, not {s.flag_level}")
    if not 0 <= s.flag_fdr < 1:
        raise bad("bootstrap.flag_fdr", f"must be 0 (flags per test at flag_level) or lie between 0 and 1, "
                  f"not {s.flag_fdr}")
    if not 0 <= s.kappa <= 1:                 # a surplus never exceeds the budget: kappa >= 1 caps nothing
        raise bad("cap.kappa", f"must lie between 0 and 1 (a fraction of the budget), not {s.kappa}")
    if s.between_sd != "auto" and (isinstance(s.between_sd, bool) or not isinstance(s.between_sd, (int, float))
                                   or not s.between_sd >= 0):
        raise bad("bootstrap.between_sd", f"must be \"auto\" or a number >= 0, not {s.between_sd!r}")
    m = s.macrobudget
    if m not in ("regime", "spending") and (isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0
                                            or not math.isfinite(m)):
        raise bad("regime.macrobudget", f"must be \"regime\" (the regime file's), \"spending\" (the population's "
                                        f"spending in t) or an amount in EUR > 0, not {m!r}")
    if s.stage not in ("regime", "provisional", "definitive"):
        raise bad("regime.stage", f"must be \"regime\" (the regime file's), \"provisional\" or \"definitive\", "
                                  f"not {s.stage!r}")
    if s.synthetic:
        for key, v in (("population.households", s.households), ("population.planted", s.planted),
                       ("population.policy_sd", s.policy_sd)):
            if not 0 <= v < float("inf"):
                raise bad(key, f"must be >= 0 (and finite), not {v}")
        if not math.isfinite(s.planted_effect):
            raise bad("population.planted_effect", f"must be a finite number, not {s.planted_effect}")
        ps = s.planted_surplus
        if (len(ps) != 2 or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in ps)
                or not 0 <= ps[0] <= ps[1] < 1):
            raise bad("population.planted_surplus", f"must be [min, max] with 0 <= min <= max < 1, not {ps!r}")
        if s.households < _synthetic_municipalities():
            raise bad("population.households", f"the synthetic Netherlands needs at least "
                      f"{_synthetic_municipalities()} households (one per municipality), not {s.households}")
    try:
        spec = load_spec(s.spec)
    except (FileNotFoundError, ValueError) as exc:
        raise bad("model.spec", str(exc)) from None
    if spec.kind != "household":
        raise bad("model.spec", f"{s.spec!r} is a municipal model; buig run needs a household model")
    if spec.weights is not None and s.method != "outcome":
        raise bad("bootstrap.method", f"{s.method!r}: model spec {spec.name} carries published weights without a "
                  "covariance, which can be neither drawn from (parametric) nor refitted (cluster); use "
                  "\"outcome\" (the band of outcome randomness and the spread of municipalities only)")
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
    _apply_tables(values, read_toml(DEFAULT_SCENARIO, "scenario"), str(DEFAULT_SCENARIO), DEFAULT_SCENARIO.parent)
    where = "scenario"
    if path is not None:
        path = Path(path)
        where = f"scenario {path}"
        _apply_tables(values, read_toml(path, "scenario"), where, path.resolve().parent)
    fields = {name: (section, key, kind) for (section, key), (name, kind) in FIELDS.items()}
    for name, value in overrides.items():
        if name not in fields:
            raise TypeError(f"load_scenario: unknown field {name!r}; fields: {', '.join(fields)}")
        section, key, kind = fields[name]
        values[name] = typed("override", name, _resolve(section, key, value, Path.cwd()), kind)
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
        values[name] = typed(where, dotted, _resolve(parts[0], parts[1], value, base or Path.cwd()), kind)
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
    return resolve("regime", s.regime)


def merged_regime(s: Scenario) -> dict:
    """The scenario's regime file as a dict, its overrides applied (each key checked)."""
    path = regime_file(s)
    base = read_toml(path, "regime")
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
    if s.macrobudget != "regime" and isinstance(data.get("budget"), dict):
        data["budget"]["macrobudget"] = "spending_t" if s.macrobudget == "spending" else float(s.macrobudget)
        if s.macrobudget != "spending":        # the amount at either stage
            data["budget"]["definitive_macrobudget"] = float(s.macrobudget)
    if s.stage != "regime" and isinstance(data.get("budget"), dict):
        data["budget"]["stage"] = s.stage
    return data


def regime_toml(s: Scenario) -> str:
    """The text of ``OUT/regime.toml``: the scenario's regime file with its overrides applied,
    validated in memory (errors name the regime file and the key; nothing is written)."""
    return scenario_regime(s)[0]


def scenario_regime(s: Scenario):
    """(:func:`regime_toml`, the :class:`engine.rules.regime.Regime` it holds), parsed once."""
    from engine.rules.regime import parse_regime

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
              + (" with the scenario's regime.overrides applied" if s.regime_overrides else "")
              + (f" and its macrobudget = {s.macrobudget!r}" if s.macrobudget != "regime" else "")
              + (f", budget stage {s.stage}" if s.stage != "regime" else "") + ".")
    try:
        return dump_toml(data, header), regime
    except TypeError as exc:                       # e.g. a TOML date in an override
        raise ValueError(f"regime.overrides: {exc}") from None


def write_regime(s: Scenario, out: Path, text: str | None = None) -> Path:
    """``out/regime.toml``: the regime used (overrides applied), validated before it is written
    (``text``: :func:`regime_toml` of ``s`` when the caller has it)."""
    path = out / "regime.toml"
    write_text(path, regime_toml(s) if text is None else text)
    return path


