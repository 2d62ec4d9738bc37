"""The factor-coded design: small integer codes per household, no dense one-hot matrix.

``Households`` holds what every component reads: one uint8 code per household factor of
the catalogue (an (n, F) matrix), the neighbourhood index, and per neighbourhood its
municipality and area characteristics. ``ComponentDesign`` adds one component's view: which factors and
continuous columns, the parameter layout, the estimation sample and the outcome.

Parameter order of a component: intercept, factor levels (reference levels left out,
in spec order, terms ``factor[label]``), household indicators (term = column name), area
indicators and continuous columns, then municipality fixed effects (the first
municipality is the reference). ``dense_design`` builds the one-hot matrix only for
export and tests on small populations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from engine.model.catalogue import Catalogue
from engine.model.norms import Norms
from engine.model.population import Population
from engine.model.schema import DEFAULT_CATALOGUE, TABLES
from engine.model.spec import ComponentSpec, SpecError
from kernels.codes import mixed_radix


def radix_codes(codes: np.ndarray, groups, radix, dtype) -> np.ndarray:
    """(n, len(groups)) the columns of each group of ``codes`` (n, F) as one mixed-radix number, the first
    column most significant, column k in base ``radix[k]``, in ``dtype`` (which must hold them):
    :func:`kernels.codes.mixed_radix`."""
    out = np.empty((codes.shape[0], len(groups)), dtype=dtype)
    members = np.asarray([k for g in groups for k in g], dtype=np.int64)
    starts = np.cumsum([0] + [len(g) for g in groups]).astype(np.int64)
    mixed_radix(np.ascontiguousarray(codes), members, starts, np.asarray(radix, dtype=np.int64), out)
    return out


def _joint_groups(n_levels: tuple[int, ...], limit: int = 256) -> tuple[tuple[int, ...], ...]:
    """Consecutive factors packed into groups whose joint number of levels fits a uint8."""
    groups, cur, size = [], [], 1
    for k, n in enumerate(n_levels):
        if cur and size * n > limit:
            groups.append(tuple(cur))
            cur, size = [], 1
        cur.append(k)
        size *= n
    return tuple(groups + ([tuple(cur)] if cur else []))


@dataclass(frozen=True)
class Joint:
    """Joint codes: the household factors packed into a few uint8 codes (mixed radix, first
    factor most significant). For the default catalogue: household type x age x migration
    (210), education x housing x health (36), other benefit x wealth (25): a linear predictor
    needs 3 look-ups instead of 8. 40 indicators pack 8 to a code."""

    n_levels: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]
    off: np.ndarray

    @staticmethod
    def of(n_levels) -> "Joint":
        n_levels = tuple(int(n) for n in n_levels)
        groups = _joint_groups(n_levels)
        sizes = tuple(int(np.prod([n_levels[k] for k in g])) for g in groups)
        off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return Joint(n_levels, groups, sizes, off)

    def codes(self, codes: np.ndarray) -> np.ndarray:
        """(n, len(groups)) uint8 joint codes of (n, F) factor codes."""
        return radix_codes(codes, self.groups, self.n_levels, np.uint8)

    def digits(self) -> list[np.ndarray]:
        """Per joint group, the factor codes of every joint code: array (members, size)."""
        return [np.indices([self.n_levels[k] for k in g]).reshape(len(g), -1) for g in self.groups]


_DEFAULT_FACTORS = DEFAULT_CATALOGUE.factors()
# The default catalogue's factors and joint codes (what the built-in 2019 spec uses).
FACTOR_COLUMNS = tuple(e.name for e in _DEFAULT_FACTORS)
N_LEVELS = tuple(len(e.levels) for e in _DEFAULT_FACTORS)
DEFAULT_JOINT = Joint.of(N_LEVELS)
JOINT_GROUPS, JOINT_SIZES, JOINT_OFF = DEFAULT_JOINT.groups, DEFAULT_JOINT.sizes, DEFAULT_JOINT.off


@dataclass(frozen=True)
class Households:
    """Factor-coded households of a population (arrays only).

    ``codes`` holds one uint8 code per household factor (the catalogue's household
    categorical and indicator columns, law columns first); ``nb_cont`` one value per
    neighbourhood of every neighbourhood and municipality / region characteristic
    (``cont_names``; a municipality's value repeated over its neighbourhoods)."""

    codes: np.ndarray          # (n, F) uint8, C-contiguous
    nbhd: np.ndarray           # (n,) int32 neighbourhood row
    nb_mun: np.ndarray         # (n_nb,) int32 municipality row of each neighbourhood
    nb_cont: np.ndarray        # (n_nb, C) float64
    mun_codes: np.ndarray      # (n_mun,) CBS codes
    bijstand: np.ndarray       # (n,) int8
    lks: np.ndarray            # (n,) int8
    benefit_paid: np.ndarray   # (n,) float64
    adults_sharing: np.ndarray
    adults_sharing_under_27: np.ndarray
    factors: tuple[str, ...] = FACTOR_COLUMNS
    factor_levels: tuple[tuple[str, ...], ...] = tuple(e.levels for e in _DEFAULT_FACTORS)
    indicators: frozenset = frozenset()
    cont_names: tuple[str, ...] = tuple(e.name for e in DEFAULT_CATALOGUE.area_columns())
    catalogue: Catalogue = DEFAULT_CATALOGUE
    mun_columns: dict | None = None   # municipalities column -> (n_mun,) str values (region codes)

    @property
    def joint(self) -> Joint:
        return Joint.of(len(levels) for levels in self.factor_levels)

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
        return self.codes[:, self.factors.index(factor)]

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


def _area_values(cat: Catalogue, nb, mun, nb_mun: np.ndarray) -> np.ndarray:
    """(n_nb, C) values of the catalogue's neighbourhood and municipality / region columns."""
    cols = []
    for e in cat.area_columns():
        if e.level == "neighbourhood":
            cols.append(nb.column(e.name).to_numpy().astype(np.float64))
        else:
            cols.append(mun.column(e.name).to_numpy().astype(np.float64)[nb_mun])
    if not cols:
        return np.zeros((len(nb_mun), 0))
    return np.ascontiguousarray(np.column_stack(cols))


def _mun_columns(cat: Catalogue, mun) -> dict:
    names = ["region"] + [e.name for e in cat.entries if e.kind == "code"]
    return {n: np.asarray([str(v) for v in mun.column(n).to_pylist()], dtype=object) for n in names}


def _meta(cat: Catalogue, mun) -> dict:
    f = cat.factors()
    return {"mun_columns": _mun_columns(cat, mun), "factors": tuple(e.name for e in f), "factor_levels": tuple(e.levels for e in f),
            "indicators": frozenset(e.name for e in f if e.kind == "indicator"),
            "cont_names": tuple(e.name for e in cat.area_columns()), "catalogue": cat}


def households_from_population(pop: Population) -> Households:
    cat = pop.catalogue or DEFAULT_CATALOGUE
    meta = _meta(cat, pop.municipalities)
    h = pop.households
    codes = np.empty((h.num_rows, len(meta["factors"])), dtype=np.uint8)
    for k, c in enumerate(meta["factors"]):
        codes[:, k] = h.column(c).to_numpy()
    nb_mun = pop.neighbourhood_municipality.astype(np.int32)
    return Households(codes=codes, nbhd=pop.household_neighbourhood.astype(np.int32), nb_mun=nb_mun,
                      nb_cont=_area_values(cat, pop.neighbourhoods, pop.municipalities, nb_mun),
                      mun_codes=pop.municipality_codes, **{c: h.column(c).to_numpy() for c in ROW_ARRAYS}, **meta)


def read_households(path, batch_rows: int = 1 << 20, catalogue=None) -> tuple[Households, pa.Table, dict | None]:
    """The factor-coded households of a population folder, read and validated in batches
    (:func:`engine.model.population.stream_population`): memory for the arrays and one batch, never
    the whole households table. Returns the households, the municipalities table and the
    truth (``None`` for real data); equal to :func:`households_from_population` of
    :func:`engine.model.population.read_population`, with the same errors on bad input."""
    from engine.model.population import stream_population

    src = stream_population(path, batch_rows, catalogue)
    cat = src.catalogue or DEFAULT_CATALOGUE
    meta = _meta(cat, src.municipalities)
    n = src.num_rows
    dtypes = {c.name: pa.array([], c.type).to_numpy().dtype for c in TABLES["households"] if c.name in ROW_ARRAYS}
    codes = np.empty((n, len(meta["factors"])), dtype=np.uint8)
    nbhd = np.empty(n, dtype=np.int32)
    rows = {c: np.empty(n, dtype=dtypes[c]) for c in ROW_ARRAYS}
    for start, batch, _, hn in src:
        stop = start + batch.num_rows
        for k, c in enumerate(meta["factors"]):
            codes[start:stop, k] = batch.column(c).to_numpy()
        nbhd[start:stop] = hn
        for c in ROW_ARRAYS:
            rows[c][start:stop] = batch.column(c).to_numpy()
    nb_mun = src.neighbourhood_municipality.astype(np.int32)
    hh = Households(codes=codes, nbhd=nbhd, nb_mun=nb_mun,
                    nb_cont=_area_values(cat, src.neighbourhoods, src.municipalities, nb_mun),
                    mun_codes=src.municipality_codes, **rows, **meta)
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
    joint: Joint = DEFAULT_JOINT

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
        """(sum of joint sizes, L) 0/1 matrix from joint codes to this component's factor levels
        (factors the component does not use are left out)."""
        rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        pos = {int(c): k for k, c in enumerate(self.cols)}
        for j, (members, digits) in enumerate(zip(self.joint.groups, self.joint.digits())):
            for m, f in enumerate(members):
                if f in pos:
                    k = pos[f]
                    rows.append(self.joint.off[j] + np.arange(digits.shape[1]))
                    cols.append(self.lev_off[k] + digits[m])
        r, c = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (rows, cols))   # none: no factors
        return sp.csr_matrix((np.ones(r.size), (r, c)), shape=(int(sum(self.joint.sizes)), self.n_levels_total))

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


