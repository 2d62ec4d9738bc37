"""The files of a run folder that the report shows, read and aligned on ``budgets.parquet``."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.io.config import read_toml
from engine.rules.regime import Regime, load_regime

@dataclass(frozen=True)
class RunData:
    """What the report shows, aligned on the municipalities of ``budgets.parquet``."""

    out: Path
    scenario_text: str
    scenario: dict
    regime: Regime
    synthetic: bool
    planted: set
    households: int | None
    codes: list
    names: list
    province: list
    inhabitants: np.ndarray
    budgets: dict                # column -> array
    tb: float
    macrobudget_text: str        # the budget stage and where TB comes from (budgets.parquet metadata)
    bands: dict
    flags: dict
    flag_level: float
    flag_rule: str
    replicates: int
    capped: dict
    kappa: float
    redistribute: str
    rekentool: pa.Table
    redistribution: list[dict]


def _columns(table: pa.Table, codes: list, name: str) -> dict:
    got = table.column("code").to_pylist()
    if got != codes:
        pos = {c: i for i, c in enumerate(got)}
        missing = [c for c in codes if c not in pos]
        if missing:
            raise ValueError(f"{name}: municipality {missing[0]} of budgets.parquet is missing")
        table = table.take(pa.array([pos[c] for c in codes]))
    return {c: (table.column(c).to_pylist() if pa.types.is_string(table.column(c).type)
                else table.column(c).to_numpy(zero_copy_only=False)) for c in table.column_names}


def _population_dir(out: Path, scenario: dict) -> Path:
    source = scenario.get("population", {}).get("source", "synthetic")
    return out / "population" if source == "synthetic" else Path(source)


def load_run(out: str | Path) -> RunData:
    """Read the files of a run folder that the report needs."""
    out = Path(out)
    for name in ("scenario.toml", "regime.toml", "budgets.parquet", "bands.parquet", "flags.parquet",
                 "capped_budgets.parquet", "rekentool.parquet", "redistribution.csv"):
        if not (out / name).exists():
            raise FileNotFoundError(f"{out / name} is missing: the report needs a folder written by `buig run`")
    text = (out / "scenario.toml").read_text(encoding="utf-8")
    scenario = read_toml(out / "scenario.toml", "scenario")
    pop_dir = _population_dir(out, scenario)
    mun_file = pop_dir / "municipalities.parquet"
    if not mun_file.exists():
        raise FileNotFoundError(f"{mun_file} is missing: the report needs the run's population folder")
    b = pq.read_table(out / "budgets.parquet")
    codes = b.column("code").to_pylist()
    mun = _columns(pq.read_table(mun_file, columns=["code", "name", "province", "inhabitants"]), codes,
                   str(mun_file))
    truth_file = pop_dir / "truth.json"
    planted, households = set(), None
    if truth_file.exists():
        truth = json.loads(truth_file.read_text(encoding="utf-8"))
        planted, households = set(truth.get("planted", [])), truth.get("households")
    if households is None and (pop_dir / "households.parquet").exists():
        households = pq.ParquetFile(pop_dir / "households.parquet").metadata.num_rows
    flags_t = pq.read_table(out / "flags.parquet")
    capped_t = pq.read_table(out / "capped_budgets.parquet")
    fmeta = {k.decode(): v.decode() for k, v in (flags_t.schema.metadata or {}).items()}
    cmeta = {k.decode(): v.decode() for k, v in (capped_t.schema.metadata or {}).items()}
    bmeta = {k.decode(): v.decode() for k, v in (b.schema.metadata or {}).items()}
    with (out / "redistribution.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return RunData(out=out, scenario_text=text, scenario=scenario, regime=load_regime(out / "regime.toml"),
                   synthetic=truth_file.exists(), planted=planted, households=households, codes=codes,
                   names=mun["name"], province=mun["province"], inhabitants=mun["inhabitants"].astype(np.float64),
                   budgets=_columns(b, codes, "budgets.parquet"), tb=float(bmeta.get("tb", "nan")),
                   macrobudget_text=bmeta.get("macrobudget", ""),
                   bands=_columns(pq.read_table(out / "bands.parquet"), codes, "bands.parquet"),
                   flags=_columns(flags_t, codes, "flags.parquet"), flag_level=float(fmeta.get("level", "nan")),
                   flag_rule=fmeta.get("flag_rule", f"p_explained < {fmeta.get('level', '?')} (per test)"),
                   replicates=int(fmeta.get("replicates", "0")),
                   capped=_columns(capped_t, codes, "capped_budgets.parquet"),
                   kappa=float(cmeta.get("kappa", "nan")), redistribute=cmeta.get("redistribute", ""),
                   rekentool=pq.read_table(out / "rekentool.parquet"), redistribution=rows)
