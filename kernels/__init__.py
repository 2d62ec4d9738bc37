"""Numba kernels: pure functions of arrays, no I/O.

Numba's OpenMP threading layer keeps its workers spinning after a parallel region by
default, which starves OpenBLAS (a 421x421 Cholesky took 0.5 s instead of 2 ms right after
a kernel on 2 cores). Idle workers therefore sleep unless the user chose otherwise.

Numba's on-disk cache (``cache=True``) checks only the source file of the function it
loads, so a kernel that calls one in another module (``exp_block``) would keep a stale
copy of it after an edit. The cache therefore lives in a folder named after a hash of all
kernel sources: any edit to any kernel module starts a fresh cache. The folder is
``kernels/__pycache__/numba-<hash>`` (or ``~/.cache/buig/numba-<hash>`` where the package
folder is read-only), under ``$NUMBA_CACHE_DIR`` instead when the user set one.
"""

import hashlib
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cache_dir() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for source in sorted(here.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    name = f"numba-{digest.hexdigest()[:16]}"
    base = os.environ.get("NUMBA_CACHE_DIR", "")
    if base.rstrip("/").endswith(name):            # a child process of ours: already set
        return base
    if base:
        return os.path.join(base, name)
    if os.access(here, os.W_OK):
        return str(here / "__pycache__" / name)
    return str(Path.home() / ".cache" / "buig" / name)


os.environ["NUMBA_CACHE_DIR"] = _cache_dir()
from numba.core import config as _numba_config  # noqa: E402  (after the environment is set)

_numba_config.reload_config()


def cache_is_warm() -> bool:
    """True when Numba's cache folder of these kernel sources holds compiled kernels (a run then
    compiles nothing); False on a first run or after any kernel edit."""
    folder = Path(os.environ["NUMBA_CACHE_DIR"])
    return folder.is_dir() and any(folder.rglob("*.nbc"))
