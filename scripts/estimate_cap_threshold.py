"""Sweep the Rob cap's threshold kappa: who is capped, how much, who receives it, how stable.

Given a population (or ``--households N``: a synthetic one generated into ``--out``), a
fit (``--coefficients``, or fitted into ``--out/fit``) and a bootstrap (``--bootstrap``, an
output folder of ``buig bootstrap``, resumed or run with ``engine.uncertainty.bootstrap.run_bootstrap``),
the flags at ``--level`` are fixed (a surplus is unexplained when ``p_explained < level``)
and for every kappa of the grid:

- **capped**: flagged municipalities whose surplus B - S exceeds kappa * B
  (``engine.rules.cap.rob_cap``); **euros clawed back** (and as % of TB);
- **who receives them**, for both redistribution rules (``pro_rata``: to every municipality
  not capped, by budget; ``deficit``: to deficit municipalities first): the number of
  recipients, the top recipients and the top recipients' share of the pool;
- **stability across replicates**: with the flags fixed, the cap is applied to each
  replicate's budgets against actual spending; per municipality the share of replicates
  in which it is capped; summarised by the mean (and 5% quantile) Jaccard overlap of the
  replicate's capped set with the point capped set, the number of municipalities capped in
  >= 95% of replicates and of borderline ones (capped in 5-95%), and the 2.5-97.5% range of
  the euros clawed back;
- on synthetic worlds (``truth.json``), the **false-cap rate** against two definitions of
  "truly unexplained": (a) *planted* (a municipality with a planted strong policy effect);
  (b) *true surplus > kappa*: the true expected spending (``expected_cost``, with the
  municipality's own policy effect) lies below the true objective cost (``objective_cost``,
  the model's prediction rule applied to the truth) by more than kappa of it. The rate
  is false caps / caps (empty: no caps). Missed planted municipalities are counted too.

Also: the flag precision and recall on the planted municipalities at ``--level`` (issue
figure: precision >= 90% at recall >= 80%) and a curve over ``--levels``.

Outputs in ``--out``: ``cap_threshold.csv`` (one row per kappa and redistribution rule),
``cap_stability.csv`` (one row per municipality and kappa: flagged, capped at the point,
share of replicates capped), ``flag_curve.csv`` (synthetic worlds), and a readable table
on stdout. Only the public engine API is used (no CLI subprocesses).

    python scripts/estimate_cap_threshold.py --households 1000000 --out /tmp/cap        # a synthetic world
    python scripts/estimate_cap_threshold.py --population POP --coefficients FIT --bootstrap BOOT --out /tmp/cap
    python scripts/estimate_cap_threshold.py --population POP --kappas 0,0.05,0.1,0.2 --level 0.005 --out /tmp/cap
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RULES = ("pro_rata", "deficit")
DEFAULT_KAPPAS = "0:0.30:0.025"
DEFAULT_LEVELS = "0.0005,0.001,0.0025,0.005,0.01,0.02,0.05,0.1,0.2"


def parse_grid(text: str) -> list[float]:
    """``start:stop:step`` (stop included) or a comma-separated list of numbers."""
    if ":" in text:
        parts = [float(x) for x in text.split(":")]
        if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
            raise ValueError(f"a grid is start:stop:step with step > 0 and stop >= start, not {text!r}")
        n = int(np.floor((parts[1] - parts[0]) / parts[2] + 1e-9)) + 1
        return [round(parts[0] + i * parts[2], 12) for i in range(n)]
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values:
        raise ValueError(f"empty grid {text!r}")
    return values


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two boolean masks; 1 when both are empty."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


@dataclass(frozen=True)
class Truth:
    """What a synthetic world's truth says per municipality (in the bootstrap's order)."""

    planted: np.ndarray            # bool
    objective_cost: np.ndarray     # true objective cost (model's rule on the truth)
    expected_cost: np.ndarray      # true expected spending (own policy effect)
    policy_effect: np.ndarray

    @classmethod
    def from_json(cls, truth: dict, codes: np.ndarray) -> "Truth":
        by = {m["code"]: m for m in truth["municipalities"]}
        get = lambda k: np.array([by[c][k] for c in codes])  # noqa: E731
        return cls(planted=get("planted").astype(bool), objective_cost=get("objective_cost").astype(float),
                   expected_cost=get("expected_cost").astype(float), policy_effect=get("policy_effect").astype(float))

    def true_surplus(self) -> np.ndarray:
        """(objective cost - expected spending) / objective cost: the part of the model's
        cost a municipality does not spend because of its own policy."""
        return 1.0 - self.expected_cost / self.objective_cost


def precision_recall(flagged: np.ndarray, planted: np.ndarray) -> tuple[float, float, int]:
    tp = int(np.count_nonzero(flagged & planted))
    nf, npl = int(np.count_nonzero(flagged)), int(np.count_nonzero(planted))
    return (tp / nf if nf else float("nan")), (tp / npl if npl else float("nan")), tp


def sweep(budget: np.ndarray, spending: np.ndarray, flagged: np.ndarray, replicates: np.ndarray,
          kappas: list[float], codes: np.ndarray, names: np.ndarray, truth: Truth | None = None, top: int = 5):
    """Rows of the kappa sweep (one per kappa and rule) and the per-municipality stability.

    ``replicates``: (R, n_mun) budgets of the bootstrap replicates; the flags stay fixed.
    """
    from engine.rules.cap import rob_cap

    tb = float(budget.sum())
    rows, stab = [], []
    for kappa in kappas:
        point = {rule: rob_cap(budget, spending, flagged, kappa, rule) for rule in RULES}
        capped = point["pro_rata"].clawed_back > 0
        rep_capped = np.empty(replicates.shape, dtype=bool)
        rep_total = np.empty(len(replicates))
        for r, b in enumerate(replicates):
            c = rob_cap(b, spending, flagged, kappa, "pro_rata")
            rep_capped[r], rep_total[r] = c.clawed_back > 0, c.total
        share_capped = rep_capped.mean(axis=0)
        jac = np.array([jaccard(rc, capped) for rc in rep_capped])
        common = {
            "kappa": kappa, "flagged": int(flagged.sum()), "capped": int(capped.sum()),
            "clawed_back_eur": point["pro_rata"].total, "clawed_back_pct_tb": 100 * point["pro_rata"].total / tb,
            "clawed_back_q2_5": float(np.quantile(rep_total, 0.025)),
            "clawed_back_q97_5": float(np.quantile(rep_total, 0.975)),
            "mean_jaccard": float(jac.mean()), "jaccard_q5": float(np.quantile(jac, 0.05)),
            "capped_ge95": int(np.count_nonzero(share_capped >= 0.95)),
            "borderline_5_95": int(np.count_nonzero((share_capped > 0.05) & (share_capped < 0.95))),
            "min_share_of_point_capped": float(share_capped[capped].min()) if capped.any() else float("nan"),
            "capped_names": "; ".join(names[capped]),
        }
        if truth is not None:
            truly = truth.true_surplus() > kappa
            fa, fb = capped & ~truth.planted, capped & ~truly
            n = max(int(capped.sum()), 1)
            common.update({
                "false_cap_planted": int(fa.sum()),
                "false_cap_rate_planted": fa.sum() / n if capped.any() else float("nan"),
                "missed_planted": int((truth.planted & ~capped).sum()),
                "truly_unexplained_surplus": int(truly.sum()),
                "false_cap_true_surplus": int(fb.sum()),
                "false_cap_rate_true_surplus": fb.sum() / n if capped.any() else float("nan"),
                "missed_true_surplus": int((truly & ~capped).sum()),
            })
        for rule in RULES:
            c = point[rule]
            order = np.argsort(-c.received, kind="stable")[:top]
            order = order[c.received[order] > 0]
            rows.append({
                **{k: v for k, v in common.items() if k != "capped_names"}, "rule": rule,
                "recipients": int(np.count_nonzero(c.received > 0)),
                "recipients_in_deficit": int(np.count_nonzero((c.received > 0) & (spending > budget))),
                "top_share": float(c.received[order].sum() / c.total) if c.total > 0 else float("nan"),
                "top_recipients": "; ".join(f"{names[g]} {c.received[g]:,.0f}" for g in order),
                "capped_names": common["capped_names"],
            })
        for g in range(len(budget)):
            if flagged[g] or share_capped[g] > 0:
                stab.append({"kappa": kappa, "code": codes[g], "name": names[g], "flagged": bool(flagged[g]),
                             "capped": bool(capped[g]), "share_of_replicates_capped": float(share_capped[g]),
                             "surplus_pct": 100 * (budget[g] - spending[g]) / budget[g] if budget[g] else float("nan"),
                             **({"planted": bool(truth.planted[g]), "true_surplus_pct": 100 * truth.true_surplus()[g]}
                                if truth is not None else {})})
    return rows, stab


def flag_curve(res, planted: np.ndarray, levels: list[float]) -> list[dict]:
    """Precision and recall of the flags on the planted municipalities at each level."""
    from engine.uncertainty.summaries import flags_table

    out = []
    for level in levels:
        flagged = flags_table(res, level).column("flagged").to_numpy(zero_copy_only=False)
        prec, rec, tp = precision_recall(flagged, planted)
        out.append({"level": level, "flagged": int(flagged.sum()), "planted": int(planted.sum()), "true_positives": tp,
                    "precision": prec, "recall": rec})
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def format_table(rows: list[dict], synthetic: bool) -> str:
    """One line per kappa (both rules side by side)."""
    head = (f"{'kappa':>6} {'capped':>6} {'EUR mln':>9} {'% TB':>6} {'95% range EUR mln':>18} {'Jacc':>5} "
            f"{'>=95%':>5} {'5-95%':>5} | {'pro rata: n':>11} {'top5':>5} | {'deficit: n':>10} {'top5':>5}")
    if synthetic:
        head += f" | {'false(planted)':>14} {'false(surplus>k)':>16} {'missed pl.':>10}"
    lines = [head]
    by = {}
    for r in rows:
        by.setdefault(r["kappa"], {})[r["rule"]] = r
    for kappa, d in by.items():
        a, b = d["pro_rata"], d["deficit"]
        line = (f"{kappa:>6.3f} {a['capped']:>6} {a['clawed_back_eur'] / 1e6:>9.2f} {a['clawed_back_pct_tb']:>6.2f} "
                f"{a['clawed_back_q2_5'] / 1e6:>8.2f} .. {a['clawed_back_q97_5'] / 1e6:>6.2f} {a['mean_jaccard']:>5.2f} "
                f"{a['capped_ge95']:>5} {a['borderline_5_95']:>5} | {a['recipients']:>11} {a['top_share']:>5.2f} | "
                f"{b['recipients']:>10} {b['top_share']:>5.2f}")
        if synthetic:
            fr = lambda n, x: f"{n} ({x:.0%})" if x == x else f"{n} (-)"  # noqa: E731
            line += (f" | {fr(a['false_cap_planted'], a['false_cap_rate_planted']):>14} "
                     f"{fr(a['false_cap_true_surplus'], a['false_cap_rate_true_surplus']):>16} {a['missed_planted']:>10}")
        lines.append(line)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/estimate_cap_threshold.py",
                                description="Sweep the Rob cap's kappa: municipalities capped, euros clawed back, "
                                            "recipients, stability across replicates and (synthetic worlds) "
                                            "false caps against the truth.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--population", help="population folder (default: generate a synthetic one into OUT/population)")
    p.add_argument("--households", type=int, default=1_000_000, help="households of a generated synthetic world")
    p.add_argument("--world-seed", type=int, default=20190101, help="seed of a generated synthetic world")
    p.add_argument("--coefficients", help="folder written by `buig fit` (default: fit into OUT/fit)")
    p.add_argument("--spec", default="2019", help="model spec when fitting here")
    p.add_argument("--bootstrap", help="folder of `buig bootstrap` (its settings are reused and missing "
                                       "replicates computed); default: OUT/bootstrap")
    p.add_argument("--replicates", type=int, default=200, help="bootstrap replicates")
    p.add_argument("--method", choices=("parametric", "cluster"), default="parametric", help="bootstrap method")
    p.add_argument("--seed", type=int, default=1, help="bootstrap seed")
    p.add_argument("--regime", default="2019", help="regime of the household model")
    p.add_argument("--between-sd", default="auto", help="between-municipality sd of the spending band")
    p.add_argument("--workers", type=int, default=0, help="0: in this process; N: Dask LocalCluster workers")
    p.add_argument("--batch-size", type=int, default=50, help="replicates per batch")
    p.add_argument("--level", type=float, default=0.01, help="flag level: unexplained when p_explained < level")
    p.add_argument("--kappas", default=DEFAULT_KAPPAS, help="kappa grid: start:stop:step or a list")
    p.add_argument("--levels", default=DEFAULT_LEVELS, help="flag levels of the precision/recall curve")
    p.add_argument("--top", type=int, default=5, help="top recipients listed per rule")
    return p


def prepare(args) -> tuple:
    """Population, fit and bootstrap (generated, fitted, run or resumed as needed)."""
    from engine.uncertainty.bootstrap import run_bootstrap
    from engine.uncertainty.settings import Settings
    from engine.model.fitted import fit_to_folder
    from engine.model.population import read_population

    out = Path(args.out)
    population = args.population
    if population is None:
        population = str(out / "population")
        if not (Path(population) / "households.parquet").exists():
            from engine.world.synth import generate

            print(f"generating a synthetic world of {args.households:,} households (seed {args.world_seed}) "
                  f"into {population}", flush=True)
            generate(population, households=args.households, seed=args.world_seed)
    coefficients = args.coefficients
    if coefficients is None:
        coefficients = str(out / "fit")
        if not (Path(coefficients) / "coefficients.parquet").exists():
            print(f"fitting the model into {coefficients}", flush=True)
            fit_to_folder(read_population(population), coefficients, spec=args.spec)
    boot = Path(args.bootstrap) if args.bootstrap else out / "bootstrap"
    settings = Settings(population=population, coefficients=coefficients, regime=args.regime, method=args.method,
                        seed=args.seed, between_sd=args.between_sd)
    replicates = args.replicates
    info = boot / "bootstrap.json"
    if args.bootstrap and info.exists():        # reuse that bootstrap's own settings
        saved = json.loads(info.read_text(encoding="utf-8"))
        settings = Settings(**saved["settings"])
        replicates = saved.get("replicates", replicates)
    t0 = time.perf_counter()
    res = run_bootstrap(settings, boot, replicates=replicates, batch_size=args.batch_size, workers=args.workers)
    print(f"bootstrap: {res.replicates} {settings.method} replicates ({res.computed} computed) in "
          f"{time.perf_counter() - t0:.1f} s -> {boot}", flush=True)
    return settings, res


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine.uncertainty.draws import context
    from engine.uncertainty.summaries import flags_table

    kappas, levels = parse_grid(args.kappas), parse_grid(args.levels)
    if any(k < 0 for k in kappas):
        raise SystemExit("kappa must be >= 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings, res = prepare(args)
    ctx = context(settings)
    truth = Truth.from_json(ctx.truth, res.codes) if ctx.truth is not None else None
    flags = flags_table(res, args.level)
    flagged = flags.column("flagged").to_numpy(zero_copy_only=False)
    names = np.asarray(res.names, dtype=object)
    rows, stab = sweep(res.point_budget, res.spending, flagged, res.values["budget"], kappas, res.codes, names, truth,
                       args.top)
    _write_csv(out / "cap_threshold.csv", rows)
    _write_csv(out / "cap_stability.csv", stab)
    tb = res.point_budget.sum()
    print(f"\n{int(flagged.sum())} municipalities flagged at level {args.level} (p_explained < level, surplus > 0) "
          f"of {len(flagged)}; TB EUR {tb / 1e6:,.1f} mln; {res.replicates} replicates; between-municipality sd "
          f"{res.between_sd:.3f}")
    print("flagged: " + "; ".join(f"{names[g]} ({100 * (res.point_budget[g] - res.spending[g]) / res.point_budget[g]:.1f}%"
                                  f"{', planted' if truth is not None and truth.planted[g] else ''})"
                                  for g in np.flatnonzero(flagged)))
    print()
    print(format_table(rows, truth is not None))
    print("\ncapped: municipalities capped at the point; EUR mln: clawed back; 95% range: over the replicates "
          "(flags fixed); Jacc: mean Jaccard overlap of a replicate's capped set with the point one; >=95% / 5-95%: "
          "municipalities capped in that share of replicates; n: recipients; top5: share of the pool to the five "
          "largest recipients" + ("; false: capped but not truly unexplained (planted / true surplus > kappa), "
                                  "rate of the capped" if truth is not None else ""))
    for kappa in (kappas[0], kappas[len(kappas) // 2]):
        for r in rows:
            if r["kappa"] == kappa:
                print(f"  kappa {kappa:.3f} {r['rule']:>8}: top recipients {r['top_recipients'] or '-'}")
    if truth is not None:
        curve = flag_curve(res, truth.planted, sorted(set(levels) | {args.level}))
        _write_csv(out / "flag_curve.csv", curve)
        print(f"\nflags on the {int(truth.planted.sum())} planted municipalities (issue: precision >= 90% at recall >= 80%):")
        print(f"{'level':>8} {'flagged':>7} {'TP':>4} {'precision':>9} {'recall':>6}")
        for c in curve:
            mark = "  <- chosen level" if c["level"] == args.level else ""
            print(f"{c['level']:>8g} {c['flagged']:>7} {c['true_positives']:>4} {c['precision']:>9.2f} "
                  f"{c['recall']:>6.2f}{mark}")
    print(f"\nwrote cap_threshold.csv, cap_stability.csv{', flag_curve.csv' if truth is not None else ''} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
