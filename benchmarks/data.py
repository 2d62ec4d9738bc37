"""The benchmark datasets: one synthetic population per scale, cached in ``bench-data/``.

``bench-data/<scale>-seed<seed>/`` holds what ``engine.world.synth.generate`` writes plus
``dataset.json`` (households, seed, truth, and a fingerprint of the generator's source and
input data); a case that declares ``TRUTH = "realistic"`` reads ``bench-data/<scale>-realistic-seed<seed>/``
(``--truth realistic``: the realistic catalogue's 42 household indicators and 6 neighbourhood
characteristics more). A folder is reused when that marker matches; it is (re)generated when it is
missing or was made by a different generator. Generation runs in a subprocess so the
runner stays small (see ``benchmarks/child.py`` on ``ru_maxrss``), into a temporary
folder that is renamed into place when complete.

    python -m benchmarks.data --scale small [--seed 0] [--truth realistic]     prepare one dataset by hand
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATA = ROOT / "bench-data"
SCALES = {"small": 300_000, "full": 7_794_075}
DEFAULT_SEED = 0
TRUTHS = ("default", "realistic")
MARKER = "dataset.json"
_GENERATOR_SOURCES = ("engine/world", "engine/model/schema.py", "engine/model/catalogue.py", "engine/model/norms.py",
                      "engine/data/norms", "engine/data/cbs", "engine/data/catalogues")


def fingerprint(root: Path = ROOT) -> str:
    """SHA-256 over the generator's source files and input data (a short hex prefix)."""
    h = hashlib.sha256()
    for rel in _GENERATOR_SOURCES:
        p = root / rel
        files = sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes() if f.exists() else b"<missing>")
    return h.hexdigest()[:16]


def dataset_dir(scale: str, seed: int, base: Path = BENCH_DATA, truth: str = "default") -> Path:
    return base / (f"{scale}-seed{seed}" if truth == "default" else f"{scale}-{truth}-seed{seed}")


def _marker_ok(folder: Path, households: int, seed: int, fp: str, truth: str) -> bool:
    try:
        m = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (m.get("households") == households and m.get("seed") == seed and m.get("generator") == fp
            and m.get("truth", "default") == truth)


def ensure(scale: str, seed: int = DEFAULT_SEED, base: Path = BENCH_DATA, log=print, truth: str = "default") -> dict:
    """The dataset for ``scale`` (and truth model ``truth``, one of :data:`TRUTHS`): reuse it if
    the marker matches, else generate it.

    Returns the marker (households, seed, generator, seconds, bytes) plus ``path`` and
    ``generated_now``.
    """
    households = SCALES[scale]
    folder = dataset_dir(scale, seed, base, truth)
    fp = fingerprint()
    if _marker_ok(folder, households, seed, fp, truth):
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return {**marker, "path": str(folder), "generated_now": False}
    why = "missing" if not folder.exists() else "made by a different generator or incomplete"
    log(f"dataset {folder.name}: {why}; generating {households:,} households (seed {seed}) ...")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=base))
    try:
        subprocess.run([sys.executable, "-m", "benchmarks.data", "--generate-into", str(tmp),
                        "--households", str(households), "--seed", str(seed), "--generator", fp, "--truth", truth],
                       check=True, cwd=ROOT, env=child_env())
        if folder.exists():
            stale = folder.with_name(f".stale-{folder.name}-{os.getpid()}")
            os.rename(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    log(f"dataset {folder.name}: generated in {marker['seconds']:.1f} s, {marker['bytes'] / 2**20:,.1f} MiB")
    return {**marker, "path": str(folder), "generated_now": True}


def child_env(extra_path=()) -> dict:
    """Environment for subprocesses: the repository (and ``extra_path``) importable, and OpenMP's idle
    threads asleep for every implementation alike (``OMP_WAIT_POLICY=PASSIVE`` unless set), as ``kernels``
    sets it for buig: which one a peer got depended on whether its OpenMP runtime loaded before or after
    the first import of ``kernels`` in the child. On the 2 vCPUs glum's fit of 47 k rows took 0.33-0.38 s
    with it and 0.75-0.95 s without, its spinning threads taking the cores from the thread doing the work."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parts = [str(p) for p in extra_path] + [str(ROOT)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _generate_into(folder: Path, households: int, seed: int, generator: str, truth: str = "default") -> None:
    from engine.world.synth import generate

    t0 = time.perf_counter()
    generate(folder, households=households, seed=seed, truth_model=truth)
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    marker = {"households": households, "seed": seed, "truth": truth, "generator": generator,
              "seconds": seconds, "bytes": size, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="small")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--truth", choices=TRUTHS, default="default", help="truth model of the synthetic world")
    ap.add_argument("--generate-into", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--households", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--generator", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.generate_into:
        _generate_into(args.generate_into, args.households, args.seed, args.generator, args.truth)
        return 0
    info = ensure(args.scale, args.seed, log=lambda m: print(m, file=sys.stderr), truth=args.truth)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
