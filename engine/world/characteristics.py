"""Characteristics of the synthetic Netherlands beyond the default eight, generated from the catalogue.

A :class:`WorldModel` is what :mod:`engine.world.synth` needs for a ``--truth`` other than the
default: the catalogue (every characteristic with a ``synth`` table is generated, no
characteristic is named here), the area values (neighbourhood and municipality / region
characteristics, drawn once per world), and the truth of the volume model:

- ``default``: the default eight characteristics and the 14 municipal measures of the 2011-2014
  model (the municipality entries of the catalogue ``realistic``), so the regimes 2011-2014 run on
  it; the households are those of the default world alone;
- ``realistic``: the catalogue ``realistic`` (43 household indicators, 8 neighbourhood and
  region characteristics, COROP, the 2011-2014 municipal measures); the volume truth is the
  default one plus the terms of ``engine/data/truths/realistic.toml``; calibrated to the real
  bijstand rates like the default world;
- ``scp2015``: the same characteristics; outcomes drawn from the published 2015 model itself
  (``engine/data/specs/scp2015.toml``: constant, weights and COROP effects) plus the natural
  and planted policy effects, without calibration and without LKS (it did not exist in 2015).

Household indicators: P(x = 1) = logistic(a + latent * u + sum of ``given`` shifts), where u
is the household's deprivation latent (standardised nationally) and ``a`` is chosen so that the mean over u is the
catalogue ``share`` (logit(share) * sqrt(1 + pi latent^2 / 8)); ``by`` gives the share per
level of a factor, ``when`` the households it applies to, ``exclusive`` an indicator it
excludes. Areas: continuous values mean + sd (latent z + sqrt(1 - latent^2) e) with z the
standardised deprivation of the area, indicators as households; ``scale_of`` multiplies by a
municipalities column; a code with ``regions_per_province`` numbers the regions of each
province (municipalities grouped by their synthetic labour-market region). Municipality measures
with ``share_of_households`` are the share (in %) of the municipality's generated households
meeting its conditions (or that share x the ``scale_of`` column: a count), computed after the
households (:meth:`WorldModel.fill_measures`); ``percent_of`` is a municipalities column of the
world x 100 (jobs_availability, job_growth, household_growth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from engine.io.config import read_toml, resolve
from engine.model.catalogue import Catalogue, Characteristic, load_catalogue

TRUTHS = ("default", "realistic", "scp2015")


def _logit(p):
    return math.log(p / (1.0 - p))


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


def _level(s: dict, share) -> np.ndarray | float:
    """Intercepts on the log-odds scale for share(s), corrected for the spread of the latent."""
    b = float(s.get("latent", 0.0))
    scale = math.sqrt(1.0 + math.pi * b * b / 8.0)
    share = np.clip(np.asarray(share, dtype=np.float64), 1e-9, 1 - 1e-9)
    return np.log(share / (1 - share)) * scale


def _z(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    w = np.ones_like(x) if w is None else w
    m = np.average(x, weights=w)
    sd = math.sqrt(np.average((x - m) ** 2, weights=w))
    return (x - m) / (sd if sd > 0 else 1.0)


def _area(e: Characteristic, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = e.synth
    lat = float(s.get("latent", 0.0))
    if e.kind == "indicator":
        return (rng.random(z.size) < _logistic(_level(s, s["share"]) + lat * z)).astype(np.int8)
    v = s["mean"] + s["sd"] * (lat * z + math.sqrt(max(1 - lat * lat, 0.0)) * rng.standard_normal(z.size))
    lo = -np.inf if e.min is None else e.min
    hi = np.inf if e.max is None else e.max
    return np.clip(v, lo, hi)


def _regions(e: Characteristic, geo) -> np.ndarray:
    """Region codes per municipality: each province's regions, municipalities grouped by their
    synthetic labour-market region and split into runs of about equal numbers of municipalities."""
    per = e.synth["regions_per_province"]
    out = np.empty(len(geo.mun_code), dtype=object)
    for prov in np.unique(geo.province):
        if prov not in per:
            raise ValueError(f"catalogue entry {e.name}: synth.regions_per_province has no {prov!r}")
        idx = np.flatnonzero(geo.province == prov)
        idx = idx[np.lexsort((geo.mun_code[idx], geo.region[idx]))]
        codes = per[prov]
        k = np.arange(idx.size) * len(codes) // idx.size
        out[idx] = [str(codes[j]) for j in k]
    return out


@dataclass
class WorldModel:
    """Catalogue, area values and volume truth of one synthetic world (see the module docstring)."""

    name: str
    catalogue: Catalogue
    nb_values: dict = field(default_factory=dict)     # name -> (W,)
    mun_values: dict = field(default_factory=dict)    # name -> (n_mun,)
    terms: dict = field(default_factory=dict)         # extra volume terms (realistic)
    published: dict | None = None                     # scp2015: term -> weight
    region_column: str | None = None
    region: dict = field(default_factory=dict)
    u_mean: float = 0.0                               # national mean and sd of the household latent
    u_sd: float = 1.0
    terms_mean: float = 0.0                           # national mean of the extra terms (centred)

    @property
    def default(self) -> bool:
        return self.name == "default"

    def households(self, codes: dict, u: np.ndarray, rng: np.random.Generator) -> dict:
        """The generated household indicators of one municipality's households (int8 arrays)."""
        out: dict = {}
        n = u.size
        u = (u - self.u_mean) / self.u_sd
        for e in self.catalogue.entries:
            if e.level != "household" or e.synth is None:
                continue
            if e.kind != "indicator":
                raise ValueError(f"catalogue entry {e.name}: only household indicators are generated")
            s = e.synth
            if "by" in s:
                (factor, shares), = s["by"].items()
                labels = self.catalogue.get(factor).levels
                a = _level(s, [shares.get(lab, s.get("share", 0.0)) for lab in labels])[codes[factor]]
            else:
                a = np.full(n, _level(s, s["share"]))
            for key, shift in s.get("given", {}).items():
                a = a + shift * self._value(key, codes, out)
            p = _logistic(a + float(s.get("latent", 0.0)) * u)
            if "by" not in s and s["share"] >= 1.0:
                p = np.ones(n)
            mask = self._mask(s.get("when", {}), codes, n)
            if "exclusive" in s:
                mask &= out[s["exclusive"]] == 0
            out[e.name] = (mask & (rng.random(n) < p)).astype(np.int8)
        return out

    def _mask(self, conditions: dict, codes: dict, n: int) -> np.ndarray:
        """The households meeting every condition: factor = labels (or ``urbanity`` = CBS classes)."""
        mask = np.ones(n, dtype=bool)
        for factor, labels in conditions.items():
            wanted = labels if factor == "urbanity" else [self.catalogue.get(factor).levels.index(lab) for lab in labels]
            mask &= np.isin(codes[factor], wanted)
        return mask

    @property
    def household_measures(self) -> tuple[Characteristic, ...]:
        """The municipality measures computed from the households (``synth.share_of_households``)."""
        return tuple(e for e in self.catalogue.entries if e.level == "municipality" and e.synth is not None
                     and "share_of_households" in e.synth)

    def measure_counts(self, codes: dict, urbanity: np.ndarray) -> dict:
        """Per household measure, how many of one municipality's households meet its conditions."""
        both = {**codes, "urbanity": urbanity}
        return {e.name: int(self._mask(e.synth["share_of_households"], both, urbanity.size).sum())
                for e in self.household_measures}

    def fill_measures(self, stats: list, n_mun_hh: np.ndarray) -> None:
        """The household measures of every municipality from the counts in ``stats`` (one per municipality):
        100 x the share of its households, or the share x the ``scale_of`` column (households)."""
        for e in self.household_measures:
            share = np.array([st["measures"][e.name] for st in stats], dtype=np.float64) / np.maximum(n_mun_hh, 1)
            self.mun_values[e.name] = share * n_mun_hh if e.synth.get("scale_of") == "households" else 100.0 * share

    def _value(self, key: str, codes: dict, out: dict) -> np.ndarray:
        if "[" in key:
            factor, label = key[:-1].split("[")
            return (codes[factor] == self.catalogue.get(factor).levels.index(label)).astype(np.float64)
        return out[key].astype(np.float64)

    def _term(self, name: str, codes: dict, extras: dict, wk: np.ndarray, g: int, n: int) -> np.ndarray:
        if "[" in name or name in extras:
            return self._value(name, codes, extras)
        if name in self.nb_values:
            return np.asarray(self.nb_values[name], dtype=np.float64)[wk]
        if name in self.mun_values:
            return np.full(n, float(self.mun_values[name][g]))
        raise ValueError(f"truth term {name!r} is not a characteristic of the catalogue {self.catalogue.name}")

    def extra_eta(self, codes: dict, extras: dict, wk: np.ndarray, g: int) -> np.ndarray:
        """The realistic truth's extra volume terms of one municipality's households."""
        eta = np.full(wk.size, -self.terms_mean)
        for name, coef in self.terms.items():
            eta += coef * self._term(name, codes, extras, wk, g, wk.size)
        return eta

    def published_eta(self, codes: dict, extras: dict, wk: np.ndarray, g: int) -> np.ndarray:
        """The published model's linear predictor (constant and region effect included)."""
        eta = np.full(wk.size, self.published["intercept"])
        for name, w in self.published.items():
            if name != "intercept" and w != 0.0:
                eta += w * self._term(name, codes, extras, wk, g, wk.size)
        return eta + self.region[str(self.mun_values[self.region_column][g])]


