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

Without forming the n_g x n_g block: with the cluster's Hessian ``H_g = X_g' W_g X_g`` and
``M = L L'`` (Cholesky), ``H_gg`` has the nonzero eigenvalues of ``C = L' H_g L = Q diag(lam) Q'``
(both are ``Z Z'`` and ``Z' Z`` of ``Z = W_g^(1/2) X_g L``), and the adjusted score is
``u*_g = L'^(-1) Q (1 - lam)^(-1/2) Q' L' u_g`` (the directions of eigenvalue 0 unchanged). An eigenvalue
of 1 is a direction the cluster alone determines (its own fixed effect, a level seen only
there); the score has no component along it at the estimate (the residuals sum to 0 there),
so it is left as it is. No G/(G-1) factor is applied: the adjustment replaces it (for a
linear model with independent errors of equal variance CR2 is exactly unbiased; for the
logit and fractional logit approximately, with the working weights).
"""

from __future__ import annotations

import numpy as np

from kernels.glm import cluster_hessian_sums
from kernels.sandwich import cr2_scores

# eigenvalues of H_gg within this of 1: a direction only the cluster determines (see above)
ONE_TOL = 1e-7


def cr2_covariance(shared: np.ndarray, own: np.ndarray, H: np.ndarray, M: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``M (sum_g u*_g u*_g') M`` over the clusters (:func:`kernels.sandwich.cr2_scores`). Every
    cluster's rows touch the parameters at the positions ``shared`` (ks,) and its own fixed
    effect at ``own[g]`` (-1: none); ``H`` (G, ks + 1, ks + 1) are the clusters' Hessians on
    them (the own effect last, zero where there is none), ``M`` (k, k) the inverse Hessian and
    ``S`` (G, k) the clusters' scores."""
    G, ks = H.shape[0], shared.size
    has = own >= 0
    o = np.where(has, own, 0)
    u = np.zeros((G, ks + 1))
    u[:, :ks] = S[:, shared]
    u[:, ks] = np.where(has, S[np.arange(G), o], 0.0)
    a = cr2_scores(H, np.linalg.cholesky(M[np.ix_(shared, shared)]), _own_rows(own, M, shared),
                   np.where(has, M[o, o], 1.0), u, ONE_TOL)
    # M u*_g for each cluster, from the rows of M of the parameters it touches: cov = B'B
    B = a[:, :ks] @ M[shared] + a[:, [ks]] * _own_rows(own, M)
    cov = B.T @ B
    return (cov + cov.T) / 2


def _own_rows(own: np.ndarray, M: np.ndarray, cols=slice(None)) -> np.ndarray:
    """(G, len(cols)) each cluster's row of ``M`` at its own effect ``own[g]`` (columns ``cols``),
    zeros for a cluster without one."""
    has = own >= 0
    return np.where(has[:, None], M[np.where(has, own, 0)][:, cols], 0.0)


def cluster_hessians(ev, theta: np.ndarray, clusters: np.ndarray, cols: np.ndarray, weight=None):
    """For the municipalities ``clusters``, with ``ev`` the evaluator of a component's design
    (engine.model.fit): ``(shared, own, H)`` as :func:`cr2_covariance` takes them, positions
    in ``cols`` (the active parameters): the intercept, continuous neighbourhood terms and
    factor levels every municipality's rows may touch, each municipality's own fixed effect,
    and its Hessian on them (sum of w x x' over its rows, w = wt p (1 - p)), all from one pass
    (:func:`kernels.glm.cluster_hessian_sums`)."""
    d, lay = ev.d, ev.d.layout
    j_coef, nb_eta = ev.tables(theta)
    wt = d.weight if weight is None else weight
    starts, order = ev.municipality_rows()
    sums = cluster_hessian_sums(d.joint, ev.off, j_coef, ev.slot_ptr, ev.slot_idx,
                                ev.Q.shape[0], d.nbhd, nb_eta, d.nb_cont, np.ascontiguousarray(wt, dtype=np.float64),
                                order, starts)[clusters]
    pos = np.full(lay.n_params, -1)
    pos[cols] = np.arange(cols.size)
    local = pos[np.concatenate([[0], lay.cont_param, ev.slot_par])]   # position of each local term
    keep = np.flatnonzero(local >= 0)
    if keep.size < local.size:
        sums = sums[np.ix_(np.arange(clusters.size), np.append(keep, local.size), np.append(keep, local.size))]
    own = np.full(clusters.size, -1)
    if lay.fe_start >= 0:
        fe = clusters > 0
        own[fe] = pos[lay.fe_start + clusters[fe] - 1]
    sums[own < 0, -1, :] = 0.0                 # no own effect
    sums[own < 0, :, -1] = 0.0
    return local[keep], own, sums


def satterthwaite_df(shared: np.ndarray, own: np.ndarray, H: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Degrees of freedom of the cluster-robust variance of each shared parameter (``shared``,
    ``own``, ``H`` and ``M`` as :func:`cr2_covariance` takes them; (ks,) in the order of
    ``shared``): the Satterthwaite approximation under the working model (Bell and McCaffrey
    2002; Pustejovsky and Tipton 2018) to leading order in the leverage. The variance of
    parameter j is a sum of one square per cluster, whose expectation under the working model
    is ``a_gj = (M H_g M)_jj``; matching a scaled
    chi-square gives ``df_j = (sum_g a_gj)^2 / sum_g a_gj^2``: the number of clusters when they
    inform j equally, fewer when a few large ones carry the information (Carter, Schnepel and
    Steigerwald 2017, Review of Economics and Statistics 99(4) 698-709: the effective number of
    clusters). About one above the exact df, which counts the leverage too. Meaningless for a
    level that one cluster alone determines (a municipality's fixed effect, and with fixed
    effects the intercept): its residuals are fitted to that level exactly, so the cluster
    variance has no part of that cluster along it (the caller leaves those out)."""
    ks = shared.size
    Ms = M[np.ix_(shared, shared)]                    # (ks, ks) rows of the shared parameters
    Mo = _own_rows(own, M, shared)                    # (G, ks) row of the own effect
    a = np.einsum("aj,gaj->gj", Ms, np.einsum("gab,bj->gaj", H[:, :ks, :ks], Ms, optimize=True), optimize=True)
    a += 2 * (H[:, :ks, ks] @ Ms) * Mo + H[:, ks, ks][:, None] * Mo * Mo
    with np.errstate(invalid="ignore", divide="ignore"):
        return a.sum(axis=0) ** 2 / (a * a).sum(axis=0)
