"""The factor-coded design: small integer codes per household, no dense one-hot matrix.

``Households`` holds what every component reads: one uint8 code per household factor
(an (n, 8) matrix), the neighbourhood index, and per neighbourhood its municipality and
continuous factors. ``ComponentDesign`` adds one component's view: which factors and
continuous columns, the parameter layout, the estimation sample and the outcome.

Parameter order of a component: intercept, factor levels (reference levels left out,
in spec order), continuous columns, then municipality fixed effects (the first
municipality is the reference). ``dense_design`` builds the one-hot matrix only for
export and tests on small populations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from engine.model.norms import Norms
from engine.model.population import Population
from engine.model.schema import CATEGORIES, TABLES
from engine.model.spec import CONTINUOUS, ComponentSpec

FACTOR_COLUMNS = ("household_type", "age_class", "migration", "education", "housing", "health",
                  "other_benefit", "wealth")


N_LEVELS = tuple(len(CATEGORIES[f]) for f in FACTOR_COLUMNS)


def _joint_groups(limit: int = 256) -> tuple[tuple[int, ...], ...]:
    """Consecutive factors packed into groups whose joint number of levels fits a uint8."""
    groups, cur, size = [], [], 1
    for k, n in enumerate(N_LEVELS):
        if cur and size * n > limit:
            groups.append(tuple(cur))
            cur, size = [], 1
        cur.append(k)
        size *= n
    return tuple(groups + ([tuple(cur)] if cur else []))


# Joint codes: the 8 household factors as 3 uint8 codes (mixed radix, first factor most
# significant): household type x age x migration (210), education x housing x health (36),
# other benefit x wealth (25). A linear predictor needs 3 look-ups instead of 8, and the
# factor-pair histograms of the Hessian 3 additions per household instead of 28.
JOINT_GROUPS = _joint_groups()
JOINT_SIZES = tuple(int(np.prod([N_LEVELS[k] for k in g])) for g in JOINT_GROUPS)
JOINT_OFF = np.concatenate([[0], np.cumsum(JOINT_SIZES)[:-1]]).astype(np.int64)


def joint_codes(codes: np.ndarray) -> np.ndarray:
    """(n, len(JOINT_GROUPS)) uint8 joint codes of (n, 8) factor codes."""
    out = np.empty((codes.shape[0], len(JOINT_GROUPS)), dtype=np.uint8)
    for j, members in enumerate(JOINT_GROUPS):
        code = np.zeros(codes.shape[0], dtype=np.int32)
        for k in members:
            code = code * N_LEVELS[k] + codes[:, k]
        out[:, j] = code
    return out


def joint_digits() -> list[np.ndarray]:
    """Per joint group, the factor codes of every joint code: array (members, size)."""
    return [np.indices([N_LEVELS[k] for k in g]).reshape(len(g), -1) for g in JOINT_GROUPS]


@dataclass(frozen=True)
class Households:
    """Factor-coded households of a population (arrays only)."""

    codes: np.ndarray          # (n, len(FACTOR_COLUMNS)) uint8, C-contiguous
    nbhd: np.ndarray           # (n,) int32 neighbourhood row
    nb_mun: np.ndarray         # (n_nb,) int32 municipality row of each neighbourhood
    nb_cont: np.ndarray        # (n_nb, len(CONTINUOUS)) float64
    mun_codes: np.ndarray      # (n_mun,) CBS codes
    bijstand: np.ndarray       # (n,) int8
    lks: np.ndarray            # (n,) int8
    benefit_paid: np.ndarray   # (n,) float64
    adults_sharing: np.ndarray
    adults_sharing_under_27: np.ndarray

    @property
    def n(self) -> int:
        return self.nbhd.shape[0]

    @property
    def n_mun(self) -> int:
        return len(self.mun_codes)

    @property
    def n_nb(self) -> int:
        return self.nb_mun.shape[0]

    def column(self, factor: str) -> np.ndarray:
        return self.codes[:, FACTOR_COLUMNS.index(factor)]

    def municipality(self) -> np.ndarray:
        """Municipality row of every household (int32)."""
        return self.nb_mun[self.nbhd]

    def norm_index(self, norms: Norms) -> np.ndarray:
        """Index of each household's gross norm in ``norms.table().ravel()`` (int32)."""
        table = norms.table()
        co = norms.counted_sharers(self.adults_sharing, self.adults_sharing_under_27).astype(np.int32)
        t = self.column("household_type").astype(np.int32)
        a = self.column("age_class").astype(np.int32)
        return (t * table.shape[1] + a) * table.shape[2] + co

    def outcome(self, name: str) -> np.ndarray:
        if name == "bijstand":
            return self.bijstand
        if name == "lks":
            return self.lks
        if name == "bijstand_or_lks":
            return (self.bijstand | self.lks).astype(np.int8)
        raise ValueError(f"unknown outcome {name!r}")


