"""The benchmark runner: ``python -m benchmarks [--scale small|full] [--only NAME] [--gate] [--out DIR]``.

Prepares the dataset of the scale (``benchmarks/data.py``), measures every implementation
of every selected case in its own subprocess (``benchmarks/child.py``), computes ratios to
buig within this run, checks the cases' floors, and writes ``results.json`` and
``results.md`` atomically to ``--out``.

Floors are decided on interleaved rounds: every implementation a floor compares is
measured ``--rounds`` times (a fresh subprocess each time), alternating with its peers
in ABBA order (round 1 in declared order, round 2 reversed, ...), and a ratio is the
quotient of the medians of all timed calls pooled over the rounds. A floor that fails
gets ``--retry-rounds`` more interleaved rounds of its two implementations and is then
decided again on the pooled medians of all rounds.

A floor on parallel speed-up (``Floor(cores=N)``) can only be measured on N free cores:
around each of its rounds the runner measures how many cores a CPU-bound process gets
(:func:`free_cores`). If such a floor fails and the fewest free cores measured were below
``N - CORE_SLACK``, another process held a core: the floor is reported as unverified
(printed, in the results, exit 0), never as passed.

Exit status: 0 when done (and, with ``--gate``, every floor holds); 1 when ``--gate`` is
given and a floor is violated; 2 on a usage error (unknown case, bad option); 3 when a
measurement failed (its error is in the results; a floor that depends on it counts as
violated).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import cases as case_registry
from benchmarks import data
from benchmarks.child import current_rss, summarize
from benchmarks.protocol import BUIG, Context
from benchmarks.report import fmt_bytes, fmt_time, machine_info, markdown

ROOT = data.ROOT
DEFAULT_OUT = ROOT / "benchmarks" / "results"
FULL_SCALE_MAX_REPEAT = 3
DEFAULT_ROUNDS = 2        # interleaved rounds of every implementation a floor compares
DEFAULT_RETRY_ROUNDS = 2  # more interleaved rounds for a floor that fails, before it counts as violated
ROUND_FIELDS = ("pid", "ok", "median_s", "min_s", "max_s", "times_s", "setup_s", "warmup_s", "wall_s",
                "ru_maxrss", "timed_peak_delta", "error")
EXIT_GATE, EXIT_USAGE, EXIT_FAILED = 1, 2, 3
CORE_SLACK = 0.3          # a parallel floor is checkable when free cores >= its cores - CORE_SLACK
_SPIN = ("import time\nn = 0\nend = time.perf_counter() + {seconds}\n"
         "while time.perf_counter() < end:\n    n += 1\nprint(n)")


def free_cores(n: int, seconds: float = 0.3) -> float:
    """About how many of ``n`` cores are free: the work of ``n`` CPU-bound processes spinning
    at once, over the work of one spinning alone (before and after, the larger taken).
    ``n`` on idle cores; less when other processes hold some."""
    def spin(k: int) -> int:
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(seconds=seconds)], stdout=subprocess.PIPE,
                                  text=True) for _ in range(k)]
        return sum(int(p.communicate()[0]) for p in procs)

    one = max(spin(1), 1)
    together = spin(n)
    one = max(one, spin(1), 1)
    return min(together / one, float(n))


def measure(case, impl, ctx: Context, repeat: int, extra_path=(), sample_interval: float = 0.005) -> dict:
    """Run one implementation of a case in a fresh subprocess and return its measurement."""
    spec = {"module": case.module, "impl": impl.name, "context": ctx.to_json(), "repeat": repeat,
            "sample_interval": sample_interval}
    base = {"impl": impl.name, "role": impl.role, "note": impl.note, "repeat": repeat,
            "parent_rss_at_spawn": current_rss()}
    ctx.tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.child"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=case.timeout, cwd=ROOT,
                              env=data.child_env(extra_path))
    except subprocess.TimeoutExpired as exc:
        return {**base, "ok": False, "error": f"timed out after {case.timeout:.0f} s",
                "stderr": _tail(exc.stderr), "wall_s": time.perf_counter() - t0}
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {**base, "ok": False, "wall_s": wall, "stderr": _tail(proc.stderr),
                "error": f"child exited with status {proc.returncode} without a result"}
    out = {**base, **out, "wall_s": wall, "returncode": proc.returncode}
    if not out.get("ok"):
        out["stderr"] = _tail(proc.stderr)
    return out


def _tail(text, n: int = 30) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join((text or "").splitlines()[-n:])


def floor_impls(case, scale: str) -> list[str]:
    """The implementations a floor of this scale compares, in declared order."""
    used = {n for f in case.floors if f.applies(scale) for n in (f.impl, f.peer)}
    return [i.name for i in case.implementations if i.name in used]


def pool(rounds: list[dict]) -> dict:
    """One implementation's measurement over its rounds: timing of all timed calls pooled.

    The first round's record (extras, setup, warm-up) with ``times_s`` / ``median_s`` /
    ``min_s`` / ``max_s`` over the timed calls of every round, the highest ``ru_maxrss`` and
    ``timed_peak_delta`` of any round, and ``rounds``: a summary of each round. A failed
    round makes the whole measurement failed (its record is the one kept).
    """
    failed = [m for m in rounds if not m.get("ok")]
    out = dict(failed[0] if failed else rounds[0])
    out["rounds"] = [{k: m[k] for k in ROUND_FIELDS if k in m} for m in rounds]
    if not failed:
        out.update(summarize([t for m in rounds for t in m["times_s"]]))
        for k in ("ru_maxrss", "timed_peak_delta"):
            out[k] = max(m[k] for m in rounds)
        out["wall_s"] = sum(m["wall_s"] for m in rounds)
    return out


def check_floors(case, measurements: dict, scale: str, cores_free: list[float] | None = None) -> list[dict]:
    """Each floor of ``scale`` on the pooled medians of ``measurements`` (from :func:`pool`).

    ``round_ratios`` are the ratios of the rounds measured next to each other (round i of
    the peer over round i of the implementation), for the report; the decision is on
    ``ratio``, the pooled medians. ``cores_free``: the free cores measured around the rounds
    (:func:`free_cores`); a parallel floor that fails with fewer free cores than it needs is
    ``unverified`` (not ``ok``, and not a violation).
    """
    checked = []
    for f in case.floors:
        if not f.applies(scale):
            continue
        row = {"impl": f.impl, "peer": f.peer, "min_ratio": f.min_ratio, "ratio": None, "ok": False, "retried": False}
        a, b = measurements.get(f.impl), measurements.get(f.peer)
        bad = [n for n, m in ((f.impl, a), (f.peer, b)) if not (m and m.get("ok"))]
        if bad:
            row["reason"] = f"measurement of {', '.join(bad)} failed"
        elif a["median_s"] <= 0:
            row["reason"] = f"{f.impl} took no measurable time"
        else:
            row["ratio"] = b["median_s"] / a["median_s"]
            row["ok"] = row["ratio"] >= f.min_ratio
            pairs = zip(a.get("rounds", [a]), b.get("rounds", [b]))
            row["round_ratios"] = [rb["median_s"] / ra["median_s"] for ra, rb in pairs if ra["median_s"] > 0]
            row["rounds"] = len(row["round_ratios"])
            if f.cores > 1:
                row["cores"] = f.cores
                row["cores_free_min"] = min(cores_free) if cores_free else None
                if not row["ok"] and cores_free and min(cores_free) < f.cores - CORE_SLACK:
                    row["unverified"] = (f"needs {f.cores} free cores; measured as few as {min(cores_free):.2f} "
                                         "during its rounds (another process held a core)")
        checked.append(row)
    return checked


class CaseRun:
    """The measurements of one case: interleaved rounds, one fresh subprocess per measurement."""

    def __init__(self, case, *, scale, households, seed, repeat, dataset, workdir: Path, extra_path=(),
                 sample_interval=0.005, log=print):
        self.case, self.scale, self.households, self.seed, self.repeat = case, scale, households, seed, repeat
        self.dataset, self.workdir, self.extra_path, self.sample_interval, self.log = (
            dataset, workdir, extra_path, sample_interval, log)
        self.shared = workdir / "shared"
        self.shared.mkdir(parents=True)
        self.measured = {impl.name: [] for impl in case.implementations if impl.runs_at(scale)}
        self.order: list[str] = []
        self.parallel = max([f.cores for f in case.floors if f.applies(scale)], default=1)
        self.cores_free: list[float] = []

    def measure_round(self, names: list[str], k: int) -> None:
        """Round ``k`` (from 0) of ``names``: declared order in even rounds, reversed in odd ones (ABBA)."""
        case = self.case
        if self.parallel > 1:
            self.cores_free.append(free_cores(self.parallel))
        for name in (names if k % 2 == 0 else names[::-1]):
            if self.measured[name] and not self.measured[name][-1].get("ok"):
                continue  # failed before: not measured again
            ctx = Context(case=case.name, impl=name, scale=self.scale, households=self.households, seed=self.seed,
                          dataset=self.dataset, tmp=self.workdir / name, shared=self.shared, repeat=self.repeat)
            tag = f"[{case.name}] {name}" + (f" (round {k + 1})" if k else "")
            self.log(f"{tag}: {self.repeat} timed calls ...")
            m = measure(case, case.impl(name), ctx, self.repeat, self.extra_path, self.sample_interval)
            self.measured[name].append(m)
            self.order.append(name)
            if m.get("ok"):
                self.log(f"{tag}: median {fmt_time(m['median_s'])} "
                         f"({fmt_time(m['min_s'])} – {fmt_time(m['max_s'])}), warm-up {fmt_time(m['warmup_s'])}, "
                         f"peak RSS {fmt_bytes(m['ru_maxrss'])}, Δ timed {fmt_bytes(m['timed_peak_delta'], sign=True)}")
            else:
                self.log(f"{tag}: FAILED: {m.get('error')}\n{m.get('stderr', '')}")
        if self.parallel > 1:
            self.cores_free.append(free_cores(self.parallel))
            self.log(f"[{case.name}] free cores around round {k + 1}: "
                     + ", ".join(f"{c:.2f}" for c in self.cores_free[-2:]))

    def decide(self) -> tuple[dict, list[dict]]:
        by_name = {n: pool(ms) for n, ms in self.measured.items()}
        return by_name, check_floors(self.case, by_name, self.scale, self.cores_free)

    def run(self, rounds: int, retry_rounds: int) -> dict:
        """Round 1 of every implementation, ``rounds - 1`` more of those a floor compares, and
        ``retry_rounds`` more of the two sides of each floor that is not met; the case's record."""
        case = self.case
        self.measure_round(list(self.measured), 0)
        gated = floor_impls(case, self.scale)
        for k in range(1, rounds):
            self.measure_round(gated, k)
        by_name, floors = self.decide()
        missed = {j: f for j, f in enumerate(floors) if not f["ok"] and f["ratio"] is not None}
        if missed and retry_rounds > 0:
            again = [n for n in gated if any(n in (f["impl"], f["peer"]) for f in missed.values())]
            self.log(f"[{case.name}] below the floor after {rounds} round(s): "
                     + ", ".join(f"{f['peer']} / {f['impl']} = {f['ratio']:.3f} < {f['min_ratio']}"
                                 for f in missed.values())
                     + f"; {retry_rounds} more interleaved round(s) of {', '.join(again)}")
            for k in range(rounds, rounds + retry_rounds):
                self.measure_round(again, k)
            by_name, floors = self.decide()  # the same floors in the same order, on all rounds
            for j, f in missed.items():
                floors[j].update(retried=True, ratio_before_retry=f["ratio"])
        ref = by_name[BUIG]
        for m in by_name.values():
            ok = m.get("ok") and ref.get("ok") and ref["median_s"] > 0
            m["ratio_to_buig"] = m["median_s"] / ref["median_s"] if ok else None
        return {"name": case.name, "module": case.module, "description": case.description, "repeat": self.repeat,
                "order": self.order, "measurements": list(by_name.values()), "floors": floors,
                **({"cores_free": self.cores_free} if self.cores_free else {})}


