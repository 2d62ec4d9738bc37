"""Settings shared by all kernels.

FASTMATH: an explicit LLVM flag set WITHOUT ``nnan``/``ninf`` (with them LLVM may drop NaN checks): data may hold
infinities (a coefficient of -inf gives p = 0) and NaN checks must survive.
N_VIRTUAL: number of fixed row ranges with their own accumulators. Results depend on it,
never on the number of threads, so it is a constant (changing it changes the last bits).
"""

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
N_VIRTUAL = 16
