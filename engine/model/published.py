"""Published weights instead of estimation.

:func:`component_from_weights` turns a spec's published weights into the coefficients of one
component (a :class:`engine.model.fit.ComponentFit` without covariance unless the spec carries
one), :func:`fixed_price` the price of a model without price component (f = 1),
:func:`region_effects` the published region effects per municipality, and
:func:`municipal_linear_cost` the objective cost of a municipality-level linear model (the
2011-2014 model): cost_g = per_g x (fixed_amount + sum_k w_k x_gk).
"""

from __future__ import annotations

import numpy as np

from engine.model.fit import ComponentFit
from engine.model.spec import PRICE_ONE, ComponentSpec, ModelSpec, SpecError


def _fit(name: str, terms: tuple[str, ...], params: np.ndarray) -> ComponentFit:
    nan = np.full((len(terms), len(terms)), np.nan)
    return ComponentFit(name=name, term_names=terms, params=params, cov_model=nan, cov_robust=nan.copy(),
                        cov_cluster=nan.copy(), loglik=float("nan"), iterations=0, gradient_norm=float("nan"),
                        n_obs=0, n_clusters=0, n_clipped=0, dropped_municipalities=(), seconds=0.0)


def component_from_weights(spec: ModelSpec, comp: ComponentSpec, terms: tuple[str, ...]) -> ComponentFit:
    """The published weights of ``comp`` in the order of the layout's ``terms``; every term needs a
    weight and every weight a term (the error names them)."""
    if comp.fixed:
        return fixed_price(terms)
    given = getattr(spec.weights, comp.name)
    missing = [t for t in terms if t not in given]
    extra = [t for t in given if t not in terms]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no weight for {', '.join(missing)}")
        if extra:
            parts.append(f"weights for terms the spec does not have: {', '.join(extra)}")
        raise SpecError(f"model spec {spec.path or spec.name}: [weights.{comp.name}]: {'; '.join(parts)}")
    return _fit(comp.name, terms, np.array([given[t] for t in terms], dtype=np.float64))


def fixed_price(terms: tuple[str, ...]) -> ComponentFit:
    """No price model: the price is the norm amount, f = logistic(PRICE_ONE) = 1.0 exactly."""
    if terms != ("intercept",):
        raise SpecError(f"a price without model has only the intercept, not {terms}")
    return _fit("price", terms, np.array([PRICE_ONE]))


def neighbourhood_region_offset(spec: ModelSpec, hh) -> np.ndarray | None:
    """(n_nb,) the published region effect of each neighbourhood's municipality, to add to the volume
    neighbourhood terms; None when the spec publishes no region effects."""
    if spec.weights is None or not spec.weights.region:
        return None
    return region_effects(spec, hh)[hh.nb_mun]


def region_effects(spec: ModelSpec, hh) -> np.ndarray:
    """(n_mun,) the published region effect of every municipality (by its region column)."""
    w = spec.weights
    col = w.region_column
    values = (hh.mun_columns or {}).get(col)
    if values is None:
        raise SpecError(f"model spec {spec.path or spec.name}: [weights.region] column {col!r} is not a municipalities "
                        "column of kind code in the population's catalogue (nor 'region')")
    out = np.empty(len(values))
    for g, v in enumerate(values):
        if v not in w.region:
            raise SpecError(f"model spec {spec.path or spec.name}: [weights.region]: no effect for {col} {v!r} "
                            f"(municipality {hh.mun_codes[g]}); the spec has {len(w.region)} regions")
        out[g] = w.region[v]
    return out


def municipal_linear_cost(spec: ModelSpec, municipalities, catalogue) -> np.ndarray:
    """Objective cost per municipality of a ``kind = "municipal"`` spec with published weights."""
    m, w = spec.municipal, spec.weights.municipal
    where = f"model spec {spec.path or spec.name}: [municipal]"
    for name in (m.per, *m.measures):
        if name not in catalogue or catalogue.get(name).level not in ("municipality", "region") or \
                catalogue.get(name).kind != "continuous":
            raise SpecError(f"{where}: {name!r} is not a municipality or region continuous characteristic of the "
                            f"catalogue {catalogue.path or catalogue.name}")
    per = municipalities.column(m.per).to_numpy().astype(np.float64)
    unit = np.full(len(per), w["fixed_amount"])
    for k in m.measures:
        unit = unit + w[k] * municipalities.column(k).to_numpy().astype(np.float64)
    cost = per * unit
    if not np.all(np.isfinite(cost)):
        raise ValueError(f"{where}: the objective cost is not finite")
    return cost
