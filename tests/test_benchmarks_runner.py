"""The benchmark runner's machinery, on dummy cases that sleep (no real workload is timed).

Each run spawns one child per measurement (implementation and round); the sleeps are tens
of milliseconds, so the whole file takes several seconds.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from benchmarks import runner
from benchmarks.protocol import Floor

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

# The peer is as fast as buig in its first NOISY measurements (a burst of load on buig's
# side, say) and ten times slower after: the floor fails on the first round only.
FLAKY = '''
import time
from benchmarks.protocol import Floor, Impl

DATASET = False
REPEAT = 3
FAST, SLOW, NOISY = 0.01, 0.1, 1


def setup_buig(ctx):
    return FAST


def setup_peer(ctx):
    seen = len(list(ctx.shared.glob("peer-*.mark")))
    (ctx.shared / f"peer-{seen}.mark").touch()
    return FAST if seen < NOISY else SLOW


def run(state):
    time.sleep(state)


IMPLEMENTATIONS = [
    Impl("buig", setup=setup_buig, run=run),
    Impl("sleepy", setup=setup_peer, run=run),
    Impl("unfloored", setup=setup_buig, run=run, note="no floor: measured in round 1 only"),
]
FLOORS = [Floor(peer="sleepy", min_ratio=2.0)]
'''

# A floor on parallel speed-up that the sleeps can never meet.
PARALLEL = '''
from sleepy_ok import *  # noqa: F401,F403
from benchmarks.protocol import Floor

FLOORS = [Floor(peer="sleepy", min_ratio=100.0, cores=2)]
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
    for name, text in (("sleepy_ok", SLEEPY), ("sleepy_strict", STRICT), ("sleepy_flaky", FLAKY), ("sleepy_parallel", PARALLEL),
                       ("broken_case", BROKEN)):
        (mods / f"{name}.py").write_text(textwrap.dedent(text), encoding="utf-8")
    monkeypatch.syspath_prepend(str(mods))
    return mods


def _run(names, mods, out, **kw):
    return runner.run(names, out=out, extra_path=[mods], log=lambda msg: None, **kw)


def test_measures_in_subprocesses_and_writes_results(dummy_cases, tmp_path):
    out = tmp_path / "results"
    code, _ = _run(["sleepy_ok"], dummy_cases, out, gate=True, rounds=1)
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
    assert case["floors"][0]["ok"] and results["gate"] == {"checked": True, "violations": [], "unverified": []}
    assert "cores_free" not in case  # no parallel floor: no free-core probes
    md = (out / "results.md").read_text()
    assert "## sleepy_ok" in md and "| sleepy | peer |" in md and "ten times slower" in md


def test_gate_fails_on_violated_floor_and_only_with_gate(dummy_cases, tmp_path):
    code, results = _run(["sleepy_strict"], dummy_cases, tmp_path / "a", gate=True, repeat=1)
    assert code == runner.EXIT_GATE
    (violation,) = results["gate"]["violations"]
    assert violation.startswith("sleepy_strict: sleepy / buig = ")
    assert violation.endswith("floor 100.0 (4 interleaved rounds)")  # 2 rounds, then 2 more before failing
    (case,) = results["cases"]
    held, real = case["floors"]
    assert held["ok"] and not held["retried"] and held["rounds"] == 4  # pooled over the retry rounds too
    assert not real["ok"] and real["retried"] and real["rounds"] == 4 and real["ratio_before_retry"] < 100
    assert case["order"] == ["buig", "sleepy", "sleepy", "buig", "buig", "sleepy", "sleepy", "buig"]
    md = (tmp_path / "a" / "results.md").read_text()
    assert "VIOLATED" in md and "re-measured after" in md

    code, results = _run(["sleepy_strict"], dummy_cases, tmp_path / "b", gate=False, repeat=1, rounds=1,
                         retry_rounds=0)
    assert code == 0 and len(results["gate"]["violations"]) == 1  # reported, not enforced
    assert results["cases"][0]["order"] == ["buig", "sleepy"]  # no retry rounds asked for


def test_rounds_interleave_the_implementations_a_floor_compares(dummy_cases, tmp_path):
    code, results = _run(["sleepy_ok"], dummy_cases, tmp_path / "r", gate=True, rounds=3)
    assert code == 0
    (case,) = results["cases"]
    assert case["order"] == ["buig", "sleepy", "sleepy", "buig", "buig", "sleepy"]  # ABBA...
    for m in case["measurements"]:
        assert len(m["rounds"]) == 3 and len({r["pid"] for r in m["rounds"]}) == 3  # a fresh child per round
        assert m["times_s"] == [t for r in m["rounds"] for t in r["times_s"]]  # pooled over the rounds
        assert m["min_s"] <= m["median_s"] <= m["max_s"] and m["ru_maxrss"] == max(r["ru_maxrss"] for r in m["rounds"])
    (floor,) = case["floors"]
    assert floor["ok"] and floor["rounds"] == 3 and len(floor["round_ratios"]) == 3 and not floor["retried"]
    assert "(3 rounds)" in (tmp_path / "r" / "results.md").read_text()


def test_floor_missed_by_noise_passes_on_the_retry_rounds(dummy_cases, tmp_path):
    code, results = _run(["sleepy_flaky"], dummy_cases, tmp_path / "r", gate=True, rounds=1, retry_rounds=2)
    assert code == 0 and results["gate"]["violations"] == []
    (case,) = results["cases"]
    # round 1 of all three; retry rounds (2 reversed, 3 in order) of the floor's two sides only
    assert case["order"] == ["buig", "sleepy", "unfloored", "sleepy", "buig", "buig", "sleepy"]
    (floor,) = case["floors"]
    assert floor["retried"] and floor["ratio_before_retry"] < 2.0  # round 1: both slept 10 ms
    assert floor["ok"] and floor["ratio"] > 2.0 and floor["rounds"] == 3  # pooled: 6 of 9 peer calls slept 100 ms
    assert floor["round_ratios"][0] < 2.0 < min(floor["round_ratios"][1:])

    code, results = _run(["sleepy_flaky"], dummy_cases, tmp_path / "s", gate=True, rounds=1, retry_rounds=0)
    assert code == runner.EXIT_GATE  # without retry rounds the same noise fails the gate


def test_pool_and_check_floors_on_pooled_medians():
    def m(times, rss=100, ok=True):
        return {"ok": ok, "times_s": times, "median_s": sorted(times)[len(times) // 2], "ru_maxrss": rss,
                "timed_peak_delta": 1, "wall_s": 1.0, "pid": 1}

    buig = runner.pool([m([1.0, 1.0, 1.0], rss=50), m([3.0, 3.0, 3.0], rss=80), m([1.0, 1.0, 1.0])])
    assert buig["median_s"] == 1.0 and buig["ru_maxrss"] == 100 and buig["wall_s"] == 3.0  # a burst in one round
    peer = runner.pool([m([2.0, 2.0, 2.0]), m([2.0, 2.0, 2.0]), m([2.0, 2.0, 2.0])])
    case = type("C", (), {"floors": (Floor(peer="peer", min_ratio=1.5),)})
    (f,) = runner.check_floors(case, {"buig": buig, "peer": peer}, "small")
    assert f["ok"] and f["ratio"] == 2.0 and f["round_ratios"] == [2.0, 2.0 / 3.0, 2.0]
    failed = runner.pool([m([1.0]), {"ok": False, "error": "boom", "wall_s": 1.0}])
    assert not failed["ok"] and failed["error"] == "boom" and len(failed["rounds"]) == 2
    (f,) = runner.check_floors(case, {"buig": failed, "peer": peer}, "small")
    assert not f["ok"] and f["ratio"] is None and "buig" in f["reason"]


def test_failed_measurement_is_recorded(dummy_cases, tmp_path):
    code, results = _run(["broken_case"], dummy_cases, tmp_path / "r", repeat=1)
    assert code == runner.EXIT_FAILED
    (m,) = results["cases"][0]["measurements"]
    assert not m["ok"] and m["error"] == "ValueError: boom" and "Traceback" in m["traceback"]
    assert "failed: ValueError: boom" in (tmp_path / "r" / "results.md").read_text()


def test_cli_rejects_unknown_case(capsys):
    assert runner.main(["--only", "no_such_case"]) == runner.EXIT_USAGE
    assert "available:" in capsys.readouterr().err


def test_free_cores_is_at_most_the_cores_asked_for():
    assert 0 < runner.free_cores(1, seconds=0.05) <= 1.0
    assert 0 < runner.free_cores(2, seconds=0.05) <= 2.0


@pytest.mark.parametrize("free, code", [(1.0, 0), (1.9, runner.EXIT_GATE)])
def test_parallel_floor_is_unverified_only_when_a_core_was_busy(dummy_cases, tmp_path, monkeypatch, free, code):
    """A failing floor that needs 2 free cores: not a violation when a probe found one core taken,
    a violation when both were free (so a real loss of parallel speed-up still fails)."""
    probes = []
    monkeypatch.setattr(runner, "free_cores", lambda n, seconds=0.3: probes.append(n) or free)
    got, results = _run(["sleepy_parallel"], dummy_cases, tmp_path / "r", gate=True, repeat=1, rounds=1,
                        retry_rounds=1)
    assert got == code and set(probes) == {2} and len(probes) == 4  # before and after each of 2 rounds
    (case,) = results["cases"]
    (floor,) = case["floors"]
    assert not floor["ok"] and floor["cores"] == 2 and floor["cores_free_min"] == free
    assert case["cores_free"] == [free] * 4
    md = (tmp_path / "r" / "results.md").read_text()
    if free < 2 - runner.CORE_SLACK:
        assert results["gate"]["violations"] == [] and len(results["gate"]["unverified"]) == 1
        assert "unverified" in floor and "UNVERIFIED" in md and "some not verified" in md
    else:
        assert len(results["gate"]["violations"]) == 1 and results["gate"]["unverified"] == []
        assert "unverified" not in floor and "VIOLATED" in md
