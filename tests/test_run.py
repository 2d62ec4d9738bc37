"""buig run end to end on a small population: every output, its contents, exact repetition."""

from __future__ import annotations

import csv
import re
import tomllib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.app.cli import main
from engine.app.pipeline import OUTPUTS, run
from engine.app.scenario import load_scenario, with_overrides
from engine.io.config import dump_toml

HOUSEHOLDS, SEED, REPLICATES = 30_000, 7, 20
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    # planted effects strong enough to be flagged at 30,000 households (the cap then has work to do)
    scenario = tmp_path_factory.mktemp("scenario") / "strong.toml"
    scenario.write_text("[population]\nplanted_effect = -2.5\n", encoding="utf-8")
    rc = main(["run", str(scenario), "--households", str(HOUSEHOLDS), "--seed", str(SEED), "--replicates", str(REPLICATES),
               "--workers", "0", "--quiet", "--out", str(out)])
    assert rc == 0
    return out


def _table(d: Path, name: str) -> dict[str, np.ndarray]:
    t = pq.read_table(d / name)
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def test_every_output_file_is_written(run_dir):
    for name in OUTPUTS:
        assert (run_dir / name).is_file(), name
    for name in ("households.parquet", "neighbourhoods.parquet", "municipalities.parquet", "truth.json"):
        assert (run_dir / "population" / name).is_file()
    assert not list(run_dir.glob(".*tmp*"))                  # no temporary files left behind


def test_all_municipalities_and_budgets_sum_to_tb(run_dir):
    codes = pq.read_table(run_dir / "population" / "municipalities.parquet").column("code").to_pylist()
    assert len(codes) == 388
    for name in ("budgets.parquet", "municipal_costs.parquet", "bands.parquet", "flags.parquet",
                 "capped_budgets.parquet"):
        assert pq.read_table(run_dir / name).column("code").to_pylist() == codes, name
    rek = _table(run_dir, "rekentool.parquet")
    assert len(rek["code"]) == 388 * 5 and set(rek["code"]) == set(codes)
    b = pq.read_table(run_dir / "budgets.parquet")
    tb = float(b.schema.metadata[b"tb"])
    assert abs(b.column("budget").to_numpy().sum() - tb) < 0.01
    capped = _table(run_dir, "capped_budgets.parquet")
    assert abs(capped["capped_budget"].sum() - tb) < 0.01
    flags = _table(run_dir, "flags.parquet")
    np.testing.assert_allclose(flags["budget"], b.column("budget").to_numpy(), rtol=1e-12)   # same point budget
    assert (pq.read_table(run_dir / "replicates.parquet").num_rows == REPLICATES * 388)
    assert np.all(np.abs(_replicates(run_dir)["budget"].sum(axis=1) - tb) < 0.01)


def _replicates(run_dir: Path) -> dict[str, np.ndarray]:
    r = _table(run_dir, "replicates.parquet")
    order = np.lexsort((np.arange(len(r["replicate"])), r["replicate"]))
    return {c: v[order].reshape(REPLICATES, 388) for c, v in r.items() if c != "code"}


def test_bands_are_ordered(run_dir):
    bands = _table(run_dir, "bands.parquet")
    for what in ("budget", "share", "effect_pct"):
        q = np.stack([bands[f"{what}_q{q}"] for q in ("2_5", "5", "50", "95", "97_5")])
        ok = np.all(np.isfinite(q), axis=0)                  # effects are undefined without spending
        assert ok.all() if what != "effect_pct" else ok.sum() > 250
        assert np.all(np.diff(q[:, ok], axis=0) >= 0), what
    f = _table(run_dir, "flags.parquet")
    assert np.all(f["spending_band_q2_5"] <= f["spending_band_q97_5"])


def test_flags_are_consistent_with_the_bands_and_the_cap(run_dir):
    f = _table(run_dir, "flags.parquet")
    level = float(tomllib.loads((run_dir / "scenario.toml").read_text())["bootstrap"]["flag_level"])
    reps = _replicates(run_dir)
    meta = pq.read_table(run_dir / "flags.parquet").schema.metadata
    sd, mean = float(meta[b"between_sd"]), float(meta[b"between_mean"])
    # p_explained against brute force: 1000 independent draws of outcome and municipality effect per replicate
    rng = np.random.default_rng(0)
    z, u = rng.standard_normal((2, 1000) + reps["objective_cost"].shape)
    sim = (reps["objective_cost"] + reps["outcome_sd"] * z) * np.exp((mean + sd * u) * f["spending_elasticity"])
    p = (sim <= f["actual_spending"]).mean(axis=(0, 1))
    np.testing.assert_allclose(f["p_explained"], p, atol=0.015)   # 4 Monte Carlo sd
    np.testing.assert_array_equal(f["flagged"], (f["surplus"] > 0) & (f["p_explained"] < level))
    assert f["flagged"].any()
    # a flagged municipality spends less than the bulk of its simulated spending
    assert np.all(f["actual_spending"][f["flagged"]] < np.median(reps["simulated_spending"], axis=0)[f["flagged"]])
    c = _table(run_dir, "capped_budgets.parquet")
    kappa = float(tomllib.loads((run_dir / "scenario.toml").read_text())["cap"]["kappa"])
    assert np.all(c["clawed_back"][~c["flagged"]] == 0)
    expect = np.where(c["flagged"], np.maximum(c["budget"] - c["actual_spending"] - kappa * c["budget"], 0), 0)
    np.testing.assert_allclose(c["clawed_back"], expect, rtol=1e-12, atol=1e-6)


