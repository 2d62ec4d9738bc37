"""The command line's memory settings: NumPy without transparent huge pages, Arrow on the system allocator.

Both are measured choices for a process that reads a population once and fills fresh arrays:

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

So the ``buig`` command (:func:`engine.app.cli.command`, not :func:`engine.app.cli.main`) sets
both for itself and, through the environment, for the Dask workers it starts. A user's own
``NUMPY_MADVISE_HUGEPAGE`` or ``ARROW_DEFAULT_MEMORY_POOL`` (the libraries' variables) stands.
Importing ``engine`` as a library, or calling ``main``, changes nothing.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

NUMPY_PAGES = "NUMPY_MADVISE_HUGEPAGE"
ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"


def command_line_memory() -> None:
    """NumPy's huge-page request off and Arrow's default pool the system allocator, in this process
    and the processes it starts, each unless its variable is set (the user's choice stands: the
    libraries read them at import)."""
    if NUMPY_PAGES not in os.environ:
        os.environ[NUMPY_PAGES] = "0"        # Dask workers started from here read it when they import NumPy
        core = getattr(np, "_core", None) or getattr(np, "core", None)       # NumPy 2 / 1.26
        setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
        if setter is not None:               # a private function: without it, only the workers change
            setter(False)
    if ARROW_POOL not in os.environ:
        os.environ[ARROW_POOL] = "system"
        pa.set_memory_pool(pa.system_memory_pool())
