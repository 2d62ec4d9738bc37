"""The bias-reduced cluster-robust covariance (CR2) of a (quasi-)likelihood estimate.

The plain cluster sandwich (CR1: ``G/(G-1) (n-1)/(n-k)`` times ``H^-1 (sum_g u_g u_g') H^-1``)
is biased downwards when a few clusters carry much of the information on a coefficient:
a cluster's residuals are shrunk by its own influence on the fit. A large part of the
households of Moroccan, Turkish and Surinamese background live in the four largest cities, so
with the 388 municipalities as clusters the CR1 variances of those terms were up to 15-22%
below the model-based ones in synthetic worlds of 1-4 million households whose truth has
independent households (``scripts/coverage_study.py`` reports the ratio). CR2
(Bell and McCaffrey 2002, Survey Methodology 28(2) 169-181; for generalised linear models
and absorbed fixed effects Pustejovsky and Tipton 2018, Journal of Business & Economic
Statistics 36(4) 672-683) undoes that shrinkage: each cluster's score is computed from
``(I - H_gg)^(-1/2)`` times its Pearson residuals, with ``H_gg = W_g^(1/2) X_g M X_g' W_g^(1/2)``
the cluster's block of the (working-weight) hat matrix and ``M`` the inverse Hessian.

Without forming the n_g x n_g block: with the cluster's Hessian ``H_g = X_g' W_g X_g = U S U'``
(its rank-r part), ``H_gg`` has the nonzero eigenvalues of ``C = S^(1/2) U' M U S^(1/2) = V L V'``,
and the adjusted score is ``u*_g = U S^(1/2) V (1 - L)^(-1/2) V' S^(-1/2) U' u_g``. An eigenvalue
of 1 is a direction the cluster alone determines (its own fixed effect, a level seen only
there); the score has no component along it at the estimate (the residuals sum to 0 there),
so it is left as it is. No G/(G-1) factor is applied: the adjustment replaces it (for a
linear model with independent errors of equal variance CR2 is exactly unbiased; for the
logit and fractional logit approximately, with the working weights).
"""

from __future__ import annotations

import numpy as np

# eigenvalues of H_gg within this of 1: a direction only the cluster determines (see above)
ONE_TOL = 1e-7


def cr2_score(H_g: np.ndarray, M: np.ndarray, u_g: np.ndarray) -> np.ndarray:
    """The CR2-adjusted score of one cluster, on the parameters its rows touch: its Hessian
    ``H_g`` (k, k), the block ``M`` (k, k) of the whole sample's inverse Hessian on them and
    its score ``u_g`` (k,)."""
    s, U = np.linalg.eigh((H_g + H_g.T) / 2)
    keep = s > 1e-12 * max(s.max(), 1e-300)
    if not keep.any():
        return np.zeros_like(u_g)
    s, U = s[keep], U[:, keep]
    rs = np.sqrt(s)
    C = (rs[:, None] * (U.T @ M @ U)) * rs[None, :]
    lam, V = np.linalg.eigh((C + C.T) / 2)
    f = np.where(lam < 1 - ONE_TOL, 1 / np.sqrt(np.clip(1 - lam, ONE_TOL, None)), 1.0)
    a = V.T @ ((U.T @ u_g) / rs)
    return U @ (rs * (V @ (f * a)))


def cr2_covariance(H_clusters, M: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``M (sum_g u*_g u*_g') M`` over the clusters: ``H_clusters`` yields for each cluster, in
    the order of the rows of ``S`` (G, k, the clusters' scores), the positions of the
    parameters its rows touch and its Hessian on them; ``M`` (k, k) is the inverse Hessian."""
    meat = np.zeros_like(M)
    for (idx, H_g), u_g in zip(H_clusters, S):
        a = cr2_score(H_g, M[np.ix_(idx, idx)], u_g[idx])
        meat[np.ix_(idx, idx)] += np.outer(a, a)
    cov = M @ meat @ M
    return (cov + cov.T) / 2


def cluster_hessians(ev, theta: np.ndarray, clusters: np.ndarray, cols: np.ndarray, weight=None):
    """For each municipality of ``clusters``, with ``ev`` the evaluator of a component's design
    (engine.model.fit): the positions in ``cols`` of the parameters its rows touch (those
    without fixed effects and its own effect) and its Hessian on them (sum of w x x' over its
    rows, w = wt p (1 - p)), one municipality at a time, from dense rows (BLAS)."""
    d, lay = ev.d, ev.d.layout
    fe0 = lay.fe_start if lay.fe_start >= 0 else lay.n_params
    pos = np.full(lay.n_params, -1)
    pos[cols] = np.arange(cols.size)
    shared = cols[cols < fe0]
    Pd = ev.P[:, shared].toarray()
    Dd = ev.D[:, shared].toarray()
    level_coef, nb_eta = lay.tables(theta, d.nb_cont, d.nb_mun)
    j_coef = ev.M @ level_coef
    wt = d.weight if weight is None else weight
    j_rows = d.joint.astype(np.int64) + np.asarray(ev.off, dtype=np.int64)
    mun = d.nb_mun[d.nbhd]
    order = np.argsort(mun, kind="stable")
    bounds = np.searchsorted(mun[order], np.arange(ev.n_mun + 1))
    for g in clusters:
        rows = order[bounds[g]:bounds[g + 1]]
        jr, nb = j_rows[rows], d.nbhd[rows]
        eta, X = nb_eta[nb], Dd[nb]
        for k in range(jr.shape[1]):
            eta = eta + j_coef[jr[:, k]]
            X += Pd[jr[:, k]]
        p = 1.0 / (1.0 + np.exp(-eta))
        w = p * (1 - p) * (wt[rows] if wt.size else 1.0)
        own = fe0 + g - 1 if lay.fe_start >= 0 and g > 0 else -1
        idx = pos[shared]
        if own >= 0 and pos[own] >= 0:
            X, idx = np.column_stack([X, np.ones(rows.size)]), np.append(idx, pos[own])
        yield idx, (X * w[:, None]).T @ X
