"""The settings of a bootstrap run and the names of what each replicate yields.

:class:`Settings` is what defines a run (stored in ``bootstrap.json``, checked on resume);
every other module of :mod:`engine.uncertainty` imports it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

METHODS = ("parametric", "cluster", "score")
# Replicates per batch when none is given: a multiple of kernels.draws.BLOCK (8) for the draws
# (a batch of 25 pads to 32 lanes); full refits are slow, so small batches keep Dask workers busy alike.
DEFAULT_BATCH = {"parametric": 40, "score": 40, "cluster": 10}
QUANTILES = (0.025, 0.05, 0.5, 0.95, 0.975)
REPLICATE_COLUMNS = ("objective_cost", "budget", "share", "effect_pct", "simulated_spending")


@dataclass(frozen=True)
class Settings:
    """What defines a bootstrap run; stored in ``bootstrap.json`` and checked on resume."""

    population: str
    coefficients: str
    regime: str
    method: str = "parametric"
    seed: int = 0
    between_sd: str = "auto"

    def absolute(self) -> "Settings":
        """The same settings with every path absolute (a built-in regime name stays a name): what
        is sent to Dask workers, which on a hand-started cluster run in folders of their own."""
        from engine.io.config import is_name

        regime = self.regime if is_name(self.regime) else str(Path(self.regime).expanduser().resolve())
        return replace(self, population=str(Path(self.population).expanduser().resolve()),
                       coefficients=str(Path(self.coefficients).expanduser().resolve()), regime=regime)

    def key(self) -> dict:
        return {"method": self.method, "seed": self.seed, "regime": self.regime, "between_sd": self.between_sd,
                "population": str(Path(self.population).resolve()),
                "coefficients": str(Path(self.coefficients).resolve())}
