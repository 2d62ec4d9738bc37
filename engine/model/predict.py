"""Prediction: expected cost per household and the objective cost per municipality.

    p_h = logistic(x_h beta)   fixed effects replaced by their household-weighted mean
    f_h = logistic(z_h gamma)  expected benefit as a fraction of the gross norm
    (a combined spec: p_h is the expected expenditure as a fraction of the norm and f_h = 1, so
    "predicted households" are then sums of that fraction)
    N_h = gross yearly norm (kostendelersnorm applied)
    E_h = p_h f_h N_h;   O_g = sum of E_h over the municipality's households

Files (``buig predict``): ``municipal_costs.parquet`` (code, name, households,
predicted_households, actual_households, objective_cost, objective_share) and
``rekentool.parquet``: per municipality and household type the households, predicted
and actual bijstand(-or-LKS) households, mean fraction and mean norm of the predicted
households (sum p f / sum p, sum p N / sum p), expected cost and its share of the
municipality's objective cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from engine.model.design import Households, Layout, households_from_population, make_layout
from engine.model.fitted import ModelFit
from engine.model.population import Population
from engine.model.published import neighbourhood_region_offset
from engine.model.schema import CATEGORIES
from kernels.config import N_VIRTUAL
from kernels.predict import group_sums, household_values

TYPES = CATEGORIES["household_type"]


@dataclass(frozen=True)
class PredictionDesign:
    """Households recoded for prediction, built once per population.

    The household factors are packed into a few joint uint8 codes (mixed radix, first
    factor most significant), so a component's linear predictor needs one look-up per
    joint code instead of one per factor; ``norm_index`` locates each household's norm.
    """

    combo: np.ndarray            # (n, n_combo) uint8
    groups: tuple                # factor indices (into Households.factors) of each joint code
    nbhd: np.ndarray
    nb_mun: np.ndarray
    norm_index: np.ndarray       # (n,) uint16
    type_of_code: np.ndarray     # (256,) int64 household type of each value of combo[:, 0]
    n_mun: int
    code_sizes: np.ndarray       # (n_combo,) int64 number of values of each joint code
    group: np.ndarray            # (n,) uint16 (int32 above 65,535 groups) municipality * n_types + household type

    @property
    def n(self) -> int:
        return self.nbhd.shape[0]


def prediction_design(hh: Households, norms) -> PredictionDesign:
    joint = hh.joint
    assert joint.groups[0][0] == hh.factors.index("household_type")
    n_types = len(CATEGORIES["household_type"])
    type_div = joint.sizes[0] // n_types
    combo = joint.codes(hh.codes)
    type_of_code = np.arange(256, dtype=np.int64) // type_div
    dt = np.uint16 if hh.n_mun * n_types <= 1 << 16 else np.int32      # holds n_mun * n_types - 1
    group = type_of_code.astype(dt)[combo[:, 0]]
    group += hh.nb_mun.astype(dt)[hh.nbhd] * dt(n_types)                  # the municipality of each household
    return PredictionDesign(combo=combo, groups=joint.groups, nbhd=hh.nbhd, nb_mun=hh.nb_mun,
                            norm_index=hh.norm_index(norms).astype(np.uint16), type_of_code=type_of_code,
                            n_mun=hh.n_mun, code_sizes=np.asarray(joint.sizes, dtype=np.int64), group=group)


def combo_tables(lay: Layout, level_coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, table) of the joint codes for one component's level coefficients."""
    return lay.joint.off, lay.joint_map() @ level_coef


def used_joint_codes(lay: Layout) -> np.ndarray:
    """The joint codes (columns of PredictionDesign.combo) that hold a factor of the component:
    the others add 0 to its linear predictor and are not looked up (the price component of the
    realistic spec reads 3 of 8)."""
    mine = {int(c) for c in lay.cols}
    return np.asarray([j for j, g in enumerate(lay.joint.groups) if mine & set(g)], dtype=np.int64)


@dataclass(frozen=True)
class Tables:
    """Look-up tables of one coefficient set, ready for the prediction kernels."""

    v_off: np.ndarray
    v_coef: np.ndarray
    v_nb: np.ndarray
    p_off: np.ndarray
    p_coef: np.ndarray
    p_nb: np.ndarray
    norm_flat: np.ndarray
    v_cols: np.ndarray           # joint codes each component reads (used_joint_codes)
    p_cols: np.ndarray

    def args(self):
        """The component arguments of the prediction kernels: per component the joint codes it
        reads, their offsets, the table and the neighbourhood terms."""
        return (self.v_cols, self.v_off[self.v_cols], self.v_coef, self.v_nb,
                self.p_cols, self.p_off[self.p_cols], self.p_coef, self.p_nb)