ROW_ARRAYS = ("bijstand", "lks", "benefit_paid", "adults_sharing", "adults_sharing_under_27")


def _neighbourhood_values(nb) -> np.ndarray:
    return np.ascontiguousarray(np.column_stack([nb.column(c).to_numpy().astype(np.float64) for c in CONTINUOUS]))


def households_from_population(pop: Population) -> Households:
    h = pop.households
    codes = np.empty((h.num_rows, len(FACTOR_COLUMNS)), dtype=np.uint8)
    for k, c in enumerate(FACTOR_COLUMNS):
        codes[:, k] = h.column(c).to_numpy()
    return Households(codes=codes, nbhd=pop.household_neighbourhood.astype(np.int32),
                      nb_mun=pop.neighbourhood_municipality.astype(np.int32),
                      nb_cont=_neighbourhood_values(pop.neighbourhoods), mun_codes=pop.municipality_codes,
                      **{c: h.column(c).to_numpy() for c in ROW_ARRAYS})


def read_households(path, batch_rows: int = 1 << 20) -> tuple[Households, pa.Table, dict | None]:
    """The factor-coded households of a population folder, read and validated in batches
    (:func:`engine.model.population.stream_population`): memory for the arrays and one batch, never
    the whole households table. Returns the households, the municipalities table and the
    truth (``None`` for real data); equal to :func:`households_from_population` of
    :func:`engine.model.population.read_population`, with the same errors on bad input."""
    from engine.model.population import stream_population

    src = stream_population(path, batch_rows)
    n = src.num_rows
    dtypes = {c.name: pa.array([], c.type).to_numpy().dtype for c in TABLES["households"] if c.name in ROW_ARRAYS}
    codes = np.empty((n, len(FACTOR_COLUMNS)), dtype=np.uint8)
    nbhd = np.empty(n, dtype=np.int32)
    rows = {c: np.empty(n, dtype=dtypes[c]) for c in ROW_ARRAYS}
    for start, batch, _, hn in src:
        stop = start + batch.num_rows
        for k, c in enumerate(FACTOR_COLUMNS):
            codes[start:stop, k] = batch.column(c).to_numpy()
        nbhd[start:stop] = hn
        for c in ROW_ARRAYS:
            rows[c][start:stop] = batch.column(c).to_numpy()
    hh = Households(codes=codes, nbhd=nbhd, nb_mun=src.neighbourhood_municipality.astype(np.int32),
                    nb_cont=_neighbourhood_values(src.neighbourhoods), mun_codes=src.municipality_codes, **rows)
    return hh, src.municipalities, src.truth


