"""Fitting the whole model (volume + price) and its files.

``fit_model(pop, spec)`` estimates both components; ``write_fit(fit, out)`` writes

- ``coefficients.parquet``: component, term, estimate, se_model, se_robust, se_cluster, df, z,
  p_value, ci_low, ci_high (z = estimate / se_cluster; ``df`` the degrees of freedom of
  se_cluster: for CR2 the Satterthwaite approximation of
  :func:`engine.model.sandwich.satterthwaite_df`, about the effective number of
  municipalities informing the term, for CR1 the clusters less one; two-sided p and the 95%
  interval estimate -+ t_df(0.975) se_cluster from Student's t with ``df``, normal where
  ``df`` is NaN, as for published weights. The municipality fixed effects and, in a model
  with them, the intercept are levels one municipality alone determines: its residuals are
  fitted to them exactly, so the cluster sandwich misses that municipality's own noise
  along them (3-25% of the model-based se at 1 M households). For them ``df`` is NaN and z,
  p and the interval use se_robust with the normal; terms ``factor[level]``, indicator and
  continuous column names, ``municipality[GMxxxx]``);
- ``fit.json``: the spec by content (``spec.content``: a fit folder reads the same in any
  folder or environment), the catalogue, the norms, per component the sample size, iterations,
  log-likelihood, gradient norm, clipped fractions, dropped municipalities (codes), separated
  terms (levels with no or only outcomes, estimated on their own), and
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

from engine.io.outputs import atomic_dir, settle
from engine.model.design import (ComponentDesign, Households, component_design, dense_design,
                           households_from_population, make_layout)
from engine.model.fit import ComponentFit, fit_component, municipality_levels
from engine.model.norms import Norms, load_norms
from engine.model.population import Population
from engine.model.published import component_from_weights
from engine.model.spec import ModelSpec, SpecError, load_spec, spec_from_content

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
    if spec.kind != "household":
        raise SpecError(f"model spec {spec.name} is a municipal model: it has no household components to fit "
                        "(use `buig predict --spec`)")
    norms = load_norms(spec.norms)
    hh = pop if isinstance(pop, Households) else households_from_population(pop)
    fits = {}
    for i, comp in enumerate((spec.volume, spec.price)):
        if spec.weights is not None or comp.fixed:   # published weights (or f = 1): nothing to estimate
            fits[comp.name] = component_from_weights(spec, comp, make_layout(comp, hh).term_names)
            continue
        d = component_design(hh, comp, norms, weight=weight)
        fits[comp.name] = fit_component(d, tol=tol, mun_codes=hh.mun_codes,
                                        start=None if start is None else start.component(comp.name).params)
        if progress:
            progress(i + 1, 2)
    return ModelFit(spec=spec, norms=norms, volume=fits["volume"], price=fits["price"], mun_codes=hh.mun_codes)


def coefficients_table(fit: ModelFit) -> pa.Table:
    """Per term: estimate, the three standard errors, the cluster se's degrees of freedom, z,
    p and the 95% interval (cluster-robust, Student's t with those degrees of freedom; robust
    and normal for the fixed effects and their intercept, module docstring)."""
    from scipy import stats

    comp, term, est, dfs, se = [], [], [], [], {k: [] for k in COVARIANCE_KINDS}
    for c in (fit.volume, fit.price):
        comp += [c.name] * len(c.term_names)
        term += list(c.term_names)
        est.append(c.params)
        dfs.append(c.df_cluster if c.df_cluster.size else np.full(len(c.term_names), np.nan))
        for k in COVARIANCE_KINDS:
            se[k].append(c.se(k))
    b, s, df = np.concatenate(est), np.concatenate(se["cluster"]), np.concatenate(dfs)
    # a level one municipality alone determines: the robust se (see the module docstring)
    own = np.concatenate([municipality_levels(c.term_names) for c in (fit.volume, fit.price)])
    s = np.where(own, np.concatenate(se["robust"]), s)
    normal = np.isnan(df)             # the own levels included (the fit gives them none)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = b / s
        p = np.where(normal, 2.0 * stats.norm.sf(np.abs(z)), 2.0 * stats.t.sf(np.abs(z), np.where(normal, 1.0, df)))
        q = np.where(normal, stats.norm.ppf(0.975), stats.t.ppf(0.975, np.where(normal, 1.0, df)))
    return pa.table({"component": comp, "term": term, "estimate": b,
                     **{f"se_{k}": np.concatenate(se[k]) for k in COVARIANCE_KINDS}, "df": df,
                     "z": z, "p_value": p, "ci_low": b - q * s, "ci_high": b + q * s})


def format_coefficients(fit: ModelFit, show_fixed_effects: bool = False) -> str:
    """The coefficient table as text, like statsmodels' summary (fixed effects counted, not shown)."""
    t = coefficients_table(fit).to_pydict()
    lines = []
    for name in ("volume", "price"):
        rows = [i for i, c in enumerate(t["component"]) if c == name]
        fe = [i for i in rows if t["term"][i].startswith("municipality[")]
        shown = rows if show_fixed_effects else [i for i in rows if i not in fe]
        width = max([len(t["term"][i]) for i in shown] + [20])
        lines.append(f"{name}:")
        lines.append(f"  {'term':<{width}} {'coef':>10} {'se_model':>9} {'se_robust':>9} {'se_cluster':>10} "
                     f"{'df':>6} {'z':>8} {'P>|t|':>7} {'[0.025':>9} {'0.975]':>9}")
        for i in shown:
            lines.append(f"  {t['term'][i]:<{width}} {t['estimate'][i]:>10.4f} {t['se_model'][i]:>9.4f} "
                         f"{t['se_robust'][i]:>9.4f} {t['se_cluster'][i]:>10.4f} {t['df'][i]:>6.1f} {t['z'][i]:>8.2f} "
                         f"{t['p_value'][i]:>7.3f} {t['ci_low'][i]:>9.4f} {t['ci_high'][i]:>9.4f}")
        if fe and not show_fixed_effects:
            lines.append(f"  ({len(fe)} municipality fixed effects in coefficients.parquet, not shown)")
    return "\n".join(lines)


