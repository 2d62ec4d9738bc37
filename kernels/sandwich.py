"""Numba kernel for the bias-reduced cluster-robust (CR2) covariance: the adjusted score of
every cluster (engine.model.sandwich gives the method and its sources).

One cluster per task, each with its own small LAPACK call: the results do not depend on
the number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def cr2_scores(H, Ls, m_own, m_oo, u, one_tol):
    """For each cluster g, with k = ks + 1 terms (the shared ones, then its own fixed effect):
    its Hessian ``H[g]`` (k, k) and score ``u[g]`` (k,), and the inverse Hessian on those
    terms given as ``Ls`` (ks, ks), the Cholesky factor of its shared block (the same for
    every cluster), ``m_own[g]`` (ks,) its row of the own effect against the shared terms and
    ``m_oo[g]`` its diagonal entry (a cluster without an own effect: zeros and 1, an inert
    direction). With M_g = L L' (L: ``Ls`` bordered by that row) and
    ``L' H[g] L = Q diag(lam) Q'``, returns (G, k) ``u*_g = L'^-1 Q f(lam) Q' L' u_g`` with
    ``f = (1 - lam)^(-1/2)``, and 1 for an eigenvalue within ``one_tol`` of 1 (a direction only
    the cluster determines)."""
    G, k = u.shape
    ks = k - 1
    out = np.empty((G, k))
    for g in prange(G):
        L = np.zeros((k, k))
        L[:ks, :ks] = Ls
        for i in range(ks):                          # the bordering row: Ls l = m_own (forward)
            s = m_own[g, i]
            for j in range(i):
                s -= Ls[i, j] * L[ks, j]
            L[ks, i] = s / Ls[i, i]
        d = m_oo[g]
        for j in range(ks):
            d -= L[ks, j] * L[ks, j]
        L[ks, ks] = np.sqrt(max(d, 1e-300))
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
        w = v + Q @ c
        a = out[g]
        for i in range(k - 1, -1, -1):               # L' a = w (L' upper triangular: backward)
            s = w[i]
            for j in range(i + 1, k):
                s -= L[j, i] * a[j]
            a[i] = s / L[i, i]
    return out
