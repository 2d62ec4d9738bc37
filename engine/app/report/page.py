"""``report.html``: one self-contained file that a policy analyst can open and send on.

:func:`write_report` reads the files of a run folder (``buig run``) and writes
``report.html`` beside them: no network is needed to view it (plots are inline SVG drawn
here, the search box is a few lines of inline script, no fonts or scripts are fetched).
Sections: headline figures (macro budget, municipalities by regime class, seed 003's
redistribution table), budget bands against actual spending, the redistribution effect
against size (funnel), the capping trade-off over a grid of kappa, the vangnet payouts,
the rekentool breakdown of every municipality grouped by province, and the scenario.
On a synthetic population (``truth.json`` present) a banner says so on every section.
Every text that comes from data is HTML-escaped.
"""

from __future__ import annotations

import csv
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.rules.cap import rob_cap
from engine.io.config import read_toml
from engine.io.outputs import write_text
from engine.rules.regime import Regime, load_regime

SYNTHETIC_TEXT = ("SYNTHETIC POPULATION: these households, municipalities' spending and budgets were generated "
                  "by buig (calibrated to CBS aggregates of 2017). They are not real and must not be read as "
                  "figures of any real municipality.")
RED, GREY, DARK, BLUE = "#c0392b", "#9aa5b1", "#2c3e50", "#aed6f1"


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


# --------------------------------------------------------------------------- numbers