@dataclass(frozen=True)
class Layout:
    """Parameter layout of one component (independent of the sample)."""

    term_names: tuple[str, ...]
    cols: np.ndarray           # (F,) int64 columns of Households.codes
    lev_off: np.ndarray        # (F,) int64 offset of each factor in the level tables
    n_lev: np.ndarray          # (F,) int64 levels per factor
    level_param: np.ndarray    # (L,) int64 parameter of each level, -1 for the reference
    cont_cols: np.ndarray      # (C,) int64 columns of Households.nb_cont
    cont_param: np.ndarray     # (C,) int64
    fe_start: int              # first fixed-effect parameter, or -1
    n_params: int

    @property
    def n_levels_total(self) -> int:
        return int(self.level_param.shape[0])

    def tables(self, theta: np.ndarray, nb_cont: np.ndarray, nb_mun: np.ndarray,
               fe_value: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(level_coef, nb_eta) look-up tables for coefficients ``theta``.

        With fixed effects, ``fe_value=None`` uses each municipality's own effect;
        a number replaces every municipality's effect by it (prediction).
        """
        level_coef = np.where(self.level_param >= 0, theta[np.maximum(self.level_param, 0)], 0.0)
        # an explicit sum, not BLAS: the same bits whatever the number of BLAS threads
        nb_eta = theta[0] + (nb_cont[:, self.cont_cols] * theta[self.cont_param]).sum(axis=1)
        if self.fe_start >= 0:
            if fe_value is None:
                fe = np.concatenate([[0.0], theta[self.fe_start:]])
                nb_eta = nb_eta + fe[nb_mun]
            else:
                nb_eta = nb_eta + fe_value
        return level_coef, np.ascontiguousarray(nb_eta)

    def joint_map(self) -> sp.csr_matrix:
        """(sum JOINT_SIZES, L) 0/1 matrix from joint codes to this component's factor levels
        (factors the component does not use are left out)."""
        rows, cols = [], []
        pos = {int(c): k for k, c in enumerate(self.cols)}
        for j, (members, digits) in enumerate(zip(JOINT_GROUPS, joint_digits())):
            for m, f in enumerate(members):
                if f in pos:
                    k = pos[f]
                    rows.append(JOINT_OFF[j] + np.arange(digits.shape[1]))
                    cols.append(self.lev_off[k] + digits[m])
        r, c = np.concatenate(rows), np.concatenate(cols)
        return sp.csr_matrix((np.ones(r.size), (r, c)), shape=(int(sum(JOINT_SIZES)), self.n_levels_total))

    def level_map(self) -> sp.csr_matrix:
        """(L, K) 0/1 matrix from levels to parameters."""
        rows = np.flatnonzero(self.level_param >= 0)
        return sp.csr_matrix((np.ones(rows.size), (rows, self.level_param[rows])),
                             shape=(self.n_levels_total, self.n_params))

    def nb_design(self, nb_cont: np.ndarray, nb_mun: np.ndarray) -> sp.csr_matrix:
        """(n_nb, K) design of the neighbourhood-level terms: intercept, continuous, fixed effects."""
        n_nb = nb_mun.shape[0]
        r = [np.arange(n_nb)]
        c = [np.zeros(n_nb, dtype=np.int64)]
        v = [np.ones(n_nb)]
        for col, par in zip(self.cont_cols, self.cont_param):
            r.append(np.arange(n_nb))
            c.append(np.full(n_nb, par))
            v.append(nb_cont[:, col])
        if self.fe_start >= 0:
            has = nb_mun > 0
            r.append(np.flatnonzero(has))
            c.append(self.fe_start + nb_mun[has] - 1)
            v.append(np.ones(int(has.sum())))
        return sp.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))),
                             shape=(n_nb, self.n_params))


def make_layout(spec: ComponentSpec, mun_codes: np.ndarray) -> Layout:
    names = ["intercept"]
    cols, lev_off, n_lev, level_param = [], [], [], []
    off = 0
    for factor, ref in spec.factors:
        labels = CATEGORIES[factor]
        cols.append(FACTOR_COLUMNS.index(factor))
        lev_off.append(off)
        n_lev.append(len(labels))
        for lab in labels:
            if lab == ref:
                level_param.append(-1)
            else:
                level_param.append(len(names))
                names.append(f"{factor}[{lab}]")
        off += len(labels)
    cont_cols = [CONTINUOUS.index(c) for c in spec.continuous]
    cont_param = list(range(len(names), len(names) + len(cont_cols)))
    names += list(spec.continuous)
    fe_start = -1
    if spec.fixed_effects == "municipality":
        fe_start = len(names)
        names += [f"municipality[{c}]" for c in mun_codes[1:]]
    i64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return Layout(term_names=tuple(names), cols=i64(cols), lev_off=i64(lev_off), n_lev=i64(n_lev),
                  level_param=i64(level_param), cont_cols=i64(cont_cols), cont_param=i64(cont_param),
                  fe_start=fe_start, n_params=len(names))


@dataclass(frozen=True)
class ComponentDesign:
    """One component's estimation data: layout, sample rows and outcome."""

    spec: ComponentSpec
    layout: Layout
    codes: np.ndarray          # (m, 8) codes of the sample rows
    joint: np.ndarray          # (m, 3) joint codes of the sample rows (see JOINT_GROUPS)
    nbhd: np.ndarray           # (m,) int32
    y: np.ndarray              # (m,) outcome (int8 0/1 or float64 fraction)
    weight: np.ndarray         # (m,) float64, or length 0 for unit weights
    nb_cont: np.ndarray
    nb_mun: np.ndarray
    n_clipped: int = 0         # price: fractions outside [0, 1] clipped

    @property
    def n(self) -> int:
        return self.nbhd.shape[0]


def component_design(hh: Households, spec: ComponentSpec, norms: Norms | None = None,
                     weight: np.ndarray | None = None) -> ComponentDesign:
    """The estimation design of one component (volume or price) on households ``hh``."""
    layout = make_layout(spec, hh.mun_codes)
    if spec.sample == "all":
        rows = None
    else:
        rows = np.flatnonzero(hh.bijstand == 1)
    take = (lambda a: a) if rows is None else (lambda a: a[rows])  # noqa: E731
    n_clipped = 0
    if spec.outcome == "fraction":
        if norms is None:
            raise ValueError("the price component needs the norms")
        norm = norms.table().ravel()[hh.norm_index(norms)]
        frac = take(hh.benefit_paid) / take(norm)
        n_clipped = int(((frac < 0) | (frac > 1)).sum())
        y = np.clip(frac, 0.0, 1.0)
    else:
        y = take(hh.outcome(spec.outcome))
    w = np.zeros(0) if weight is None else np.ascontiguousarray(take(np.asarray(weight, np.float64)))
    codes = np.ascontiguousarray(take(hh.codes))
    return ComponentDesign(spec=spec, layout=layout, codes=codes, joint=joint_codes(codes),
                           nbhd=np.ascontiguousarray(take(hh.nbhd)), y=np.ascontiguousarray(y), weight=w,
                           nb_cont=hh.nb_cont, nb_mun=hh.nb_mun, n_clipped=n_clipped)


def dense_design(d: ComponentDesign) -> np.ndarray:
    """The dense (m, K) design matrix, columns in parameter order (small populations only)."""
    lay = d.layout
    X = np.zeros((d.n, lay.n_params))
    X[:, 0] = 1.0
    for k in range(len(lay.cols)):
        par = lay.level_param[lay.lev_off[k] + d.codes[:, lay.cols[k]].astype(np.int64)]
        has = par >= 0
        X[np.flatnonzero(has), par[has]] = 1.0
    X[:, lay.cont_param] = d.nb_cont[d.nbhd][:, lay.cont_cols]
    if lay.fe_start >= 0:
        mun = d.nb_mun[d.nbhd]
        has = mun > 0
        X[np.flatnonzero(has), lay.fe_start + mun[has] - 1] = 1.0
    return X
