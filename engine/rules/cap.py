"""The Rob cap: claw back unexplained surpluses above kappa x budget, budget-neutrally.

For a flagged municipality (its surplus B - S is not explained by the model, see
:mod:`engine.uncertainty.bootstrap`) the part of the surplus above ``kappa * B`` is clawed back:

    excess_g = flagged_g * max(B_g - S_g - kappa B_g, 0)

and the total is redistributed so that the budgets still sum to the same total:

- ``pro_rata``: to every municipality that is not capped, in proportion to its budget;
- ``deficit``: to municipalities with a deficit (S > B), in proportion to the deficit
  and at most up to it; what is left after all deficits are covered goes pro rata.

A capped municipality never receives cap money. When no municipality may receive it (every one
is capped, or those left have no budget), the money is not redistributed: it is reported as
``unallocated`` (back to the macro budget) and the budgets sum to TB minus it. The vangnet is
computed on the capped budgets (:func:`capped_table` with the regime's vangnet rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from engine.rules.regime import VangnetRule
from engine.rules.vangnet import vangnet_payout

REDISTRIBUTION = ("pro_rata", "deficit")


@dataclass(frozen=True)
class Capped:
    budget: np.ndarray          # budgets after the cap and the redistribution
    clawed_back: np.ndarray     # excess taken from each municipality
    received: np.ndarray        # amount each municipality receives
    unallocated: float = 0.0    # clawed back but nobody may receive it (every municipality capped)

    @property
    def total(self) -> float:
        return float(self.clawed_back.sum())


def rob_cap(budget: np.ndarray, spending: np.ndarray, flagged: np.ndarray, kappa: float,
            redistribute: str = "pro_rata") -> Capped:
    """Apply the cap at level ``kappa`` (a fraction of the budget) to flagged municipalities."""
    if redistribute not in REDISTRIBUTION:
        raise ValueError(f"redistribute must be one of {', '.join(REDISTRIBUTION)}, not {redistribute!r}")
    if not kappa >= 0:
        raise ValueError(f"kappa must be >= 0, not {kappa}")
    b = np.asarray(budget, dtype=np.float64)
    s = np.asarray(spending, dtype=np.float64)
    excess = np.where(np.asarray(flagged, dtype=bool), np.maximum(b - s - kappa * b, 0.0), 0.0)
    pool = float(excess.sum())
    may = excess <= 0                                 # a capped municipality receives nothing
    received = np.zeros_like(b)
    left = pool
    if pool > 0 and redistribute == "deficit":
        deficit = np.where(may, np.maximum(s - b, 0.0), 0.0)
        if deficit.sum() > 0:
            received = deficit * min(1.0, left / deficit.sum())
            left = max(pool - float(received.sum()), 0.0)
    base = np.where(may, b, 0.0)
    unallocated = 0.0
    if left > 0:
        if base.sum() > 0:
            received = received + left * base / base.sum()
        else:
            unallocated = left
    return Capped(budget=b - excess + received, clawed_back=excess, received=received, unallocated=unallocated)


def capped_table(flags: pa.Table, kappa: float, redistribute: str = "pro_rata",
                 vangnet: VangnetRule | None = None) -> tuple[pa.Table, Capped]:
    """``capped_budgets.parquet`` from a flags table (``engine.uncertainty.bootstrap.flags_table``), and the cap.

    With the regime's ``vangnet`` rule the table also holds the vangnet payout on the budget before
    the cap (``vangnet_uncapped``) and on the capped budget (``vangnet_payout``, what is paid)."""
    col = lambda c: flags.column(c).to_numpy(zero_copy_only=False)  # noqa: E731
    capped = rob_cap(col("budget"), col("actual_spending"), col("flagged"), kappa, redistribute)
    cols = {"code": flags.column("code"), "name": flags.column("name"), "budget": col("budget"),
            "actual_spending": col("actual_spending"), "flagged": flags.column("flagged"),
            "clawed_back": capped.clawed_back, "received": capped.received, "capped_budget": capped.budget}
    if vangnet is not None:
        cols["vangnet_uncapped"] = vangnet_payout(col("actual_spending"), col("budget"), vangnet)
        cols["vangnet_payout"] = vangnet_payout(col("actual_spending"), capped.budget, vangnet)
    meta = {"kappa": repr(kappa), "redistribute": redistribute, "unallocated": repr(capped.unallocated)}
    return pa.table(cols).replace_schema_metadata(meta), capped