def _num(v, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    return f"{v:,.{digits}f}"


def _eur(v) -> str:
    return _num(v, 0)


def _mln(v, digits: int = 1) -> str:
    return _num(v / 1e6, digits)


def _pct(v, digits: int = 1) -> str:
    return _num(v, digits) + ("" if v is None or not math.isfinite(v) else "%")


# --------------------------------------------------------------------------- SVG

class Scale:
    """Data -> pixels on one axis (linear or log10), with tick values."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False):
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.lo, self.hi, self.a, self.b, self.log = lo, hi, a, b, log

    def __call__(self, v):
        v = np.asarray(v, dtype=np.float64)
        if self.log:
            v = np.log10(np.maximum(v, 1e-300))
        v = np.clip(v, self.lo, self.hi)
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self, n: int = 6) -> list[float]:
        if self.log:
            return [10.0 ** k for k in range(math.ceil(self.lo - 1e-9), math.floor(self.hi + 1e-9) + 1)]
        span = (self.hi - self.lo) / max(n, 1)
        mag = 10 ** math.floor(math.log10(span))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= span)
        first = math.ceil(self.lo / step - 1e-9) * step
        return [first + i * step for i in range(int((self.hi - first) / step + 1e-9) + 1)]


def _tick_label(v: float, log: bool) -> str:
    if log:
        return f"{v:,.0f}" if v < 1e6 else f"{v / 1e6:g} mln"
    return f"{v:,.10g}" if abs(v) < 1e4 else f"{v:,.0f}"


@dataclass(frozen=True)
class Frame:
    width: int = 960
    height: int = 360
    left: int = 70
    right: int = 20
    top: int = 16
    bottom: int = 46

    def xscale(self, lo, hi, log=False) -> Scale:
        return Scale(lo, hi, self.left, self.width - self.right, log)

    def yscale(self, lo, hi, log=False) -> Scale:
        return Scale(lo, hi, self.height - self.bottom, self.top, log)


def _f(v: float) -> str:
    return f"{float(v):.1f}"


def svg_chart(frame: Frame, xs: Scale | None, ys: Scale, body: list[str], title: str, xlabel: str, ylabel: str,
              yfmt=None, xfmt=None) -> str:
    """An SVG chart: grid, ticks and labels around ``body`` (SVG elements in pixel space)."""
    w, h = frame.width, frame.height
    out = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{_esc(title)}">',
           f"<title>{_esc(title)}</title>"]
    for t in ys.ticks():
        y = _f(ys(t))
        out.append(f'<line x1="{frame.left}" x2="{w - frame.right}" y1="{y}" y2="{y}" class="grid"/>')
        out.append(f'<text x="{frame.left - 6}" y="{y}" class="tick" text-anchor="end" dominant-baseline="middle">'
                   f"{_esc((yfmt or (lambda v: _tick_label(v, ys.log)))(t))}</text>")
    if xs is not None:
        for t in xs.ticks():
            x = _f(xs(t))
            out.append(f'<line x1="{x}" x2="{x}" y1="{frame.top}" y2="{h - frame.bottom}" class="grid"/>')
            out.append(f'<text x="{x}" y="{h - frame.bottom + 16}" class="tick" text-anchor="middle">'
                       f"{_esc((xfmt or (lambda v: _tick_label(v, xs.log)))(t))}</text>")
    out.append(f'<rect x="{frame.left}" y="{frame.top}" width="{w - frame.left - frame.right}" '
               f'height="{h - frame.top - frame.bottom}" class="frame"/>')
    out += body
    out.append(f'<text x="{(frame.left + w - frame.right) / 2:.0f}" y="{h - 8}" class="label" '
               f'text-anchor="middle">{_esc(xlabel)}</text>')
    out.append(f'<text transform="translate(16 {(frame.top + h - frame.bottom) / 2:.0f}) rotate(-90)" '
               f'class="label" text-anchor="middle">{_esc(ylabel)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _legend(x: float, y: float, items: list[tuple[str, str]], width: float = 320) -> list[str]:
    """Legend entries (svg snippet of a marker at 0,0; text) from (x, y) downwards, on a white box."""
    out = [f'<rect x="{x - 14:.0f}" y="{y - 11:.0f}" width="{width:.0f}" height="{16 * len(items) + 6}" '
           'class="legend"/>']
    for i, (marker, text) in enumerate(items):
        yy = y + 16 * i
        out.append(f'<g transform="translate({x:.0f} {yy:.0f})">{marker}'
                   f'<text x="12" y="0" class="tick" dominant-baseline="middle">{_esc(text)}</text></g>')
    return out


def _polyline(xs, ys, cls: str) -> str:
    pts = " ".join(f"{_f(a)},{_f(b)}" for a, b in zip(xs, ys))
    return f'<polyline points="{pts}" class="{cls}"/>'


def _range(values: np.ndarray, include=(0.0,), pad: float = 0.05, q: float = 0.5) -> tuple[float, float]:
    """Axis range: the ``q``..``100 - q`` percentiles of ``values`` and everything in ``include``
    (e.g. the flagged municipalities, never drawn at the edge)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    inc = np.asarray(include, dtype=np.float64)
    inc = inc[np.isfinite(inc)]
    lo, hi = (np.percentile(v, [q, 100 - q]) if v.size else (0.0, 1.0))
    lo, hi = min(lo, *inc), max(hi, *inc)
    d = (hi - lo) * pad or 1.0
    return float(lo - d), float(hi + d)


# --------------------------------------------------------------------------- data

@dataclass(frozen=True)
class RunData:
    """What the report shows, aligned on the municipalities of ``budgets.parquet``."""

    out: Path
    scenario_text: str
    scenario: dict
    regime: Regime
    synthetic: bool
    planted: set
    households: int | None
    codes: list
    names: list
    province: list
    inhabitants: np.ndarray
    budgets: dict                # column -> array
    tb: float
    bands: dict
    flags: dict
    flag_level: float
    flag_rule: str
    replicates: int
    capped: dict
    kappa: float
    redistribute: str
    rekentool: pa.Table
    redistribution: list[dict]


def _columns(table: pa.Table, codes: list, name: str) -> dict:
    got = table.column("code").to_pylist()
    if got != codes:
        pos = {c: i for i, c in enumerate(got)}
        missing = [c for c in codes if c not in pos]
        if missing:
            raise ValueError(f"{name}: municipality {missing[0]} of budgets.parquet is missing")
        table = table.take(pa.array([pos[c] for c in codes]))
    return {c: (table.column(c).to_pylist() if pa.types.is_string(table.column(c).type)
                else table.column(c).to_numpy(zero_copy_only=False)) for c in table.column_names}


def _population_dir(out: Path, scenario: dict) -> Path:
    source = scenario.get("population", {}).get("source", "synthetic")
    return out / "population" if source == "synthetic" else Path(source)


def load_run(out: str | Path) -> RunData:
    """Read the files of a run folder that the report needs."""
    out = Path(out)
    for name in ("scenario.toml", "regime.toml", "budgets.parquet", "bands.parquet", "flags.parquet",
                 "capped_budgets.parquet", "rekentool.parquet", "redistribution.csv"):
        if not (out / name).exists():
            raise FileNotFoundError(f"{out / name} is missing: the report needs a folder written by `buig run`")
    text = (out / "scenario.toml").read_text(encoding="utf-8")
    scenario = read_toml(out / "scenario.toml", "scenario")
    pop_dir = _population_dir(out, scenario)
    mun_file = pop_dir / "municipalities.parquet"
    if not mun_file.exists():
        raise FileNotFoundError(f"{mun_file} is missing: the report needs the run's population folder")
    b = pq.read_table(out / "budgets.parquet")
    codes = b.column("code").to_pylist()
    mun = _columns(pq.read_table(mun_file, columns=["code", "name", "province", "inhabitants"]), codes,
                   str(mun_file))
    truth_file = pop_dir / "truth.json"
    planted, households = set(), None
    if truth_file.exists():
        truth = json.loads(truth_file.read_text(encoding="utf-8"))
        planted, households = set(truth.get("planted", [])), truth.get("households")
    if households is None and (pop_dir / "households.parquet").exists():
        households = pq.ParquetFile(pop_dir / "households.parquet").metadata.num_rows
    flags_t = pq.read_table(out / "flags.parquet")
    capped_t = pq.read_table(out / "capped_budgets.parquet")
    fmeta = {k.decode(): v.decode() for k, v in (flags_t.schema.metadata or {}).items()}
    cmeta = {k.decode(): v.decode() for k, v in (capped_t.schema.metadata or {}).items()}
    bmeta = {k.decode(): v.decode() for k, v in (b.schema.metadata or {}).items()}
    with (out / "redistribution.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return RunData(out=out, scenario_text=text, scenario=scenario, regime=load_regime(out / "regime.toml"),
                   synthetic=truth_file.exists(), planted=planted, households=households, codes=codes,
                   names=mun["name"], province=mun["province"], inhabitants=mun["inhabitants"].astype(np.float64),
                   budgets=_columns(b, codes, "budgets.parquet"), tb=float(bmeta.get("tb", "nan")),
                   bands=_columns(pq.read_table(out / "bands.parquet"), codes, "bands.parquet"),
                   flags=_columns(flags_t, codes, "flags.parquet"), flag_level=float(fmeta.get("level", "nan")),
                   flag_rule=fmeta.get("flag_rule", f"p_explained < {fmeta.get('level', '?')} (per test)"),
                   replicates=int(fmeta.get("replicates", "0")),
                   capped=_columns(capped_t, codes, "capped_budgets.parquet"),
                   kappa=float(cmeta.get("kappa", "nan")), redistribute=cmeta.get("redistribute", ""),
                   rekentool=pq.read_table(out / "rekentool.parquet"), redistribution=rows)


# --------------------------------------------------------------------------- sections

def _table(head: list[str], rows: list[list[str]], cls: str = "", numeric_from: int = 1) -> str:
    """An HTML table; ``head`` is escaped here, cells must already be HTML."""
    out = [f'<table class="{cls}">' if cls else "<table>", "<thead><tr>"]
    out += [f'<th{" class=num" if i >= numeric_from else ""}>{_esc(h)}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{c}</td>'
                                    for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _label(d: RunData, i: int) -> str:
    return f"{d.names[i]} ({d.codes[i]})"


def _regime_classes(d: RunData) -> np.ndarray:
    n, r = d.inhabitants, d.regime
    return np.where(n <= r.historical_up_to, 0, np.where(n <= r.objective_from, 1, 2))


def section_headline(d: RunData) -> str:
    b, f, c = d.budgets, d.flags, d.capped
    s = d.scenario
    bs = s.get("bootstrap", {})
    flagged = np.asarray(f["flagged"], dtype=bool)
    figures = [
        ("Macro budget to distribute (TB)", f"EUR {_eur(d.tb)}"),
        ("Sum of the budgets", f"EUR {_eur(b['budget'].sum())}"),
        ("Actual spending in t (sum)", f"EUR {_eur(b['actual_spending'].sum())}"),
        ("Municipalities", _num(len(d.codes))),
        ("Households in the population", _num(d.households) if d.households is not None else "&ndash;"),
        ("Vangnet payouts", f"EUR {_eur(b['vangnet_payout'].sum())} to {int((b['vangnet_payout'] > 0).sum())} "
                            "municipalities"),
        ("Unexplained surpluses (flagged)", f"{int(flagged.sum())} municipalities ({_esc(d.flag_rule)}, "
                                            f"{d.replicates} {_esc(bs.get('method', ''))} replicates)"),
        (f"Rob cap at kappa = {d.kappa:g}", f"{int((c['clawed_back'] > 0).sum())} municipalities capped; EUR "
                                            f"{_eur(c['clawed_back'].sum())} redistributed "
                                            f"({_esc(d.redistribute)})"),
    ]
    key = "\n".join(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in figures)
    cls = _regime_classes(d)
    lo, hi = d.regime.historical_up_to, d.regime.objective_from
    names = [f"&le; {lo / 1000:g}k inhabitants (historical)", f"{lo / 1000:g}k&ndash;{hi / 1000:g}k (pro rata)",
             f"&gt; {hi / 1000:g}k (objective weight {d.regime.objective_share:g})"]
    rows = []
    for k in range(3):
        m = cls == k
        rows.append([names[k], _num(int(m.sum())), _num(d.inhabitants[m].sum()),
                     _mln(b["budget"][m].sum()), _pct(100 * b["budget"][m].sum() / b["budget"].sum()),
                     _mln(b["actual_spending"][m].sum()), _num(int(flagged[m].sum())),
                     _mln(b["vangnet_payout"][m].sum(), 2)])
    classes = _table(["regime class", "municipalities", "inhabitants", "budget (EUR mln)", "share of TB",
                      "spending t (EUR mln)", "flagged", "vangnet (EUR mln)"], rows)
    return (f'<table class="key">{key}</table>\n<h3>Municipalities by regime class (regime {_esc(d.regime.name)})</h3>\n'
            f"{classes}\n<h3>Redistribution effects (seed 003's table)</h3>\n{_seed_table(d)}")


def _f_or_nan(x: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _seed_table(d: RunData) -> str:
    rows, seen = [], set()
    for r in d.redistribution:
        if r["weighting"] != "unweighted":
            continue
        if r["table"] == "seed" and r["size_class"].startswith("seed universe"):
            what = f"{r['label']} (against spending t, {r['size_class']})"
        elif r["table"] == "regime" and r["reference"] == "spending_t" and r["size_class"] == "all":
            what = f"{r['label']} (against spending t, all municipalities)"
        else:
            continue
        if what in seen:
            continue
        seen.add(what)
        rows.append([_esc(what), _num(_f_or_nan(r["municipalities"])), _pct(_f_or_nan(r["mean_abs_effect_pct"])),
                     _pct(_f_or_nan(r["within_10_pct"])), _pct(_f_or_nan(r["within_15_pct"]))])
    main = _table(["distribution", "municipalities", "mean |effect|", "within ±10%", "within ±15%"], rows)
    detail = [[_esc(r["label"]), _esc(r["reference"]), _esc(r["size_class"]), _esc(r["weighting"]),
               _num(_f_or_nan(r["municipalities"])), _pct(_f_or_nan(r["mean_abs_effect_pct"])),
               _pct(_f_or_nan(r["within_10_pct"])), _pct(_f_or_nan(r["within_15_pct"]))]
              for r in d.redistribution if r["table"] == "regime"]
    return (f"{main}\n<p class=note>Effect of a distribution: (budget &minus; reference scaled to the same total) / "
            "reference. Seed 003 compares the municipalities in its objective model (&gt;40k) with their own "
            "spending.</p>\n<details><summary>Regime effects by size class, weighting and reference</summary>\n"
            + _table(["distribution", "reference", "size class", "weighting", "municipalities", "mean |effect|",
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
    fr = Frame(height=380)
    n = len(order)
    xs = fr.xscale(-0.5, n - 0.5)
    ys = fr.yscale(*_range(np.concatenate([s_rel, sp_lo, sp_hi]), include=[-10.0, 10.0, *s_rel[flagged]]))
    bw = max(1.0, 0.7 * (fr.width - fr.left - fr.right) / max(n, 1))
    body = []
    for rank, i in enumerate(order):
        x = _f(xs(rank))
        tip = (f"{_label(d, i)}: budget EUR {budget[i]:,.0f} (95% band {bd['budget_q2_5'][i]:,.0f} to "
               f"{bd['budget_q97_5'][i]:,.0f}); actual spending EUR {spend[i]:,.0f}; spending band "
               f"{f['spending_band_q2_5'][i]:,.0f} to {f['spending_band_q97_5'][i]:,.0f}; p_explained "
               f"{f['p_explained'][i]:.3f}{'; FLAGGED' if flagged[i] else ''}")
        parts = [f"<title>{_esc(tip)}</title>"]
        if np.isfinite(sp_lo[i]):
            parts.append(f'<line x1="{x}" x2="{x}" y1="{_f(ys(sp_lo[i]))}" y2="{_f(ys(sp_hi[i]))}" class="sband" '
                         f'stroke-width="{bw:.1f}"/>')
        if np.isfinite(b_lo[i]):
            parts.append(f'<line x1="{x}" x2="{x}" y1="{_f(ys(b_lo[i]))}" y2="{_f(ys(b_hi[i]))}" class="bband"/>')
        if np.isfinite(s_rel[i]):
            parts.append(f'<circle cx="{x}" cy="{_f(ys(s_rel[i]))}" r="{3.6 if flagged[i] else 1.8}" '
                         f'class="{"flag" if flagged[i] else "dot"}"/>')
        body.append("<g>" + "".join(parts) + "</g>")
    body.append(f'<line x1="{fr.left}" x2="{fr.width - fr.right}" y1="{_f(ys(0))}" y2="{_f(ys(0))}" class="zero"/>')
    body += _legend(fr.left + 12, fr.top + 14, [
        (f'<line x1="0" x2="0" y1="-6" y2="6" stroke="{BLUE}" stroke-width="6"/>', "95% band of spending predicted by the model"),
        (f'<line x1="0" x2="0" y1="-6" y2="6" stroke="{DARK}" stroke-width="1.5"/>', "95% band of the budget"),
        (f'<circle r="2" fill="{DARK}"/>', "actual spending"),
        (f'<circle r="3.6" fill="{RED}"/>', "flagged: surplus the model does not explain"),
    ])
    svg = svg_chart(fr, None, ys, body, "Budget bands against actual spending", f"{n} municipalities, sorted by "
                    "actual spending relative to the budget", "% of the point budget",
                    yfmt=lambda v: f"{v:+.0f}%")
    caption = (f"Every municipality's budget band (dark, 95% of {d.replicates} replicates) and the band of spending "
               "the model predicts for it (light; coefficient, outcome and between-municipality randomness), both "
               "relative to its point budget, against its actual spending (dot). A municipality is flagged (red) "
               f"when it has a surplus and {_esc(d.flag_rule)}: p_explained is the probability under the light "
               "band of spending as low as its actual spending, q_value its Benjamini-Hochberg adjustment over all "
               "municipalities (false discovery rate). Values beyond the axis are drawn at its edge; hover for figures.")
    rows = []
    for i in np.flatnonzero(flagged)[np.argsort(-f["surplus"][flagged] / budget[flagged], kind="stable")]:
        row = [_esc(d.names[i]), _esc(d.codes[i]), _eur(budget[i]), _eur(spend[i]),
               _pct(100 * f["surplus"][i] / budget[i]), f"{_eur(f['spending_band_q2_5'][i])} &ndash; "
               f"{_eur(f['spending_band_q97_5'][i])}", _num(f["p_explained"][i], 3),
               _eur(d.capped["clawed_back"][i])]
        if d.synthetic:
            row.append("yes" if d.codes[i] in d.planted else "no")
        rows.append(row)
    head = ["municipality", "code", "budget (EUR)", "spending (EUR)", "surplus", "spending band (EUR)",
            "p_explained", f"clawed back at kappa {d.kappa:g}"] + (["planted (truth)"] if d.synthetic else [])
    table = (_table(head, rows, numeric_from=2) if rows else
             "<p>No municipality has a surplus that the model does not explain at this level.</p>")
    return _figure(svg, caption) + f"\n<h3>Flagged municipalities ({len(rows)})</h3>\n{table}"


def section_funnel(d: RunData) -> str:
    b, bd = d.budgets, d.bands
    eff = b["redistribution_effect_pct"]
    lo_b, hi_b = bd["effect_pct_q2_5"], bd["effect_pct_q97_5"]
    flagged = np.asarray(d.flags["flagged"], dtype=bool)
    n = d.inhabitants
    fr = Frame(height=400)
    xs = fr.xscale(max(n.min() * 0.8, 1.0), n.max() * 1.25, log=True)
    ys = fr.yscale(*_range(np.concatenate([eff, lo_b, hi_b]), include=[-20.0, 20.0, *eff[flagged]]))
    body = []
    for v, cls in ((0, "zero"), (10, "ref10"), (-10, "ref10"), (15, "ref15"), (-15, "ref15")):
        body.append(f'<line x1="{fr.left}" x2="{fr.width - fr.right}" y1="{_f(ys(v))}" y2="{_f(ys(v))}" class="{cls}"/>')
    for k, (t, txt) in enumerate(((d.regime.historical_up_to, "historical up to"),
                                  (d.regime.objective_from, "fully objective from"))):
        x = _f(xs(t))
        body.append(f'<line x1="{x}" x2="{x}" y1="{fr.top}" y2="{fr.height - fr.bottom}" class="thr"/>')
        body.append(f'<text x="{float(x) + 4:.1f}" y="{fr.height - fr.bottom - 8 - 14 * k}" class="tick">'
                    f"{_esc(txt)} {t:,.0f}</text>")
    for i in np.argsort(flagged, kind="stable"):             # flagged ones drawn last (on top)
        if not np.isfinite(eff[i]):
            continue
        x = _f(xs(n[i]))
        tip = (f"{_label(d, i)}: {n[i]:,.0f} inhabitants; redistribution effect {eff[i]:+.1f}% "
               f"(95% band {lo_b[i]:+.1f}% to {hi_b[i]:+.1f}%){'; FLAGGED' if flagged[i] else ''}")
        parts = [f"<title>{_esc(tip)}</title>"]
        if np.isfinite(lo_b[i]) and np.isfinite(hi_b[i]):
            parts.append(f'<line x1="{x}" x2="{x}" y1="{_f(ys(lo_b[i]))}" y2="{_f(ys(hi_b[i]))}" class="eband"/>')
        parts.append(f'<circle cx="{x}" cy="{_f(ys(eff[i]))}" r="{3.6 if flagged[i] else 2.2}" '
                     f'class="{"flag" if flagged[i] else "dot"}"/>')
        body.append("<g>" + "".join(parts) + "</g>")
    svg = svg_chart(fr, xs, ys, body, "Redistribution effect against size", "inhabitants (log scale)",
                    "redistribution effect against spending t", yfmt=lambda v: f"{v:+.0f}%")
    caption = ("The funnel: each municipality's redistribution effect, (budget &minus; spending scaled to the same "
               "total) / that, against its number of inhabitants, with its 95% bootstrap band. Small municipalities "
               "scatter more (a few households make a large relative difference). Dashed: &plusmn;10%, dotted: "
               "&plusmn;15%; vertical lines: the regime's thresholds of the objective weight. Red: flagged.")
    return _figure(svg, caption)


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
        fr = Frame(height=260)
        xs = fr.xscale(0, kmax)
        ys = fr.yscale(0, max(float(np.max(ya)), 1e-9) * 1.08)
        body = [_polyline(xs(kappas), ys(ya), "all"), _polyline(xs(kappas), ys(yf), "flagged")]
        if math.isfinite(d.kappa):
            x = _f(xs(d.kappa))
            j = int(np.argmin(np.abs(kappas - d.kappa)))
            body.append(f'<line x1="{x}" x2="{x}" y1="{fr.top}" y2="{fr.height - fr.bottom}" class="thr"/>')
            body.append(f'<circle cx="{x}" cy="{_f(ys(yf[j]))}" r="4" class="flag"><title>kappa {d.kappa:g}: '
                        f"{yf[j]:,.2f}</title></circle>")
        body += _legend(fr.width - fr.right - 330, fr.top + 14, [
            (f'<line x1="-8" x2="4" y1="0" y2="0" stroke="{RED}" stroke-width="2"/>', "flagged surpluses only (the Rob's cap)"),
            (f'<line x1="-8" x2="4" y1="0" y2="0" stroke="{GREY}" stroke-width="2" stroke-dasharray="4 3"/>',
             "every surplus, without the statistical test"),
        ])
        charts.append(svg_chart(fr, xs, ys, body, f"{what} against kappa", "kappa: surplus kept, as a share of "
                                "the budget", ylabel, xfmt=lambda v: f"{v:g}"))
    rows = []
    for k in sorted({0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3} | ({d.kappa} if math.isfinite(d.kappa) else set())):
        c = rob_cap(budget, spend, flagged, k, d.redistribute)
        every = rob_cap(budget, spend, np.ones_like(flagged), k, d.redistribute)
        rows.append([f"{k:g}" + (" (scenario)" if k == d.kappa else ""), _num(int((c.clawed_back > 0).sum())),
                     _mln(c.total, 2), _num(int((c.received > 0).sum())), _num(int((every.clawed_back > 0).sum())),
                     _mln(every.total, 2)])
    caption = ("The Rob cap claws back the part of a flagged municipality's surplus above kappa &times; its budget "
               f"and redistributes it budget-neutrally ({_esc(d.redistribute)}). Red: the cap on flagged "
               "municipalities; grey: the same rule applied to every surplus, i.e. without asking whether the model "
               "explains it.")
    table = _table(["kappa", "municipalities capped", "EUR mln redistributed", "receiving municipalities",
                    "capped without the test", "EUR mln without the test"], rows)
    return _figure("\n".join(charts), caption) + "\n" + table


def section_vangnet(d: RunData) -> str:
    b = d.budgets
    pay, budget, spend = b["vangnet_payout"], b["budget"], b["actual_spending"]
    v = d.regime.vangnet
    rule = (f"Vangnet rule {_esc(v.year)}: a deficit (spending &minus; budget) up to {100 * v.own_risk:g}% of the "
            f"budget is the municipality's own risk; {100 * v.paid_in_band:g}% of the part between "
            f"{100 * v.own_risk:g}% and {100 * v.full_from:g}% is paid, all of it above {100 * v.full_from:g}%.")
    idx = np.flatnonzero(pay > 0)
    idx = idx[np.argsort(-pay[idx], kind="stable")]
    if not idx.size:
        return f"<p>{rule}</p><p>No municipality receives a vangnet payout.</p>"
    rows = [[_esc(d.names[i]), _esc(d.codes[i]), _eur(budget[i]), _eur(spend[i]), _eur(spend[i] - budget[i]),
             _pct(100 * (spend[i] - budget[i]) / budget[i] if budget[i] > 0 else math.nan), _eur(pay[i])] for i in idx]
    top = idx[:25]
    fr = Frame(height=30 + 18 * len(top) + 40, left=210)
    xs = fr.xscale(0, float(pay[top].max()) * 1.05)
    ys = Scale(-0.5, len(top) - 0.5, fr.top, fr.height - fr.bottom)
    body = []
    for k, i in enumerate(top):
        y = float(ys(k))
        body.append(f'<g><title>{_esc(_label(d, i))}: payout EUR {pay[i]:,.0f}</title>'
                    f'<rect x="{fr.left}" y="{y - 6:.1f}" width="{float(xs(pay[i])) - fr.left:.1f}" height="12" '
                    f'class="bar"/><text x="{fr.left - 6}" y="{y:.1f}" class="tick" text-anchor="end" '
                    f'dominant-baseline="middle">{_esc(d.names[i])}</text></g>')
    svg = svg_chart(fr, xs, ys, body, "Largest vangnet payouts", "payout (EUR)", "", yfmt=lambda v: "")
    total = (f"<p>{rule} In total EUR {_eur(pay.sum())} to {len(idx)} municipalities "
             f"({_pct(100 * pay.sum() / budget.sum(), 2)} of the budgets).</p>")
    return (total + _figure(svg, f"The {len(top)} largest payouts.") +
            _table(["municipality", "code", "budget (EUR)", "spending (EUR)", "deficit (EUR)", "deficit / budget",
                    "vangnet payout (EUR)"], rows, numeric_from=2))


def section_rekentool(d: RunData) -> str:
    t = d.rekentool
    codes = t.column("code").to_pylist()
    types = t.column("household_type").to_pylist()
    col = {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names if c not in ("code", "household_type")}
    by_code: dict[str, list[int]] = {}
    for r, c in enumerate(codes):
        by_code.setdefault(c, []).append(r)
    budget = d.budgets["budget"]
    provinces: dict[str, list[int]] = {}
    for i, p in enumerate(d.province):
        provinces.setdefault(p, []).append(i)
    out = ['<p><label>Search a municipality: <input id="search" type="search" placeholder="name or code" '
           'autocomplete="off"></label> <span id="hits"></span></p>',
           "<p class=note>Per household type: households, predicted bijstand-or-LKS households (sum of p), actual "
           "ones, the mean expected benefit as a fraction of the gross norm and the mean gross norm of the "
           "predicted households, the expected cost (sum of p &times; f &times; N), its share of the "
           "municipality's objective cost, and that share of the municipality's budget.</p>"]
    head = ["household type", "households", "predicted", "actual", "mean fraction", "mean norm (EUR)",
            "expected cost (EUR)", "share", "budget (EUR)"]
    for prov in sorted(provinces):
        members = sorted(provinces[prov], key=lambda i: d.names[i])
        out.append(f'<details class="prov"><summary>{_esc(prov)} ({len(members)} municipalities)</summary>')
        for i in members:
            rows_i = by_code.get(d.codes[i], [])
            rows = [[_esc(types[r]), _num(col["households"][r]), _num(col["predicted_households"][r], 1),
                     _num(col["actual_households"][r]), _num(col["mean_fraction"][r], 3), _eur(col["mean_norm"][r]),
                     _eur(col["expected_cost"][r]), _pct(100 * col["share_of_budget"][r]),
                     _eur(col["share_of_budget"][r] * budget[i])] for r in rows_i]
            tot = lambda c: float(sum(col[c][r] for r in rows_i))  # noqa: E731
            rows.append(["<b>total</b>", _num(tot("households")), _num(tot("predicted_households"), 1),
                         _num(tot("actual_households")), "", "", _eur(tot("expected_cost")), "", _eur(budget[i])])
            key = f"{d.names[i]} {d.codes[i]}".lower()
            out.append(f'<details class="mun" data-name="{_esc(key)}"><summary>{_esc(d.names[i])} '
                       f"({_esc(d.codes[i])}): budget EUR {_eur(budget[i])}; predicted "
                       f"{_num(tot('predicted_households'), 0)} vs actual {_num(tot('actual_households'))} "
                       f"households</summary>\n{_table(head, rows)}</details>")
        out.append("</details>")
    return "\n".join(out)


SEARCH_SCRIPT = """
(function () {
  var box = document.getElementById('search'), hits = document.getElementById('hits');
  if (!box) { return; }
  box.addEventListener('input', function () {
    var q = box.value.trim().toLowerCase(), n = 0;
    document.querySelectorAll('details.prov').forEach(function (p) {
      var any = false;
      p.querySelectorAll('details.mun').forEach(function (m) {
        var hit = q === '' || m.getAttribute('data-name').indexOf(q) >= 0;
        m.style.display = hit ? '' : 'none';
        if (hit) { any = true; n += 1; }
        m.open = hit && q.length >= 3;
      });
      p.style.display = any ? '' : 'none';
      p.open = any && q !== '';
    });
    hits.textContent = q === '' ? '' : n + ' found';
  });
})();
"""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1080px;
       padding: 0 16px 40px; color: #1c2833; line-height: 1.45; }
h1 { font-size: 1.6em; margin: 0.6em 0 0.2em; } h2 { margin-top: 1.6em; border-bottom: 2px solid #d5d8dc; }
.banner { position: sticky; top: 0; z-index: 10; background: #f9e79f; border: 2px solid #b7950b; padding: 8px 12px;
          font-weight: 600; margin: 0 -16px; }
.syn { display: inline-block; background: #f9e79f; border: 1px solid #b7950b; font-size: 0.75em; padding: 1px 6px;
       margin-left: 8px; vertical-align: middle; font-weight: 600; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.9em; }
th, td { border-bottom: 1px solid #e5e8e8; padding: 3px 8px; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.key th { font-weight: normal; color: #566573; }
.note, figcaption { color: #566573; font-size: 0.88em; }
figure { margin: 12px 0 20px; }
details { margin: 2px 0; } details.prov > summary { font-weight: 600; cursor: pointer; }
details.mun { margin-left: 18px; } details.mun > summary { cursor: pointer; }
pre { background: #f4f6f7; padding: 10px; overflow-x: auto; font-size: 0.85em; }
nav a { margin-right: 12px; }
svg.chart { display: block; max-width: 100%; height: auto; font-size: 11px; }
svg .grid { stroke: #eaeded; stroke-width: 1; } svg .frame { fill: none; stroke: #aab7b8; }
svg .tick { fill: #566573; font-size: 11px; } svg .label { fill: #2c3e50; font-size: 12px; }
svg .zero { stroke: #566573; stroke-width: 1; } svg .ref10 { stroke: #aab7b8; stroke-dasharray: 5 4; }
svg .ref15 { stroke: #aab7b8; stroke-dasharray: 1 3; } svg .thr { stroke: #7f8c8d; stroke-dasharray: 3 3; }
svg .sband { stroke: #aed6f1; } svg .bband { stroke: #2c3e50; stroke-width: 1.5; } svg .eband { stroke: #d5dbdb; }
svg .dot { fill: #2c3e50; } svg .flag { fill: #c0392b; stroke: #fff; stroke-width: 0.8; }
svg .flagged { fill: none; stroke: #c0392b; stroke-width: 2; }
svg .legend { fill: #fff; fill-opacity: 0.88; stroke: #d5d8dc; }
svg .all { fill: none; stroke: #9aa5b1; stroke-width: 2; stroke-dasharray: 4 3; } svg .bar { fill: #5d6d7e; }
@media print { .banner { position: static; } details { display: block; } }
"""


def render(d: RunData) -> str:
    """The report of a run as one HTML string."""
    s = d.scenario
    model, bs, cap = s.get("model", {}), s.get("bootstrap", {}), s.get("cap", {})
    syn = '<span class="syn">synthetic data</span>' if d.synthetic else ""
    sections = [
        ("headline", "Headline figures", section_headline(d)),
        ("bands", "Budget bands and actual spending", section_bands(d)),
        ("funnel", "Redistribution effect against size", section_funnel(d)),
        ("cap", "The capping trade-off", section_cap(d)),
        ("vangnet", "Vangnet payouts", section_vangnet(d)),
        ("rekentool", "Rekentool: the objective budget of every municipality by household type", section_rekentool(d)),
        ("scenario", "Scenario", "<p>Every value of this run; <code>buig run scenario.toml --out OTHER</code> "
                                 "repeats it exactly.</p>\n<pre>" + _esc(d.scenario_text) + "</pre>"),
    ]
    title = f"buig: bijstand budgets, regime {d.regime.name}"
    head = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_esc(title + (' (SYNTHETIC)' if d.synthetic else ''))}</title>\n<style>{STYLE}</style>\n"
            "</head>\n<body>")
    body = [head]
    if d.synthetic:
        body.append(f'<div class="banner" role="alert">{_esc(SYNTHETIC_TEXT)}</div>')
    pop = s.get("population", {})
    source = ("the built-in synthetic Netherlands" if pop.get("source") == "synthetic"
              else f"population folder {pop.get('source')}")
    body.append(f"<h1>{_esc(title)}</h1>")
    body.append(f"<p>{_esc(source)}; model spec {_esc(model.get('spec'))}; regime {_esc(d.regime.name)}"
                f"{' with overrides' if s.get('regime', {}).get('overrides') else ''}; {d.replicates} "
                f"{_esc(bs.get('method'))} bootstrap replicates (seed {_esc(bs.get('seed'))}); flags: "
                f"{_esc(d.flag_rule)}; cap kappa {d.kappa:g} ({_esc(cap.get('redistribute'))}).</p>")
    body.append("<nav>" + "".join(f'<a href="#{a}">{_esc(t.split(":")[0])}</a>' for a, t, _ in sections) + "</nav>")
    for anchor, heading, content in sections:
        body.append(f'<section id="{anchor}">\n<h2>{_esc(heading)}{syn}</h2>')
        if d.synthetic:
            body.append('<p class="note"><b>Synthetic population:</b> not real households or spending.</p>')
        body.append(content)
        body.append("</section>")
    body.append(f"<script>{SEARCH_SCRIPT}</script>\n</body>\n</html>\n")
    return "\n".join(body)


def write_report(out: str | Path, path: str | Path | None = None) -> Path:
    """Write ``report.html`` (or ``path``) from the files of the run folder ``out``; returns its path."""
    out = Path(out)
    target = Path(path) if path is not None else out / "report.html"
    text = render(load_run(out))
    write_text(target, text)
    return target