def published_comparison(fit: ModelFit) -> list[dict]:
    """The spec's ``[published]`` values beside the estimates: term, published, estimate, se, z of the difference."""
    pub = fit.spec.published
    out = []
    for name in ("volume", "price"):
        c = fit.component(name)
        for term, value in pub.get(name, {}).items():
            if term not in c.term_names:
                continue              # a variant of the spec without that term
            i = c.term_names.index(term)
            se = float(c.se("cluster")[i])
            out.append({"component": name, "term": term, "published": float(value), "estimate": float(c.params[i]),
                        "se_cluster": se, "z_difference": (float(c.params[i]) - float(value)) / se})
    return out


def fit_summary(fit: ModelFit, catalogue=None) -> dict:
    spec = {"name": fit.spec.name, "file": str(fit.spec.path), "description": fit.spec.description,
            "content": fit.spec.content, "published_weights": fit.spec.weights is not None}
    extra = {"catalogue": catalogue.to_dict()} if catalogue is not None else {}
    if fit.spec.published and fit.spec.weights is None:
        extra["published_comparison"] = {"reference": fit.spec.published.get("reference", ""),
                                         "terms": published_comparison(fit)}
    return {"spec": spec, **extra,
            "norms": {"year": fit.norms.year, "gross_up": fit.norms.gross_up,
                      "kostendeler_age_cutoff": fit.norms.age_cutoff},
            "convergence": "max |score| / total weight below tol",
            "volume": fit.volume.summary(), "price": fit.price.summary()}


def write_fit(fit: ModelFit, out: Path, catalogue=None) -> None:
    """Write coefficients.parquet, fit.json and covariances.npz into folder ``out`` (already temporary)."""
    pq.write_table(coefficients_table(fit), out / "coefficients.parquet")
    (out / "fit.json").write_text(json.dumps(fit_summary(fit, catalogue), indent=1, allow_nan=True) + "\n",
                                  encoding="utf-8")
    with open(out / "covariances.npz", "wb") as fh:
        np.savez(fh, **{f"{c.name}_{k}": getattr(c, f"cov_{k}") for c in (fit.volume, fit.price)
                        for k in COVARIANCE_KINDS})


