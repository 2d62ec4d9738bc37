"""Numba kernel for the bias-reduced cluster-robust (CR2) covariance: the adjusted score of
every cluster (engine.model.sandwich gives the method and its sources).

One cluster per task, each with its own small LAPACK calls: the results do not depend on
the number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def cr2_scores(H, Mg, u, one_tol):
    """For each cluster g: its Hessian ``H[g]`` (k, k) and the block ``Mg[g]`` (k, k) of the
    inverse Hessian on the parameters its rows touch, and its score ``u[g]`` (k,). With
    ``Mg[g] = L L'`` (Cholesky) and ``L' H[g] L = Q diag(lam) Q'``, returns (G, k)
    ``u*_g = L'^-1 Q f(lam) Q' L' u_g`` with ``f = (1 - lam)^(-1/2)``, and 1 for an eigenvalue
    within ``one_tol`` of 1 (a direction only the cluster determines)."""
    G, k = u.shape
    out = np.empty((G, k))
    for g in prange(G):
        L = np.linalg.cholesky(Mg[g])
        Lt = np.ascontiguousarray(L.T)
        C = Lt @ np.ascontiguousarray(H[g]) @ L
        C = (C + C.T) / 2
        lam, Q = np.linalg.eigh(C)
        v = Lt @ u[g]
        c = Q.T @ v
        for j in range(k):
            if lam[j] < 1 - one_tol:
                c[j] *= 1 / np.sqrt(max(1 - lam[j], one_tol)) - 1
            else:
                c[j] = 0.0
        out[g] = np.linalg.solve(Lt, v + Q @ c)
    return out
