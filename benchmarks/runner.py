"""The benchmark runner: ``python -m benchmarks [--scale small|full] [--only NAME] [--gate] [--out DIR]``.

Prepares the dataset of the scale (``benchmarks/data.py``), measures every implementation
of every selected case in its own subprocess (``benchmarks/child.py``), computes ratios to
buig within this run, checks the cases' floors, and writes ``results.json`` and
``results.md`` atomically to ``--out``.

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
from benchmarks.child import current_rss
from benchmarks.protocol import BUIG, Context
from benchmarks.report import fmt_bytes, fmt_time, machine_info, markdown

ROOT = data.ROOT
DEFAULT_OUT = ROOT / "benchmarks" / "results"
FULL_SCALE_MAX_REPEAT = 3
EXIT_GATE, EXIT_USAGE, EXIT_FAILED = 1, 2, 3


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


def check_floors(case, measurements: dict, scale: str) -> list[dict]:
    checked = []
    for f in case.floors:
        if not f.applies(scale):
            continue
        row = {"impl": f.impl, "peer": f.peer, "min_ratio": f.min_ratio, "ratio": None, "ok": False}
        a, b = measurements.get(f.impl), measurements.get(f.peer)
        bad = [n for n, m in ((f.impl, a), (f.peer, b)) if not (m and m.get("ok"))]
        if bad:
            row["reason"] = f"measurement of {', '.join(bad)} failed"
        elif a["median_s"] <= 0:
            row["reason"] = f"{f.impl} took no measurable time"
        else:
            row["ratio"] = b["median_s"] / a["median_s"]
            row["ok"] = row["ratio"] >= f.min_ratio
        checked.append(row)
    return checked


def run(names: list[str], *, scale: str = "small", seed: int = data.DEFAULT_SEED, repeat: int | None = None,
        out: Path = DEFAULT_OUT, gate: bool = False, extra_path=(), data_base: Path = data.BENCH_DATA,
        sample_interval: float = 0.005, log=None) -> tuple[int, dict]:
    """Run the cases ``names`` (case names or dotted module names); return (exit status, results).

    ``extra_path`` is prepended to the children's ``PYTHONPATH`` (for cases outside this
    package, e.g. in tests).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.time()
    t_start = time.perf_counter()
    selected = [case_registry.load(n) for n in names]
    households = data.SCALES[scale]
    dataset = None
    if any(c.dataset for c in selected):
        dataset = data.ensure(scale, seed, base=data_base, log=log)
    results = {
        "schema": 1, "command": sys.argv, "scale": scale, "households": households, "seed": seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(ROOT), "dataset": dataset, "cases": [],
    }
    violations, failed = [], False
    workdir = Path(tempfile.mkdtemp(prefix="buig-bench-"))
    try:
        for case in selected:
            reps = repeat or (case.repeat if scale == "small" else min(case.repeat, FULL_SCALE_MAX_REPEAT))
            shared = workdir / case.name / "shared"
            shared.mkdir(parents=True)
            by_name = {}
            for impl in case.implementations:
                ctx = Context(case=case.name, impl=impl.name, scale=scale, households=households, seed=seed,
                              dataset=Path(dataset["path"]) if (dataset and case.dataset) else None,
                              tmp=workdir / case.name / impl.name, shared=shared, repeat=reps)
                log(f"[{case.name}] {impl.name}: {reps} timed calls ...")
                m = measure(case, impl, ctx, reps, extra_path, sample_interval)
                by_name[impl.name] = m
                if m.get("ok"):
                    log(f"[{case.name}] {impl.name}: median {fmt_time(m['median_s'])} "
                        f"({fmt_time(m['min_s'])} – {fmt_time(m['max_s'])}), warm-up {fmt_time(m['warmup_s'])}, "
                        f"peak RSS {fmt_bytes(m['ru_maxrss'])}, Δ timed {fmt_bytes(m['timed_peak_delta'], sign=True)}")
                else:
                    failed = True
                    log(f"[{case.name}] {impl.name}: FAILED: {m.get('error')}\n{m.get('stderr', '')}")
            ref = by_name[BUIG]
            for m in by_name.values():
                ok = m.get("ok") and ref.get("ok") and ref["median_s"] > 0
                m["ratio_to_buig"] = m["median_s"] / ref["median_s"] if ok else None
            floors = check_floors(case, by_name, scale)
            for f in floors:
                if not f["ok"]:
                    got = f"{f['ratio']:.3f}" if f["ratio"] is not None else f["reason"]
                    violations.append(f"{case.name}: {f['peer']} / {f['impl']} = {got}, floor {f['min_ratio']}")
            results["cases"].append({"name": case.name, "module": case.module, "description": case.description,
                                     "repeat": reps, "measurements": list(by_name.values()), "floors": floors})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["duration_s"] = time.perf_counter() - t_start
    results["gate"] = {"checked": gate, "violations": violations}
    write_results(results, Path(out))
    log(f"wrote {Path(out) / 'results.json'} and results.md ({results['duration_s']:.1f} s)")
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
    code, results = run(names, scale=args.scale, seed=args.seed, repeat=args.repeat, out=args.out, gate=args.gate)
    print(markdown(results))
    return code
