"""report.html: valid, self-contained, one entry per municipality, hostile names escaped."""

from __future__ import annotations

import re
import shutil
import unicodedata
from html.parser import HTMLParser

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.app.report.page import SYNTHETIC_TEXT, write_report
from engine.app.report.svg import Scale
from engine.app.pipeline import run
from engine.app.scenario import load_scenario

HOSTILE = ["<script>alert(1)</script>", "\"&'", "Bad</td></tr></table><b>name"]
HOSTILE_PROVINCE = "<img src=x onerror=alert(2)>"
HOSTILE_FOLDER = "<svg onload=alert(3)>&'"      # a legal folder name; reaches the report through scenario.toml
VOID = {"meta", "input", "br", "hr", "img", "link", "wbr", "col", "area", "base", "source"}


@pytest.fixture(scope="module")
def hostile_run(small_world, tmp_path_factory):
    """A run on the small world with three municipalities renamed and one province renamed."""
    pop = tmp_path_factory.mktemp("hostile_pop") / HOSTILE_FOLDER
    pop.mkdir()
    for f in small_world.iterdir():
        shutil.copy(f, pop / f.name)
    mun = pq.read_table(pop / "municipalities.parquet")
    names = mun.column("name").to_pylist()
    province = mun.column("province").to_pylist()
    names[:3] = HOSTILE
    first = province[0]
    province = [HOSTILE_PROVINCE if p == first else p for p in province]
    i_name, i_prov = mun.schema.get_field_index("name"), mun.schema.get_field_index("province")
    mun = mun.set_column(i_name, mun.schema.field(i_name), pa.array(names, pa.string()))
    mun = mun.set_column(i_prov, mun.schema.field(i_prov), pa.array(province, pa.string()))
    pq.write_table(mun, pop / "municipalities.parquet")
    out = tmp_path_factory.mktemp("hostile_run")
    run(load_scenario(population=str(pop), replicates=20, bootstrap_seed=3), out, workers=0)
    return pop, out