def run(names: list[str], *, scale: str = "small", seed: int = data.DEFAULT_SEED, repeat: int | None = None,
        out: Path = DEFAULT_OUT, gate: bool = False, extra_path=(), data_base: Path = data.BENCH_DATA,
        sample_interval: float = 0.005, rounds: int = DEFAULT_ROUNDS, retry_rounds: int = DEFAULT_RETRY_ROUNDS,
        log=None) -> tuple[int, dict]:
    """Run the cases ``names`` (case names or dotted module names); return (exit status, results).

    ``rounds``: interleaved rounds of the implementations a floor compares (the others are
    measured once); ``retry_rounds``: more rounds for a floor that fails before it counts
    as violated (0: none). ``extra_path`` is prepended to the children's ``PYTHONPATH``
    (for cases outside this package, e.g. in tests).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.time()
    t_start = time.perf_counter()
    selected = [case_registry.load(n) for n in names]
    households = data.SCALES[scale]
    datasets = {}                     # truth model -> marker of its dataset
    for c in selected:
        if c.dataset and c.truth not in datasets:
            datasets[c.truth] = data.ensure(scale, seed, base=data_base, log=log, truth=c.truth)
    dataset = datasets.get("default") or next(iter(datasets.values()), None)
    results = {
        "schema": 1, "command": sys.argv, "scale": scale, "households": households, "seed": seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(ROOT), "dataset": dataset, "datasets": datasets, "cases": [],
    }
    violations, unverified, failed = [], [], False
    workdir = Path(tempfile.mkdtemp(prefix="buig-bench-"))
    try:
        for case in selected:
            reps = repeat or (case.repeat if scale == "small" else min(case.repeat, FULL_SCALE_MAX_REPEAT))
            cr = CaseRun(case, scale=scale, households=households, seed=seed, repeat=reps,
                         dataset=Path(datasets[case.truth]["path"]) if case.dataset else None,
                         workdir=workdir / case.name, extra_path=extra_path, sample_interval=sample_interval, log=log)
            record = cr.run(rounds, retry_rounds)
            failed = failed or any(not m.get("ok") for m in record["measurements"])
            for f in record["floors"]:
                if f.get("unverified"):
                    unverified.append(f"{case.name}: {f['peer']} / {f['impl']} = {f['ratio']:.3f}, floor "
                                      f"{f['min_ratio']}: unverified, {f['unverified']}")
                elif not f["ok"]:
                    got = f"{f['ratio']:.3f}" if f["ratio"] is not None else f["reason"]
                    violations.append(f"{case.name}: {f['peer']} / {f['impl']} = {got}, floor {f['min_ratio']}"
                                      + (f" ({f['rounds']} interleaved rounds)" if f.get("rounds") else ""))
            results["cases"].append(record)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["duration_s"] = time.perf_counter() - t_start
    results["gate"] = {"checked": gate, "violations": violations, "unverified": unverified}
    write_results(results, Path(out))
    log(f"wrote {Path(out) / 'results.json'} and results.md ({results['duration_s']:.1f} s)")
    if unverified:
        log("gate: floors NOT verified (they need free cores this run did not have):\n  " + "\n  ".join(unverified))
    if failed:
        return EXIT_FAILED, results
    if gate and violations:
        log("gate: floors violated:\n  " + "\n  ".join(violations))
        return EXIT_GATE, results
    return 0, results


def write_results(results: dict, out: Path) -> None:
    """Write ``results.json`` and ``results.md`` into ``out``, each via a temporary name and a rename."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=1) + "\n"), ("results.md", markdown(results))):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                 epilog="Cases: " + ", ".join(case_registry.available()))
    ap.add_argument("--scale", choices=sorted(data.SCALES), default="small",
                    help="dataset size: small = 300,000 households, full = 7,794,075 (default small)")
    ap.add_argument("--only", help="comma-separated case names (default: all)")
    ap.add_argument("--repeat", type=int, help=f"timed calls per measurement (default: the case's, at most "
                                               f"{FULL_SCALE_MAX_REPEAT} at full scale)")
    ap.add_argument("--gate", action="store_true", help="exit 1 when a case's floor (a ratio to a peer) is violated")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                    help="interleaved rounds (a fresh subprocess each) of the implementations a floor compares "
                         f"(default {DEFAULT_ROUNDS})")
    ap.add_argument("--retry-rounds", type=int, default=DEFAULT_RETRY_ROUNDS,
                    help=f"more interleaved rounds for a floor that fails before it counts as violated "
                         f"(default {DEFAULT_RETRY_ROUNDS}; 0: none)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for results.json and results.md")
    ap.add_argument("--seed", type=int, default=data.DEFAULT_SEED, help="seed of the synthetic dataset (default 0)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    available = case_registry.available()
    if args.list:
        for name in available:
            case = case_registry.load(name)
            print(f"{name:<14} {', '.join(i.name for i in case.implementations):<40} {case.description}")
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else available
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        print(f"unknown case(s) {', '.join(unknown) or '(none given)'}; available: {', '.join(available)}", file=sys.stderr)
        return EXIT_USAGE
    if args.repeat is not None and args.repeat < 1:
        print("--repeat must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.rounds < 1 or args.retry_rounds < 0:
        print("--rounds must be at least 1 and --retry-rounds at least 0", file=sys.stderr)
        return EXIT_USAGE
    code, results = run(names, scale=args.scale, seed=args.seed, repeat=args.repeat, out=args.out, gate=args.gate,
                        rounds=args.rounds, retry_rounds=args.retry_rounds)
    print(markdown(results))
    return code
