"""Households collapsed into (neighbourhood, profile) cells for many coefficient draws at once.

The parametric bootstrap (engine.uncertainty.bootstrap) evaluates E = p f N summed per municipality
for each draw. :func:`draw_cells` prepares, once per context, the distinct household profiles
(rows of the joint factor codes), each component's rows in its joint-code tables per profile (a
joint code's table sums the levels of the factors it holds, so a profile's term is a product over
its joint codes: 8 for the realistic spec's 50 volume factors) and the cells with their sums of
norms; :meth:`DrawCells.sums` then turns a batch of coefficient sets into look-up tables and runs
:func:`kernels.draws.cell_sums`.
The same numbers (up to floating rounding) as :func:`kernels.bootstrap.draw_sums` on the
households, for a fraction of the work (kernels/draws.py).

Terms are float32 when every part of the fitted linear predictors lies within
``FLOAT32_LIMIT`` (so a draw stays far from the clamp of kernels.draws), float64 otherwise;
the choice depends on the fit only, so every process and batch makes the same one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np

from engine.model.design import Households, Layout, make_layout, radix_codes
from engine.model.fitted import ModelFit
from engine.model.predict import PredictionDesign, used_joint_codes
from engine.model.published import neighbourhood_region_offset
from kernels.config import N_VIRTUAL
from kernels.draws import cell_sums, cells, factor_terms, joint_terms, prefix_order, term_tables

FLOAT32_LIMIT = 20.0
# fewer cells than this many per profile: each profile's term is made in the cell pass from the joint
# tables instead of being tabled first (a table written and read for about one cell each cost more:
# realistic spec, 5.0 M profiles in 7.6 M cells at full scale); the same bits either way
PER_CELL_BELOW = 4.0
BOUNDS = {np.dtype(t): (np.exp(-c), np.exp(c)) for t, c in ((np.float32, 43.0), (np.float64, 350.0))}
_HELD = threading.local()     # per thread: the term tables of its last batch


def _term_tables(n_prof: int, n_nb: int, draws: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kernels.draws.term_tables`, the same pair again for this thread's next batch of the same shape:
    :func:`kernels.draws.factor_terms` overwrites every row's draws and never the padding (1.0), so nothing of
    the previous batch is read, and the tables (17 MB for 64 draws of 34 k profiles) are not paged in afresh."""
    key = (n_prof, n_nb, draws, np.dtype(dtype))
    held = getattr(_HELD, "tables", None)
    if held is None or held[0] != key:
        held = _HELD.tables = (key, term_tables(n_prof, n_nb, draws, dtype))
    return held[1]


