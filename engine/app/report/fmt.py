"""HTML pieces of the report: escaping, number formats, tables, figures and the search key.

Every text that comes from data goes through :func:`esc`; :func:`table` escapes its head
and expects cells that are already HTML.
"""

from __future__ import annotations

import html
import math
import unicodedata


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def num(v, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    return f"{v:,.{digits}f}"


def eur(v) -> str:
    return num(v, 0)


def mln(v, digits: int = 1) -> str:
    return num(v / 1e6, digits)


def pct(v, digits: int = 1) -> str:
    return num(v, digits) + ("" if v is None or not math.isfinite(v) else "%")


def fold(text: str) -> str:
    """Lower case without diacritics (``Súdwest-Fryslân`` -> ``sudwest-fryslan``): the marks
    U+0300..U+036F removed after canonical decomposition, exactly what the page's search
    script does to the query (``normalize('NFD').replace(/[\\u0300-\\u036f]/g, '')``)."""
    return "".join(ch for ch in unicodedata.normalize("NFD", str(text)) if not "\u0300" <= ch <= "\u036f").lower()


def search_key(name: str, code: str) -> str:
    """The ``data-name`` attribute the search matches: folded name and code."""
    return fold(f"{name} {code}")


def table(head: list[str], rows: list[list[str]], cls: str = "", numeric_from: int = 1,
          keys: list[str] | None = None) -> str:
    """An HTML table in a horizontally scrolling box; ``head`` is escaped here, cells must
    already be HTML. ``keys``: a search key per row (:func:`search_key`; ``None`` for a row
    the search leaves alone, e.g. a total), so the page's search filters the table's rows."""
    out = ['<div class="scroll">', f'<table class="{cls}">' if cls else "<table>", "<thead><tr>"]
    out += [f'<th{" class=num" if i >= numeric_from else ""}>{esc(h)}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for k, r in enumerate(rows):
        key = keys[k] if keys is not None else None
        attr = f' data-name="{esc(key)}"' if key is not None else ""
        out.append(f"<tr{attr}>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{c}</td>'
                                           for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"