def world_model(name: str, geo, wp, n_mun_hh: np.ndarray, seed: int) -> WorldModel:
    """The world of ``--truth name`` (area values drawn from their own seed, so the household
    draws of the default world are untouched)."""
    if name not in TRUTHS:
        raise ValueError(f"--truth must be one of {', '.join(TRUTHS)}, not {name!r}")
    cat = load_catalogue("realistic")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    w = np.maximum(geo.wk_households, 1).astype(np.float64)
    z_nb = _z(wp.dep_wijk, w)
    n_mun = len(geo.mun_code)
    dep_mun = np.bincount(geo.wk_mun, weights=wp.dep_wijk * w, minlength=n_mun) / np.bincount(
        geo.wk_mun, weights=w, minlength=n_mun)
    z_mun = _z(dep_mun, n_mun_hh.astype(np.float64))
    n_reg = int(geo.region.max()) + 1
    reg_w = np.bincount(geo.region, weights=n_mun_hh, minlength=n_reg)
    z_reg = _z(np.bincount(geo.region, weights=dep_mun * n_mun_hh, minlength=n_reg) / np.maximum(reg_w, 1),
               np.maximum(reg_w, 1))
    # the household latent of engine.world.synth: 0.8 dep_wijk + 0.4 non-western + N(0, 1)
    nonwest = geo.wk_migration[:, 2:].sum(1)
    m_dep = np.average(wp.dep_wijk, weights=w)
    m_nw = np.average(nonwest, weights=w)
    var = 0.64 * np.average((wp.dep_wijk - m_dep) ** 2, weights=w) + 0.16 * m_nw * (1 - m_nw) + 1.0
    if name == "default":     # the default eight and the 2011-2014 municipal measures only
        measures = tuple(e for e in cat.entries if e.level == "municipality" and e.synth is not None)
        cat = Catalogue("default_municipal", load_catalogue("default").entries + measures)
    world = WorldModel(name, cat, u_mean=0.8 * m_dep + 0.4 * m_nw, u_sd=math.sqrt(var))
    for e in cat.entries:
        if e.level == "household" or e.synth is None or "share_of_households" in e.synth:
            continue                  # household measures: WorldModel.fill_measures, after the households
        if "percent_of" in e.synth:
            if e.synth["percent_of"] not in ("jobs_availability", "job_growth", "household_growth"):
                raise ValueError(f"catalogue entry {e.name}: synth.percent_of must be jobs_availability, job_growth "
                                 f"or household_growth, not {e.synth['percent_of']!r}")
            world.mun_values[e.name] = 100.0 * np.asarray(getattr(wp, e.synth["percent_of"]), dtype=np.float64)
        elif e.kind == "code":
            world.mun_values[e.name] = _regions(e, geo)
        elif e.level == "neighbourhood":
            world.nb_values[e.name] = _area(e, z_nb, rng)
        elif e.level == "region":
            world.mun_values[e.name] = _area(e, z_reg, rng)[geo.region]
        else:
            v = _area(e, z_mun, rng)
            if "scale_of" in e.synth:        # a count: a share of a municipalities column
                v = np.round(v * {"households": n_mun_hh}[e.synth["scale_of"]])
            world.mun_values[e.name] = v
    if name == "default":
        return world
    if name == "realistic":
        world.terms = {k: float(v) for k, v in read_toml(resolve("truth", "realistic"), "truth")["volume"].items()}
        # centred on their national means (household indicators: the catalogue share), so the
        # municipality levels stay those of the default world and the calibration as small
        world.terms_mean = sum(coef * (float(np.average(world.nb_values[k], weights=w)) if k in world.nb_values else
                                       cat.get(k).synth.get("share", 0.0) if k in cat and cat.get(k).level == "household"
                                       else float(np.average(world.mun_values[k], weights=n_mun_hh)))
                               for k, coef in world.terms.items())
    else:
        from engine.model.spec import load_spec

        spec = load_spec("scp2015")
        world.published, world.region_column, world.region = dict(spec.weights.volume), \
            spec.weights.region_column, dict(spec.weights.region)
    return world
