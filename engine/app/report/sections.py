"""The report's sections, one function of :class:`engine.app.report.load.RunData` each:
headline figures, budget bands against spending, the funnel of redistribution effects, the
capping trade-off over kappa and the vangnet payouts (the rekentool is in
:mod:`engine.app.report.rekentool`). Each returns HTML.
"""

from __future__ import annotations

import math

import numpy as np

from engine.app.report.fmt import esc, eur, figure, mln, num, pct, search_key, table
from engine.app.report.load import RunData
from engine.app.report.svg import BLUE, DARK, GREY, RED, WIDTH, Frame, Scale, axis_range, f1, legend, polyline, svg_chart
from engine.rules.cap import rob_cap


def mun_label(d: RunData, i: int) -> str:
    return f"{d.names[i]} ({d.codes[i]})"


def regime_classes(d: RunData) -> np.ndarray:
    n, r = d.inhabitants, d.regime
    return np.where(n <= r.historical_up_to, 0, np.where(n <= r.objective_from, 1, 2))


def section_headline(d: RunData) -> str:
    b, f, c = d.budgets, d.flags, d.capped
    s = d.scenario
    bs = s.get("bootstrap", {})
    flagged = np.asarray(f["flagged"], dtype=bool)
    figures = [
        ("Budget stage and macro budget", esc(d.macrobudget_text) or "&ndash;"),
        ("Macro budget to distribute (TB)", f"EUR {eur(d.tb)}"),
        ("Sum of the budgets", f"EUR {eur(b['budget'].sum())}"),
        ("Actual spending in t (sum)", f"EUR {eur(b['actual_spending'].sum())}"),
        ("TB minus spending (national)", f"EUR {eur(d.tb - b['actual_spending'].sum())} "
                                         f"({100 * (1 - b['actual_spending'].sum() / d.tb):+.1f}% of TB)"),
        ("Municipalities in deficit", f"{int((b['actual_spending'] > b['budget']).sum())} of {len(d.codes)}"),
        ("Objective cost (sum)", f"EUR {eur(b['objective_cost'].sum())} "
                                 f"({100 * (b['objective_cost'].sum() / b['actual_spending'].sum() - 1):+.1f}% against spending)"),
        ("Municipalities", num(len(d.codes))),
        ("Households in the population", num(d.households) if d.households is not None else "&ndash;"),
        ("Vangnet payouts", f"EUR {eur(b['vangnet_payout'].sum())} to {int((b['vangnet_payout'] > 0).sum())} "
                            "municipalities"),
        ("Unexplained surpluses (flagged)", f"{int(flagged.sum())} municipalities ({esc(d.flag_rule)}, "
                                            f"{d.replicates} {esc(bs.get('method', ''))} replicates)"),
        (f"Rob cap at kappa = {d.kappa:g}", f"{int((c['clawed_back'] > 0).sum())} municipalities capped; EUR "
                                            f"{eur(c['clawed_back'].sum())} redistributed "
                                            f"({esc(d.redistribute)})"),
    ]
    key = "\n".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in figures)
    cls = regime_classes(d)
    lo, hi = d.regime.historical_up_to, d.regime.objective_from
    names = [f"&le; {lo / 1000:g}k inhabitants (historical)", f"{lo / 1000:g}k&ndash;{hi / 1000:g}k (pro rata)",
             f"&gt; {hi / 1000:g}k (objective weight {d.regime.objective_share:g})"]
    rows = []
    for k in range(3):
        m = cls == k
        rows.append([names[k], num(int(m.sum())), num(d.inhabitants[m].sum()),
                     mln(b["budget"][m].sum()), pct(100 * b["budget"][m].sum() / b["budget"].sum()),
                     mln(b["actual_spending"][m].sum()), num(int(flagged[m].sum())),
                     mln(b["vangnet_payout"][m].sum(), 2)])
    classes = table(["regime class", "municipalities", "inhabitants", "budget (EUR mln)", "share of TB",
                      "spending t (EUR mln)", "flagged", "vangnet (EUR mln)"], rows)
    return (f'<table class="key">{key}</table>\n<h3>Municipalities by regime class (regime {esc(d.regime.name)})</h3>\n'
            f"{classes}\n<h3>Redistribution effects (the table of the 2004 letter)</h3>\n{seed_table(d)}")


