"""Golden master: the numbers of one small fixed run, stored, so silent drift shows.

``small_world.json`` holds the coefficients (estimate and cluster-robust s.e. of every
term), the objective cost, the budget, the bootstrap bands and p_explained of every
municipality of ``buig run`` on a synthetic world of 20,000 households (population seed 1),
40 parametric replicates, everything else the default scenario
(``engine/data/scenarios/default.toml``). ``tests/test_golden.py`` reruns it and compares at
a relative tolerance of 1e-9 (per column, relative to the column's largest value).

Regenerate:

    python -m tests.golden --regenerate      # rewrite tests/golden/small_world.json
    python -m tests.golden                   # compare only: exit 1 and a line per difference

Rule: regenerate deliberately whenever another change moves the numbers (a new spec,
generator, norm, regime or estimator), never to make a failing test pass without knowing
why; commit the new file with the reason in the commit message. A difference that no
change of the model explains (a new compiler, Numba, BLAS or CPU) is what this test is for.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

FILE = Path(__file__).resolve().parent / "small_world.json"
SCENARIO = {"households": 20_000, "population_seed": 1, "replicates": 40, "batch_size": 20}
RTOL = 1e-9
BAND_COLUMNS = ("point_budget", "budget_q2_5", "budget_q50", "budget_q97_5", "budget_sd", "share_q50",
                "effect_pct_q2_5", "effect_pct_q97_5")


def _floats(values) -> list:
    """JSON-able floats: NaN (a term that was not estimable) as null."""
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in values]


def compute(out: str | Path) -> dict:
    """Run the fixed scenario into folder ``out`` and collect the stored numbers from its files."""
    from engine.app.pipeline import run
    from engine.app.scenario import load_scenario

    out = Path(out)
    run(load_scenario(**SCENARIO), out, workers=0, report=False)
    read = lambda name: pq.read_table(out / f"{name}.parquet")  # noqa: E731
    coef = read("coefficients")
    numbers: dict = {"scenario": SCENARIO, "coefficients": {}}
    comp = np.asarray(coef.column("component").to_pylist())
    for name in ("volume", "price"):
        rows = np.flatnonzero(comp == name)
        numbers["coefficients"][name] = {
            "term": [coef.column("term")[int(i)].as_py() for i in rows],
            **{c: _floats(coef.column(c).to_numpy()[rows]) for c in ("estimate", "se_cluster")}}
    costs, budgets, bands, flags = read("municipal_costs"), read("budgets"), read("bands"), read("flags")
    numbers["municipality"] = costs.column("code").to_pylist()
    numbers["objective_cost"] = _floats(costs.column("objective_cost").to_numpy())
    numbers["budget"] = _floats(budgets.column("budget").to_numpy())
    numbers["bands"] = {c: _floats(bands.column(c).to_numpy()) for c in BAND_COLUMNS}
    numbers["p_explained"] = _floats(flags.column("p_explained").to_numpy())
    return numbers


def columns(numbers: dict) -> dict[str, list]:
    """Every stored number column by a flat name (``coefficients.volume.estimate``, ``bands.budget_q50``)."""
    flat = {}
    for comp, d in numbers["coefficients"].items():
        for c in ("estimate", "se_cluster"):
            flat[f"coefficients.{comp}.{c}"] = d[c]
    for c in ("objective_cost", "budget", "p_explained"):
        flat[c] = numbers[c]
    for c, v in numbers["bands"].items():
        flat[f"bands.{c}"] = v
    return flat


def differences(got: dict, want: dict, rtol: float = RTOL) -> tuple[list[str], dict[str, float]]:
    """(problems, largest relative difference per column): labels must match exactly, numbers
    within ``rtol`` of the column's largest absolute value, nulls in the same places."""
    problems = []
    if got["scenario"] != want["scenario"]:
        problems.append(f"scenario {got['scenario']} != stored {want['scenario']}")
    for comp in want["coefficients"]:
        if got["coefficients"][comp]["term"] != want["coefficients"][comp]["term"]:
            problems.append(f"coefficients.{comp}: terms differ")
    if got["municipality"] != want["municipality"]:
        problems.append("municipalities differ")
    worst = {}
    g, w = columns(got), columns(want)
    for name, ref in w.items():
        a = np.asarray([np.nan if v is None else v for v in g[name]], dtype=float)
        b = np.asarray([np.nan if v is None else v for v in ref], dtype=float)
        if a.shape != b.shape or not (np.isnan(a) == np.isnan(b)).all():
            problems.append(f"{name}: shape or missing values differ")
            continue
        ok = ~np.isnan(b)
        scale = np.max(np.abs(b[ok])) if ok.any() else 1.0
        rel = np.abs(a[ok] - b[ok]) / (scale if scale > 0 else 1.0)
        worst[name] = float(rel.max()) if rel.size else 0.0
        if worst[name] > rtol:
            i = int(np.flatnonzero(ok)[np.argmax(rel)])
            problems.append(f"{name}: row {i}: {float(a[i])!r} against stored {float(b[i])!r} "
                            f"(relative difference {worst[name]:.2e} > {rtol:g})")
    return problems, worst


def load() -> dict:
    return json.loads(FILE.read_text(encoding="utf-8"))


def save(numbers: dict) -> None:
    FILE.write_text(json.dumps(numbers, indent=0, allow_nan=False) + "\n", encoding="utf-8")