@dataclass(frozen=True)
class DrawCells:
    """Cells of a population and the layouts of a fit's components (arrays only)."""

    layouts: tuple[Layout, Layout]         # volume, price
    levels: tuple[np.ndarray, np.ndarray]  # (n_prof, J) int64 row of each joint code's value, per profile
    cell_nb: np.ndarray                    # (m,) int32
    cell_prof: np.ndarray                  # (m,) int32
    s1: np.ndarray                         # (m,) sum of norms
    nb_cont: np.ndarray
    nb_mun: np.ndarray
    n_mun: int
    dtype: np.dtype
    region: np.ndarray | None              # (n_nb,) published region effect of the volume, or None
    orders: tuple                          # per component kernels.draws.prefix_order of its levels (empty per cell)
    joint_maps: tuple                      # per component Layout.joint_map(): levels -> joint code values
    per_cell: bool                         # profile terms made per cell (PER_CELL_BELOW), not tabled

    def level_tables(self, fit: ModelFit, vp: np.ndarray | None = None,
                     pp: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per component (joint_coef, nb_eta) of the fit's coefficients or the given ones: the level
        coefficients of :func:`engine.model.predict.prediction_tables` (NaN coefficients 0, the common
        effect for fixed effects) summed per value of each joint code, as that function's tables."""
        out = []
        for lay, jm, comp, theta in zip(self.layouts, self.joint_maps, (fit.volume, fit.price), (vp, pp), strict=True):
            theta = comp.params if theta is None else theta
            coef, nb = lay.tables(np.nan_to_num(theta), self.nb_cont, self.nb_mun,
                                  fe_value=comp.fe_common if lay.fe_start >= 0 else None)
            if comp.name == "volume" and self.region is not None:
                nb = nb + self.region
            # scipy adds each row's terms in the same order for one column as for R (batch_tables): the
            # same bits, which tests/test_draw_kernel.py checks
            out.append(((jm @ coef[:, None])[:, 0], nb))
        return out

    def batch_tables(self, coefficients: list[tuple], comp: int) -> tuple[np.ndarray, np.ndarray]:
        """Component ``comp``'s (joint_coef (sum of joint sizes, R), nb_eta (n_nb, R)) of R coefficient
        sets: the tables of :meth:`level_tables` side by side, computed for all R at once with the
        same operations in the same order (so the same bits: the sparse product adds each column's
        terms in the same order whatever the number of columns)."""
        lay = self.layouts[comp]
        comps = [(c[0].volume, c[1]) if comp == 0 else (c[0].price, c[2]) for c in coefficients]
        theta = np.nan_to_num(np.stack([cp.params if th is None else th for cp, th in comps]))   # (R, K)
        level = np.where(lay.level_param >= 0, theta[:, np.maximum(lay.level_param, 0)], 0.0)
        # the sum over the continuous terms runs along the last axis, as in Layout.tables
        nb = theta[:, [0]] + (self.nb_cont[:, lay.cont_cols][None] * theta[:, None, lay.cont_param]).sum(axis=2)
        if lay.fe_start >= 0:
            nb = nb + np.asarray([cp.fe_common for cp, _ in comps])[:, None]
        if comp == 0 and self.region is not None:
            nb = nb + self.region
        joint_coef = self.joint_maps[comp] @ np.ascontiguousarray(level.T)
        return np.ascontiguousarray(joint_coef), np.ascontiguousarray(nb.T)

    def sums(self, coefficients: list[tuple]) -> np.ndarray:
        """(n_mun, R) float64 sums of E per municipality for R coefficient sets
        ``(fit, volume_params or None, price_params or None)``: :func:`kernels.draws.cell_sums`."""
        n_prof = 0 if self.per_cell else self.levels[0].shape[0]      # per cell: no profile table
        a, b = _term_tables(n_prof, self.nb_mun.shape[0], len(coefficients), self.dtype)
        tables = [self.batch_tables(coefficients, comp) for comp in range(2)]
        for comp, (joint_coef, nb) in enumerate(tables):      # with no profiles: the neighbourhood terms only
            order, shared = self.orders[comp]
            factor_terms(self.levels[comp][:n_prof], joint_coef, nb, a, b, comp, *BOUNDS[self.dtype], order, shared)
        joint = None
        if self.per_cell:
            rp = b.shape[2]
            joint = (self.levels[0], joint_terms(tables[0][0], rp), self.levels[1], joint_terms(tables[1][0], rp),
                     *BOUNDS[self.dtype])
        sums = cell_sums(self.cell_nb, self.cell_prof, self.s1, a, b, self.nb_mun, self.n_mun, N_VIRTUAL, joint)
        return np.ascontiguousarray(sums[:, :len(coefficients)])


def draw_cells(hh: Households, fit: ModelFit, pd_: PredictionDesign, dtype=None) -> DrawCells:
    """Profiles and cells of the households for the fit's components (``dtype`` None: by FLOAT32_LIMIT)."""
    sizes = hh.joint.sizes
    if float(np.prod(np.asarray(sizes, dtype=np.float64))) < 2.0 ** 24:
        key = radix_codes(pd_.combo, (tuple(range(len(sizes))),), sizes, np.int64).reshape(-1)   # one number
        n_keys = int(np.prod(sizes))
    else:   # many factors (a realistic catalogue): number the distinct profiles instead
        _, key = np.unique(pd_.combo, axis=0, return_inverse=True)
        key = key.astype(np.int64).ravel()
        n_keys = int(key.max()) + 1
    norm = fit.norms.table().ravel()[pd_.norm_index]
    first, cell_nb, cell_prof, s1 = cells(key, n_keys, pd_.nbhd, hh.n_nb, norm)
    profiles = pd_.combo[first].astype(np.int64)
    layouts = (make_layout(fit.spec.volume, hh), make_layout(fit.spec.price, hh))
    region = neighbourhood_region_offset(fit.spec, hh)
    # a profile's term is the product over the joint codes that hold a factor of the component
    # (the realistic spec's 50 volume factors sit in 8), not over its factors
    used = [used_joint_codes(lay) for lay in layouts]
    levels = tuple(np.ascontiguousarray(lay.joint.off[u] + profiles[:, u]) for lay, u in zip(layouts, used))
    per_cell = cell_nb.size < PER_CELL_BELOW * first.size
    none = np.zeros(0, dtype=np.int64)
    dc = DrawCells(layouts=layouts, levels=levels, cell_nb=cell_nb, cell_prof=cell_prof, s1=s1,
                   nb_cont=hh.nb_cont, nb_mun=hh.nb_mun, n_mun=hh.n_mun, dtype=np.dtype(np.float64), region=region,
                   orders=tuple((none, none) if per_cell else prefix_order(lev) for lev in levels),
                   joint_maps=tuple(lay.joint_map() for lay in layouts), per_cell=per_cell)
    if dtype is None:
        parts = [np.abs(t).max(initial=0.0) for lev, (coef, nb) in zip(levels, dc.level_tables(fit))
                 for t in (coef[lev].sum(axis=1), nb)]
        dtype = np.float32 if max(parts) <= FLOAT32_LIMIT else np.float64
    return replace(dc, dtype=np.dtype(dtype))
