"""Model specifications as data: which regressors, outcomes and fixed effects.

A specification is a TOML file (default ``engine/data/specs/2019.toml``) with a ``[volume]``
and a ``[price]`` component. ``load_spec("2019")`` or ``load_spec(path)`` reads and checks
one; a bad file raises ``ValueError`` naming the file and the key.
"""

from __future__ import annotations

from engine.io.config import read_toml, resolve
from dataclasses import dataclass
from pathlib import Path

from engine.model.schema import CATEGORIES, TABLES

OUTCOMES = {"volume": ("bijstand", "lks", "bijstand_or_lks", "expenditure"), "price": ("fraction", "one")}
SAMPLES = ("all", "bijstand")
FIXED_EFFECTS = ("municipality", "none")
CONTINUOUS = tuple(c.name for c in TABLES["neighbourhoods"] if c.name in ("share_non_working", "liveability", "jobs_access"))


@dataclass(frozen=True)
class ComponentSpec:
    """One component: outcome, estimation sample, factors with reference levels, continuous columns."""

    name: str
    outcome: str
    sample: str
    fixed_effects: str
    factors: tuple[tuple[str, str], ...]   # (factor, reference level)
    continuous: tuple[str, ...]

    def term_names(self) -> list[str]:
        """Names of the estimated terms excluding fixed effects, in parameter order."""
        names = ["intercept"]
        for factor, ref in self.factors:
            names += [f"{factor}[{lab}]" for lab in CATEGORIES[factor] if lab != ref]
        return names + list(self.continuous)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    norms: int | str
    volume: ComponentSpec
    price: ComponentSpec
    path: Path
    combined: bool = False    # one model of expected expenditure (see load_spec)


# The price component of a combined model: f = 1 (nothing estimated; see engine.model.fitted.constant_fit).
CONSTANT_PRICE = ComponentSpec(name="price", outcome="one", sample="all", fixed_effects="none", factors=(),
                               continuous=())


def _component(d: dict, name: str, path: Path) -> ComponentSpec:
    def get(key, allowed=None, default=None):
        if key not in d:
            if default is not None:
                return default
            raise ValueError(f"model spec {path}: [{name}] is missing key {key!r}")
        v = d[key]
        if allowed is not None and v not in allowed:
            raise ValueError(f"model spec {path}: [{name}].{key} = {v!r}; choose one of {', '.join(allowed)}")
        return v

    factors = get("factors", default={})
    if not isinstance(factors, dict):
        raise ValueError(f"model spec {path}: [{name}.factors] must be a table of factor = reference level")
    for factor, ref in factors.items():
        if factor not in CATEGORIES or factor == "duration_class":
            raise ValueError(f"model spec {path}: [{name}.factors] unknown factor {factor!r}; "
                             f"choose from {', '.join(c for c in CATEGORIES if c != 'duration_class')}")
        if ref not in CATEGORIES[factor]:
            raise ValueError(f"model spec {path}: [{name}.factors].{factor} reference {ref!r} is not a level; "
                             f"levels: {', '.join(CATEGORIES[factor])}")
    continuous = get("continuous", default=[])
    for c in continuous:
        if c not in CONTINUOUS:
            raise ValueError(f"model spec {path}: [{name}].continuous has unknown column {c!r}; "
                             f"choose from {', '.join(CONTINUOUS)}")
    return ComponentSpec(name=name, outcome=get("outcome", OUTCOMES[name]), sample=get("sample", SAMPLES),
                         fixed_effects=get("fixed_effects", FIXED_EFFECTS), factors=tuple(factors.items()),
                         continuous=tuple(continuous))


def load_spec(name_or_path: str | Path = "2019") -> ModelSpec:
    """Read a model specification: a built-in name (``engine/data/specs/``) or the path of a TOML file.

    ``combined = true`` (default false) asks for one model of expected expenditure instead of
    volume x price: ``[volume]`` then has ``outcome = "expenditure"`` (benefit paid / gross norm
    over all households, 0 without bijstand or LKS; its expectation is p x f) and there is no
    ``[price]`` table (the price is f = 1, :data:`CONSTANT_PRICE`).
    """
    path = resolve("spec", name_or_path)
    d = read_toml(path, "model spec")
    combined = d.get("combined", False)
    if not isinstance(combined, bool):
        raise ValueError(f"model spec {path}: combined = {combined!r}; expected true or false")
    for key in ("volume",) if combined else ("volume", "price"):
        if key not in d:
            raise ValueError(f"model spec {path}: missing table [{key}]")
    if combined and "price" in d:
        raise ValueError(f"model spec {path}: [price]: a combined model (combined = true) has no price component")
    volume = _component(d["volume"], "volume", path)
    if (volume.outcome == "expenditure") != combined:
        raise ValueError(f"model spec {path}: [volume].outcome = {volume.outcome!r} " +
                         ("needs combined = true" if not combined else 'with combined = true must be "expenditure"'))
    price = CONSTANT_PRICE if combined else _component(d["price"], "price", path)
    if price.outcome == "one" and not combined:
        raise ValueError(f'model spec {path}: [price].outcome = "one" is the price of a combined model only')
    return ModelSpec(name=str(d.get("name", path.stem)), description=str(d.get("description", "")),
                     norms=d.get("norms", 2019), volume=volume, price=price, path=path, combined=combined)
