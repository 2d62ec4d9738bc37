"""The vangnet (safety net): what a municipality in deficit gets back.

The rule of each year (own risk, band, full compensation) is a :class:`engine.rules.regime.VangnetRule`.
"""

from __future__ import annotations

import numpy as np

from engine.rules.regime import VangnetRule


def vangnet_payout(spending: np.ndarray, budget: np.ndarray, rule: VangnetRule) -> np.ndarray:
    """Safety-net payment per municipality from the deficit d = S - B [C: S56; C~: S57] (engine/data/SOURCES.md):

    ``paid_in_band * clip(d - t1 B, 0, (t2 - t1) B) + max(d - t2 B, 0)``.
    """
    b = np.asarray(budget, dtype=np.float64)
    d = np.asarray(spending, dtype=np.float64) - b
    t1, t2 = rule.own_risk, rule.full_from
    return rule.paid_in_band * np.clip(d - t1 * b, 0.0, (t2 - t1) * b) + np.maximum(d - t2 * b, 0.0)
