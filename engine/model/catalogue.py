"""The catalogue of characteristics: every column a model may use, declared once as data.

A catalogue is a TOML file (built in: ``engine/data/catalogues/<name>.toml``) with one table
per characteristic under ``[characteristics.NAME]``:

- ``level``: ``household`` (households table), ``neighbourhood`` (neighbourhoods table),
  ``municipality`` or ``region`` (municipalities table; a region value repeated per municipality);
- ``kind``: ``categorical`` (with ``labels``, read by label, never by position), ``indicator``
  (0/1), ``continuous`` (optional ``min`` / ``max``) or ``code`` (a municipality / region
  code, text, e.g. the COROP region that published region effects are keyed by);
- ``unit``, ``doc``, ``source``: text.

``include = "default"`` starts from another catalogue (a built-in name or a path relative to
the file) and adds the file's entries. Schema validation (:mod:`engine.model.schema`), the
factor-coded design, the spec checks and the generator all derive from it.

:func:`load_catalogue` reads one; :func:`population_catalogue` picks the catalogue of a
population folder: an explicit file, else ``catalogue.toml`` in the folder, else ``default``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.io.config import check_keys, read_toml, resolve, typed

LEVELS = ("household", "neighbourhood", "municipality", "region")
KINDS = ("categorical", "indicator", "continuous", "code")
TABLE_OF_LEVEL = {"household": "households", "neighbourhood": "neighbourhoods",
                  "municipality": "municipalities", "region": "municipalities"}
# Columns a rule of law reads (norms by household type and age; Participatiewet art. 20-22):
# every catalogue declares them with exactly these labels.
LAW_COLUMNS = {
    "household_type": ("single", "single_parent", "couple_no_children", "couple_with_children", "other"),
    "age_class": ("18-20", "21-26", "27-34", "35-44", "45-54", "55-aow"),
}
ENTRY_KEYS = ("level", "kind", "labels", "unit", "doc", "source", "min", "max", "synth")
# parameters of the generator (engine.world.characteristics), per entry's `synth` table
SYNTH_KEYS = ("share", "latent", "when", "by", "given", "exclusive", "mean", "sd", "scale_of", "regions_per_province",
             "share_of_households", "percent_of")
INDICATOR_LABELS = ("0", "1")


@dataclass(frozen=True)
class Characteristic:
    """One declared column."""

    name: str
    level: str
    kind: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    doc: str = ""
    source: str = ""
    min: float | None = None
    max: float | None = None
    synth: dict | None = None        # how buig's generator draws it (None: not generated)

    @property
    def table(self) -> str:
        return TABLE_OF_LEVEL[self.level]

    @property
    def levels(self) -> tuple[str, ...]:
        """Labels of the codes: a categorical's labels, ``("0", "1")`` for an indicator."""
        return self.labels if self.kind == "categorical" else INDICATOR_LABELS

    def to_dict(self) -> dict:
        d = {"level": self.level, "kind": self.kind}
        if self.kind == "categorical":
            d["labels"] = list(self.labels)
        for k in ("unit", "doc", "source"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        for k in ("min", "max", "synth"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d


@dataclass(frozen=True)
class Catalogue:
    """The characteristics of one catalogue, in file order (included ones first)."""

    name: str
    entries: tuple[Characteristic, ...]
    path: Path | None = None

    def __contains__(self, name: str) -> bool:
        return any(e.name == name for e in self.entries)

    def get(self, name: str) -> Characteristic:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def of_table(self, table: str) -> tuple[Characteristic, ...]:
        return tuple(e for e in self.entries if e.table == table)

    def factors(self) -> tuple[Characteristic, ...]:
        """Household categorical and indicator columns (factor-coded), law columns first."""
        hh = [e for e in self.entries if e.level == "household" and e.kind != "continuous"]
        law = [e for n in LAW_COLUMNS for e in hh if e.name == n]
        return tuple(law + [e for e in hh if e.name not in LAW_COLUMNS])

    def area_columns(self) -> tuple[Characteristic, ...]:
        """Neighbourhood and municipality / region columns used as per-neighbourhood values."""
        return tuple(e for e in self.entries if e.level != "household" and e.kind in ("indicator", "continuous"))

    def to_dict(self) -> dict:
        return {"name": self.name, "characteristics": {e.name: e.to_dict() for e in self.entries}}


class CatalogueError(ValueError):
    """A catalogue file that is not valid."""


def _entry(where: str, name: str, d) -> Characteristic:
    at = f"{where}: [characteristics.{name}]"
    if not isinstance(d, dict):
        raise CatalogueError(f"{at} must be a table")
    check_keys(at, d, ENTRY_KEYS)
    for key in ("level", "kind"):
        if key not in d:
            raise CatalogueError(f"{at}: key '{key}' is missing")
    level, kind = typed(at, "level", d["level"], str), typed(at, "kind", d["kind"], str)
    if level not in LEVELS:
        raise CatalogueError(f"{at}: level {level!r} is not one of {', '.join(LEVELS)}")
    if kind not in KINDS:
        raise CatalogueError(f"{at}: kind {kind!r} is not one of {', '.join(KINDS)}")
    labels: tuple[str, ...] = ()
    if kind == "categorical":
        if level != "household":
            raise CatalogueError(f"{at}: a categorical characteristic must be at household level (give "
                                 "neighbourhood and region characteristics as indicators or continuous values)")
        raw = typed(at, "labels", d.get("labels"), list)
        labels = tuple(typed(at, "labels", x, str) for x in raw)
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise CatalogueError(f"{at}: labels must be at least two distinct strings, not {list(labels)}")
        if len(labels) > 255:
            raise CatalogueError(f"{at}: at most 255 labels, not {len(labels)}")
    elif "labels" in d:
        raise CatalogueError(f"{at}: only a categorical characteristic has labels (kind is {kind!r})")
    if kind == "code" and level not in ("municipality", "region"):
        raise CatalogueError(f"{at}: a code characteristic must be at municipality or region level")
    if kind == "continuous" and level == "household":
        raise CatalogueError(f"{at}: household-level continuous characteristics are not supported by the "
                             "factor-coded design; declare classes (categorical) or an indicator")
    bounds = {}
    for key in ("min", "max"):
        if key in d:
            if kind != "continuous":
                raise CatalogueError(f"{at}: only a continuous characteristic has '{key}'")
            bounds[key] = typed(at, key, d[key], float)
    if name in LAW_COLUMNS and (kind != "categorical" or level != "household" or labels != LAW_COLUMNS[name]):
        raise CatalogueError(f"{at}: {name} is read by the law (norms): it must be a household categorical "
                             f"with labels {list(LAW_COLUMNS[name])}")
    text = {k: typed(at, k, d.get(k, ""), str) for k in ("unit", "doc", "source")}
    synth = None
    if "synth" in d:
        synth = typed(at, "synth", d["synth"], dict)
        check_keys(f"{at}.synth", synth, SYNTH_KEYS)
        for k in ("share", "latent", "mean", "sd"):
            if k in synth:
                typed(f"{at}.synth", k, synth[k], float)
        if "share" in synth and not 0.0 <= synth["share"] <= 1.0:
            raise CatalogueError(f"{at}.synth: share {synth['share']} is outside [0, 1]")
    return Characteristic(name=name, level=level, kind=kind, labels=labels, **text, **bounds, synth=synth)


def load_catalogue(name_or_path: str | Path = "default", _seen: tuple = ()) -> Catalogue:
    """Read a catalogue: a built-in name or the path of a TOML file (see the module docstring)."""
    path = resolve("catalogue", name_or_path)
    where = f"catalogue {path}"
    if path.resolve() in _seen:
        raise CatalogueError(f"{where}: include loops back to itself")
    d = read_toml(path, "catalogue")
    check_keys(where, d, ("name", "include", "characteristics"))
    entries: list[Characteristic] = []
    if "include" in d:
        inc = typed(where, "include", d["include"], str)
        entries = list(load_catalogue(resolve("catalogue", inc, base=path.parent), _seen + (path.resolve(),)).entries)
    own = typed(where, "characteristics", d.get("characteristics", {}), dict)
    known = {e.name for e in entries}
    for name, entry in own.items():
        if name in known:
            raise CatalogueError(f"{where}: [characteristics.{name}] is already declared by the included catalogue")
        entries.append(_entry(where, name, entry))
    cat = Catalogue(name=str(d.get("name", path.stem)), entries=tuple(entries), path=path)
    for law in LAW_COLUMNS:
        if law not in cat:
            raise CatalogueError(f"{where}: the law column {law!r} is not declared (include = \"default\" declares it)")
    return cat


def catalogue_from_dict(d: dict, where: str) -> Catalogue:
    """A catalogue from its :meth:`Catalogue.to_dict` (as recorded in an output file)."""
    own = d.get("characteristics", {})
    return Catalogue(name=str(d.get("name", "recorded")), entries=tuple(_entry(where, n, e) for n, e in own.items()))


def population_catalogue(folder: str | Path | None, catalogue: str | Path | Catalogue | None = None) -> Catalogue:
    """The catalogue of a population: ``catalogue`` if given, else ``catalogue.toml`` in ``folder``,
    else the built-in ``default``."""
    if isinstance(catalogue, Catalogue):
        return catalogue
    if catalogue is not None:
        return load_catalogue(catalogue)
    if folder is not None and (Path(folder) / "catalogue.toml").is_file():
        return load_catalogue(Path(folder) / "catalogue.toml")
    return load_catalogue("default")