def _unknown(spec: ComponentSpec, key: str, name: str, hh: Households, wanted: str) -> SpecError:
    cat = hh.catalogue
    options = {"factors": [f for f in hh.factors if f not in hh.indicators],
               "indicators": list(hh.indicators) + [c for c in hh.cont_names if cat.get(c).kind == "indicator"],
               "continuous": [c for c in hh.cont_names if cat.get(c).kind == "continuous"]}[key]
    where = f"catalogue {cat.path}" if cat.path else f"catalogue {cat.name}"
    what = (f"is declared as a {cat.get(name).level} {cat.get(name).kind}, not {wanted}" if name in cat
            else f"is not declared in the {where}")
    return SpecError(f"model spec {spec.source}: [{spec.name}].{key}: {name!r} {what}; "
                     f"choose from {', '.join(sorted(options)) or '(none)'}")


def make_layout(spec: ComponentSpec, hh: Households) -> Layout:
    """The parameter layout of ``spec`` on households ``hh`` (checks the spec against their catalogue)."""
    names = ["intercept"]
    cols, lev_off, n_lev, level_param = [], [], [], []
    off = 0
    terms = [(f, ref, f"{f}[{{}}]") for f, ref in spec.factors]
    for name in spec.indicators:
        if name in hh.indicators:
            terms.append((name, "0", name))
    for factor, ref, fmt in terms:
        if factor not in hh.factors or (factor in hh.indicators and fmt != factor) or (
                factor not in hh.indicators and fmt == factor):
            raise _unknown(spec, "factors" if fmt != factor else "indicators", factor, hh,
                           "a household categorical" if fmt != factor else "an indicator")
        k = hh.factors.index(factor)
        labels = hh.factor_levels[k]
        if ref not in labels:
            raise SpecError(f"model spec {spec.source}: [{spec.name}.factors].{factor}: reference {ref!r} is not a "
                            f"label; labels: {', '.join(labels)}")
        cols.append(k)
        lev_off.append(off)
        n_lev.append(len(labels))
        for lab in labels:
            if lab == ref:
                level_param.append(-1)
            else:
                level_param.append(len(names))
                names.append(fmt.format(lab) if fmt != factor else factor)
        off += len(labels)
    area = [c for c in spec.indicators if c not in hh.indicators] + list(spec.continuous)
    cat = hh.catalogue
    for c in area:
        key = "continuous" if c in spec.continuous else "indicators"
        want = "continuous" if key == "continuous" else "indicator"
        if c not in hh.cont_names or cat.get(c).kind != want:
            raise _unknown(spec, key, c, hh, f"an area {want}" if c in cat else want)
    if len(set(names[1:] + area)) != len(names) - 1 + len(area):
        raise SpecError(f"model spec {spec.source}: [{spec.name}]: a characteristic is named twice")
    if spec.fixed_effects == "municipality":
        for c in area:
            if cat.get(c).level in ("municipality", "region"):
                raise SpecError(f"model spec {spec.source}: [{spec.name}]: {c!r} is a {cat.get(c).level} "
                                "characteristic, constant within a municipality: beside municipality fixed effects "
                                "it is not identified; use fixed_effects = \"none\" or leave it out")
    cont_cols = [hh.cont_names.index(c) for c in area]
    cont_param = list(range(len(names), len(names) + len(cont_cols)))
    names += area
    fe_start = -1
    if spec.fixed_effects == "municipality":
        fe_start = len(names)
        names += [f"municipality[{c}]" for c in hh.mun_codes[1:]]
    i64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return Layout(term_names=tuple(names), cols=i64(cols), lev_off=i64(lev_off), n_lev=i64(n_lev),
                  level_param=i64(level_param), cont_cols=i64(cont_cols), cont_param=i64(cont_param),
                  fe_start=fe_start, n_params=len(names), joint=hh.joint)