class Checker(HTMLParser):
    """Tags must balance (void elements and <x/> excepted); collects what the tests look at."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.starts, self.attrs, self.text = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.starts.append(tag)
        self.attrs.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.starts.append(tag)
        self.attrs.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}> "
                               f"at {self.getpos()}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(text: str) -> Checker:
    c = Checker()
    c.feed(text)
    c.close()
    return c


def test_report_is_valid_self_contained_html(hostile_run):
    _, out = hostile_run
    text = (out / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    c = _parse(text)
    assert c.errors == [] and c.stack == []
    assert "http://" not in text and "https://" not in text
    for tag, attrs in c.attrs:                                # nothing is fetched
        assert tag not in ("img", "link", "iframe", "object", "embed"), tag
        assert "src" not in attrs, (tag, attrs)
        assert not attrs.get("href", "#").strip() or attrs.get("href", "#").startswith("#")
    figures = len(re.findall(r"<figure>", text))
    assert figures >= 4
    for fig in re.findall(r"<figure>(.*?)</figure>", text, re.S):      # every figure is inline SVG
        assert "<svg" in fig and "</svg>" in fig
    for anchor in ("headline", "bands", "funnel", "cap", "vangnet", "rekentool", "scenario"):
        assert f'<section id="{anchor}">' in text


def test_one_rekentool_entry_per_municipality(hostile_run):
    pop, out = hostile_run
    text = (out / "report.html").read_text(encoding="utf-8")
    c = _parse(text)
    entries = [a for tag, a in c.attrs if tag == "details" and a.get("class") == "mun"]
    codes = pq.read_table(pop / "municipalities.parquet").column("code").to_pylist()
    assert len(entries) == len(codes) == 388
    assert sorted(a["data-name"].split()[-1] for a in entries) == sorted(c.lower() for c in codes)
    provinces = set(pq.read_table(pop / "municipalities.parquet").column("province").to_pylist())
    assert sum(1 for tag, a in c.attrs if tag == "details" and a.get("class") == "prov") == len(provinces)


def test_names_from_data_are_escaped(hostile_run):
    _, out = hostile_run
    text = (out / "report.html").read_text(encoding="utf-8")
    for raw in HOSTILE + [HOSTILE_PROVINCE, HOSTILE_FOLDER]:
        assert raw not in text
    assert "&lt;svg onload=alert(3)&gt;&amp;" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&quot;&amp;&#x27;" in text
    assert "&lt;img src=x onerror=alert(2)&gt;" in text
    assert text.count("<script>") == 1                        # only the search box's own script
    c = _parse(text)
    data = "".join(c.text)
    for raw in HOSTILE + [HOSTILE_PROVINCE]:                  # ...and the parsed text shows the names as they are
        assert raw in data


def test_synthetic_banner_on_every_section_and_none_on_real_data(hostile_run, tmp_path):
    pop, out = hostile_run
    text = (out / "report.html").read_text(encoding="utf-8")
    assert 'class="banner"' in text and SYNTHETIC_TEXT.split(":")[0] in text
    sections = re.findall(r"<section id=\"\w+\">(.*?)</section>", text, re.S)
    assert len(sections) == 7 and all("synthetic data" in s for s in sections)
    (pop / "truth.json").rename(pop / "truth.json.away")      # the same data, now without its truth
    try:
        real = write_report(out, tmp_path / "real.html").read_text(encoding="utf-8")
    finally:
        (pop / "truth.json.away").rename(pop / "truth.json")
    assert 'class="banner"' not in real and "synthetic data" not in real and "planted" not in real


def test_scale_ticks():
    assert Scale(0, 1, 0, 100).ticks() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert Scale(1_000, 1_000_000, 0, 100, log=True).ticks() == [1e3, 1e4, 1e5, 1e6]
    s = Scale(-50, 50, 300, 0)
    assert float(s(0)) == 150 and float(s(1e9)) == 0                       # clipped to the axis


def test_the_checker_catches_unbalanced_tags():
    assert _parse("<div><p>x</div>").errors and _parse("<table><tr><td>x</table>").errors
    assert not _parse("<div><svg><line x1='0'/></svg><input></div>").errors


# --------------------------------------------------------------------------- in a real browser

BROWSER_MISSING = ("no headless browser: the report's browser test needs Debian's chromium and chromium-driver "
                   "(apt-get install chromium chromium-driver, as .ci/run does) and selenium (pip install '.[test]')")


def _nfkd_fold(text: str) -> str:
    """The test's own accent folding (compatibility decomposition, unicodedata.combining)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium at 800 x 1000 px, driven by Selenium through Debian's chromedriver."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(BROWSER_MISSING)
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(BROWSER_MISSING)
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=800,1000"):
        opts.add_argument(a)
    opts.binary_location = binary
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(driver))
    # every uncaught error of the page's scripts, recorded from before its first script runs
    d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.__errors = []; window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });"
        "window.alert = function (m) { window.__errors.push('alert ' + m); };")})
    yield d
    d.quit()


