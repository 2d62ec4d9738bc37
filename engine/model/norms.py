"""Legal bijstand norms per year: the gross yearly norm N_h of every household.

One TOML file per year in this folder (``2019.toml``); ``load_norms(2019)`` or
``load_norms(path)`` reads one. The norm depends only on small-integer household codes
(household type, age class, co-resident adults), so it is evaluated as a look-up table
built once per norm file.
"""

from __future__ import annotations

from engine.io.config import read_toml, resolve
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.model.schema import CATEGORIES, MAX_ADULTS_SHARING

COUPLE_TYPES = ("couple_no_children", "couple_with_children")


@dataclass(frozen=True)
class Norms:
    """Norm parameters of one year (amounts in EUR)."""

    year: int
    months: int
    holiday_allowance: float
    gross_up: float
    couple: float
    single: float
    youth_single: float
    youth_couple_no_children: float
    youth_couple_with_children: float
    base: float
    step: float
    age_cutoff: int

    def yearly_gross(self, net_monthly: float) -> float:
        return net_monthly * (1.0 + self.holiday_allowance) * self.gross_up * self.months

    def table(self) -> np.ndarray:
        """Gross yearly norm by (household type, age class, counted co-residents).

        Shape ``(n_types, n_age_classes, MAX_ADULTS_SHARING + 1)``, float64.
        """
        types, ages = CATEGORIES["household_type"], CATEGORIES["age_class"]
        out = np.empty((len(types), len(ages), MAX_ADULTS_SHARING + 1))
        for t, tname in enumerate(types):
            unit = 2 if tname in COUPLE_TYPES else 1
            for a, aname in enumerate(ages):
                for co in range(MAX_ADULTS_SHARING + 1):
                    out[t, a, co] = self.yearly_gross(self._net(tname, unit, aname, co))
        return out

    def _net(self, tname: str, unit: int, aname: str, co: int) -> float:
        if aname == "18-20":  # youth norms; the kostendelersnorm applies from 21
            if unit == 2:
                return self.youth_couple_with_children if tname == "couple_with_children" else self.youth_couple_no_children
            return self.youth_single
        if co == 0:
            return self.couple if unit == 2 else self.single
        a = unit + co
        return unit * (self.base + self.step * a) / (100.0 * a) * self.couple

    def counted_sharers(self, adults_sharing: np.ndarray, adults_sharing_under_27: np.ndarray) -> np.ndarray:
        """Co-residents that count as cost-sharers under this year's age cut-off."""
        if self.age_cutoff == 21:
            return adults_sharing
        if self.age_cutoff == 27:
            return adults_sharing - adults_sharing_under_27
        raise ValueError(f"norms {self.year}: kostendelersnorm age_cutoff must be 21 or 27, not {self.age_cutoff}")

    def gross_yearly(self, household_type, age_class, adults_sharing, adults_sharing_under_27) -> np.ndarray:
        """Gross yearly norm of each household (float64 array)."""
        co = self.counted_sharers(np.asarray(adults_sharing), np.asarray(adults_sharing_under_27))
        return self.table()[np.asarray(household_type), np.asarray(age_class), co]


def load_norms(year_or_path: int | str | Path = 2019) -> Norms:
    """Read a norm file: a year with a file in ``engine/data/norms/`` or a path to a TOML file."""
    path = resolve("norms", year_or_path)
    d = read_toml(path, "norm")
    try:
        net, kdn = d["net_monthly"], d["kostendelersnorm"]
        return Norms(year=int(d["year"]), months=int(d["months"]), holiday_allowance=float(d["holiday_allowance"]),
                     gross_up=float(d["gross_up"]), couple=float(net["couple"]), single=float(net["single"]),
                     youth_single=float(net["youth_single"]),
                     youth_couple_no_children=float(net["youth_couple_no_children"]),
                     youth_couple_with_children=float(net["youth_couple_with_children"]),
                     base=float(kdn["base"]), step=float(kdn["step"]), age_cutoff=int(kdn["age_cutoff"]))
    except KeyError as exc:
        raise ValueError(f"norm file {path}: missing key {exc}") from None
