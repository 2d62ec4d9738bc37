"""Independent references for the tests: plain NumPy straight from the Arrow columns.

Nothing here imports ``engine`` or ``kernels``: a layout bug in the engine's factor-coded
design cannot pass both sides of a test. Everything is built the slow, obvious way:

- :func:`one_hot`: the dense design matrix of a component from the raw household columns
  (labels read from the Parquet field metadata, reference levels left out), the
  neighbourhood columns joined by the household's wijk code, municipality dummies by
  the neighbourhood's municipality code (the first municipality of the table is the
  reference);
- :func:`gross_norms`: the norm of every household from a norm TOML file, by the rules of
  Participatiewet art. 20-22a written out (see engine/data/SOURCES.md);
- :func:`logit_pass` and :func:`newton`: the (quasi) log-likelihood of the logit and the
  fractional logit, its score, Hessian and HC meat, and a Newton solver; :func:`slot_sums`: the
  factor sums of one pass (per level, municipality, neighbourhood column and pair of levels);
- :func:`draw_sums`: expected cost and its variance per municipality by a loop over draws;
- :func:`group_sums`: sums per group by ``np.bincount``.

Use only on small populations (the design is dense).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "engine" / "data"
COUPLE_TYPES = ("couple_no_children", "couple_with_children")


# --------------------------------------------------------------------------- tables

def read_tables(folder: str | Path) -> dict[str, pa.Table]:
    """The three Parquet tables of a population folder, as they are on disk."""
    folder = Path(folder)
    return {name: pq.read_table(folder / f"{name}.parquet")
            for name in ("households", "neighbourhoods", "municipalities")}


def read_toml(path: str | Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def labels(table: pa.Table, column: str) -> tuple[str, ...]:
    """Labels of a categorical column from its Parquet field metadata (code = position)."""
    return tuple(json.loads(table.schema.field(column).metadata[b"labels"]))


def strings(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table.column(column).to_pylist(), dtype=object)


def positions(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row of each of ``values`` in the unique ``keys`` (every value must be a key)."""
    order = np.argsort(keys)
    at = np.searchsorted(keys[order], values)
    rows = order[np.minimum(at, len(keys) - 1)]
    if not (keys[rows] == values).all():
        raise KeyError("value without a key")
    return rows


def household_neighbourhood(t: dict[str, pa.Table]) -> np.ndarray:
    return positions(strings(t["neighbourhoods"], "code"), strings(t["households"], "neighbourhood"))


def neighbourhood_municipality(t: dict[str, pa.Table]) -> np.ndarray:
    return positions(strings(t["municipalities"], "code"), strings(t["neighbourhoods"], "municipality"))


def household_municipality(t: dict[str, pa.Table]) -> np.ndarray:
    """Municipality row of every household, through its neighbourhood."""
    return neighbourhood_municipality(t)[household_neighbourhood(t)]


# --------------------------------------------------------------------------- designs