def f_or_nan(x: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def seed_table(d: RunData) -> str:
    rows, seen = [], set()
    for r in d.redistribution:
        if r["weighting"] != "unweighted":
            continue
        if r["table"] == "letter_2004" and r["size_class"].startswith("letter universe"):
            what = f"{r['label']} (against spending t, {r['size_class']})"
        elif r["table"] == "regime" and r["reference"] == "spending_t" and r["size_class"] == "all":
            what = f"{r['label']} (against spending t, all municipalities)"
        else:
            continue
        if what in seen:
            continue
        seen.add(what)
        rows.append([esc(what), num(f_or_nan(r["municipalities"])), pct(f_or_nan(r["mean_abs_effect_pct"])),
                     pct(f_or_nan(r["within_10_pct"])), pct(f_or_nan(r["within_15_pct"]))])
    main = table(["distribution", "municipalities", "mean |effect|", "within ±10%", "within ±15%"], rows)
    detail = [[esc(r["label"]), esc(r["reference"]), esc(r["size_class"]), esc(r["weighting"]),
               num(f_or_nan(r["municipalities"])), pct(f_or_nan(r["mean_abs_effect_pct"])),
               pct(f_or_nan(r["within_10_pct"])), pct(f_or_nan(r["within_15_pct"]))]
              for r in d.redistribution if r["table"] == "regime"]
    return (f"{main}\n<p class=note>Effect of a distribution: (budget &minus; reference scaled to the same total) / "
            "reference. The 2004 letter compares the municipalities in its objective model (&gt;40k) with their own "
            "spending.</p>\n<details><summary>Regime effects by size class, weighting and reference</summary>\n"
            + table(["distribution", "reference", "size class", "weighting", "municipalities", "mean |effect|",
                      "within ±10%", "within ±15%"], detail, numeric_from=4) + "\n</details>")


def section_bands(d: RunData) -> str:
    f, bd = d.flags, d.bands
    budget, spend = f["budget"], f["actual_spending"]
    ok = budget > 0
    rel = lambda v: np.where(ok, 100 * (v / np.where(ok, budget, 1) - 1), np.nan)  # noqa: E731
    s_rel, b_lo, b_hi = rel(spend), rel(bd["budget_q2_5"]), rel(bd["budget_q97_5"])
    sp_lo, sp_hi = rel(f["spending_band_q2_5"]), rel(f["spending_band_q97_5"])
    flagged = np.asarray(f["flagged"], dtype=bool)
    order = np.argsort(np.where(np.isfinite(s_rel), s_rel, np.inf), kind="stable")
    leg, top = legend([
        (f'<line x1="0" x2="0" y1="-6" y2="6" stroke="{BLUE}" stroke-width="6"/>', "95% band of spending predicted by the model"),
        (f'<line x1="0" x2="0" y1="-6" y2="6" stroke="{DARK}" stroke-width="1.5"/>', "95% band of the budget"),
        (f'<circle r="2" fill="{DARK}"/>', "actual spending"),
        (f'<circle r="3.6" fill="{RED}"/>', "flagged: surplus the model does not explain"),
    ], Frame.left, WIDTH - Frame.right)
    fr = Frame(height=int(380 + top), top=int(top))
    n = len(order)
    xs = fr.xscale(-0.5, n - 0.5)
    ys = fr.yscale(*axis_range(np.concatenate([s_rel, sp_lo, sp_hi]), include=[-10.0, 10.0, *s_rel[flagged]]))
    bw = max(1.0, 0.7 * (fr.width - fr.left - fr.right) / max(n, 1))
    body = []
    for rank, i in enumerate(order):
        x = f1(xs(rank))
        tip = (f"{mun_label(d, i)}: budget EUR {budget[i]:,.0f} (95% band {bd['budget_q2_5'][i]:,.0f} to "
               f"{bd['budget_q97_5'][i]:,.0f}); actual spending EUR {spend[i]:,.0f}; spending band "
               f"{f['spending_band_q2_5'][i]:,.0f} to {f['spending_band_q97_5'][i]:,.0f}; p_explained "
               f"{f['p_explained'][i]:.3f}{'; FLAGGED' if flagged[i] else ''}")
        parts = [f"<title>{esc(tip)}</title>"]
        if np.isfinite(sp_lo[i]):
            parts.append(f'<line x1="{x}" x2="{x}" y1="{f1(ys(sp_lo[i]))}" y2="{f1(ys(sp_hi[i]))}" class="sband" '
                         f'stroke-width="{bw:.1f}"/>')
        if np.isfinite(b_lo[i]):
            parts.append(f'<line x1="{x}" x2="{x}" y1="{f1(ys(b_lo[i]))}" y2="{f1(ys(b_hi[i]))}" class="bband"/>')
        if np.isfinite(s_rel[i]):
            parts.append(f'<circle cx="{x}" cy="{f1(ys(s_rel[i]))}" r="{3.6 if flagged[i] else 1.8}" '
                         f'class="{"flag" if flagged[i] else "dot"}"/>')
        body.append("<g>" + "".join(parts) + "</g>")
    body.append(f'<line x1="{fr.left}" x2="{fr.width - fr.right}" y1="{f1(ys(0))}" y2="{f1(ys(0))}" class="zero"/>')
    body += leg
    svg = svg_chart(fr, None, ys, body, "Budget bands against actual spending", f"{n} municipalities, sorted by "
                    "actual spending relative to the budget", "% of the point budget",
                    yfmt=lambda v: f"{v:+.0f}%")
    caption = (f"Every municipality's budget band (dark, 95% of {d.replicates} replicates) and the band of spending "
               "the model predicts for it (light; coefficient, outcome and between-municipality randomness), both "
               "relative to its point budget, against its actual spending (dot). A municipality is flagged (red) "
               f"when it has a surplus and {esc(d.flag_rule)}: p_explained is the probability under the light "
               "band of spending as low as its actual spending, q_value its Benjamini-Hochberg adjustment over all "
               "municipalities (false discovery rate). Values beyond the axis are drawn at its edge; hover for figures.")
    rows, keys = [], []
    for i in np.flatnonzero(flagged)[np.argsort(-f["surplus"][flagged] / budget[flagged], kind="stable")]:
        row = [esc(d.names[i]), esc(d.codes[i]), eur(budget[i]), eur(spend[i]),
               pct(100 * f["surplus"][i] / budget[i]), f"{eur(f['spending_band_q2_5'][i])} &ndash; "
               f"{eur(f['spending_band_q97_5'][i])}", num(f["p_explained"][i], 3),
               eur(d.capped["clawed_back"][i])]
        if d.synthetic:
            row.append("yes" if d.codes[i] in d.planted else "no")
        rows.append(row)
        keys.append(search_key(d.names[i], d.codes[i]))
    head = ["municipality", "code", "budget (EUR)", "spending (EUR)", "surplus", "spending band (EUR)",
            "p_explained", f"clawed back at kappa {d.kappa:g}"] + (["planted (truth)"] if d.synthetic else [])
    tbl = (table(head, rows, numeric_from=2, keys=keys) if rows else
             "<p>No municipality has a surplus that the model does not explain at this level.</p>")
    return figure(svg, caption) + f"\n<h3>Flagged municipalities ({len(rows)})</h3>\n{tbl}"


def section_funnel(d: RunData) -> str:
    b, bd = d.budgets, d.bands
    eff = b["redistribution_effect_pct"]
    lo_b, hi_b = bd["effect_pct_q2_5"], bd["effect_pct_q97_5"]
    flagged = np.asarray(d.flags["flagged"], dtype=bool)
    n = d.inhabitants
    fr = Frame(height=400)
    xs = fr.xscale(max(n.min() * 0.8, 1.0), n.max() * 1.25, log=True)
    ys = fr.yscale(*axis_range(np.concatenate([eff, lo_b, hi_b]), include=[-20.0, 20.0, *eff[flagged]]))
    body = []
    for v, cls in ((0, "zero"), (10, "ref10"), (-10, "ref10"), (15, "ref15"), (-15, "ref15")):
        body.append(f'<line x1="{fr.left}" x2="{fr.width - fr.right}" y1="{f1(ys(v))}" y2="{f1(ys(v))}" class="{cls}"/>')
    for k, (t, txt) in enumerate(((d.regime.historical_up_to, "historical up to"),
                                  (d.regime.objective_from, "fully objective from"))):
        x = f1(xs(t))
        body.append(f'<line x1="{x}" x2="{x}" y1="{fr.top}" y2="{fr.height - fr.bottom}" class="thr"/>')
        body.append(f'<text x="{float(x) + 4:.1f}" y="{fr.height - fr.bottom - 8 - 14 * k}" class="tick">'
                    f"{esc(txt)} {t:,.0f}</text>")
    for i in np.argsort(flagged, kind="stable"):             # flagged ones drawn last (on top)
        if not np.isfinite(eff[i]):
            continue
        x = f1(xs(n[i]))
        tip = (f"{mun_label(d, i)}: {n[i]:,.0f} inhabitants; redistribution effect {eff[i]:+.1f}% "
               f"(95% band {lo_b[i]:+.1f}% to {hi_b[i]:+.1f}%){'; FLAGGED' if flagged[i] else ''}")
        parts = [f"<title>{esc(tip)}</title>"]
        if np.isfinite(lo_b[i]) and np.isfinite(hi_b[i]):
            parts.append(f'<line x1="{x}" x2="{x}" y1="{f1(ys(lo_b[i]))}" y2="{f1(ys(hi_b[i]))}" class="eband"/>')
        parts.append(f'<circle cx="{x}" cy="{f1(ys(eff[i]))}" r="{3.6 if flagged[i] else 2.2}" '
                     f'class="{"flag" if flagged[i] else "dot"}"/>')
        body.append("<g>" + "".join(parts) + "</g>")
    svg = svg_chart(fr, xs, ys, body, "Redistribution effect against size", "inhabitants (log scale)",
                    "redistribution effect against spending t", yfmt=lambda v: f"{v:+.0f}%")
    caption = ("The funnel: each municipality's redistribution effect, (budget &minus; spending scaled to the same "
               "total) / that, against its number of inhabitants, with its 95% bootstrap band. Small municipalities "
               "scatter more (a few households make a large relative difference). Dashed: &plusmn;10%, dotted: "
               "&plusmn;15%; vertical lines: the regime's thresholds of the objective weight. Red: flagged.")
    return figure(svg, caption)


def kappa_curve(budget: np.ndarray, spending: np.ndarray, flagged: np.ndarray, kappas: np.ndarray,
                redistribute: str = "pro_rata") -> tuple[np.ndarray, np.ndarray]:
    """Municipalities capped and euros moved by :func:`engine.rules.cap.rob_cap` for every kappa."""
    capped = np.empty(len(kappas), dtype=np.int64)
    moved = np.empty(len(kappas))
    for j, k in enumerate(kappas):
        c = rob_cap(budget, spending, flagged, float(k), redistribute)
        capped[j], moved[j] = int((c.clawed_back > 0).sum()), c.total
    return capped, moved


def section_cap(d: RunData) -> str:
    f = d.flags
    budget, spend = f["budget"], f["actual_spending"]
    flagged = np.asarray(f["flagged"], dtype=bool)
    kmax = max(0.5, 2 * d.kappa) if math.isfinite(d.kappa) else 0.5
    kappas = np.round(np.linspace(0.0, kmax, 101), 6)
    n_f, eur_f = kappa_curve(budget, spend, flagged, kappas, d.redistribute)
    n_a, eur_a = kappa_curve(budget, spend, np.ones_like(flagged), kappas, d.redistribute)
    charts = []
    for what, yf, ya, ylabel, fmt in (("Municipalities capped", n_f, n_a, "municipalities capped", None),
                                      ("Euros moved", eur_f / 1e6, eur_a / 1e6, "EUR mln clawed back", None)):
        leg, top = legend([
            (f'<line x1="-8" x2="4" y1="0" y2="0" stroke="{RED}" stroke-width="2"/>', "flagged surpluses only (the Rob's cap)"),
            (f'<line x1="-8" x2="4" y1="0" y2="0" stroke="{GREY}" stroke-width="2" stroke-dasharray="4 3"/>',
             "every surplus, without the statistical test"),
        ], Frame.left, WIDTH - Frame.right)
        fr = Frame(height=int(260 + top), top=int(top))
        xs = fr.xscale(0, kmax)
        ys = fr.yscale(0, max(float(np.max(ya)), 1e-9) * 1.08)
        body = [polyline(xs(kappas), ys(ya), "all"), polyline(xs(kappas), ys(yf), "flagged")]
        if math.isfinite(d.kappa):
            x = f1(xs(d.kappa))
            j = int(np.argmin(np.abs(kappas - d.kappa)))
            body.append(f'<line x1="{x}" x2="{x}" y1="{fr.top}" y2="{fr.height - fr.bottom}" class="thr"/>')
            body.append(f'<circle cx="{x}" cy="{f1(ys(yf[j]))}" r="4" class="flag"><title>kappa {d.kappa:g}: '
                        f"{yf[j]:,.2f}</title></circle>")
        body += leg
        charts.append(svg_chart(fr, xs, ys, body, f"{what} against kappa", "kappa: surplus kept, as a share of "
                                "the budget", ylabel, xfmt=lambda v: f"{v:g}"))
    rows = []
    for k in sorted({0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3} | ({d.kappa} if math.isfinite(d.kappa) else set())):
        c = rob_cap(budget, spend, flagged, k, d.redistribute)
        every = rob_cap(budget, spend, np.ones_like(flagged), k, d.redistribute)
        rows.append([f"{k:g}" + (" (scenario)" if k == d.kappa else ""), num(int((c.clawed_back > 0).sum())),
                     mln(c.total, 2), num(int((c.received > 0).sum())), num(int((every.clawed_back > 0).sum())),
                     mln(every.total, 2)])
    caption = ("The Rob cap claws back the part of a flagged municipality's surplus above kappa &times; its budget "
               f"and redistributes it budget-neutrally ({esc(d.redistribute)}). Red: the cap on flagged "
               "municipalities; grey: the same rule applied to every surplus, i.e. without asking whether the model "
               "explains it.")
    tbl = table(["kappa", "municipalities capped", "EUR mln redistributed", "receiving municipalities",
                    "capped without the test", "EUR mln without the test"], rows)
    return figure("\n".join(charts), caption) + "\n" + tbl


def section_vangnet(d: RunData) -> str:
    b = d.budgets
    pay, budget, spend = b["vangnet_payout"], b["budget"], b["actual_spending"]
    v = d.regime.vangnet
    rule = (f"Vangnet rule {esc(v.year)}: a deficit (spending &minus; budget) up to {100 * v.own_risk:g}% of the "
            f"budget is the municipality's own risk; {100 * v.paid_in_band:g}% of the part between "
            f"{100 * v.own_risk:g}% and {100 * v.full_from:g}% is paid, all of it above {100 * v.full_from:g}%.")
    idx = np.flatnonzero(pay > 0)
    idx = idx[np.argsort(-pay[idx], kind="stable")]
    if not idx.size:
        return f"<p>{rule}</p><p>No municipality receives a vangnet payout.</p>"
    rows = [[esc(d.names[i]), esc(d.codes[i]), eur(budget[i]), eur(spend[i]), eur(spend[i] - budget[i]),
             pct(100 * (spend[i] - budget[i]) / budget[i] if budget[i] > 0 else math.nan), eur(pay[i])] for i in idx]
    top = idx[:25]
    fr = Frame(height=30 + 18 * len(top) + 40, left=210)
    xs = fr.xscale(0, float(pay[top].max()) * 1.05)
    ys = Scale(-0.5, len(top) - 0.5, fr.top, fr.height - fr.bottom)
    body = []
    for k, i in enumerate(top):
        y = float(ys(k))
        body.append(f'<g><title>{esc(mun_label(d, i))}: payout EUR {pay[i]:,.0f}</title>'
                    f'<rect x="{fr.left}" y="{y - 6:.1f}" width="{float(xs(pay[i])) - fr.left:.1f}" height="12" '
                    f'class="bar"/><text x="{fr.left - 6}" y="{y:.1f}" class="tick" text-anchor="end" '
                    f'dominant-baseline="middle">{esc(d.names[i])}</text></g>')
    svg = svg_chart(fr, xs, ys, body, "Largest vangnet payouts", "payout (EUR)", "", yfmt=lambda v: "")
    total = (f"<p>{rule} In total EUR {eur(pay.sum())} to {len(idx)} municipalities "
             f"({pct(100 * pay.sum() / budget.sum(), 2)} of the budgets).</p>")
    return (total + figure(svg, f"The {len(top)} largest payouts.") +
            table(["municipality", "code", "budget (EUR)", "spending (EUR)", "deficit (EUR)", "deficit / budget",
                    "vangnet payout (EUR)"], rows, numeric_from=2,
                  keys=[search_key(d.names[i], d.codes[i]) for i in idx]))
