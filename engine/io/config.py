"""Configuration files: the one resolver of built-in names, the one TOML reader, typed keys.

Built-in configuration lives in ``engine/data/<kind>/<name>.toml`` (kinds: ``specs``,
``regimes``, ``norms``, ``scenarios``, ``catalogues``). A value names a built-in when it is a bare name
(letters, digits, ``_`` and ``-``, no ``.toml``, no folder): ``"2019"``. Anything else is
a file path, relative to ``base`` (the folder of the file that names it) or to the current
folder. A bare name that is not built in is an error listing the built-ins: a file in the
current folder is never picked up by accident.

:class:`Keys` reads typed values from a parsed file; every error names the file and the
dotted key. :func:`check_keys` refuses keys a file may not have. :func:`dump_toml` writes
nested dicts back as TOML that :func:`read_toml` reads equal.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
KINDS = {"spec": "specs", "regime": "regimes", "norms": "norms", "scenario": "scenarios", "catalogue": "catalogues",
         "truth": "truths"}
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def builtins(kind: str) -> list[str]:
    """Names of the built-in files of ``kind`` (``"spec"``, ``"regime"``, ``"norms"``, ``"scenario"``)."""
    return sorted(p.stem for p in (DATA / KINDS[kind]).glob("*.toml"))


def is_name(value) -> bool:
    """True when ``value`` is a bare name (a built-in), not a path."""
    return isinstance(value, (str, int)) and not isinstance(value, bool) and bool(_BARE.fullmatch(str(value)))


def resolve(kind: str, value: str | int | Path, base: Path | None = None) -> Path:
    """The file of a built-in name or a path (relative to ``base`` or the current folder).

    Raises ``FileNotFoundError`` naming the built-ins for an unknown name, and naming the
    path for a missing file.
    """
    if not isinstance(value, Path) and is_name(value):
        path = DATA / KINDS[kind] / f"{value}.toml"
        if not path.is_file():
            raise FileNotFoundError(f"no built-in {kind} {str(value)!r}; built in: {', '.join(builtins(kind))} "
                                    f"(a file of your own: give its path, ending in .toml)")
        return path
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file {path}")
    return path


def read_toml(path: Path, what: str) -> dict:
    """Parse a TOML file; errors name ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file {path}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} file {path}: not valid TOML: {exc}") from None


def typed(where: str, key: str, value, kind: type):
    """``value`` checked to be of ``kind`` (int, float: finite, str, bool, dict, list)."""
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: key '{key}': expected a number, got {value!r}")
        return float(value)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: key '{key}': expected an integer, got {value!r}")
    names = {str: "a string", dict: "a table", list: "a list", bool: "true or false"}
    if kind in names and not isinstance(value, kind):
        raise ValueError(f"{where}: key '{key}': expected {names[kind]}, got {value!r}")
    return value


def check_keys(where: str, table: dict, allowed, prefix: str = "") -> None:
    """Refuse a key of ``table`` that is not in ``allowed``; the error names the key and the known ones."""
    for key in table:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key '{prefix}{key}'; known keys here: "
                             f"{', '.join(prefix + k for k in allowed)}")


class Keys:
    """Typed access to a parsed file: ``Keys("regime file x.toml", data).get("budget.macrobudget", float)``."""

    def __init__(self, where: str, data: dict):
        self.where, self.data = where, data

    def error(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self.where}: key '{key}': {problem}")

    def get(self, key: str, kind: type, table: dict | None = None, prefix: str = ""):
        node = self.data if table is None else table
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise self.error(prefix + key, "missing")
            node = node[part]
        return typed(self.where, prefix + key, node, kind)

    def share(self, key: str, table: dict | None = None, prefix: str = "") -> float:
        v = self.get(key, float, table, prefix)
        if not 0.0 <= v <= 1.0:
            raise self.error(prefix + key, f"{v} is outside [0, 1]")
        return v

    def choice(self, key: str, options: tuple[str, ...], table: dict | None = None, prefix: str = "") -> str:
        v = self.get(key, str, table, prefix)
        if v not in options:
            raise self.error(prefix + key, f"{v!r} is not one of {', '.join(options)}")
        return v


# --------------------------------------------------------------------------- TOML out

def _toml_key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _toml_str(k)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) if not math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def dump_toml(data: dict, header: str = "") -> str:
    """``data`` (nested dicts of scalars and lists) as TOML that ``tomllib`` reads back equal."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]

    def table(d: dict, path: tuple[str, ...]) -> None:
        if path:
            lines.append(("\n" if lines else "") + "[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in d.items():
            if not isinstance(v, dict):
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                table(v, path + (k,))

    table(data, ())
    return "\n".join(lines) + "\n"
