"""Model specifications as data: which characteristics, outcomes, fixed effects and weights.

A specification is a TOML file (built in: ``engine/data/specs/<name>.toml``). A household
model (``kind = "household"``, the default) has a ``[volume]`` and a ``[price]`` component, each
naming catalogue characteristics (:mod:`engine.model.catalogue`):

- ``factors``: household categoricals with their reference level (terms ``factor[label]``);
- ``indicators``: 0/1 characteristics of households, neighbourhoods or regions (term = name);
- ``continuous``: neighbourhood or municipality / region values (term = name);
- ``outcome``, ``sample``, ``fixed_effects`` (``municipality`` or ``none``), and for the price
  ``model = "norm"``: no price model, the price is the norm amount (f = 1, as before 2019).

Published weights instead of estimation: a ``[weights]`` table (``reference``: the legal
source; ``volume`` / ``price``: term = weight; ``region``: a municipalities column and its
effect per value) or ``[weights] file = "x.csv"`` beside the spec (columns component, term,
weight; component ``volume``, ``price`` or ``region``). ``[published]`` holds published
values to compare an estimate with. A municipality-level linear model (``kind =
"municipal"``, the 2011-2014 model) has ``[municipal] per`` (the unit column) and
``measures``, and weights ``[weights.municipal]`` (``fixed_amount`` and one per measure).

Unknown keys are errors naming the key. ``load_spec(name_or_path)`` reads one; the spec's
``content`` is self-contained (weights inlined) and is what a fit folder records.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from engine.io.config import check_keys, read_toml, resolve, typed

OUTCOMES = {"volume": ("bijstand", "lks", "bijstand_or_lks", "expenditure"), "price": ("fraction",)}
SAMPLES = ("all", "bijstand")
FIXED_EFFECTS = ("municipality", "none")
MODELS = {"volume": ("logit",), "price": ("fractional_logit", "norm")}
TOP_KEYS = ("name", "description", "norms", "kind", "volume", "price", "municipal", "weights", "published")
COMPONENT_KEYS = ("outcome", "sample", "fixed_effects", "factors", "indicators", "continuous", "model")
WEIGHT_KEYS = ("reference", "file", "volume", "price", "region", "municipal")
# logistic(PRICE_ONE) rounds to exactly 1.0 in float64: the linear predictor of "no price model"
PRICE_ONE = 40.0


class SpecError(ValueError):
    """A model specification that is not valid."""


@dataclass(frozen=True)
class ComponentSpec:
    """One component: outcome, estimation sample, characteristics (checked against a catalogue
    when a design is made: :func:`engine.model.design.make_layout`)."""

    name: str
    outcome: str
    sample: str
    fixed_effects: str
    factors: tuple[tuple[str, str], ...]   # (factor, reference level)
    continuous: tuple[str, ...]
    indicators: tuple[str, ...] = ()
    model: str = "logit"
    source: str = ""

    @property
    def fixed(self) -> bool:
        """True for a price without model (f = 1)."""
        return self.model == "norm"


@dataclass(frozen=True)
class Weights:
    """Published weights of a spec: term -> weight per component, region effects, the source."""

    reference: str
    volume: dict = field(default_factory=dict)
    price: dict = field(default_factory=dict)
    region_column: str | None = None
    region: dict = field(default_factory=dict)      # region value (str) -> effect
    municipal: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MunicipalLinear:
    """A municipality-level linear model: cost_g = per_g x (fixed_amount + sum_k w_k x_gk)."""

    per: str
    measures: tuple[str, ...]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    norms: int | str
    volume: ComponentSpec | None
    price: ComponentSpec | None
    path: Path | None
    kind: str = "household"
    weights: Weights | None = None
    published: dict = field(default_factory=dict)
    municipal: MunicipalLinear | None = None

    @property
    def estimated(self) -> bool:
        return self.weights is None

    @property
    def content(self) -> dict:
        """The spec as a self-contained dict (weights inlined) that :func:`spec_from_content` reads
        back equal: what a fit folder records instead of a path."""
        d = {"name": self.name, "description": self.description, "norms": self.norms, "kind": self.kind}
        for comp in (self.volume, self.price):
            if comp is None:
                continue
            if comp.fixed:
                d[comp.name] = {"model": comp.model}
                continue
            d[comp.name] = {"outcome": comp.outcome, "sample": comp.sample, "fixed_effects": comp.fixed_effects,
                            "model": comp.model, "factors": dict(comp.factors),
                            "indicators": list(comp.indicators), "continuous": list(comp.continuous)}
        if self.municipal is not None:
            d["municipal"] = {"per": self.municipal.per, "measures": list(self.municipal.measures)}
        if self.weights is not None:
            w = self.weights
            d["weights"] = {"reference": w.reference,
                            **{k: dict(getattr(w, k)) for k in ("volume", "price", "municipal") if getattr(w, k)}}
            if w.region:
                d["weights"]["region"] = {"column": w.region_column, "effects": dict(w.region)}
        if self.published:
            d["published"] = self.published
        return d

    @property
    def combined(self) -> bool:
        """One model of expected expenditure (volume outcome ``expenditure``, price f = 1)."""
        return self.volume is not None and self.volume.outcome == "expenditure"

    def __eq__(self, other) -> bool:
        return isinstance(other, ModelSpec) and self.content == other.content

    def __hash__(self) -> int:
        return hash(self.name)


def _component(d, name: str, where: str) -> ComponentSpec:
    at = f"{where}: [{name}]"
    d = typed(where, name, d, dict)
    check_keys(at, d, COMPONENT_KEYS)
    model = d.get("model", MODELS[name][0])
    if model not in MODELS[name]:
        raise SpecError(f"{at}: model {model!r}; choose one of {', '.join(MODELS[name])}")

    def get(key, allowed, default=None):
        if key not in d:
            if default is not None:
                return default
            raise SpecError(f"{at}: key '{key}' is missing")
        v = d[key]
        if v not in allowed:
            raise SpecError(f"{at}: key '{key}' = {v!r}; choose one of {', '.join(allowed)}")
        return v

    factors = typed(at, "factors", d.get("factors", {}), dict)
    for f, ref in factors.items():
        typed(f"{at}.factors", f, ref, str)
    lists = {}
    for key in ("indicators", "continuous"):
        lists[key] = tuple(typed(at, key, x, str) for x in typed(at, key, d.get(key, []), list))
    if model == "norm":
        extra = [k for k in ("factors", "indicators", "continuous") if d.get(k)]
        if extra:
            raise SpecError(f"{at}: model = \"norm\" has no terms; remove '{extra[0]}'")
        return ComponentSpec(name=name, outcome="fraction", sample="bijstand", fixed_effects="none", factors=(),
                             continuous=(), model=model, source=where)
    return ComponentSpec(name=name, outcome=get("outcome", OUTCOMES[name]), sample=get("sample", SAMPLES),
                         fixed_effects=get("fixed_effects", FIXED_EFFECTS), factors=tuple(factors.items()),
                         continuous=lists["continuous"], indicators=lists["indicators"], model=model, source=where)


def _read_weight_csv(path: Path, where: str) -> dict:
    """{component: {term: weight}} from a CSV with columns component, term, weight."""
    if not path.is_file():
        raise FileNotFoundError(f"{where}: [weights] file {path} does not exist")
    out: dict = {}
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"component", "term", "weight"} <= set(reader.fieldnames):
            raise SpecError(f"{where}: weights file {path} needs the columns component, term, weight")
        for i, row in enumerate(reader):
            comp = row["component"]
            if comp not in ("volume", "price", "region", "municipal"):
                raise SpecError(f"{where}: weights file {path}, row {i}: component {comp!r} is not one of "
                                "volume, price, region, municipal")
            try:
                w = float(row["weight"])
            except ValueError:
                raise SpecError(f"{where}: weights file {path}, row {i}: weight {row['weight']!r} is not a "
                                "number") from None
            out.setdefault(comp, {})[row["term"]] = typed(f"{where}: weights file {path}, row {i}", "weight", w, float)
    return out


def _weights(d: dict, where: str, base: Path | None) -> Weights:
    """The weights of a ``[weights]`` table (a CSV file beside the spec read in)."""
    at = f"{where}: [weights]"
    d = dict(typed(where, "weights", d, dict))
    check_keys(at, d, WEIGHT_KEYS)
    if "file" in d:
        path = Path(typed(at, "file", d.pop("file"), str))
        path = path if path.is_absolute() or base is None else base / path
        for comp, terms in _read_weight_csv(path, where).items():
            if comp == "region":
                d.setdefault("region", {}).setdefault("effects", {}).update(terms)
            else:
                d.setdefault(comp, {}).update(terms)
    reference = typed(at, "reference", d.get("reference", ""), str)
    if not reference:
        raise SpecError(f"{at}: key 'reference' is missing: published weights need their legal source")
    comps = {}
    for comp in ("volume", "price", "municipal"):
        terms = typed(at, comp, d.get(comp, {}), dict)
        comps[comp] = {t: typed(f"{at}.{comp}", t, w, float) for t, w in terms.items()}
    region = typed(at, "region", d.get("region", {}), dict)
    check_keys(f"{at}.region", region, ("column", "effects"))
    effects = typed(f"{at}.region", "effects", region.get("effects", {}), dict)
    if effects and "column" not in region:
        raise SpecError(f"{at}.region: key 'column' is missing (the municipalities column holding the region)")
    w = Weights(reference=reference, volume=comps["volume"], price=comps["price"], municipal=comps["municipal"],
                region_column=region.get("column"),
                region={str(k): typed(f"{at}.region.effects", str(k), v, float) for k, v in effects.items()})
    return w


def spec_from_content(d: dict, where: str, path: Path | None = None) -> ModelSpec:
    """A spec from its parsed content (a TOML file's or a fit folder's record)."""
    check_keys(where, d, TOP_KEYS)
    kind = typed(where, "kind", d.get("kind", "household"), str)
    if kind not in ("household", "municipal"):
        raise SpecError(f"{where}: key 'kind' = {kind!r}; choose one of household, municipal")
    weights = None
    if "weights" in d:
        weights = _weights(d["weights"], where, path.parent if path else None)
    published = typed(where, "published", d.get("published", {}), dict)
    check_keys(f"{where}: [published]", published, ("reference", "volume", "price"))
    name = typed(where, "name", d.get("name", path.stem if path else "spec"), str)
    common = dict(name=str(name), description=typed(where, "description", d.get("description", ""), str),
                  norms=d.get("norms", 2019), path=path, kind=kind, weights=weights,
                  published=published)
    if kind == "municipal":
        for key in ("volume", "price"):
            if key in d:
                raise SpecError(f"{where}: a municipal model has no [{key}]")
        m = typed(where, "municipal", d.get("municipal"), dict)
        check_keys(f"{where}: [municipal]", m, ("per", "measures"))
        per = typed(f"{where}: [municipal]", "per", m.get("per"), str)
        measures = tuple(typed(f"{where}: [municipal]", "measures", x, str)
                         for x in typed(f"{where}: [municipal]", "measures", m.get("measures"), list))
        if weights is None:
            raise SpecError(f"{where}: a municipal model needs [weights.municipal] (estimation: see the regime's "
                            "objective.model = \"municipal\")")
        want = set(measures) | {"fixed_amount"}
        if set(weights.municipal) != want:
            diff = sorted(want ^ set(weights.municipal))
            raise SpecError(f"{where}: [weights.municipal] must give fixed_amount and one weight per measure; "
                            f"differs in: {', '.join(diff)}")
        return ModelSpec(volume=None, price=None, municipal=MunicipalLinear(per, measures), **common)
    if "municipal" in d:
        raise SpecError(f"{where}: [municipal] belongs to kind = \"municipal\"")
    for key in ("volume", "price"):
        if key not in d:
            raise SpecError(f"{where}: missing table [{key}]")
    volume, price = _component(d["volume"], "volume", where), _component(d["price"], "price", where)
    if weights is not None:
        for comp in (volume, price):
            if comp.fixed_effects != "none":
                raise SpecError(f"{where}: [{comp.name}] fixed_effects must be \"none\" with published weights "
                                "(municipality effects are never published)")
    if volume is not None and volume.outcome == "expenditure" and not (price is not None and price.fixed):
        raise SpecError(f"{where}: [volume] outcome = \"expenditure\" is a combined model of p x f: its price "
                        "must be [price] model = \"norm\" (f = 1)")
    return ModelSpec(volume=volume, price=price, **common)


def load_spec(name_or_path: str | Path = "2019") -> ModelSpec:
    """Read a model specification: a built-in name (``engine/data/specs/``) or the path of a TOML file.

    A combined model (one model of expected expenditure instead of volume x price, the alternative
    of Kamerstuk 34 352, nr. 114) has ``[volume] outcome = "expenditure"`` (benefit paid / gross
    norm over all households, 0 without bijstand or LKS; its expectation is p x f) and
    ``[price] model = "norm"`` (f = 1).
    """
    path = resolve("spec", name_or_path)
    return spec_from_content(read_toml(path, "model spec"), f"model spec {path}", path)