def one_hot(t: dict[str, pa.Table], factors: dict[str, str], continuous=(), fixed_effects: bool = False,
            rows: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """Dense design (n, K) and term names: intercept, ``factor[label]`` for every label but the
    reference (in label order, factors in the given order), continuous neighbourhood columns,
    ``municipality[code]`` for every municipality but the first. ``rows``: a subset of households."""
    h = t["households"]
    take = (lambda a: a) if rows is None else (lambda a: a[rows])  # noqa: E731
    cols, names = [np.ones(h.num_rows)], ["intercept"]
    for factor, ref in factors.items():
        code = h.column(factor).to_numpy()
        for pos, lab in enumerate(labels(h, factor)):
            if lab != ref:
                cols.append((code == pos).astype(float))
                names.append(f"{factor}[{lab}]")
    nb = household_neighbourhood(t)
    for c in continuous:
        cols.append(t["neighbourhoods"].column(c).to_numpy().astype(float)[nb])
        names.append(c)
    if fixed_effects:
        mun = household_municipality(t)
        for g, code in enumerate(strings(t["municipalities"], "code")):
            if g > 0:
                cols.append((mun == g).astype(float))
                names.append(f"municipality[{code}]")
    return take(np.column_stack(cols)), names


def levels_one_hot(t: dict[str, pa.Table], factors, rows: np.ndarray | None = None) -> np.ndarray:
    """(n, L) 0/1 matrix of every level of every factor, reference levels included, factors
    in the given order and levels in label order."""
    h = t["households"]
    cols = [(h.column(f).to_numpy() == pos).astype(float) for f in factors for pos in range(len(labels(h, f)))]
    X = np.column_stack(cols)
    return X if rows is None else X[rows]


def component_one_hot(t: dict[str, pa.Table], component: dict, rows: np.ndarray | None = None):
    """:func:`one_hot` of one ``[volume]`` or ``[price]`` table of a spec TOML file."""
    return one_hot(t, component.get("factors", {}), component.get("continuous", []),
                   component.get("fixed_effects") == "municipality", rows)


def component_data(t: dict[str, pa.Table], component: dict, norms: dict | None = None):
    """(X, term names, y, rows) of one spec component: the sample (``all`` or the bijstand
    households), its one-hot design and its outcome (the price fraction benefit paid / gross
    norm clipped to [0, 1]; ``norms`` as read from a norm file)."""
    h = t["households"]
    rows = None if component["sample"] == "all" else np.flatnonzero(h.column("bijstand").to_numpy() == 1)
    X, names = component_one_hot(t, component, rows)
    if component["outcome"] in ("fraction", "expenditure"):   # expenditure: over all households (0 without)
        y = np.clip(h.column("benefit_paid").to_numpy() / gross_norms(t, norms), 0.0, 1.0)
    else:
        y = outcome(t, component["outcome"])
    return X, names, (y if rows is None else y[rows]), rows


def outcome(t: dict[str, pa.Table], name: str) -> np.ndarray:
    h = t["households"]
    b, lks = h.column("bijstand").to_numpy(), h.column("lks").to_numpy()
    return {"bijstand": b, "lks": lks, "bijstand_or_lks": np.maximum(b, lks)}[name].astype(float)


def gross_norms(t: dict[str, pa.Table], norms: dict) -> np.ndarray:
    """Gross yearly norm of every household from a norm TOML file (as read by :func:`read_toml`).

    18-20: the youth norms; 21+: without co-residents the couple or single norm, with them
    the kostendelersnorm: each of A adults (the unit plus the counted co-residents) gets
    (base + step A) / (100 A) of the couple norm. Gross yearly = net x (1 + holiday
    allowance) x gross_up x months."""
    h = t["households"]
    typ = np.asarray(labels(h, "household_type"))[h.column("household_type").to_numpy()]
    age = np.asarray(labels(h, "age_class"))[h.column("age_class").to_numpy()]
    co = h.column("adults_sharing").to_numpy().astype(int)
    if norms["kostendelersnorm"]["age_cutoff"] == 27:
        co = co - h.column("adults_sharing_under_27").to_numpy()
    net, kdn = norms["net_monthly"], norms["kostendelersnorm"]
    couple = np.isin(typ, COUPLE_TYPES)
    unit = np.where(couple, 2, 1)
    a = unit + co
    shared = unit * (kdn["base"] + kdn["step"] * a) / (100.0 * a) * net["couple"]
    adult = np.where(co == 0, np.where(couple, net["couple"], net["single"]), shared)
    youth = np.where(typ == "couple_with_children", net["youth_couple_with_children"],
                     np.where(couple, net["youth_couple_no_children"], net["youth_single"]))
    monthly = np.where(age == "18-20", youth, adult)
    return monthly * (1 + norms["holiday_allowance"]) * norms["gross_up"] * norms["months"]


# --------------------------------------------------------------------------- likelihood

def logistic(eta: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-eta))


