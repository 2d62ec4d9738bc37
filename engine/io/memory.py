"""The command line's memory settings: NumPy without transparent huge pages, Arrow on the system allocator,
the C library's allocator keeping freed memory for the next array.

All three are measured choices for a process that reads a population once and fills fresh arrays:

- NumPy asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every array
  of 4 MiB or more. On a virtual machine that hands freed guest memory back to its host (free
  page reporting, as on the 2-vCPU machine of the README's figures) a fresh huge page is memory
  the host must provide again: filling a new 200 MiB array took 1.1 s with them and 0.16 s
  without. In the 1000-replicate bootstrap of 2 M households the median did not move (1.86
  against 1.88 s over 5 alternating runs) but the slow runs went (1.72-2.70 s with, 1.77-2.04 s
  without); the cell kernel's own time did not change (14.3 against 14.2 ms per 40 draws).
- Arrow's default pool (mimalloc in the pip wheels) made reading those 2 M households cost
  0.73-0.94 s, 0.64-1.03 s of it in the kernel, against 0.33-0.38 s with the C library's
  allocator (the one NumPy uses) and 0.29-0.33 s with jemalloc (3 alternating runs each).
- glibc's malloc gives every block above its mmap threshold (at most 32 MiB, adjusted as it
  goes) its own mapping and returns it to the kernel when freed, so each batch's tables, sums
  and outputs were fresh pages again: 390 k page faults in that bootstrap. With blocks up to
  256 MiB taken from the heap and up to 1 GiB of free heap kept (``mallopt``; the variables
  ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` for the processes it starts),
  210 k, and the call took 1.50-1.57 s against 1.65-1.88 s (in one process, 2 alternations;
  the medians of 4 alternating command runs: 1.50 against 1.59 s). Peak memory rose 4%.

So the ``buig`` command (:func:`engine.app.cli.command`, not :func:`engine.app.cli.main`) sets
all three for itself and, through the environment, for the Dask workers it starts. A user's own
``NUMPY_MADVISE_HUGEPAGE`` or ``ARROW_DEFAULT_MEMORY_POOL`` (the libraries' variables) stands, and
so do ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and glibc.malloc tunables in
``GLIBC_TUNABLES`` (any of them: the malloc settings are left alone). Without glibc (macOS,
musl) the malloc settings are not made. Importing ``engine`` as a library, or calling ``main``,
changes nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

import numpy as np
import pyarrow as pa

NUMPY_PAGES = "NUMPY_MADVISE_HUGEPAGE"
ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"
# glibc's variable -> (mallopt parameter, value): blocks below 256 MiB from the heap, up to 1 GiB of it kept free
MALLOC = {"MALLOC_MMAP_THRESHOLD_": (-3, 256 << 20), "MALLOC_TRIM_THRESHOLD_": (-1, 1 << 30)}


def command_line_memory() -> None:
    """NumPy's huge-page request off, Arrow's default pool the system allocator and glibc's malloc
    keeping freed memory, in this process and the processes it starts, each unless its variable is
    set (the user's choice stands: the libraries read them at import, glibc at start)."""
    if NUMPY_PAGES not in os.environ:
        os.environ[NUMPY_PAGES] = "0"        # Dask workers started from here read it when they import NumPy
        core = getattr(np, "_core", None) or getattr(np, "core", None)       # NumPy 2 / 1.26
        setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
        if setter is not None:               # a private function: without it, only the workers change
            setter(False)
    if ARROW_POOL not in os.environ:
        os.environ[ARROW_POOL] = "system"
        pa.set_memory_pool(pa.system_memory_pool())
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """glibc's mmap and trim thresholds of :data:`MALLOC`, for this process (``mallopt``) and its children."""
    user = any(v in os.environ for v in MALLOC) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    if user or platform.libc_ver()[0] != "glibc":
        return
    mallopt = ctypes.CDLL(None).mallopt
    for variable, (param, value) in MALLOC.items():
        if mallopt(param, value):            # 1 on success
            os.environ[variable] = str(value)
