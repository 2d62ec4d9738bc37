"""One BLAS thread for the sections whose sums must not depend on the machine's thread count.

``threadpoolctl.threadpool_limits`` finds the loaded BLAS libraries anew on every call, which
costs about 2 ms once Numba and its libraries are loaded (26 times in a 1000-replicate
bootstrap); one ``ThreadpoolController`` per process finds them once. It is made after
numpy and scipy.linalg are imported, so that it holds both of their OpenBLAS builds.
"""

from __future__ import annotations

from functools import lru_cache

import numpy  # noqa: F401  (loads numpy's BLAS before the controller looks)
import scipy.linalg  # noqa: F401  (and scipy's)
from threadpoolctl import ThreadpoolController


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def single_blas_thread():
    """A context manager that limits BLAS to one thread inside it (and restores the limits after).

    The limit is the process's, as with ``threadpool_limits``: meant for one such section at a time
    per process (a Dask worker of the local cluster runs one task at a time). A BLAS library
    loaded after the first call (none of buig's) would not be limited."""
    return _controller().limit(limits=1, user_api="blas")