def read_fit(path: str | Path, spec: ModelSpec | str | Path | None = None) -> ModelFit:
    """Read the files of ``write_fit``; the spec recorded (by content) in fit.json unless ``spec`` is given."""
    path = Path(path)
    settle(path)                 # a set of files whose commit a killed writer left unfinished
    for name in ("coefficients.parquet", "fit.json", "covariances.npz"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path / name} is missing: run `buig fit` first")
        if not (path / name).is_file():
            raise ValueError(f"{path / name} is not a regular file")
    info = json.loads((path / "fit.json").read_text(encoding="utf-8"))
    if isinstance(spec, ModelSpec):
        pass
    elif spec is not None:
        spec = load_spec(spec)
    elif "content" in info["spec"]:
        spec = spec_from_content(info["spec"]["content"], f"model spec recorded in {path / 'fit.json'}")
    else:
        spec = load_spec(info["spec"]["file"])    # a fit folder of an earlier version
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
            unestimable_terms=tuple(s.get("unestimable_terms", [])),
            separated_terms=tuple(s.get("separated_terms", [])),
            df_cluster=np.array([coef["df"][i] for i in rows], dtype=np.float64) if "df" in coef else np.zeros(0))
        fe = [t[len("municipality["):-1] for t in terms if t.startswith("municipality[")]
        if fe:
            mun_codes = np.array(["?"] + fe, dtype=object)
    return ModelFit(spec=spec, norms=load_norms(spec.norms), volume=comps["volume"], price=comps["price"],
                    mun_codes=mun_codes)


def export_design(d: ComponentDesign, fit: ComponentFit, out: Path, name: str) -> None:
    """Dense design of one component as Parquet: one column per term used in the fit, ``_y``, ``_w``.

    Rows and fixed effects of municipalities dropped for separation, and rows and terms of
    separated levels, are left out, so any other tool refits exactly the shared estimate.
    """
    X = dense_design(d)
    w = d.weight if d.weight.size else np.ones(d.n)
    names = np.asarray(d.layout.term_names, dtype=object)
    dropped_terms = np.isin(names, [f"municipality[{c}]" for c in fit.dropped_municipalities])
    keep_rows = np.ones(d.n, dtype=bool)
    if d.layout.fe_start >= 0:
        dropped_mun = np.concatenate([[False], dropped_terms[d.layout.fe_start:]])
        keep_rows = ~dropped_mun[d.nb_mun[d.nbhd]]
    separated = np.isin(names, list(fit.separated_terms))
    keep_rows &= ~X[:, separated].any(axis=1)          # households of a level with no or only outcomes
    dropped_terms |= separated
    cols = {t: X[keep_rows, j] for j, t in enumerate(names) if not dropped_terms[j]}
    cols["_y"] = np.asarray(d.y[keep_rows], dtype=np.float64)
    cols["_w"] = np.asarray(w[keep_rows], dtype=np.float64)
    pq.write_table(pa.table(cols), out / f"design_{name}.parquet")


def fit_to_folder(pop: Population, out: str | Path, spec: ModelSpec | str | Path = "2019",
                  export: bool = False, max_export_rows: int = 200_000, progress=None) -> ModelFit:
    """``buig fit``: estimate and write the files (atomically) into ``out``."""
    spec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    if export and pop.households.num_rows > max_export_rows:
        raise ValueError(f"--export-design writes a dense matrix: use a population of at most "
                         f"{max_export_rows:,} households (this one has {pop.households.num_rows:,})")
    hh = households_from_population(pop)
    fit = fit_model(hh, spec, progress=progress)
    save_fit(fit, out, hh if export else None, pop.catalogue)
    return fit


def save_fit(fit: ModelFit, out: str | Path, export: Households | None = None, catalogue=None) -> None:
    """Write the files of ``fit`` into ``out`` as one set (and, with households ``export``, the designs);
    ``catalogue``: the population's, recorded in fit.json."""
    with atomic_dir(out) as tmp:
        write_fit(fit, tmp, catalogue)
        if export is not None:
            hh, spec = export, fit.spec
            for comp in (c for c in (spec.volume, spec.price) if not c.fixed):
                d = component_design(hh, comp, fit.norms)
                export_design(d, fit.component(comp.name), tmp, comp.name)
