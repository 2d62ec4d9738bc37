"""A vectorisable double-precision exp for blocks of values.

Numba's pip build has no SVML, so ``np.exp`` in a loop stays scalar (about 10 ns a call on
this machine) and dominated the prediction pass. ``exp_block`` computes exp over a block
with plain arithmetic that LLVM vectorises: the range reduction of glibc/musl
(x = k ln2 + r, k rounded with a shift constant), a degree-13 Taylor polynomial on
|r| <= ln2/2 (truncation error below 1e-17 relative), and 2^k from a constant table.
Relative error against ``np.exp`` is a few ulp (tested).

No fast-math, and set so explicitly: Numba otherwise compiles a callee with its caller's
flags (the prediction kernels' FASTMATH), and with "reassoc" (x log2e + SHIFT) - SHIFT
folds to x log2e and the trick breaks (exp came out up to 2x wrong in a fresh compile).
With exact IEEE arithmetic the vector lanes and the scalar tail of a loop agree bit for
bit, so a value does not depend on its position in a block (the bootstrap relies on this).

exp(x) is +inf above 709 (true value above 8e307); below -708 it would need subnormals
and returns exp(-708) instead (about 3e-308, which makes 1/(1+exp(x)) exactly 1.0); NaN
stays NaN.
"""

from __future__ import annotations

import numpy as np
from numba import njit


LOG2E = 1.4426950408889634
LN2_HI = 0.6931471803691238       # ln2 split for Cody-Waite reduction (upper bits)
LN2_LO = 1.9082149292705877e-10
SHIFT = 6755399441055744.0        # 1.5 * 2**52: adding it rounds to an integer kept in the low bits
X_MAX = 709.0                      # above: +inf (the true value exceeds 8e307)
X_MIN = -708.0
# 1/n! for n = 13 .. 0 (Horner order)
C13 = 1.0 / 6227020800.0
C12 = 1.0 / 479001600.0
C11 = 1.0 / 39916800.0
C10 = 1.0 / 3628800.0
C9 = 1.0 / 362880.0
C8 = 1.0 / 40320.0
C7 = 1.0 / 5040.0
C6 = 1.0 / 720.0
C5 = 1.0 / 120.0
C4 = 1.0 / 24.0
C3 = 1.0 / 6.0
C2 = 0.5
POW2 = 2.0 ** np.arange(-1022, 1024).astype(np.float64)   # 2^k at index k + 1022


@njit(cache=True, fastmath=False)
def exp_block(x, out, kd, sb, m):
    """out[:m] = exp(x[:m]); ``kd`` (float64) and ``sb`` (int64) are scratch of at least m.

    2^k comes from the constant table POW2, indexed by k + 1022 in ``sb``."""
    for j in range(m):
        xc = min(max(x[j], X_MIN), X_MAX)
        kd[j] = (xc * LOG2E + SHIFT) - SHIFT          # round to the nearest integer
        sb[j] = np.int64(kd[j]) + 1022
    for j in range(m):
        xc = min(max(x[j], X_MIN), X_MAX)
        k = kd[j]
        r = (xc - k * LN2_HI) - k * LN2_LO
        p = C13
        p = p * r + C12
        p = p * r + C11
        p = p * r + C10
        p = p * r + C9
        p = p * r + C8
        p = p * r + C7
        p = p * r + C6
        p = p * r + C5
        p = p * r + C4
        p = p * r + C3
        p = p * r + C2
        p = p * r + 1.0
        p = p * r + 1.0
        v = p * POW2[sb[j]]
        out[j] = np.inf if x[j] > X_MAX else v


@njit(cache=True, inline="always")
def block_scratch(m):
    """Work arrays of two linear predictors and their exps over blocks of m values:
    (xv, xp, ev, ep) float64 and the scratch (kd, sb) of :func:`exp_block`."""
    return np.empty(m), np.empty(m), np.empty(m), np.empty(m), np.empty(m), np.empty(m, dtype=np.int64)


@njit(cache=True, fastmath=False)
def exp_array(x):
    """exp of a 1-d array with exp_block (for tests and small callers)."""
    n = x.shape[0]
    out = np.empty(n)
    exp_block(x, out, np.empty(n), np.empty(n, dtype=np.int64), n)
    return out
