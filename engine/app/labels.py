"""Labels of household types for people: the codes of the tables (``en``, as in
``rekentool.parquet``) or Dutch (``nl``).

The Dutch names follow the law: "alleenstaande" and "alleenstaande ouder" are the norm
categories of the Participatiewet (BWBR0015703), artikel 21; "paar zonder kinderen" and
"paar met kinderen" the household characteristics of the objective model in the Besluit
Participatiewet (BWBR0020183, version of 23 January 2015), bijlage bij artikel 6, tabel 1.
"""

from __future__ import annotations

from engine.model.schema import CATEGORIES

LANGUAGES = ("en", "nl")
HOUSEHOLD_TYPES_NL = {
    "single": "alleenstaande",
    "single_parent": "alleenstaande ouder",
    "couple_no_children": "paar zonder kinderen",
    "couple_with_children": "paar met kinderen",
    "other": "overig",
}
assert tuple(HOUSEHOLD_TYPES_NL) == CATEGORIES["household_type"]


def check_language(labels: str) -> str:
    if labels not in LANGUAGES:
        raise ValueError(f"--labels must be one of {', '.join(LANGUAGES)}, not {labels!r}")
    return labels


def household_type_label(code: str, labels: str = "en") -> str:
    """``code`` (e.g. ``single_parent``) as shown in ``labels`` (``en``: the code itself)."""
    return HOUSEHOLD_TYPES_NL.get(code, code) if check_language(labels) == "nl" else code
