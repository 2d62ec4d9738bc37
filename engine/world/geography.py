"""The geography of the synthetic Netherlands: municipalities and wijken of 2017 from CBS.

:func:`load_geography` reads the CBS extracts shipped in ``engine/data/cbs`` (CC BY 4.0,
sources in ``engine/data/SOURCES.md``); labour-market regions are province x urbanity band.
:func:`allocate_households` spreads N households over the wijken in proportion to the real
counts (:func:`largest_remainder`).
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.io.config import DATA

CBS = DATA / "cbs"


def _read_csv(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _num(s: str) -> float:
    return float(s) if s not in ("", None) else np.nan


def largest_remainder(weights: np.ndarray, total: int, minimum: int = 0) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total``; units whose share falls
    below ``minimum`` get ``minimum`` and the rest is shared proportionally among the others."""
    weights = np.asarray(weights, dtype=np.float64)
    n = weights.size
    if minimum * n > total:
        raise ValueError(f"cannot give {n} units at least {minimum} out of {total}")
    out = np.full(n, minimum, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    while True:
        rest = total - minimum * (n - free.sum())
        w = np.where(free, weights, 0.0)
        if w.sum() <= 0:
            out[free] = 0
            out[np.flatnonzero(free)[:1]] += rest
            return out
        quota = w / w.sum() * rest
        low = free & (quota < minimum)
        if not low.any():
            break
        free &= ~low
    base = np.floor(quota).astype(np.int64)
    short = rest - base.sum()
    order = np.lexsort((np.arange(n), -(quota - base)))  # largest remainder, ties by position
    base[order[:short]] += 1
    out[free] = base[free]
    return out


@dataclass
class Geography:
    """Municipalities and wijken of 2017 with their real aggregates."""

    mun_code: np.ndarray
    mun_name: np.ndarray
    province: np.ndarray
    inhabitants: np.ndarray
    households: np.ndarray
    urbanity: np.ndarray
    rec2015: np.ndarray
    rec2017: np.ndarray
    region: np.ndarray            # region index per municipality
    region_code: list[str]
    wk_code: np.ndarray
    wk_name: np.ndarray
    wk_mun: np.ndarray            # municipality index per wijk
    wk_households: np.ndarray
    wk_urbanity: np.ndarray
    wk_type_shares: np.ndarray    # (W, 3): one-person, multi-person without children, with children
    wk_young_share: np.ndarray    # % aged 15-24
    wk_migration: np.ndarray      # (W, 7) shares in the order of CATEGORIES["migration"]


def load_geography() -> Geography:
    """Read the CBS extracts shipped in ``engine/data/cbs``."""
    mrows = sorted(_read_csv(CBS / "municipalities_2017.csv"), key=lambda r: r["code"])
    mun_code = np.array([r["code"] for r in mrows], dtype=object)
    index = {c: i for i, c in enumerate(mun_code)}
    households = np.array([int(r["households"]) for r in mrows])
    rec2017 = np.array([float(r["recipients_2017"]) for r in mrows])
    rec2015 = np.array([_num(r["recipients_2015"]) for r in mrows])
    ratio = np.nansum(rec2015) / rec2017[~np.isnan(rec2015)].sum()
    rec2015 = np.where(np.isnan(rec2015), rec2017 * ratio, rec2015)  # formed after 2015
    urbanity = np.array([int(r["urbanity"]) for r in mrows])
    province = np.array([r["province"] for r in mrows], dtype=object)
    band = np.select([urbanity <= 2, urbanity == 3], ["urban", "intermediate"], "rural")
    keys = sorted({(p, b) for p, b in zip(province, band)})
    region_code = [f"AR{i + 1:02d}" for i in range(len(keys))]
    region = np.array([keys.index((p, b)) for p, b in zip(province, band)])

    wrows = sorted(_read_csv(CBS / "wijken_2017.csv.gz"), key=lambda r: r["WK_CODE"])
    wk_mun = np.array([index[r["GM_CODE"]] for r in wrows])
    W = len(wrows)
    urb = np.array([_num(r["STED"]) for r in wrows])
    urb = np.where(np.isnan(urb), urbanity[wk_mun], urb).astype(np.int8)
    types = np.array([[_num(r["P_EENP_HH"]), _num(r["P_HH_Z_K"]), _num(r["P_HH_M_K"])] for r in wrows])
    young = np.array([_num(r["P_15_24_JR"]) for r in wrows])
    west = np.array([_num(r["P_WEST_AL"]) for r in wrows])
    nonwest = np.array([_num(r["P_N_W_AL"]) for r in wrows])
    detail = np.array([[_num(r["P_MAROKKO"]), _num(r["P_TURKIJE"]), _num(r["P_SURINAM"]),
                        _num(r["P_ANT_ARU"]), _num(r["P_OVER_NW"])] for r in wrows])
    hh = np.array([_num(r["AANTAL_HH"]) for r in wrows])
    hh = np.where(np.isnan(hh), 0, hh)

    def fill(values: np.ndarray) -> np.ndarray:
        """Suppressed wijk cells: the household-weighted mean of the municipality's other wijken."""
        values = values.copy()
        v2 = values.reshape(W, -1)
        ok = ~np.isnan(v2).any(axis=1)
        w = hh * ok
        sums = np.zeros((len(mun_code), v2.shape[1]))
        np.add.at(sums, wk_mun[ok], v2[ok] * w[ok, None])
        tot = np.bincount(wk_mun, weights=w, minlength=len(mun_code))
        national = (v2[ok] * w[ok, None]).sum(0) / w.sum()
        mean = np.where(tot[:, None] > 0, sums / np.maximum(tot, 1e-9)[:, None], national)
        v2[~ok] = mean[wk_mun[~ok]]
        return v2.reshape(values.shape)

    types = fill(types)
    types = np.maximum(types, 0.5)
    types /= types.sum(1, keepdims=True)
    young = fill(young)
    west, nonwest = fill(west), fill(nonwest)
    split = fill(detail)
    split = np.maximum(split, 0.05)
    split = split / split.sum(1, keepdims=True) * nonwest[:, None]
    dutch = np.maximum(100.0 - west - nonwest, 1.0)
    mig = np.column_stack([dutch, west, split[:, 0], split[:, 1], split[:, 2], split[:, 3], split[:, 4]])
    mig /= mig.sum(1, keepdims=True)
    return Geography(
        mun_code=mun_code, mun_name=np.array([r["name"] for r in mrows], dtype=object), province=province,
        inhabitants=np.array([int(r["inhabitants"]) for r in mrows]), households=households,
        urbanity=urbanity, rec2015=rec2015, rec2017=rec2017, region=region, region_code=region_code,
        wk_code=np.array([r["WK_CODE"] for r in wrows], dtype=object),
        wk_name=np.array([r["WK_NAAM"] for r in wrows], dtype=object), wk_mun=wk_mun,
        wk_households=hh, wk_urbanity=urb, wk_type_shares=types, wk_young_share=young, wk_migration=mig)


def allocate_households(geo: Geography, total: int) -> np.ndarray:
    """Households per wijk: proportional to the real counts, scaled to ``total``.

    Municipalities first (each gets at least ``min(20, total // 388)``), then their wijken.
    """
    n_mun = len(geo.mun_code)
    wk_real = geo.wk_households
    mun_real = np.bincount(geo.wk_mun, weights=wk_real, minlength=n_mun)
    per_mun = largest_remainder(mun_real, total, minimum=min(20, total // n_mun))
    out = np.zeros(len(wk_real), dtype=np.int64)
    for g in range(n_mun):
        idx = np.flatnonzero(geo.wk_mun == g)
        out[idx] = largest_remainder(wk_real[idx] + 1e-9, int(per_mun[g]))
    return out