@dataclass(frozen=True)
class ComponentDesign:
    """One component's estimation data: layout, sample rows and outcome. ``nb_cont`` holds
    only the component's own area columns (``layout.cont_cols`` index into it)."""

    spec: ComponentSpec
    layout: Layout
    codes: np.ndarray          # (m, F) codes of the sample rows
    joint: np.ndarray          # (m, groups) joint codes of the sample rows (see Joint)
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
    full = make_layout(spec, hh)
    layout = replace(full, cont_cols=np.arange(full.cont_cols.size, dtype=np.int64))
    if spec.sample == "all":
        rows = None
    else:
        rows = np.flatnonzero(hh.bijstand == 1)
    take = (lambda a: a) if rows is None else (lambda a: a[rows])  # noqa: E731
    n_clipped = 0
    if spec.outcome in ("fraction", "expenditure"):   # expenditure: the same ratio over all households
        if norms is None:
            raise ValueError(f"the {spec.outcome} outcome needs the norms")
        norm = norms.table().ravel()[hh.norm_index(norms)]
        frac = take(hh.benefit_paid) / take(norm)
        n_clipped = int(((frac < 0) | (frac > 1)).sum())
        y = np.clip(frac, 0.0, 1.0)
    else:
        y = take(hh.outcome(spec.outcome))
    w = np.zeros(0) if weight is None else np.ascontiguousarray(take(np.asarray(weight, np.float64)))
    codes = np.ascontiguousarray(take(hh.codes))
    return ComponentDesign(spec=spec, layout=layout, codes=codes, joint=hh.joint.codes(codes),
                           nbhd=np.ascontiguousarray(take(hh.nbhd)), y=np.ascontiguousarray(y), weight=w,
                           nb_cont=np.ascontiguousarray(hh.nb_cont[:, full.cont_cols]), nb_mun=hh.nb_mun,
                           n_clipped=n_clipped)


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