def logit_pass(X: np.ndarray, y: np.ndarray, theta: np.ndarray, w: np.ndarray | None = None):
    """(log-likelihood, score, Hessian, HC meat) of the logit / fractional logit at ``theta``:
    ll = sum w (y log p + (1 - y) log(1 - p)), g = X'w(y - p), H = X' diag(w p (1 - p)) X,
    meat = X' diag((w (y - p))^2) X."""
    w = np.ones(len(y)) if w is None or len(w) == 0 else w
    p = logistic(X @ theta)
    ll = np.sum(w * (y * np.log(p) + (1 - y) * np.log1p(-p)))
    r = w * (y - p)
    return ll, X.T @ r, X.T @ (X * (w * p * (1 - p))[:, None]), X.T @ (X * (r ** 2)[:, None])


def slot_sums(D: np.ndarray, mun: np.ndarray, n_mun: int, x: np.ndarray, weight: np.ndarray, r: np.ndarray) -> dict:
    """The factor sums of one logit pass, from the dense 0/1 columns ``D`` (n, S) of the factor
    levels that carry a parameter: score ``g`` = D'r, ``a_pair`` = D' diag(weight) D, per
    municipality ``a_m`` = M'(D weight) and ``s_m`` = M'(D r) (M the municipality dummies of
    ``mun``), and ``a_x`` (C, S) = D'(weight x_c) for the household's neighbourhood columns ``x`` (n, C)."""
    M = (mun[:, None] == np.arange(n_mun)).astype(float)
    Dw = D * weight[:, None]
    return {"g": D.T @ r, "a_pair": D.T @ Dw, "a_m": M.T @ Dw, "s_m": M.T @ (D * r[:, None]),
            "a_x": np.stack([Dw.T @ x[:, c] for c in range(x.shape[1])])}


def newton(X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, tol: float = 1e-10,
           max_iter: int = 100) -> np.ndarray:
    """Maximum (quasi) likelihood estimate by Newton's method from zero."""
    theta = np.zeros(X.shape[1])
    for _ in range(max_iter):
        _, g, H, _ = logit_pass(X, y, theta, w)
        step = np.linalg.solve(H, g)
        theta = theta + step
        if np.max(np.abs(step)) < tol:
            return theta
    raise RuntimeError("Newton did not converge")


def _cr2_blocks(X: np.ndarray, theta: np.ndarray, groups: np.ndarray, y: np.ndarray | None = None):
    """The inverse Hessian M = (X'WX)^-1 (W = p (1 - p)) and per cluster: Z_g = W_g^(1/2) X_g,
    the eigenvectors Q and factors f of A_g = Q diag(f) Q' = (I - H_gg)^(-1/2) from the
    n_g x n_g block H_gg = Z_g M Z_g' of the hat matrix (f = 0 along eigenvalue 1, a direction
    the Pearson residuals have no component along), and (``y`` given) its Pearson residuals
    r_g = (y - p) / sqrt(W)."""
    p = logistic(X @ theta)
    w = p * (1 - p)
    M = np.linalg.inv(X.T @ (X * w[:, None]))
    blocks = []
    for g in np.unique(groups):
        m = groups == g
        Z = X[m] * np.sqrt(w[m])[:, None]
        lam, Q = np.linalg.eigh(Z @ M @ Z.T)
        f = np.where(lam < 1 - 1e-7, 1 / np.sqrt(np.clip(1 - lam, 1e-12, None)), 0.0)
        blocks.append((Z, Q, f, None if y is None else (y[m] - p[m]) / np.sqrt(w[m])))
    return M, blocks


