"""Numba kernels: pure functions of arrays, no I/O.

Numba's OpenMP threading layer keeps its workers spinning after a parallel region by
default, which starves OpenBLAS (a 421x421 Cholesky took 0.5 s instead of 2 ms right after
a kernel on 2 cores). Idle workers therefore sleep unless the user chose otherwise.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