def prediction_tables(hh: Households, fit: ModelFit, pd_: PredictionDesign, volume_params: np.ndarray | None = None,
                      price_params: np.ndarray | None = None) -> Tables:
    """Tables for the fitted coefficients (or the given ones, e.g. a bootstrap draw)."""
    v_lay = make_layout(fit.spec.volume, hh)
    p_lay = make_layout(fit.spec.price, hh)
    for lay, c in ((v_lay, fit.volume), (p_lay, fit.price)):
        if lay.term_names != c.term_names:
            raise ValueError(f"coefficients of the {c.name} component do not match the model spec "
                             f"{fit.spec.name} on this population (terms differ)")
    vp = fit.volume.params if volume_params is None else volume_params
    pp = fit.price.params if price_params is None else price_params
    v_coef, v_nb = v_lay.tables(np.nan_to_num(vp), hh.nb_cont, hh.nb_mun,
                                fe_value=fit.volume.fe_common if v_lay.fe_start >= 0 else None)
    region = neighbourhood_region_offset(fit.spec, hh)
    if region is not None:
        v_nb = np.ascontiguousarray(v_nb + region)
    p_coef, p_nb = p_lay.tables(np.nan_to_num(pp), hh.nb_cont, hh.nb_mun,
                                fe_value=fit.price.fe_common if p_lay.fe_start >= 0 else None)
    v_off, v_tab = combo_tables(v_lay, v_coef)
    p_off, p_tab = combo_tables(p_lay, p_coef)
    return Tables(v_off, v_tab, v_nb, p_off, p_tab, p_nb, fit.norms.table().ravel(), used_joint_codes(v_lay),
                  used_joint_codes(p_lay))


@dataclass(frozen=True)
class Prediction:
    """Sums per municipality x household type (arrays of shape (n_mun, n_types))."""

    mun_codes: np.ndarray
    households: np.ndarray
    actual: np.ndarray
    predicted: np.ndarray       # sum p
    fraction_sum: np.ndarray    # sum p f
    norm_sum: np.ndarray        # sum p N
    expected_cost: np.ndarray   # sum p f N
    cost_slope: np.ndarray      # sum p (1 - p) f N: d expected_cost / d u, u a shift of the volume's log-odds
    cost_variance: np.ndarray   # sum p (1 - p) (f N)^2: the variance of the cost when bijstand is drawn from p

    @property
    def objective_cost(self) -> np.ndarray:
        return self.expected_cost.sum(axis=1)

    @property
    def cost_elasticity(self) -> np.ndarray:
        """d log(objective cost) / d u per municipality (u a shift of the volume's log-odds): sum p (1 - p) f N /
        sum p f N, exact; 0 where the cost is 0."""
        cost, slope = self.objective_cost, self.cost_slope.sum(axis=1)
        return np.divide(slope, cost, out=np.zeros_like(cost), where=cost > 0)


def predict(hh: Households | Population, fit: ModelFit, pd_: PredictionDesign | None = None,
            tables: Tables | None = None) -> Prediction:
    """Objective cost per municipality and household type, one pass over the households
    (of ``hh``: factor-coded households, or a population)."""
    if isinstance(hh, Population):
        hh = households_from_population(hh)
    pd_ = pd_ or prediction_design(hh, fit.norms)
    t = tables or prediction_tables(hh, fit, pd_)
    n_types = len(TYPES)
    size = hh.n_mun * n_types
    y = hh.outcome("bijstand_or_lks" if fit.spec.combined else fit.spec.volume.outcome)   # combined: recipients
    sums = group_sums(pd_.combo, pd_.nbhd, pd_.norm_index, t.norm_flat, *t.args(), pd_.group, y, pd_.code_sizes, size,
                      N_VIRTUAL)
    shape = (hh.n_mun, n_types)
    return Prediction(mun_codes=hh.mun_codes,
                      households=sums[:, 4].astype(np.int64).reshape(shape),
                      actual=sums[:, 5].astype(np.int64).reshape(shape),
                      predicted=sums[:, 0].reshape(shape), fraction_sum=sums[:, 1].reshape(shape),
                      norm_sum=sums[:, 2].reshape(shape), expected_cost=sums[:, 3].reshape(shape),
                      cost_slope=sums[:, 6].reshape(shape), cost_variance=sums[:, 7].reshape(shape))


def household_predictions(hh: Households, fit: ModelFit) -> dict[str, np.ndarray]:
    """p, f, N and E per household (float64 arrays of length n)."""
    pd_ = prediction_design(hh, fit.norms)
    t = prediction_tables(hh, fit, pd_)
    v = household_values(pd_.combo, pd_.nbhd, pd_.norm_index, t.norm_flat, *t.args())
    return {"p": v[0], "f": v[1], "N": v[2], "E": v[0] * v[1] * v[2]}


def municipal_costs_table(pred: Prediction, names=None) -> pa.Table:
    cost = pred.objective_cost
    return pa.table({
        "code": pred.mun_codes.tolist(),
        "name": list(names) if names is not None else pred.mun_codes.tolist(),
        "households": pred.households.sum(1).astype(np.int64),
        "predicted_households": pred.predicted.sum(1),
        "actual_households": pred.actual.sum(1),
        "objective_cost": cost,
        "objective_share": cost / cost.sum(),
    })


def rekentool_table(pred: Prediction) -> pa.Table:
    n_mun, n_types = pred.predicted.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_f = np.where(pred.predicted > 0, pred.fraction_sum / pred.predicted, np.nan)
        mean_n = np.where(pred.predicted > 0, pred.norm_sum / pred.predicted, np.nan)
        total = pred.objective_cost[:, None]
        share = np.where(total > 0, pred.expected_cost / total, np.nan)
    return pa.table({
        "code": np.repeat(pred.mun_codes, n_types).tolist(),
        "household_type": list(TYPES) * n_mun,
        "households": pred.households.ravel().astype(np.int64),
        "predicted_households": pred.predicted.ravel(),
        "actual_households": pred.actual.ravel(),
        "mean_fraction": mean_f.ravel(),
        "mean_norm": mean_n.ravel(),
        "expected_cost": pred.expected_cost.ravel(),
        "share_of_budget": share.ravel(),
    })