def _load(browser, path):
    browser.get(path.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    return browser


def test_report_in_a_browser_loads_clean_with_one_entry_per_municipality(hostile_run, browser):
    pop, out = hostile_run
    b = _load(browser, out / "report.html")
    severe = [e for e in b.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [] and b.execute_script("return window.__errors") == []
    codes = pq.read_table(pop / "municipalities.parquet").column("code").to_pylist()
    keys = b.execute_script("return Array.from(document.querySelectorAll('details.mun')).map("
                            "function (m) { return m.getAttribute('data-name'); });")
    assert len(keys) == 388 and sorted(k.split()[-1] for k in keys) == sorted(c.lower() for c in codes)
    names = b.execute_script("return Array.from(document.querySelectorAll('details.mun > summary')).map("
                             "function (s) { return s.textContent; });")
    for raw in HOSTILE:                                   # hostile names arrive as text, not markup
        assert sum(n.startswith(raw + " (") for n in names) == 1


def test_search_ignores_diacritics_and_filters_every_table(hostile_run, browser):
    pop, out = hostile_run
    b = _load(browser, out / "report.html")
    mun = pq.read_table(pop / "municipalities.parquet")
    names, codes = mun.column("name").to_pylist(), mun.column("code").to_pylist()
    box = b.find_element("id", "search")
    rows_per_table = b.execute_script("return document.querySelectorAll('tr[data-name]').length")
    assert rows_per_table > 0                             # flagged and vangnet tables carry search keys
    for query in ("sudwest", "Súdwest-Fryslân", "SUDWEST fryslan", "gm0363", "an"):
        box.clear()
        box.send_keys(query)
        q = _nfkd_fold(query)
        want = sorted(c.lower() for n, c in zip(names, codes) if q in _nfkd_fold(f"{n} {c}"))
        shown = b.execute_script(
            "return Array.from(document.querySelectorAll('details.mun')).filter(function (m) { "
            "return m.style.display !== 'none' && m.closest('details.prov').style.display !== 'none'; })"
            ".map(function (m) { return m.getAttribute('data-name').split(' ').pop(); });")
        assert sorted(shown) == want, query
        rows = b.execute_script(
            "return Array.from(document.querySelectorAll('tr[data-name]')).map(function (r) { "
            "return [r.getAttribute('data-name').split(' ').pop(), r.style.display !== 'none']; });")
        assert all((code in want) == vis for code, vis in rows), query
        assert b.find_element("id", "hits").text.startswith(f"{len(want)} municipalit"), query
    box.clear()
    box.send_keys("sudwest")                              # Súdwest-Fryslân, the one name with diacritics
    assert _nfkd_fold(names[codes.index("GM1900")]) == "sudwest-fryslan" and "sudwest" not in names[codes.index("GM1900")]
    assert b.find_element("id", "hits").text == "1 municipality found"
    box.clear()
    box.send_keys(" ")                                    # cleared: everything is back
    assert b.execute_script("return Array.from(document.querySelectorAll('tr[data-name], details.mun'))"
                            ".every(function (e) { return e.style.display === ''; })")


def test_report_readable_at_800_px_and_legends_beside_the_data(hostile_run, browser, tmp_path):
    _, out = hostile_run
    b = _load(browser, out / "report.html")
    assert b.execute_script("return window.innerWidth") <= 800
    assert b.execute_script("return document.documentElement.scrollWidth") <= 800      # no sideways scrolling
    charts = b.execute_script(
        "return Array.from(document.querySelectorAll('svg.chart')).map(function (s) { "
        "var f = s.querySelector('rect.frame').getBoundingClientRect(); "
        "return {width: s.getBoundingClientRect().width, frameTop: f.top, frameLeft: f.left, frameRight: f.right, "
        "legends: Array.from(s.querySelectorAll('g.legend')).map(function (g) { var r = g.getBoundingClientRect(); "
        "return [r.top, r.bottom, r.left, r.right]; }), "
        "tick: Math.min.apply(null, Array.from(s.querySelectorAll('text.tick')).filter(function (t) { "
        "return t.textContent !== ''; }).map(function (t) { return t.getBoundingClientRect().height; }))}; });")
    assert len(charts) >= 5 and sum(len(c["legends"]) for c in charts) >= 8
    for c in charts:
        assert c["width"] <= 800 and c["tick"] >= 10                  # tick labels stay legible
        for top, bottom, left, right in c["legends"]:                  # above the plot area, inside the chart
            assert bottom <= c["frameTop"] + 0.5 and left >= 0 and right <= c["width"] + 20
    b.save_screenshot(str(tmp_path / "report-800.png"))
