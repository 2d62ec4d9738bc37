"""The case protocol: what a module in ``benchmarks/cases/`` declares.

A case module exposes ``IMPLEMENTATIONS`` (a list of :class:`Impl`, one of them named
``"buig"``) and optionally ``DESCRIPTION``, ``FLOORS`` (a list of :class:`Floor` or of
dicts ``{"peer": ..., "min_ratio": ...}``), ``REPEAT`` (timed calls, default 5),
``DATASET`` (whether the case reads the prepared dataset, default True), ``TRUTH`` (the
truth model of that dataset, ``"default"`` or ``"realistic"``: benchmarks/data.py) and ``TIMEOUT``
(seconds per measurement, default 1800). See ``benchmarks/README.md``.

This module must stay importable without NumPy or pyarrow: the runner process imports it
and the case modules, and a child's ``ru_maxrss`` starts from its parent's RSS at fork.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BUIG = "buig"


@dataclass(frozen=True)
class Impl:
    """One implementation of a case, measured in its own subprocess.

    ``setup(ctx) -> state`` runs once per child, untimed (load data here).
    ``run(state) -> result`` is the timed call; the warm-up is one extra call (or
    ``warmup(state)`` when given, e.g. to compile on a small slice), timed separately.
    ``extras(state, result, timing) -> dict`` runs after the timed calls with the result of
    the last one and ``timing`` = {"median_s", "min_s", "max_s", "times_s"}; its
    JSON-serialisable values are reported next to the measurement.
    ``role`` is ``"buig"``, ``"peer"`` (another library doing the same job) or ``"floor"``
    (a lower bound such as a bare read or a memory copy); ``note`` says what it does.
    ``scales`` limits a (heavy) implementation to some scales (default: all).
    """

    name: str
    setup: Callable[["Context"], Any]
    run: Callable[[Any], Any]
    extras: Callable[[Any, Any, dict], dict] | None = None
    warmup: Callable[[Any], Any] | None = None
    role: str = ""
    note: str = ""
    scales: tuple[str, ...] | None = None

    def runs_at(self, scale: str) -> bool:
        return self.scales is None or scale in self.scales

    def __post_init__(self):
        if not self.role:
            object.__setattr__(self, "role", BUIG if self.name == BUIG else "peer")
        if self.role not in (BUIG, "peer", "floor"):
            raise ValueError(f"implementation {self.name!r}: role must be buig, peer or floor, not {self.role!r}")


@dataclass(frozen=True)
class Floor:
    """A gate floor: ``time(peer) / time(impl) >= min_ratio``, both measured in this run.

    ``scales`` limits the floor to some scales (default: all). ``cores`` > 1 marks a
    floor on parallel speed-up: it needs that many free cores, so when it fails while the
    runner measured fewer free cores (:func:`benchmarks.runner.free_cores`) during its
    rounds, it is reported as unverified instead of violated.
    """

    peer: str
    min_ratio: float
    impl: str = BUIG
    scales: tuple[str, ...] | None = None
    cores: int = 1

    @classmethod
    def of(cls, spec: "Floor | dict") -> "Floor":
        if isinstance(spec, Floor):
            return spec
        spec = dict(spec)
        if "scales" in spec and spec["scales"] is not None:
            spec["scales"] = tuple(spec["scales"])
        return cls(**spec)

    def applies(self, scale: str) -> bool:
        return self.scales is None or scale in self.scales


@dataclass(frozen=True)
class Context:
    """What a child knows about the run, passed to ``setup``.

    ``dataset``: the prepared population folder for this scale (``None`` when the case
    declares ``DATASET = False``); ``tmp``: a private temporary folder, removed when the
    child ends; ``shared``: a folder shared by the implementations of this case in this
    run. Round 1 runs the implementations in declared order, so the first (buig) can leave
    results there with :meth:`save` for the peers' ``extras`` to compare against with
    :meth:`load`; later rounds (peers before buig in every other one) find them there too.
    """

    case: str
    impl: str
    scale: str
    households: int
    seed: int
    dataset: Path | None
    tmp: Path
    shared: Path
    repeat: int
    params: dict = field(default_factory=dict)

    def save(self, name: str, value) -> Path:
        """Save an array (``.npy``) or a JSON-serialisable value for later implementations."""
        if hasattr(value, "__array__") and not isinstance(value, (list, dict)):
            import numpy as np

            path = self.shared / f"{name}.npy"
            np.save(path, np.asarray(value))
        else:
            path = self.shared / f"{name}.json"
            path.write_text(json.dumps(value), encoding="utf-8")
        return path

    def load(self, name: str):
        """What an earlier implementation saved under ``name``, or ``None``."""
        npy, js = self.shared / f"{name}.npy", self.shared / f"{name}.json"
        if npy.exists():
            import numpy as np

            return np.load(npy)
        if js.exists():
            return json.loads(js.read_text(encoding="utf-8"))
        return None

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("dataset", "tmp", "shared"):
            d[k] = None if d[k] is None else str(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Context":
        d = dict(d)
        for k in ("dataset", "tmp", "shared"):
            d[k] = None if d[k] is None else Path(d[k])
        return cls(**d)
