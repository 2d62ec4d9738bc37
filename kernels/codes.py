"""Mixed-radix codes: several small integer codes of a row packed into one number."""

from __future__ import annotations

from numba import njit, prange


@njit(parallel=True, cache=True)
def mixed_radix(codes, members, starts, radix, out):
    """out[i, j] = the codes of row i at columns ``members[starts[j]:starts[j + 1]]`` as one number, the
    first column most significant, column k in base ``radix[k]`` (``codes`` (n, F) of small integers,
    ``members`` and ``starts`` int64, ``out`` (n, len(starts) - 1) of an integer dtype that holds every
    result: stored as is). One pass over the rows, in parallel; no array of n per column."""
    for i in prange(codes.shape[0]):
        for j in range(starts.shape[0] - 1):
            c = 0
            for t in range(starts[j], starts[j + 1]):
                k = members[t]
                c = c * radix[k] + codes[i, k]
            out[i, j] = c
