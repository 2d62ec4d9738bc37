"""Fitting the whole model (volume + price) and its files.

``fit_model(pop, spec)`` estimates both components; ``write_fit(fit, out)`` writes

- ``coefficients.parquet``: component, term, estimate, se_model, se_robust, se_cluster
  (terms ``factor[level]``, continuous column names, ``municipality[GMxxxx]`` fixed effects);
- ``fit.json``: spec and norms used, per component the sample size, iterations,
  log-likelihood, gradient norm, clipped fractions, dropped municipalities, and
  ``fe_common`` (the effect that replaces the fixed effects in prediction);
- ``covariances.npz``: the three covariance matrices of each component
  (``volume_model``, ``volume_robust``, ``volume_cluster``, ``price_...``), loaded with
  ``allow_pickle=False``.

``read_fit(dir)`` reads them back into a :class:`ModelFit`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.model.design import (ComponentDesign, Households, component_design, dense_design,
                           households_from_population)
from engine.model.fit import ComponentFit, fit_component
from engine.model.norms import Norms, load_norms
from engine.model.population import Population
from engine.model.spec import ModelSpec, load_spec

COVARIANCE_KINDS = ("model", "robust", "cluster")


@dataclass(frozen=True)
class ModelFit:
    spec: ModelSpec
    norms: Norms
    volume: ComponentFit
    price: ComponentFit
    mun_codes: np.ndarray

    def component(self, name: str) -> ComponentFit:
        return {"volume": self.volume, "price": self.price}[name]


def fit_model(pop: Population | Households, spec: ModelSpec | str | Path = "2019", tol: float = 1e-8,
              weight: np.ndarray | None = None, start: ModelFit | None = None, progress=None) -> ModelFit:
    """Estimate the volume and price components of ``spec`` on a population (household
    ``weight``s optional; ``start``: a fit to warm-start from)."""
    spec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    norms = load_norms(spec.norms)
    hh = pop if isinstance(pop, Households) else households_from_population(pop)
    fits = {}
    for i, comp in enumerate((spec.volume, spec.price)):
        if comp.outcome == "one":
            fits[comp.name] = constant_fit(comp.name)
            continue
        d = component_design(hh, comp, norms, weight=weight)
        fits[comp.name] = fit_component(d, tol=tol, mun_codes=hh.mun_codes,
                                        start=None if start is None else start.component(comp.name).params)
        if progress:
            progress(i + 1, 2)
    return ModelFit(spec=spec, norms=norms, volume=fits["volume"], price=fits["price"], mun_codes=hh.mun_codes)


CONSTANT_LOGIT = 40.0   # logistic(40) = 1 - 4e-18, which is 1.0 in float64


def constant_fit(name: str) -> ComponentFit:
    """The price of a combined model (``outcome = "one"``): f = 1 for every household, nothing
    estimated. Stored as an intercept of :data:`CONSTANT_LOGIT` on the logit scale with zero
    covariances, so prediction and the bootstrap treat it as any component (and draw nothing)."""
    zero = np.zeros((1, 1))
    return ComponentFit(name=name, term_names=("intercept",), params=np.array([CONSTANT_LOGIT]), cov_model=zero,
                        cov_robust=zero, cov_cluster=zero, loglik=0.0, iterations=0, gradient_norm=0.0, n_obs=0,
                        n_clusters=0, n_clipped=0, dropped_municipalities=(), seconds=0.0)


def coefficients_table(fit: ModelFit) -> pa.Table:
    comp, term, est, se = [], [], [], {k: [] for k in COVARIANCE_KINDS}
    for c in (fit.volume, fit.price):
        comp += [c.name] * len(c.term_names)
        term += list(c.term_names)
        est.append(c.params)
        for k in COVARIANCE_KINDS:
            se[k].append(c.se(k))
    return pa.table({"component": comp, "term": term, "estimate": np.concatenate(est),
                     **{f"se_{k}": np.concatenate(se[k]) for k in COVARIANCE_KINDS}})


def fit_summary(fit: ModelFit) -> dict:
    return {"spec": {"name": fit.spec.name, "file": str(fit.spec.path), "description": fit.spec.description,
                     "combined": fit.spec.combined},
            "norms": {"year": fit.norms.year, "gross_up": fit.norms.gross_up,
                      "kostendeler_age_cutoff": fit.norms.age_cutoff},
            "convergence": "max |score| / total weight below tol",
            "volume": fit.volume.summary(), "price": fit.price.summary()}


def write_fit(fit: ModelFit, out: Path) -> None:
    """Write coefficients.parquet, fit.json and covariances.npz into folder ``out`` (already temporary)."""
    pq.write_table(coefficients_table(fit), out / "coefficients.parquet")
    (out / "fit.json").write_text(json.dumps(fit_summary(fit), indent=1) + "\n", encoding="utf-8")
    with open(out / "covariances.npz", "wb") as fh:
        np.savez(fh, **{f"{c.name}_{k}": getattr(c, f"cov_{k}") for c in (fit.volume, fit.price)
                        for k in COVARIANCE_KINDS})


def read_fit(path: str | Path, spec: ModelSpec | str | Path | None = None) -> ModelFit:
    """Read the files of ``write_fit``; the spec named in fit.json unless ``spec`` is given."""
    path = Path(path)
    for name in ("coefficients.parquet", "fit.json", "covariances.npz"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path / name} is missing: run `buig fit` first")
    info = json.loads((path / "fit.json").read_text(encoding="utf-8"))
    spec = spec if isinstance(spec, ModelSpec) else load_spec(spec or info["spec"]["file"])
    coef = pq.read_table(path / "coefficients.parquet").to_pydict()
    with np.load(path / "covariances.npz", allow_pickle=False) as z:
        cov = {k: z[k] for k in z.files}
    comps = {}
    mun_codes = None
    for name in ("volume", "price"):
        rows = [i for i, c in enumerate(coef["component"]) if c == name]
        terms = tuple(coef["term"][i] for i in rows)
        s = info[name]
        comps[name] = ComponentFit(
            name=name, term_names=terms, params=np.array([coef["estimate"][i] for i in rows], dtype=np.float64),
            cov_model=cov[f"{name}_model"], cov_robust=cov[f"{name}_robust"], cov_cluster=cov[f"{name}_cluster"],
            loglik=s["loglik"], iterations=s["iterations"], gradient_norm=s["gradient_norm"], n_obs=s["n_obs"],
            n_clusters=s["n_clusters"], n_clipped=s["n_clipped"],
            dropped_municipalities=tuple(s["dropped_municipalities"]), seconds=s["seconds"],
            fe_common=s["fe_common"], history=s.get("history", []),
            unestimable_terms=tuple(s.get("unestimable_terms", [])))
        fe = [t[len("municipality["):-1] for t in terms if t.startswith("municipality[")]
        if fe:
            mun_codes = np.array(["?"] + fe, dtype=object)
    return ModelFit(spec=spec, norms=load_norms(spec.norms), volume=comps["volume"], price=comps["price"],
                    mun_codes=mun_codes)


def export_design(d: ComponentDesign, fit: ComponentFit, out: Path, name: str) -> None:
    """Dense design of one component as Parquet: one column per term used in the fit, ``_y``, ``_w``.

    Rows and fixed effects of municipalities dropped for separation are left out, so any
    other tool refits exactly the model that was estimated.
    """
    X = dense_design(d)
    w = d.weight if d.weight.size else np.ones(d.n)
    names = np.asarray(d.layout.term_names, dtype=object)
    dropped_terms = np.isin(names, [f"municipality[{c}]" for c in fit.dropped_municipalities])
    keep_rows = np.ones(d.n, dtype=bool)
    if d.layout.fe_start >= 0:
        dropped_mun = np.concatenate([[False], dropped_terms[d.layout.fe_start:]])
        keep_rows = ~dropped_mun[d.nb_mun[d.nbhd]]
    cols = {t: X[keep_rows, j] for j, t in enumerate(names) if not dropped_terms[j]}
    cols["_y"] = np.asarray(d.y[keep_rows], dtype=np.float64)
    cols["_w"] = np.asarray(w[keep_rows], dtype=np.float64)
    pq.write_table(pa.table(cols), out / f"design_{name}.parquet")


def fit_to_folder(pop: Population, out: str | Path, spec: ModelSpec | str | Path = "2019",
                  export: bool = False, max_export_rows: int = 200_000, progress=None) -> ModelFit:
    """``buig fit``: estimate and write the files (atomically) into ``out``."""
    from engine.io.outputs import atomic_dir

    spec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    if export and pop.households.num_rows > max_export_rows:
        raise ValueError(f"--export-design writes a dense matrix: use a population of at most "
                         f"{max_export_rows:,} households (this one has {pop.households.num_rows:,})")
    hh = households_from_population(pop)
    fit = fit_model(hh, spec, progress=progress)
    with atomic_dir(out) as tmp:
        write_fit(fit, tmp)
        if export:
            for comp in (c for c in (spec.volume, spec.price) if c.outcome != "one"):
                d = component_design(hh, comp, fit.norms)
                export_design(d, fit.component(comp.name), tmp, comp.name)
    return fit
