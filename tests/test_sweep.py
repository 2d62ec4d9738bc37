"""buig sweep: variants as Dask tasks equal the same variants run one by one."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.app.cli import main
from engine.app.pipeline import run, statistics
from engine.app.scenario import load_scenario, with_overrides
from engine.app.sweep import STAT_COLUMNS, load_sweep, run_sweep

REPLICATES = 12
FLAG_LEVEL = 0.3      # high: on 30,000 households some municipalities are flagged, so the caps differ


def _sweep_file(tmp_path, small_world, body: str):
    f = tmp_path / "sweep.toml"
    f.write_text(f'[base]\npopulation.source = "{small_world}"\nbootstrap.replicates = {REPLICATES}\n'
                 f"bootstrap.batch_size = 5\nbootstrap.seed = 11\nbootstrap.flag_level = {FLAG_LEVEL}\n{body}")
    return f


TWO = """
[[variant]]
name = "phi 0.9, kappa 0.05"
"regime.overrides.objective_weight.objective_share" = 0.9
"cap.kappa" = 0.05

[[variant]]
name = "thresholds 10k-50k"
regime.overrides.objective_weight = { historical_up_to = 10_000, objective_from = 50_000 }
"""


def _table(path):
    t = pq.read_table(path)
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def test_sweep_on_two_workers_equals_the_variants_one_by_one(small_world, tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path, small_world, TWO))
    assert [v.name for v in sweep.variants] == ["phi 0.9, kappa 0.05", "thresholds 10k-50k"]
    res = run_sweep(sweep, tmp_path / "sweep", workers=2)
    with (tmp_path / "sweep" / "comparison.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == ["phi 0.9, kappa 0.05", "thresholds 10k-50k"]
    base = load_scenario(population=str(small_world), replicates=REPLICATES, batch_size=5, bootstrap_seed=11,
                         flag_level=FLAG_LEVEL)
    for v, row, csv_row in zip(sweep.variants, res.rows, rows):
        alone = run(with_overrides(base, v.changes), tmp_path / f"alone-{v.folder}", workers=0, report=False)
        stats = statistics(alone)
        for k in STAT_COLUMNS:
            assert row[k] == stats[k], (v.name, k)
            assert float(csv_row[k]) == float(stats[k]), (v.name, k)     # the CSV keeps every digit
        folder = tmp_path / "sweep" / "variants" / v.folder
        assert (folder / "report.html").is_file()
        for name in ("budgets.parquet", "bands.parquet", "flags.parquet", "capped_budgets.parquet",
                     "replicates.parquet"):
            a, b = _table(folder / name), _table(alone.out / name)
            for c in a:
                np.testing.assert_array_equal(a[c], b[c], err_msg=f"{v.name} {name}:{c}")
    # the variants differ where they should
    assert res.rows[0]["clawed_back_eur"] != res.rows[1]["clawed_back_eur"]
    assert rows[0]["cap.kappa"] == "0.05" and rows[1]["cap.kappa"] == ""


def test_grid_is_the_product_and_population_cannot_vary(small_world, tmp_path):
    grid = ('[grid]\n"cap.kappa" = [0.0, 0.1, 0.2]\n'
            '"regime.overrides.objective_weight.historical_up_to" = [10_000, 15_000]\n')
    sweep = load_sweep(_sweep_file(tmp_path, small_world, grid))
    assert len(sweep.variants) == 6
    assert sweep.keys == ("cap.kappa", "regime.overrides.objective_weight.historical_up_to")
    assert sweep.variants[1].scenario.regime_overrides == {"objective_weight": {"historical_up_to": 15_000}}
    assert len({v.folder for v in sweep.variants}) == 6
    bad = _sweep_file(tmp_path, small_world, '[grid]\n"population.seed" = [1, 2]\n')
    with pytest.raises(ValueError, match="cannot vary"):
        load_sweep(bad)
    with pytest.raises(ValueError, match="nothing to sweep"):
        load_sweep(_sweep_file(tmp_path, small_world, ""))


def test_a_bad_variant_fails_before_any_work(small_world, tmp_path, capsys):
    f = _sweep_file(tmp_path, small_world, '[grid]\n"regime.overrides.objective_weight.objective_from" = [1_000]\n')
    assert main(["sweep", str(f), "--out", str(tmp_path / "o"), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "objective_from=1000" in err and "thresholds must be ordered" in err
    assert not (tmp_path / "o" / "fits").exists()


@pytest.mark.parametrize("name", ["sweep_thresholds.toml", "sweep_kappa.toml"])
def test_example_sweep_files_load(name):
    from pathlib import Path

    sweep = load_sweep(Path(__file__).resolve().parents[1] / "scripts" / name)
    assert len(sweep.variants) >= 2


def test_sweep_generates_with_every_generator_key_of_its_scenario():
    """``buig sweep`` and ``buig run`` build the synthetic population from the same options
    (the sweep once left planted_surplus out)."""
    from engine.app.scenario import GENERATOR_KEYS, load_scenario

    s = load_scenario(households=1_000, planted_surplus=[0.2, 0.25], policy_sd=0.01)
    opts = s.generator_options()
    assert set(opts) == set(GENERATOR_KEYS) and opts["planted_surplus"] == (0.2, 0.25)
    assert opts["households"] == 1_000 and opts["policy_sd"] == 0.01
