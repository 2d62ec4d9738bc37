"""``report.html``: one self-contained file that a policy analyst can open and send on.

:func:`write_report` reads the files of a run folder (``buig run``) and writes
``report.html`` beside them: no network is needed to view it (plots are inline SVG drawn
here, the search box is a few lines of inline script, no fonts or scripts are fetched).
Sections: headline figures (macro budget, municipalities by regime class, the 2004 letter's
redistribution table), budget bands against actual spending, the redistribution effect
against size (funnel), the capping trade-off over a grid of kappa, the vangnet payouts,
the rekentool breakdown of every municipality grouped by province, and the scenario.
One search box filters every table with a row per municipality and the rekentool, ignoring
case and diacritics. Modules: :mod:`~engine.app.report.load` (the files), :mod:`~engine.app.report.svg`
(charts), :mod:`~engine.app.report.sections` and :mod:`~engine.app.report.rekentool` (the sections).
On a synthetic population (``truth.json`` present) a banner says so on every section.
Every text that comes from data is HTML-escaped.
"""

from __future__ import annotations

from pathlib import Path

from engine.app.labels import check_language
from engine.app.report.fmt import esc
from engine.app.report.load import RunData, load_run
from engine.app.report.rekentool import section_rekentool
from engine.app.report.sections import section_bands, section_cap, section_funnel, section_headline, section_vangnet
from engine.io.outputs import write_text

SYNTHETIC_TEXT = ("SYNTHETIC POPULATION: these households, municipalities' spending and budgets were generated "
                  "by buig (calibrated to CBS aggregates of 2017). They are not real and must not be read as "
                  "figures of any real municipality.")


SEARCH_SCRIPT = r"""
(function () {
  var box = document.getElementById('search'), hits = document.getElementById('hits');
  if (!box) { return; }
  function fold(s) { return s.normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase(); }
  box.addEventListener('input', function () {
    var q = fold(box.value.trim()), n = 0;
    document.querySelectorAll('tr[data-name]').forEach(function (r) {
      r.style.display = q === '' || r.getAttribute('data-name').indexOf(q) >= 0 ? '' : 'none';
    });
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
    hits.textContent = q === '' ? '' : n + (n === 1 ? ' municipality' : ' municipalities') + ' found';
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
nav { display: flex; flex-wrap: wrap; gap: 4px 14px; } nav a { white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
.search { margin: 10px 0; } .search input { font-size: 1em; padding: 3px 6px; width: 16em; max-width: 60vw; }
@media (max-width: 900px) { body { padding: 0 10px 30px; } .banner { margin: 0 -10px; font-size: 0.9em; }
  table { font-size: 0.82em; } th, td { padding: 2px 5px; } h1 { font-size: 1.35em; } }
svg.chart { display: block; max-width: 100%; height: auto; font-size: 12px; }
svg .grid { stroke: #eaeded; stroke-width: 1; } svg .frame { fill: none; stroke: #aab7b8; }
svg .tick { fill: #566573; font-size: 12px; } svg .label { fill: #2c3e50; font-size: 13px; }
svg .zero { stroke: #566573; stroke-width: 1; } svg .ref10 { stroke: #aab7b8; stroke-dasharray: 5 4; }
svg .ref15 { stroke: #aab7b8; stroke-dasharray: 1 3; } svg .thr { stroke: #7f8c8d; stroke-dasharray: 3 3; }
svg .sband { stroke: #aed6f1; } svg .bband { stroke: #2c3e50; stroke-width: 1.5; } svg .eband { stroke: #d5dbdb; }
svg .dot { fill: #2c3e50; } svg .flag { fill: #c0392b; stroke: #fff; stroke-width: 0.8; }
svg .flagged { fill: none; stroke: #c0392b; stroke-width: 2; }
svg .all { fill: none; stroke: #9aa5b1; stroke-width: 2; stroke-dasharray: 4 3; } svg .bar { fill: #5d6d7e; }
@media print { .banner { position: static; } details { display: block; } }
"""


def render(d: RunData, labels: str = "en") -> str:
    """The report of a run as one HTML string; ``labels``: household types as codes (``en``) or in Dutch (``nl``)."""
    s = d.scenario
    model, bs, cap = s.get("model", {}), s.get("bootstrap", {}), s.get("cap", {})
    syn = '<span class="syn">synthetic data</span>' if d.synthetic else ""
    sections = [
        ("headline", "Headline figures", section_headline(d)),
        ("bands", "Budget bands and actual spending", section_bands(d)),
        ("funnel", "Redistribution effect against size", section_funnel(d)),
        ("cap", "The capping trade-off", section_cap(d)),
        ("vangnet", "Vangnet payouts", section_vangnet(d)),
        ("rekentool", "Rekentool: the objective budget of every municipality by household type", section_rekentool(d, labels)),
        ("scenario", "Scenario", "<p>Every value of this run; <code>buig run scenario.toml --out OTHER</code> "
                                 "repeats it exactly.</p>\n<pre>" + esc(d.scenario_text) + "</pre>"),
    ]
    title = f"buig: bijstand budgets, regime {d.regime.name}"
    head = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title + (' (SYNTHETIC)' if d.synthetic else ''))}</title>\n<style>{STYLE}</style>\n"
            "</head>\n<body>")
    body = [head]
    if d.synthetic:
        body.append(f'<div class="banner" role="alert">{esc(SYNTHETIC_TEXT)}</div>')
    pop = s.get("population", {})
    source = ("the built-in synthetic Netherlands" if pop.get("source") == "synthetic"
              else f"population folder {pop.get('source')}")
    body.append(f"<h1>{esc(title)}</h1>")
    body.append(f"<p>{esc(source)}; model spec {esc(model.get('spec'))}; regime {esc(d.regime.name)}"
                f"{' with overrides' if s.get('regime', {}).get('overrides') else ''}; {d.replicates} "
                f"{esc(bs.get('method'))} bootstrap replicates (seed {esc(bs.get('seed'))}); flag level "
                f"{d.flag_level:g}; cap kappa {d.kappa:g} ({esc(cap.get('redistribute'))}).</p>")
    body.append("<nav>" + "".join(f'<a href="#{a}">{esc(t.split(":")[0])}</a>' for a, t, _ in sections) + "</nav>")
    body.append('<p class="search"><label>Search a municipality: <input id="search" type="search" '
                'placeholder="name or code, e.g. Sudwest" autocomplete="off"></label> <span id="hits"></span> '
                '<span class="note">(filters every table by municipality; accents may be left out)</span></p>')
    for anchor, heading, content in sections:
        body.append(f'<section id="{anchor}">\n<h2>{esc(heading)}{syn}</h2>')
        if d.synthetic:
            body.append('<p class="note"><b>Synthetic population:</b> not real households or spending.</p>')
        body.append(content)
        body.append("</section>")
    body.append(f"<script>{SEARCH_SCRIPT}</script>\n</body>\n</html>\n")
    return "\n".join(body)


def write_report(out: str | Path, path: str | Path | None = None, labels: str = "en") -> Path:
    """Write ``report.html`` (or ``path``) from the files of the run folder ``out``; returns its path.
    ``labels="nl"``: household types in Dutch."""
    check_language(labels)
    out = Path(out)
    target = Path(path) if path is not None else out / "report.html"
    text = render(load_run(out), labels)
    write_text(target, text)
    return target