def test_report_shows_the_budget_stage_and_macro_budget(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    tb = pq.read_table(run_dir / "budgets.parquet").column("budget").to_numpy().sum()
    assert (f"provisional budget 2019: the provisional macro budget EUR 6,219.7 mln, x {HOUSEHOLDS / 7_794_075:.6f} "
            f"for this population&#x27;s households; TB EUR {tb / 1e6:,.1f} mln") in html


def test_redistribution_csv_and_run_json(run_dir):
    with (run_dir / "redistribution.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["table"] for r in rows} == {"letter_2004", "regime"}
    info = (run_dir / "run.json").read_text()
    for stage in ("population", "fit", "predict", "distribute", "bootstrap", "report", "total"):
        assert f'"{stage}"' in info


def test_scenario_toml_repeats_the_run_bit_for_bit(run_dir, tmp_path):
    other = tmp_path / "again"
    assert main(["run", str(run_dir / "scenario.toml"), "--workers", "0", "--quiet", "--out", str(other)]) == 0
    assert (other / "scenario.toml").read_text() == (run_dir / "scenario.toml").read_text()
    for name in ("budgets.parquet", "municipal_costs.parquet", "rekentool.parquet", "coefficients.parquet",
                 "replicates.parquet", "bands.parquet", "flags.parquet", "capped_budgets.parquet",
                 "population/households.parquet", "population/municipalities.parquet"):
        a, b = _table(run_dir, name), _table(other, name)
        assert a.keys() == b.keys()
        for c in a:
            np.testing.assert_array_equal(a[c], b[c], err_msg=f"{name}:{c}")
    for name in ("redistribution.csv", "report.html", "regime.toml"):
        assert (other / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_rerun_resumes_and_another_scenario_is_refused(run_dir, capsys):
    s = load_scenario(run_dir / "scenario.toml")
    again = run(s, run_dir, workers=0, report=False)
    assert again.bootstrap.computed == 0                     # every batch was there
    rc = main(["run", str(run_dir / "scenario.toml"), "--replicates", "21", "--workers", "0", "--out", str(run_dir)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "another scenario" in err and "bootstrap.replicates" in err and "new --out" in err


@pytest.mark.parametrize("text, message", [
    ("[bootstrap]\nreplicate = 5\n", "unknown key 'bootstrap.replicate'"),
    ("[boot]\nseed = 5\n", "unknown section 'boot'"),
    ("[cap]\nkappa = -1\n", "key 'cap.kappa'"),
    ("[bootstrap]\nmethod = \"jackknife\"\n", "bootstrap.method"),
    ("[regime.overrides.objective_weight]\nhistorical_upto = 1\n", "objective_weight.historical_upto"),
    ("[regime.overrides.objective_weight]\nhistorical_up_to = 50000\n", "thresholds must be ordered"),
    ("[regime]\nname = \"2005\"\n", "household model"),
    ("[population]\nsource = \"no/such/folder\"\n", "does not exist"),
])
def test_errors_tell_the_user_what_to_do(tmp_path, capsys, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    rc = main(["run", str(f), "--households", "1000", "--replicates", "2", "--workers", "0", "--quiet",
               "--out", str(tmp_path / "out")] if "source" not in text else
              ["run", str(f), "--replicates", "2", "--workers", "0", "--quiet", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_households_cannot_be_combined_with_a_population_folder(small_world, tmp_path, capsys):
    rc = main(["run", "--population", str(small_world), "--households", "1000", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--households" in capsys.readouterr().err


def test_toml_writer_round_trips_hostile_values():
    data = {"a": {"s": 'x"y\\z\n\t\x7f</script> ë 😀', "f": 0.1, "i": -3, "b": True, "l": [1.5, 2.0],
                  "n": {"deep key.with dot": 1e-300, "empty": {}}}, "top": "v"}
    assert tomllib.loads(dump_toml(data, "header\nline 2")) == data


def test_with_overrides_sets_regime_keys_and_checks_them():
    s = load_scenario(households=1000)
    t = with_overrides(s, {"cap.kappa": 0.05, "regime.overrides.objective_weight.objective_share": 0.9})
    assert t.kappa == 0.05 and t.regime_overrides == {"objective_weight": {"objective_share": 0.9}}
    assert s.regime_overrides == {}                          # the original is unchanged
    with pytest.raises(ValueError, match="unknown key 'cap.kapa'"):
        with_overrides(s, {"cap.kapa": 0.05})


def test_readme_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    code = blocks[0]
    assert len([line for line in code.splitlines() if line.strip() and not line.startswith("#")]) <= 11
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "run" / "report.html").is_file()


def test_unreachable_scheduler_fails_before_any_work(tmp_path, capsys):
    rc = main(["run", "--households", "1000", "--scheduler", "tcp://127.0.0.1:1", "--quiet", "--out",
               str(tmp_path / "o")])
    assert rc == 1 and "cannot reach the Dask scheduler" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
