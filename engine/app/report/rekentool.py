"""The report's rekentool: every municipality's objective budget by household type, one
``<details class="mun">`` entry per municipality, grouped by province."""

from __future__ import annotations

from engine.app.labels import household_type_label
from engine.app.report.fmt import esc, eur, num, pct, search_key, table
from engine.app.report.load import RunData


def section_rekentool(d: RunData, labels: str = "en") -> str:
    t = d.rekentool
    codes = t.column("code").to_pylist()
    types = [household_type_label(x, labels) for x in t.column("household_type").to_pylist()]
    col = {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names if c not in ("code", "household_type")}
    by_code: dict[str, list[int]] = {}
    for r, c in enumerate(codes):
        by_code.setdefault(c, []).append(r)
    budget = d.budgets["budget"]
    provinces: dict[str, list[int]] = {}
    for i, p in enumerate(d.province):
        provinces.setdefault(p, []).append(i)
    out = ["<p class=note>Per household type: households, predicted bijstand-or-LKS households (sum of p), actual "
           "ones, the mean expected benefit as a fraction of the gross norm and the mean gross norm of the "
           "predicted households, the expected cost (sum of p &times; f &times; N), its share of the "
           "municipality's objective cost, and that share of the municipality's budget. The same per municipality "
           "and household type, filterable, is in <code>rekentool.xlsx</code>.</p>"]
    head = ["household type", "households", "predicted", "actual", "mean fraction", "mean norm (EUR)",
            "expected cost (EUR)", "share", "budget (EUR)"]
    for prov in sorted(provinces):
        members = sorted(provinces[prov], key=lambda i: d.names[i])
        out.append(f'<details class="prov"><summary>{esc(prov)} ({len(members)} municipalities)</summary>')
        for i in members:
            rows_i = by_code.get(d.codes[i], [])
            rows = [[esc(types[r]), num(col["households"][r]), num(col["predicted_households"][r], 1),
                     num(col["actual_households"][r]), num(col["mean_fraction"][r], 3), eur(col["mean_norm"][r]),
                     eur(col["expected_cost"][r]), pct(100 * col["share_of_budget"][r]),
                     eur(col["share_of_budget"][r] * budget[i])] for r in rows_i]
            tot = lambda c: float(sum(col[c][r] for r in rows_i))  # noqa: E731
            rows.append(["<b>total</b>", num(tot("households")), num(tot("predicted_households"), 1),
                         num(tot("actual_households")), "", "", eur(tot("expected_cost")), "", eur(budget[i])])
            out.append(f'<details class="mun" data-name="{esc(search_key(d.names[i], d.codes[i]))}"><summary>'
                       f"{esc(d.names[i])} ({esc(d.codes[i])}): budget EUR {eur(budget[i])}; predicted "
                       f"{num(tot('predicted_households'), 0)} vs actual {num(tot('actual_households'))} "
                       f"households</summary>\n{table(head, rows)}</details>")
        out.append("</details>")
    return "\n".join(out)
