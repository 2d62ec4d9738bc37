"""What analysts use: rekentool.xlsx, CSV next to Parquet, Dutch labels, `buig --version`,
pandas-friendly tables, the Dask dashboard and relative paths on a hand-started cluster."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.app.cli import main
from engine.app.pipeline import OUTPUTS, run
from engine.app.scenario import load_scenario
from test_faults import _start, _stop        # processes in a group of their own, stopped with it

REPO = Path(__file__).resolve().parents[1]
DUTCH = {"alleenstaande", "alleenstaande ouder", "paar zonder kinderen", "paar met kinderen", "overig"}
PARQUET = [n for n in OUTPUTS if n.endswith(".parquet")]


@pytest.fixture(scope="module")
def small_fit(small_population, tmp_path_factory):
    from engine.model.fitted import fit_to_folder

    out = tmp_path_factory.mktemp("fit")
    fit_to_folder(small_population, out)
    return out


@pytest.fixture(scope="module")
def nl_run(small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("nl_run")
    run(load_scenario(population=str(small_world), replicates=20, bootstrap_seed=5), out, workers=0,
        formats=("parquet", "csv"), labels="nl")
    return out


def _sheet(path: Path, name: str):
    import openpyxl                                         # an independent reader of the file

    ws = openpyxl.load_workbook(path, read_only=False)[name]
    rows = list(ws.iter_rows(values_only=True))
    return list(rows[0]), rows[1:], ws


def test_workbook_holds_the_rekentool_and_the_budget_build_up(nl_run, small_world):
    head, rows, ws = _sheet(nl_run / "rekentool.xlsx", "rekentool")
    rk = pq.read_table(nl_run / "rekentool.parquet").to_pylist()
    budgets = {r["code"]: r for r in pq.read_table(nl_run / "budgets.parquet").to_pylist()}
    assert len(rows) == len(rk) == 388 * 5
    assert ws.auto_filter.ref == f"A1:{ws.cell(1, len(head)).column_letter}{len(rows) + 1}"   # filterable
    col = {h: i for i, h in enumerate(head)}
    assert {r[col["household type"]] for r in rows} == DUTCH
    parts: dict[str, float] = {}
    for r, want in zip(rows, rk):
        assert r[col["code"]] == want["code"]
        assert r[col["expected cost (EUR, sum p f N)"]] == pytest.approx(want["expected_cost"], rel=1e-12)
        assert r[col["households"]] == want["households"]
        if want["households"]:
            assert r[col["mean p (volume)"]] == pytest.approx(want["predicted_households"] / want["households"])
        if math.isnan(want["mean_fraction"]):
            assert r[col["mean fraction of the norm (price)"]] is None                     # blank, not NaN
        else:
            assert r[col["mean fraction of the norm (price)"]] == pytest.approx(want["mean_fraction"], rel=1e-12)
        parts[want["code"]] = parts.get(want["code"], 0.0) + (r[col["budget part (EUR)"]] or 0.0)
    for code, total in parts.items():                     # the household types add up to the budget
        assert total == pytest.approx(budgets[code]["budget"], rel=1e-9, abs=1e-6)
    head, rows, _ = _sheet(nl_run / "rekentool.xlsx", "municipalities")
    col = {h: i for i, h in enumerate(head)}
    assert len(rows) == 388
    for r in rows:
        b = budgets[r[col["code"]]]
        assert r[col["budget (EUR)"]] == pytest.approx(b["budget"], rel=1e-12)
        assert r[col["objective weight"]] == pytest.approx(b["objective_weight"], rel=1e-12)
    first, _, _ = _sheet(nl_run / "rekentool.xlsx", "about")
    assert first[0].startswith("SYNTHETIC POPULATION")


def test_csv_next_to_every_parquet_table_and_removed_on_a_rerun_without(nl_run):
    import pandas as pd

    for name in PARQUET:
        want = pq.read_table(nl_run / name).to_pandas()
        got = pd.read_csv(nl_run / name.replace(".parquet", ".csv"))
        assert list(got.columns) == list(want.columns) and len(got) == len(want), name
        for c in want.columns:
            if want[c].dtype.kind in "fi":
                np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float), rtol=1e-15,
                                           equal_nan=True, err_msg=f"{name}:{c}")
            else:
                assert got[c].astype(str).tolist() == want[c].astype(str).tolist(), f"{name}:{c}"


def test_report_in_dutch_and_a_rerun_without_csv_or_workbook(nl_run, tmp_path):
    text = (nl_run / "report.html").read_text(encoding="utf-8")
    rek = text[text.index('<section id="rekentool">'):]
    assert "<td>alleenstaande ouder</td>" in rek and "<td>single_parent</td>" not in rek
    from engine.app.report.page import write_report

    en = write_report(nl_run, tmp_path / "en.html").read_text(encoding="utf-8")
    assert "<td>single_parent</td>" in en and "alleenstaande ouder" not in en
    with pytest.raises(ValueError, match="--labels"):
        write_report(nl_run, tmp_path / "x.html", labels="fr")
    scenario = load_scenario(nl_run / "scenario.toml")
    run(scenario, nl_run, workers=0, xlsx=False)            # same scenario: resumes; leaves no stale copies
    assert sorted(p.name for p in nl_run.glob("*.csv")) == ["redistribution.csv"]
    assert not (nl_run / "rekentool.xlsx").exists()


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"buig {version}"


def test_predict_writes_workbook_and_csv_and_bad_values_are_refused(small_world, small_fit, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", "--population", str(small_world), "--coefficients", str(small_fit), "--out", str(out),
                 "--format", "csv", "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} == {"municipal_costs.parquet", "rekentool.parquet", "rekentool.xlsx",
                                               "municipal_costs.csv", "rekentool.csv"}
    head, rows, _ = _sheet(out / "rekentool.xlsx", "rekentool")
    assert "budget part (EUR)" not in head and {r[3] for r in rows} == {"single", "single_parent",
                                                                       "couple_no_children",
                                                                       "couple_with_children", "other"}
    from engine.app.workbook import rekentool_workbook

    rk = pq.read_table(out / "rekentool.parquet")
    cost = rk.column("expected_cost").to_numpy().copy()
    cost[7] = np.inf
    bad = rk.set_column(rk.schema.get_field_index("expected_cost"), "expected_cost", pa.array(cost))
    with pytest.raises(ValueError, match="rekentool: column expected_cost, row 7"):
        rekentool_workbook(bad, pq.read_table(small_world / "municipalities.parquet"))


def test_tables_of_the_api_convert_to_pandas_without_surprises(small_world, nl_run):
    import engine
    import pandas as pd

    pop = engine.read_population(small_world)
    hh = pop.households.slice(0, 2000)
    df = engine.to_pandas(hh)
    labels = json.loads(hh.schema.field("household_type").metadata[b"labels"])
    codes = hh.column("household_type").to_numpy()
    assert isinstance(df["household_type"].dtype, pd.CategoricalDtype)
    assert df["household_type"].astype(str).tolist() == [labels[c] for c in codes]
    assert df["benefit_paid"].dtype == np.float64 and df["bijstand"].dtype == np.int8
    flags = pq.read_table(nl_run / "flags.parquet")
    assert engine.to_pandas(flags).attrs["level"] == flags.schema.metadata[b"level"].decode()
    for name in PARQUET:                                   # plain to_pandas: strings, numbers, booleans only
        frame = pq.read_table(nl_run / name).to_pandas()
        for c in frame.columns:
            kind = frame[c].dtype.kind
            assert kind in "fiub" or pd.api.types.is_string_dtype(frame[c]), (name, c, frame[c].dtype)
            if kind not in "fiub":
                assert all(isinstance(v, str) for v in frame[c]), (name, c)


def test_local_cluster_serves_the_dashboard_on_loopback():
    pytest.importorskip("bokeh", reason="the Dask dashboard needs bokeh: pip install 'buig[dask-dashboard]'")
    from engine.uncertainty.executor import client_for

    client = client_for(1, None)
    try:
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:"), link
        with urllib.request.urlopen(link, timeout=30) as r:
            assert r.status == 200 and b"Dask" in r.read()
    finally:
        client.close()
        client.cluster.close()


def test_relative_paths_reach_the_workers_of_a_hand_started_cluster(small_world, small_fit, tmp_path, monkeypatch):
    """A scheduler and a worker started by hand in folders of their own; the driver names the
    population and the fit relative to its own folder: the replicates equal an in-process run."""
    from engine.uncertainty.bootstrap import run_bootstrap
    from engine.uncertainty.settings import Settings

    here = Path(os.path.commonpath([small_world, small_fit, tmp_path]))
    monkeypatch.chdir(here)
    settings = Settings(population=os.path.relpath(small_world), coefficients=os.path.relpath(small_fit),
                        regime="2019", seed=4)
    assert not Path(settings.population).is_absolute()
    reference = run_bootstrap(settings, tmp_path / "ref", replicates=4, batch_size=2, workers=0)
    dask = [sys.executable, "-m", "dask"]
    loopback = ["--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    for d in ("scheduler", "worker"):
        (tmp_path / d).mkdir()
    sched_file = tmp_path / "scheduler" / "scheduler.json"
    procs = [_start(dask + ["scheduler", "--scheduler-file", str(sched_file), "--port", "0", *loopback],
                    tmp_path / "scheduler" / "log.txt")]
    try:
        deadline = time.monotonic() + 120
        while not sched_file.exists():
            assert procs[0].poll() is None and time.monotonic() < deadline, (tmp_path / "scheduler/log.txt").read_text()
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(_start(dask + ["worker", "--scheduler-file", str(sched_file), "--nthreads", "1", *loopback,
                                    "--local-directory", str(tmp_path / "worker")], tmp_path / "worker" / "log.txt"))
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(1, timeout=120)
        res = run_bootstrap(settings, os.path.relpath(tmp_path / "out"), replicates=4, batch_size=2, scheduler=address)
    finally:
        for p in reversed(procs):
            _stop(p)
    for k in reference.values:
        np.testing.assert_array_equal(res.values[k], reference.values[k])