def cr2_covariance(X: np.ndarray, y: np.ndarray, theta: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Bell and McCaffrey's bias-reduced cluster sandwich (CR2) the long way: M (sum_g u_g u_g') M
    with u_g = Z_g' A_g r_g from the hat-matrix blocks (:func:`_cr2_blocks`)."""
    M, blocks = _cr2_blocks(X, theta, groups, y)
    meat = np.zeros_like(M)
    for Z, Q, f, r in blocks:
        u = Z.T @ (Q @ (f * (Q.T @ r)))
        meat += np.outer(u, u)
    return M @ meat @ M


def cluster_df(X: np.ndarray, theta: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per parameter j, the effective number of clusters (sum_g a_gj)^2 / sum_g a_gj^2 with
    a_gj = (M X_g' W_g X_g M)_jj: the Satterthwaite degrees of freedom of a sum of independent
    cluster squares with the working model's expectations."""
    M, blocks = _cr2_blocks(X, theta, groups)
    a = np.array([np.diag(M @ Z.T @ Z @ M) for Z, _, _, _ in blocks])
    return a.sum(axis=0) ** 2 / (a ** 2).sum(axis=0)


def bell_mccaffrey_df(X: np.ndarray, theta: np.ndarray, groups: np.ndarray, terms=None) -> np.ndarray:
    """Bell and McCaffrey's Satterthwaite degrees of freedom of the CR2 variance of each
    parameter, exactly, under the working model: Pearson residuals r ~ N(0, I - H). With
    v_g = A_g Z_g M e_j (:func:`_cr2_blocks`) the variance estimate is sum_g (v_g' r_g)^2,
    whose first two moments give df = (tr P)^2 / ||P||_F^2 with
    P_gh = v_g' (I - H)_gh v_h = [g = h] v_g'v_g - t_g' M t_h, t_g = Z_g' v_g. ``terms``: the
    parameters to compute it for (default all)."""
    out = []
    M, blocks = _cr2_blocks(X, theta, groups)
    for j in range(X.shape[1]) if terms is None else terms:
        vv, T = [], []
        for Z, Q, f, _ in blocks:
            v = Q @ (f * (Q.T @ (Z @ M[:, j])))
            vv.append(v @ v)
            T.append(Z.T @ v)
        T = np.array(T)
        P = np.diag(vv) - T @ M @ T.T
        out.append(np.trace(P) ** 2 / np.sum(P * P))
    return np.array(out)


# --------------------------------------------------------------------------- prediction

def household_values(Xv: np.ndarray, beta: np.ndarray, Xp: np.ndarray, gamma: np.ndarray, N: np.ndarray):
    """p, f and N per household."""
    return logistic(Xv @ beta), logistic(Xp @ gamma), N


def group_sums(p: np.ndarray, f: np.ndarray, N: np.ndarray, group: np.ndarray, n_groups: int,
               y: np.ndarray) -> np.ndarray:
    """(n_groups, 8): sums of p, p f, p N, p f N, 1, y, p (1 - p) f N and p (1 - p) (f N)^2 per group, by
    np.bincount."""
    return np.column_stack([np.bincount(group, weights=v, minlength=n_groups)
                            for v in (p, p * f, p * N, p * f * N, np.ones_like(p), y.astype(np.float64),
                                      p * (1 - p) * f * N, p * (1 - p) * (f * N) ** 2)])


def draw_sums(Xv: np.ndarray, betas: np.ndarray, Xp: np.ndarray, gammas: np.ndarray, N: np.ndarray,
              mun: np.ndarray, n_mun: int) -> np.ndarray:
    """(n_mun, 2, R): per draw r (rows of ``betas`` and ``gammas``) and municipality the sums of
    E = p f N and V = p (1 - p) (f N)^2, one draw at a time."""
    out = np.zeros((n_mun, 2, len(betas)))
    for r in range(len(betas)):
        p, f, _ = household_values(Xv, betas[r], Xp, gammas[r], N)
        out[:, 0, r] = np.bincount(mun, weights=p * f * N, minlength=n_mun)
        out[:, 1, r] = np.bincount(mun, weights=p * (1 - p) * (f * N) ** 2, minlength=n_mun)
    return out
