"""The tables a synthetic world writes besides the households: neighbourhoods, municipalities, truth.json.

Called by :func:`engine.world.synth.generate` inside its temporary folder, with the world's
parameters (:class:`engine.world.synth.WorldParams`) and the per-municipality statistics of
the households it generated.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.io.config import dump_toml
from engine.io.outputs import write_json
from engine.model.schema import schema
from engine.world import truth
from engine.world.geography import Geography

if TYPE_CHECKING:
    from engine.world.synth import WorldParams


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


def write_tables(tmp: Path, geo: Geography, wp: WorldParams, n_mun_hh, stats, scale: float, seed: int) -> None:
    """neighbourhoods.parquet, municipalities.parquet and catalogue.toml (the world's characteristics)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    nb = {
        "code": geo.wk_code.tolist(), "name": geo.wk_name.tolist(), "municipality": geo.mun_code[geo.wk_mun].tolist(),
        "urbanity": geo.wk_urbanity.astype(np.int8), "share_non_working": wp.share_non_working,
        "liveability": wp.liveability, "jobs_access": wp.jobs_access, **wp.world.nb_values,
    }
    cat = wp.world.catalogue
    pq.write_table(pa.table(nb, schema=schema("neighbourhoods", cat)), tmp / "neighbourhoods.parquet")
    (tmp / "catalogue.toml").write_text(dump_toml(cat.to_dict(), f"catalogue {cat.name} of this synthetic "
                                                  "population (written by buig synth)"), encoding="utf-8")
    n_bij = np.array([s["bijstand"] for s in stats])
    spending = np.array([s["spending"] for s in stats])
    # Spending in t-2: the municipality's expected cost in t (its own households, prices and policy,
    # which persists) times the real change of its recipients from 2015 to 2017 (CBS), with noise.
    expected_cost = np.array([s["expected_cost"] for s in stats])
    growth = np.divide(geo.rec2015, geo.rec2017, out=np.ones(len(stats)), where=geo.rec2017 > 0)
    granite = np.round(geo.rec2015 * scale * 0.30 * np.exp(wp.long_term + rng.normal(0, 0.1, len(stats))))
    mun = {
        "code": geo.mun_code.tolist(), "name": geo.mun_name.tolist(), "province": geo.province.tolist(),
        "region": [geo.region_code[r] for r in geo.region],
        "inhabitants": geo.inhabitants.astype(np.int64),
        "households": n_mun_hh,
        "households_t2": np.round(n_mun_hh * np.exp(-wp.household_growth)).astype(np.int64),
        "jobs_availability": wp.jobs_availability, "job_growth": wp.job_growth,
        "granieten_voorraad": granite.astype(np.int64),
        "spending_t2": expected_cost * growth * np.exp(wp.price_level),
        "spending_t": spending,
        "wdeel_need": np.array([s["need"] for s in stats]) * np.exp(wp.need_noise),
        "wdeel_target_group": np.round(n_bij * (1.3 + 0.3 * rng.random(len(stats)))).astype(np.int64),
        **wp.world.mun_values,
    }
    pq.write_table(pa.table(mun, schema=schema("municipalities", cat)), tmp / "municipalities.parquet")


def write_truth(tmp: Path, geo: Geography, wp: WorldParams, n_mun_hh, stats, eta0, price, alpha,
                 seed: int, households: int, planted_effect: float, c: float) -> None:
    """truth.json: coefficients, municipality effects and expected costs.

    ``common_effect`` is the single effect that, replacing every municipality's own,
    reproduces the national expected number of bijstand-or-LKS households (the model's
    prediction rule, applied to the truth); the true objective cost of a municipality
    uses it, and its policy effect is ``alpha - common_effect`` (``c``, solved by the generator).
    """
    mun_idx = np.repeat(np.arange(len(stats)), n_mun_hh)
    p_common = _logistic(c + eta0)
    objective_cost = np.bincount(mun_idx, weights=p_common * price, minlength=len(stats))
    objective_households = np.bincount(mun_idx, weights=p_common, minlength=len(stats))
    planted = set(wp.planted.tolist())
    write_json(tmp / "truth.json", {
        "seed": seed, "households": households,
        "reference_levels": truth.REFERENCE,
        "truth_model": wp.world.name,
        "volume": {"common_effect": c, **(wp.world.published or {**truth.VOLUME, **wp.world.terms})},
        "price": truth.PRICE,
        "planted_effect": planted_effect,
        "planted": [geo.mun_code[g] for g in sorted(planted)],
        "planted_surplus": {geo.mun_code[g]: (float(s) if planted_effect == 0 else None)
                            for g, s in zip(wp.planted.tolist(), wp.planted_surplus)},
        "municipalities": [
            {"code": geo.mun_code[g], "alpha": float(alpha[g]), "policy_effect": float(alpha[g] - c),
             "planted": g in planted, "target_households": float(wp.target_rate[g] * n_mun_hh[g]),
             "expected_households": s["expected"], "expected_cost": s["expected_cost"],
             "objective_households": float(objective_households[g]), "objective_cost": float(objective_cost[g])}
            for g, s in enumerate(stats)],
    })
