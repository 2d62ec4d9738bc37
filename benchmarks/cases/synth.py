"""Generating the synthetic Netherlands (`engine.world.synth.generate`) at the scale's size, into a temporary folder.

No peer. The warm-up generates 1,000 households (imports, first-touch of the code paths);
each timed call writes the full-size population into the child's private temporary
folder (never the cached dataset), overwriting the previous call's files.
"""

from __future__ import annotations

import os

from benchmarks.protocol import Impl

DATASET = False
REPEAT = 5
WARMUP_HOUSEHOLDS = 1_000


def setup(ctx):
    from engine.world.synth import generate  # imported here, untimed

    return {"generate": generate, "out": ctx.tmp / "population", "households": ctx.households, "seed": ctx.seed,
            "warmup_out": ctx.tmp / "warmup"}


def run(state):
    return state["generate"](state["out"], households=state["households"], seed=state["seed"])


def warmup(state):
    return state["generate"](state["warmup_out"], households=WARMUP_HOUSEHOLDS, seed=state["seed"])


def extras(state, summary, timing):
    files = {f.name: f.stat().st_size for f in state["out"].iterdir() if f.suffix == ".parquet"}
    total = sum(files.values())
    return {
        "rows_per_s": state["households"] / timing["median_s"],
        "parquet_MiB": total / 2**20,
        "households_parquet_MiB": files.get("households.parquet", 0) / 2**20,
        "bytes_per_household": total / state["households"],
        "bijstand": summary.bijstand,
        "threads": os.cpu_count(),
    }


IMPLEMENTATIONS = [
    Impl("buig", setup=setup, run=run, warmup=warmup, extras=extras,
         note="engine.world.synth.generate(tmp, households=N, seed): 388 municipalities on os.cpu_count() threads, "
              "three Parquet files + truth.json"),
]
