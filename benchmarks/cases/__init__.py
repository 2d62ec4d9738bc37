"""Benchmark cases: one module per case, named after it (see ``benchmarks/README.md``).

Case modules import heavy libraries inside their functions, not at the top: the runner
imports every selected case module to read its declarations and must stay small.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType

from benchmarks.protocol import BUIG, Floor, Impl

DEFAULT_REPEAT = 5
DEFAULT_TIMEOUT = 1800.0


def available() -> list[str]:
    """Names of the cases in this package, in alphabetical order."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


@dataclass(frozen=True)
class Case:
    name: str
    module: str
    description: str
    implementations: tuple[Impl, ...]
    floors: tuple[Floor, ...]
    repeat: int
    dataset: bool
    timeout: float
    truth: str = "default"

    def impl(self, name: str) -> Impl:
        for impl in self.implementations:
            if impl.name == name:
                return impl
        raise KeyError(f"case {self.name!r} has no implementation {name!r}")


def load(module: str) -> Case:
    """Load and check a case: a name in this package (``"read"``) or any importable module."""
    full = f"{__name__}.{module}" if module in available() else module
    mod: ModuleType = importlib.import_module(full)
    name = full.rsplit(".", 1)[-1]
    impls = tuple(getattr(mod, "IMPLEMENTATIONS", ()))
    if not impls or not all(isinstance(i, Impl) for i in impls):
        raise ValueError(f"case {name}: IMPLEMENTATIONS must be a non-empty list of benchmarks.protocol.Impl")
    names = [i.name for i in impls]
    if len(set(names)) != len(names):
        raise ValueError(f"case {name}: duplicate implementation names {names}")
    if BUIG not in names:
        raise ValueError(f"case {name}: one implementation must be named {BUIG!r}")
    floors = tuple(Floor.of(f) for f in getattr(mod, "FLOORS", ()))
    for f in floors:
        for n in (f.peer, f.impl):
            if n not in names:
                raise ValueError(f"case {name}: floor refers to unknown implementation {n!r}")
    doc = (mod.__doc__ or "").strip().split("\n\n", 1)[0].replace("\n", " ")
    return Case(name=name, module=full, description=getattr(mod, "DESCRIPTION", doc),
                implementations=impls, floors=floors,
                repeat=int(getattr(mod, "REPEAT", DEFAULT_REPEAT)),
                dataset=bool(getattr(mod, "DATASET", True)),
                timeout=float(getattr(mod, "TIMEOUT", DEFAULT_TIMEOUT)),
                truth=str(getattr(mod, "TRUTH", "default")))
