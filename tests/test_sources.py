"""Every source label in the code and data resolves to engine/data/SOURCES.md, and nothing in
the product points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "engine" / "data" / "SOURCES.md"
FOLDERS = ("engine", "kernels", "scripts", "benchmarks", "tests")
SUFFIXES = {".py", ".toml", ".md", ".csv", ".html", ".txt"}
# a status label with ids: [C: S5], [C~: S13, S27], [B: K2004], [C: S56; C~: S57]
LABEL = re.compile(r"\[(?:C~?|B|I)\s*:[^\]]*\]")
ID = re.compile(r"\b(S\d+b?|K\d{4})\b")
OUTSIDE = re.compile(r"\.\./shared|/work/shared|domain[- ]spec|DESIGN\.md|\bseed 00\d\b|\bissue \d+\b", re.I)


def _files():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and "golden" not in path.parts and path != Path(__file__):
                yield path


def _defined() -> set[str]:
    return set(re.findall(r"^\| (S\d+b?|K\d{4}) \|", SOURCES.read_text(encoding="utf-8"), re.M))


def test_sources_define_the_letters_and_the_cited_ids():
    defined = _defined()
    assert {"K2004", "K2018", "S5", "S6", "S68"} <= defined
    text = SOURCES.read_text(encoding="utf-8")
    for bwbr in ("BWBR0015703", "BWBR0020183", "BWBR0015709", "BWBR0015738"):
        assert bwbr in text


def test_every_label_resolves_to_a_source():
    defined = _defined()
    cited = {}
    for path in _files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for label in LABEL.findall(line):
                for sid in ID.findall(label):
                    cited.setdefault(sid, f"{path.relative_to(ROOT)}:{n}")
    assert cited, "no labels found: the pattern is broken"
    missing = {sid: where for sid, where in cited.items() if sid not in defined}
    assert not missing, f"labels without a row in engine/data/SOURCES.md: {missing}"


def test_nothing_points_outside_the_repository():
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in _files()
            for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if OUTSIDE.search(line)]
    assert not hits, "pointers outside the repository:\n" + "\n".join(hits)
