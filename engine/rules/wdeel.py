"""The W-deel (reintegration budget) models of the 2004 letter (K2004) and their fit to need.

Four ways to divide a W-deel total over municipalities ([B: K2004]; sources in engine/data/SOURCES.md):

1. bijstand recipients, unweighted;
2. recipients weighted by benefit duration: 1, 2, 3, 1 for <1, 1-2, 2-4, >4 years;
3. recipients weighted 4, 7, 5, 4 for <1, 1-2, 2-5, >5 years;
4. the size of the municipal target group (``wdeel_target_group``).

Recipients are the households with ``bijstand == 1``, counted by ``duration_class``
(0 none, 1 <1y, 2 1-2y, 3 2-4y, 4 4-5y, 5 >5y): model 2's ">4 years" is classes 4 and 5,
model 3's "2-5 years" classes 3 and 4 and ">5 years" class 5.

Budgets are W-total x the municipality's share. The fit to ``wdeel_need`` is the letter's
(budget - need) / budget per municipality, summarised as mean, standard deviation
(ddof = 1), largest minus and largest plus. Municipalities with a budget of 0 have no
defined ratio and are counted apart. The total is a budget of its own (the 2004 letter's mean of
+28% says the budget exceeded the measured need), never the sum of need. The letter's row for
the then-current, historical distribution (the 2003 ID-jobs and WIW budgets) is stood in for
by the municipalities' shares of bijstand spending in t-2, the only historical amounts a
population has; the output says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.model.population import Population
from engine.model.schema import CATEGORIES

N_DURATION = len(CATEGORIES["duration_class"])

# Weight per duration class code 0..5 (class 0, no benefit, never counts).
DURATION_WEIGHTS = {
    "model_1": np.array([0, 1, 1, 1, 1, 1], dtype=np.float64),
    "model_2": np.array([0, 1, 2, 3, 1, 1], dtype=np.float64),
    "model_3": np.array([0, 4, 7, 5, 5, 4], dtype=np.float64),
}
LABELS = {
    "model_1": "bijstand recipients, unweighted",
    "model_2": "recipients weighted 1,2,3,1 (<1, 1-2, 2-4, >4 years)",
    "model_3": "recipients weighted 4,7,5,4 (<1, 1-2, 2-5, >5 years)",
    "model_4": "size of the municipal target group",
    "historical": "historical: shares of bijstand spending t-2 (stand-in for the 2003 WIW/ID budgets)",
}
NEED_NOTE = ("need = the population's wdeel_need column; in the built-in synthetic world: the chance of a "
             "reintegration trajectory by person characteristics (age, education, work limitation) of the "
             "bijstand households x EUR 4,000, not built from any model's duration weights")
MODELS = tuple(LABELS)


def recipients_by_duration(pop: Population) -> np.ndarray:
    """Bijstand households per municipality and duration class: shape (municipalities, 6)."""
    hh = pop.households
    bij = hh.column("bijstand").to_numpy() == 1
    dur = hh.column("duration_class").to_numpy().astype(np.int64)
    n = pop.municipalities.num_rows
    cell = pop.household_municipality[bij].astype(np.int64) * N_DURATION + dur[bij]
    return np.bincount(cell, minlength=n * N_DURATION).reshape(n, N_DURATION).astype(np.float64)


def model_weights(recipients: np.ndarray, target_group: np.ndarray) -> dict[str, np.ndarray]:
    """The distribution measure of every model per municipality (before normalising)."""
    out = {name: recipients @ w for name, w in DURATION_WEIGHTS.items()}
    out["model_4"] = np.asarray(target_group, dtype=np.float64)
    return out


def budgets(measure: np.ndarray, total: float) -> np.ndarray:
    """W-total x share of the measure."""
    m = np.asarray(measure, dtype=np.float64)
    if m.sum() <= 0:
        raise ValueError("W-deel: the distribution measure is 0 in every municipality")
    return total * m / m.sum()


def fit_to_need(budget: np.ndarray, need: np.ndarray) -> dict:
    """(budget - need) / budget in %: mean, sd (ddof 1), largest minus, largest plus."""
    b, n = np.asarray(budget, dtype=np.float64), np.asarray(need, dtype=np.float64)
    ok = b > 0
    r = 100.0 * (b[ok] - n[ok]) / b[ok]
    return {"municipalities": int(ok.sum()), "zero_budget": int((~ok).sum()),
            "mean_pct": float(r.mean()), "sd_pct": float(r.std(ddof=1)) if r.size > 1 else np.nan,
            "largest_minus_pct": float(r.min()), "largest_plus_pct": float(r.max())}


@dataclass(frozen=True)
class WdeelResult:
    total: float
    budgets: dict                    # model (and "historical") -> budgets per municipality
    need: np.ndarray
    rows: tuple[dict, ...]           # one row per model: label and fit_to_need statistics


def wdeel(pop: Population, total: float) -> WdeelResult:
    """Budgets of the four W-deel models and the historical distribution, and their fit to need.

    ``total`` is the W-deel budget in EUR, a budget of its own (not the sum of need)."""
    mun = pop.municipalities
    need = mun.column("wdeel_need").to_numpy().astype(np.float64)
    if total is None or not float(total) > 0:
        raise ValueError(f"W-deel total must be a positive amount in EUR (a budget of its own), not {total}")
    total = float(total)
    measures = model_weights(recipients_by_duration(pop), mun.column("wdeel_target_group").to_numpy())
    measures["historical"] = mun.column("spending_t2").to_numpy().astype(np.float64)
    out = {name: budgets(m, total) for name, m in measures.items()}
    rows = tuple({"model": name, "label": LABELS[name]} | fit_to_need(out[name], need) for name in MODELS)
    return WdeelResult(total=total, budgets=out, need=need, rows=rows)


def format_rows(rows) -> str:
    """The letter's table: one line per model."""
    head = f"{'model':<8} {'mean':>7} {'sd':>7} {'min':>8} {'max':>7}  municipalities"
    lines = [head]
    for r in rows:
        lines.append(f"{r['model']:<8} {r['mean_pct']:>6.0f}% {r['sd_pct']:>6.0f}% {r['largest_minus_pct']:>7.0f}% "
                     f"{r['largest_plus_pct']:>6.0f}%  {r['municipalities']} ({r['zero_budget']} with budget 0)")
    return "\n".join(lines)
