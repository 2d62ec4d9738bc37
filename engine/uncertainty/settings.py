"""The settings of a bootstrap run and the names of what each replicate yields.

:class:`Settings` is what defines a run (stored in ``bootstrap.json``, checked on resume);
every other module of :mod:`engine.uncertainty` imports it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METHODS = ("parametric", "cluster", "score", "outcome")
# Replicates per batch when none is given. For the draws, a multiple of the cell pass's vector step on AVX2
# (32 float32 lanes: 4 x kernels.draws.BLOCK), so its loop over a cell's draws runs no 4-lane remainder either
# (1000 replicates of 2 M households: 1.72-1.76 s with 64, 1.78-1.81 s with 40). Full refits are slow, so
# small batches keep Dask workers busy alike.
DEFAULT_BATCH = {"parametric": 64, "score": 64, "outcome": 64, "cluster": 10}
QUANTILES = (0.025, 0.05, 0.5, 0.95, 0.975)
# outcome_sd: sd of the municipality's cost when bijstand is drawn from p (sqrt of sum p (1 - p) (f N)^2),
# at the fit: the same in every replicate
REPLICATE_COLUMNS = ("objective_cost", "budget", "share", "effect_pct", "outcome_sd", "simulated_spending")


@dataclass(frozen=True)
class Settings:
    """What defines a bootstrap run; stored in ``bootstrap.json`` and checked on resume."""

    population: str
    coefficients: str
    regime: str
    method: str = "parametric"
    seed: int = 0
    between_sd: str = "auto"

    def __post_init__(self):
        # paths absolute: a resume does not depend on how a path was spelled or on the working
        # folder, and Dask workers (started elsewhere) find the files
        from engine.io.config import is_name

        object.__setattr__(self, "population", str(Path(self.population).expanduser().resolve()))
        object.__setattr__(self, "coefficients", str(Path(self.coefficients).expanduser().resolve()))
        if not is_name(self.regime):
            object.__setattr__(self, "regime", str(Path(self.regime).expanduser().resolve()))
        sd = self.between_sd
        if sd != "auto":
            try:
                ok = not isinstance(sd, bool) and 0 <= float(sd) < float("inf")
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"--between-sd must be auto or a finite number >= 0, not {sd!r}")

    def key(self) -> dict:
        return {"method": self.method, "seed": self.seed, "regime": self.regime, "between_sd": self.between_sd,
                "population": self.population, "coefficients": self.coefficients}
