"""What a bootstrap yields, summarised: bands, flags and the replicates table, and their files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.io.outputs import atomic_dir, write_json
from engine.uncertainty.settings import QUANTILES, REPLICATE_COLUMNS, Settings


@dataclass(frozen=True)
class BootstrapResult:
    settings: Settings
    replicates: int
    codes: np.ndarray
    names: np.ndarray
    point_budget: np.ndarray
    spending: np.ndarray
    between_sd: float
    values: dict[str, np.ndarray]       # REPLICATE_COLUMNS -> (replicates, n_mun)
    seconds: float
    computed: int                       # replicates computed in this run (the rest were resumed)
    inputs: str = ""                    # inputs_digest(settings)


def bands_table(res: BootstrapResult) -> pa.Table:
    """Per municipality the point budget and the QUANTILES of budget, share and effect."""
    cols = {"code": res.codes.tolist(), "name": res.names.tolist(), "point_budget": res.point_budget}
    for c in ("budget", "share", "effect_pct"):
        q = np.quantile(res.values[c], QUANTILES, axis=0)
        for qi, v in zip(QUANTILES, q):
            cols[f"{c}_q{qi * 100:g}".replace(".", "_")] = v
        cols[f"{c}_sd"] = res.values[c].std(axis=0, ddof=1) if res.replicates > 1 else np.zeros(len(res.codes))
    return pa.table(cols)


def flags_table(res: BootstrapResult, level: float = 0.01) -> pa.Table:
    """p_explained per municipality and the flag ``surplus > 0 and p_explained < level``."""
    sim = res.values["simulated_spending"]
    p_explained = (sim <= res.spending[None, :]).mean(axis=0)
    lo, hi = np.quantile(sim, [0.025, 0.975], axis=0)
    surplus = res.point_budget - res.spending
    return pa.table({
        "code": res.codes.tolist(), "name": res.names.tolist(), "budget": res.point_budget,
        "actual_spending": res.spending, "surplus": surplus,
        "spending_band_q2_5": lo, "spending_band_q97_5": hi, "p_explained": p_explained,
        "flagged": (surplus > 0) & (p_explained < level),
    }).replace_schema_metadata({"level": repr(level), "between_sd": repr(res.between_sd),
                                "replicates": str(res.replicates)})


def replicates_table(res: BootstrapResult) -> pa.Table:
    n, g = res.values["budget"].shape
    return pa.table({"replicate": np.repeat(np.arange(n, dtype=np.int64), g), "code": np.tile(res.codes, n).tolist(),
                     **{c: res.values[c].ravel() for c in REPLICATE_COLUMNS}})


def write_results(res: BootstrapResult, out: str | Path, level: float = 0.01) -> None:
    """replicates.parquet, bands.parquet, flags.parquet and bootstrap.json, committed as one set
    (:func:`engine.io.outputs.atomic_dir`): a kill never leaves new flags beside old bands."""
    out = Path(out)
    record = {"settings": res.settings.key(), "inputs": res.inputs}
    with atomic_dir(out) as tmp:
        for name, table in (("replicates", replicates_table(res)), ("bands", bands_table(res)),
                            ("flags", flags_table(res, level))):
            pq.write_table(table, tmp / f"{name}.parquet")
        write_json(tmp / "bootstrap.json", {**record, "replicates": res.replicates, "flag_level": level,
                                             "between_sd": res.between_sd, "seconds": res.seconds,
                                             "computed": res.computed})
