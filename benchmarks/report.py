"""Machine description and the Markdown report of a benchmark run (stdlib only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("numpy", "numba", "pyarrow", "scipy", "dask", "distributed", "glum", "tabmat",
            "scikit-learn", "statsmodels", "psutil")
THREAD_ENV = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "MKL_NUM_THREADS", "PYTHONHASHSEED")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


def _git(root: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
        return {"commit": git("rev-parse", "HEAD") or None, "branch": git("rev-parse", "--abbrev-ref", "HEAD") or None,
                "dirty": bool(changed), "changed_files": len(changed)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def machine_info(root: Path) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _memory_total(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": versions,
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "git": _git(root),
    }


def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_bytes(b: float | None, sign: bool = False) -> str:
    if b is None:
        return "—"
    mib = b / 2**20
    return f"{mib:+,.0f} MiB" if sign else f"{mib:,.0f} MiB"


def fmt_value(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:,.4g}"
    return str(v)


def _row(m: dict) -> str:
    if not m.get("ok"):
        err = (m.get("error") or "failed").replace("|", "\\|").splitlines()[0][:120]
        return f"| {m['impl']} | {m['role']} | failed: {err} | | | | | | |"
    ratio = "—" if m.get("ratio_to_buig") is None else f"{m['ratio_to_buig']:.2f}"
    extras = ", ".join(f"{k}={fmt_value(v)}" for k, v in m.get("extras", {}).items()) or ""
    n = len(m.get("rounds", ()))
    rounds = f" ({n} rounds)" if n > 1 else ""
    return (f"| {m['impl']} | {m['role']} | {fmt_time(m['median_s'])}{rounds} | {fmt_time(m['min_s'])} – {fmt_time(m['max_s'])} "
            f"| {fmt_time(m['warmup_s'])} | {fmt_bytes(m['ru_maxrss'])} | {fmt_bytes(m['timed_peak_delta'], sign=True)} "
            f"| {ratio} | {extras} |")


def markdown(results: dict) -> str:
    mc = results["machine"]
    git = mc.get("git", {})
    ds = results.get("dataset") or {}
    lines = [
        f"# buig benchmarks — scale {results['scale']} ({results['households']:,} households)",
        "",
        f"- machine: {mc['cpu_model']}, {mc['cpu_count']} cores (os.cpu_count), "
        f"{fmt_bytes(mc['memory_bytes'])} memory, load average at start {mc.get('load_average')}",
        f"- Python {mc['python']}; " + ", ".join(f"{k} {v}" for k, v in mc["packages"].items() if v),
        f"- git {git.get('commit')}{' (working tree has uncommitted changes)' if git.get('dirty') else ''}",
        f"- dataset: {ds.get('path', 'none')}" + (f" (seed {ds['seed']}, generator {ds['generator']})" if ds else ""),
        f"- started {results['started']}, took {results['duration_s']:.1f} s; repeats per measurement: "
        + ", ".join(f"{c['name']} {c['repeat']}" for c in results["cases"]),
        "",
        "Ratio to buig = peer median time / buig median time, measured in this run on the same data "
        "(> 1: buig is faster). An implementation a floor compares is measured in several interleaved rounds "
        "(a fresh subprocess each, ABBA order); its median, min and max are over the timed calls of all rounds "
        "(warm-up and extras: round 1), and a floor that is not met gets more rounds before it counts as "
        "violated. Peak RSS = `ru_maxrss` of the measurement's own subprocess (setup, warm-up "
        "and timed calls). Δ RSS = highest RSS sampled during the timed calls minus the RSS just before them. "
        "Warm-up = the first, untimed call (Numba compiles there); it is not part of the median.",
    ]
    for case in results["cases"]:
        lines += ["", f"## {case['name']}", ""]
        if case.get("description"):
            lines += [case["description"], ""]
        lines += ["| implementation | role | median | min – max | warm-up | peak RSS | Δ RSS timed | ratio to buig | extras |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [_row(m) for m in case["measurements"]]
        notes = [f"- {m['impl']}: {m['note']}" for m in case["measurements"] if m.get("note")]
        if notes:
            lines += [""] + notes
        if case["floors"]:
            lines += ["", "Floors (checked with `--gate`):", ""]
            for f in case["floors"]:
                got = "n/a" if f["ratio"] is None else f"{f['ratio']:.2f}"
                if f.get("round_ratios"):
                    got += " (rounds: " + ", ".join(f"{r:.2f}" for r in f["round_ratios"]) + ")"
                if f.get("retried"):
                    got += f", re-measured after {f['ratio_before_retry']:.2f}"
                if f.get("cores_free_min") is not None:
                    got += f", fewest free cores {f['cores_free_min']:.2f} of {f['cores']}"
                verdict = "ok" if f["ok"] else ("UNVERIFIED: " + f["unverified"]) if f.get("unverified") else "VIOLATED"
                lines.append(f"- {f['peer']} / {f['impl']} ≥ {f['min_ratio']}: {got} — "
                             f"{verdict}{' (' + f['reason'] + ')' if f.get('reason') else ''}")
    gate = results["gate"]
    lines += ["", "## Gate", ""]
    if not gate["violations"]:
        lines.append(("All floors hold." if not gate.get("unverified") else "No floor violated; some not verified:")
                     + ("" if gate["checked"] else " (not enforced: run with `--gate`)"))
        lines += [f"- {v}" for v in gate.get("unverified", [])]
    else:
        lines += [f"- {v}" for v in gate["violations"]]
        if not gate["checked"]:
            lines.append("(not enforced: run with `--gate`)")
    return "\n".join(lines) + "\n"
