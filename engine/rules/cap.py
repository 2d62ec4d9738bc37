"""The Rob cap: claw back unexplained surpluses above kappa x budget, budget-neutrally.

For a flagged municipality (its surplus B - S is not explained by the model, see
:mod:`engine.uncertainty.bootstrap`) the part of the surplus above ``kappa * B`` is clawed back:

    excess_g = flagged_g * max(B_g - S_g - kappa B_g, 0)

and the total is redistributed so that the budgets still sum to the same total:

- ``pro_rata``: to every municipality that is not capped, in proportion to its budget;
- ``deficit``: to municipalities with a deficit (S > B), in proportion to the deficit
  and at most up to it; what is left after all deficits are covered goes pro rata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

REDISTRIBUTION = ("pro_rata", "deficit")


@dataclass(frozen=True)
class Capped:
    budget: np.ndarray          # budgets after the cap and the redistribution
    clawed_back: np.ndarray     # excess taken from each municipality
    received: np.ndarray        # amount each municipality receives

    @property
    def total(self) -> float:
        return float(self.clawed_back.sum())


def rob_cap(budget: np.ndarray, spending: np.ndarray, flagged: np.ndarray, kappa: float,
            redistribute: str = "pro_rata") -> Capped:
    """Apply the cap at level ``kappa`` (a fraction of the budget) to flagged municipalities."""
    if redistribute not in REDISTRIBUTION:
        raise ValueError(f"redistribute must be one of {', '.join(REDISTRIBUTION)}, not {redistribute!r}")
    if not 0 <= kappa < float("inf"):
        raise ValueError(f"--kappa must be a finite number >= 0, not {kappa}")
    b = np.asarray(budget, dtype=np.float64)
    s = np.asarray(spending, dtype=np.float64)
    excess = np.where(np.asarray(flagged, dtype=bool), np.maximum(b - s - kappa * b, 0.0), 0.0)
    pool = excess.sum()
    received = np.zeros_like(b)
    if pool > 0:
        left = pool
        if redistribute == "deficit":
            deficit = np.maximum(s - b, 0.0)
            if deficit.sum() > 0:
                received = deficit * min(1.0, left / deficit.sum())
                left -= received.sum()
        if left > 0:
            base = np.where(excess > 0, 0.0, b)
            received = received + left * base / base.sum()
    return Capped(budget=b - excess + received, clawed_back=excess, received=received)


def capped_table(flags: pa.Table, kappa: float, redistribute: str = "pro_rata") -> tuple[pa.Table, Capped]:
    """``capped_budgets.parquet`` from a flags table (``engine.uncertainty.bootstrap.flags_table``), and the cap."""
    col = lambda c: flags.column(c).to_numpy(zero_copy_only=False)  # noqa: E731
    capped = rob_cap(col("budget"), col("actual_spending"), col("flagged"), kappa, redistribute)
    table = pa.table({"code": flags.column("code"), "name": flags.column("name"), "budget": col("budget"),
                      "actual_spending": col("actual_spending"), "flagged": flags.column("flagged"),
                      "clawed_back": capped.clawed_back, "received": capped.received, "capped_budget": capped.budget})
    return table.replace_schema_metadata({"kappa": repr(kappa), "redistribute": redistribute}), capped
