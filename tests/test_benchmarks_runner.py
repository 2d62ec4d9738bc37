"""The benchmark runner's machinery, on dummy cases that sleep (no real workload is timed).

Each run spawns one child per implementation; the sleeps are tens of milliseconds, so the
whole file takes a few seconds.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from benchmarks import runner

SLEEPY = '''
import time
from benchmarks.protocol import Floor, Impl

DATASET = False
REPEAT = 3
FAST, SLOW = 0.01, 0.1


def setup_fast(ctx):
    print("a case may print to stdout without breaking the protocol")
    return ctx, FAST


def setup_slow(ctx):
    return ctx, SLOW


def run(state):
    time.sleep(state[1])
    return state[1]


def extras_fast(state, result, timing):
    state[0].save("buig_result", {"slept": result})
    return {"slept": result, "calls": len(timing["times_s"])}


def extras_slow(state, result, timing):
    return {"slept": result, "buig_slept": state[0].load("buig_result")["slept"]}


IMPLEMENTATIONS = [
    Impl("buig", setup=setup_fast, run=run, extras=extras_fast),
    Impl("sleepy", setup=setup_slow, run=run, extras=extras_slow, note="ten times slower"),
]
FLOORS = [Floor(peer="sleepy", min_ratio=2.0)]
'''

STRICT = '''
from sleepy_ok import *  # noqa: F401,F403
from benchmarks.protocol import Floor

FLOORS = [Floor(peer="sleepy", min_ratio=2.0), {"peer": "sleepy", "min_ratio": 100.0}]
'''

BROKEN = '''
from benchmarks.protocol import Impl

DATASET = False


def run(state):
    raise ValueError("boom")


IMPLEMENTATIONS = [Impl("buig", setup=lambda ctx: None, run=run)]
'''


@pytest.fixture
def dummy_cases(tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    for name, text in (("sleepy_ok", SLEEPY), ("sleepy_strict", STRICT), ("broken_case", BROKEN)):
        (mods / f"{name}.py").write_text(textwrap.dedent(text), encoding="utf-8")
    monkeypatch.syspath_prepend(str(mods))
    return mods


def _run(names, mods, out, **kw):
    return runner.run(names, out=out, extra_path=[mods], log=lambda msg: None, **kw)


def test_measures_in_subprocesses_and_writes_results(dummy_cases, tmp_path):
    out = tmp_path / "results"
    code, _ = _run(["sleepy_ok"], dummy_cases, out, gate=True)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]  # no temporary left over
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["python"]
    assert results["dataset"] is None  # the case declared DATASET = False: nothing generated
    (case,) = results["cases"]
    fast, slow = case["measurements"]
    assert (fast["impl"], fast["role"], slow["impl"], slow["role"]) == ("buig", "buig", "sleepy", "peer")
    for m in (fast, slow):
        assert m["ok"] and len(m["times_s"]) == 3 and m["warmup_s"] > 0
        assert m["min_s"] <= m["median_s"] <= m["max_s"]
        assert m["ru_maxrss"] > 0 and m["timed_peak_rss"] > 0 and m["rss_samples"] >= 6
    assert fast["pid"] != slow["pid"]  # each measurement in its own process
    assert fast["median_s"] >= 0.01 and slow["median_s"] >= 0.1
    assert fast["ratio_to_buig"] == 1.0 and slow["ratio_to_buig"] > 2  # about 10; sleeps only overshoot
    assert fast["extras"] == {"slept": 0.01, "calls": 3}
    assert slow["extras"] == {"slept": 0.1, "buig_slept": 0.01}  # shared folder, declared order
    assert case["floors"][0]["ok"] and results["gate"] == {"checked": True, "violations": []}
    md = (out / "results.md").read_text()
    assert "## sleepy_ok" in md and "| sleepy | peer |" in md and "ten times slower" in md


def test_gate_fails_on_violated_floor_and_only_with_gate(dummy_cases, tmp_path):
    code, results = _run(["sleepy_strict"], dummy_cases, tmp_path / "a", gate=True, repeat=1)
    assert code == runner.EXIT_GATE
    (violation,) = results["gate"]["violations"]
    assert violation.startswith("sleepy_strict: sleepy / buig = ") and violation.endswith("floor 100.0")
    assert [f["ok"] for f in results["cases"][0]["floors"]] == [True, False]
    assert "VIOLATED" in (tmp_path / "a" / "results.md").read_text()

    code, results = _run(["sleepy_strict"], dummy_cases, tmp_path / "b", gate=False, repeat=1)
    assert code == 0 and len(results["gate"]["violations"]) == 1  # reported, not enforced


def test_failed_measurement_is_recorded(dummy_cases, tmp_path):
    code, results = _run(["broken_case"], dummy_cases, tmp_path / "r", repeat=1)
    assert code == runner.EXIT_FAILED
    (m,) = results["cases"][0]["measurements"]
    assert not m["ok"] and m["error"] == "ValueError: boom" and "Traceback" in m["traceback"]
    assert "failed: ValueError: boom" in (tmp_path / "r" / "results.md").read_text()


def test_cli_rejects_unknown_case(capsys):
    assert runner.main(["--only", "no_such_case"]) == runner.EXIT_USAGE
    assert "available:" in capsys.readouterr().err
