"""One measurement in a fresh process: ``python -m benchmarks.child`` with a JSON spec on stdin.

Spec: ``{"module": ..., "impl": ..., "context": Context.to_json(), "repeat": N,
"sample_interval": seconds}``. The child runs ``setup`` (untimed), one warm-up call
(timed separately: Numba compiles here), then ``repeat`` timed calls while a thread samples
the resident set size, then ``extras``. It prints exactly one JSON object on stdout and
exits 0 (1 when the case raised; the JSON then holds the traceback). Anything the case
prints goes to stderr, so it cannot corrupt the protocol.

Memory, all in bytes:
- ``ru_maxrss``: ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end: the peak of the whole
  child (imports, setup, warm-up, timed calls). On Linux it also covers the parent's RSS
  at fork time, which is why the runner stays small; ``ru_maxrss_at_start`` shows it.
- ``rss_before_timed``: RSS after setup and warm-up, with the warm-up result released.
- ``timed_peak_rss``: the highest RSS sampled (every ``sample_interval`` s, and right
  before and after each call) during the timed calls; ``timed_peak_delta`` is that minus
  ``rss_before_timed``: the extra memory the timed call itself needs. Allocations that
  come and go between two samples can be missed; ``ru_maxrss`` cannot miss them.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import threading
import time
import traceback

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT


def current_rss() -> int:
    """Resident set size now, in bytes (``/proc/self/statm``, else psutil)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


class RssSampler:
    """Samples RSS on a thread; ``mark(i)`` attributes later samples to timed call i."""

    def __init__(self, interval: float, calls: int):
        self.interval = interval
        self.peaks = [0] * calls
        self.current = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self):
        rss = current_rss()
        self.samples += 1
        if rss > self.peaks[self.current]:
            self.peaks[self.current] = rss

    def mark(self, i: int):
        self.current = i
        self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def summarize(times: list[float]) -> dict:
    """``{"median_s", "min_s", "max_s", "times_s"}`` of timed calls (also of the runner's pooled rounds)."""
    ordered = sorted(times)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median_s": median, "min_s": ordered[0], "max_s": ordered[-1], "times_s": list(times)}


def release_memory() -> None:
    """Untimed clean-up between calls: collect garbage, return Arrow's unused pool memory."""
    gc.collect()
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        try:
            pa.default_memory_pool().release_unused()
        except Exception:  # noqa: BLE001 - older pyarrow or a pool without the call
            pass


def _jsonable(x):
    if hasattr(x, "tolist"):  # NumPy scalars and arrays
        return x.tolist()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"extras value of type {type(x).__name__} is not JSON-serialisable")


def measure(spec: dict) -> dict:
    from benchmarks import cases
    from benchmarks.protocol import Context

    out: dict = {"pid": os.getpid()}
    case = cases.load(spec["module"])
    impl = case.impl(spec["impl"])
    ctx = Context.from_json(spec["context"])
    repeat = int(spec["repeat"])
    interval = float(spec.get("sample_interval", 0.005))

    out["rss_start"] = current_rss()
    t0 = time.perf_counter()
    state = impl.setup(ctx)
    out["setup_s"] = time.perf_counter() - t0
    out["rss_after_setup"] = current_rss()

    t0 = time.perf_counter()
    result = (impl.warmup or impl.run)(state)
    out["warmup_s"] = time.perf_counter() - t0
    result = None
    release_memory()

    out["rss_before_timed"] = before = current_rss()
    times = []
    with RssSampler(interval, repeat) as sampler:
        for i in range(repeat):
            result = None
            release_memory()
            sampler.mark(i)
            t0 = time.perf_counter()
            result = impl.run(state)
            times.append(time.perf_counter() - t0)
            sampler.mark(i)
    timing = summarize(times)
    out.update(timing)
    out["timed_peak_rss"] = max(sampler.peaks)
    out["timed_peak_delta"] = max(sampler.peaks) - before
    out["timed_peaks_rss"] = sampler.peaks
    out["rss_samples"] = sampler.samples

    extras = impl.extras(state, result, dict(timing)) if impl.extras else {}
    out["extras"] = json.loads(json.dumps(extras or {}, default=_jsonable))
    out["ru_maxrss"] = maxrss()
    return out


def main() -> int:
    at_start = maxrss()
    # The case may print (or a C library may write to fd 1): send all of that to stderr
    # and keep a private copy of the real stdout for the one JSON line.
    sys.stdout.flush()
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    spec = json.loads(sys.stdin.read())
    try:
        out = measure(spec)
        out["ok"] = True
        code = 0
    except BaseException as exc:  # noqa: BLE001 - report every failure as JSON
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        code = 1
    out["ru_maxrss_at_start"] = at_start
    proto.write(json.dumps(out) + "\n")
    proto.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
