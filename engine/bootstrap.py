"""Monte Carlo uncertainty: replicates of the coefficients -> replicates of the budgets.

Two methods (design, section 4):

- ``parametric``: beta_r ~ N(beta_hat, V_cluster) for the volume terms that enter
  prediction (the intercept and fixed effects are replaced by the calibrated common
  effect), gamma_r ~ N(gamma_hat, V_cluster) for the price terms; many draws are
  evaluated per pass over the households collapsed into cells (:mod:`engine.cells`).
- ``cluster``: municipalities resampled with replacement, both components refitted
  (warm start from the full-sample estimate, frequency weights), prediction on the full
  population.

Every replicate runs the whole distribution of the regime (shares, mix, ex-ante cap), so
bands are on budgets as allocated. Replicate r draws all its random numbers from
``numpy.random.SeedSequence(seed, spawn_key=(r,))`` (the r-th child of ``SeedSequence(seed)``),
and every kernel sum is per draw over fixed row ranges: results are bit-identical for any
number of workers and any batch size.

Spending prediction band (for the flags): per replicate, the municipality's spending is
simulated as E_r + sqrt(V_r) z (bijstand drawn from p: the normal approximation of the
sum of Bernoulli costs), times exp(u (1 - p_g)) with u ~ N(0, between_sd^2), the normal
variation of municipalities around the model, estimated robustly from the fixed effects
(``between_sd="auto"``; 0 switches it off). ``p_explained`` is the share of replicates
whose simulated spending is at or below the actual one: a surplus is unexplained when
actual spending lies below the lower end of the band, i.e. ``p_explained < level``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from engine.cells import draw_cells
from engine.design import read_households
from engine.model import ModelFit, fit_model, read_fit
from engine.outputs import remove_stale, temporary_name, write_json
from engine.predict import prediction_design, predict
from engine.redistribution import effects
from engine.rules import distribute, historical_shares, load_regime, total_budget

METHODS = ("parametric", "cluster")
QUANTILES = (0.025, 0.05, 0.5, 0.95, 0.975)
REPLICATE_COLUMNS = ("objective_cost", "budget", "share", "effect_pct", "simulated_spending")


@dataclass(frozen=True)
class Settings:
    """What defines a bootstrap run; stored in ``bootstrap.json`` and checked on resume."""

    population: str
    coefficients: str
    regime: str
    method: str = "parametric"
    seed: int = 0
    between_sd: str = "auto"

    def key(self) -> dict:
        return {"method": self.method, "seed": self.seed, "regime": self.regime, "between_sd": self.between_sd,
                "population": str(Path(self.population).resolve()),
                "coefficients": str(Path(self.coefficients).resolve())}


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    """A square root L with L L' = cov (Cholesky, or eigen-decomposition when not definite)."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh((cov + cov.T) / 2)
        return V * np.sqrt(np.clip(w, 0, None))


def between_sd_from_fit(fit: ModelFit) -> float:
    """Robust estimate of the sd of municipality effects around the model.

    The fixed effects (with the intercept) estimate each municipality's effect; their
    spread is MAD * 1.4826 (robust to a few extreme municipalities), from which the mean
    sampling variance is subtracted (method of moments); 0 if nothing is left.
    """
    v = fit.volume
    names = v.term_names
    fe = [i for i, t in enumerate(names) if t.startswith("municipality[") and np.isfinite(v.params[i])]
    if len(fe) < 10:
        return 0.0
    fe = np.asarray(fe)
    effect = v.params[fe]
    var = np.diag(v.cov_model)[fe]
    spread = 1.4826 * np.median(np.abs(effect - np.median(effect)))
    return float(np.sqrt(max(spread ** 2 - np.median(var), 0.0)))


class Context:
    """Everything a batch needs, built once per process (population, fit, regime, tables)."""

    def __init__(self, settings: Settings):
        with threadpool_limits(limits=1, user_api="blas"):   # bit-identical in any process
            self._init(settings)

    def _init(self, settings: Settings):
        self.settings = settings
        # the households are read in batches straight into their codes: a worker never holds their table
        self.hh, self.municipalities, self.truth = read_households(settings.population)
        self.fit = read_fit(settings.coefficients)
        self.regime = regime = load_regime(settings.regime)
        if regime.objective_model != "household":
            raise ValueError(f"regime {regime.name} uses the municipal model; the bootstrap needs a regime "
                             "of the household model (such as 2019)")
        self.pd = prediction_design(self.hh, self.fit.norms)
        self.cells = draw_cells(self.hh, self.fit, self.pd)
        mun = self.municipalities
        col = lambda c: mun.column(c).to_numpy().astype(np.float64)  # noqa: E731
        self.inhabitants, self.spending = col("inhabitants"), col("spending_t")
        self.hist = historical_shares(col("spending_t2"), col("households"), col("households_t2"),
                                      regime.household_growth_correction)
        self.tb = total_budget(regime, col("households").sum(), self.spending.sum())
        self.point = predict(self.hh, self.fit, self.pd)
        cost = self.point.objective_cost
        self.point_budget = distribute(regime, cost, self.hist, self.inhabitants, self.tb)
        households = self.point.households.sum(1)
        self.rate = self.point.predicted.sum(1) / np.maximum(households, 1)
        self.between_sd = (between_sd_from_fit(self.fit) if settings.between_sd == "auto"
                           else float(settings.between_sd))
        v, p = self.fit.volume, self.fit.price
        self.v_draw = np.asarray([i for i, t in enumerate(v.term_names)
                                  if t != "intercept" and not t.startswith("municipality[")])
        self.p_draw = np.flatnonzero(np.isfinite(p.params))
        self.v_root = _sqrt_psd(v.cov_cluster[np.ix_(self.v_draw, self.v_draw)])
        self.p_root = _sqrt_psd(p.cov_cluster[np.ix_(self.p_draw, self.p_draw)])

    @property
    def n_mun(self) -> int:
        return self.hh.n_mun

    # -- one replicate's random numbers, in a fixed order -----------------------------
    def rng(self, r: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.settings.seed, spawn_key=(r,)))

    def parametric_params(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        vp = self.fit.volume.params.copy()
        pp = self.fit.price.params.copy()
        vp[self.v_draw] += self.v_root @ rng.standard_normal(self.v_draw.size)
        pp[self.p_draw] += self.p_root @ rng.standard_normal(self.p_draw.size)
        return vp, pp

    def cluster_fit(self, rng: np.random.Generator) -> ModelFit:
        picks = rng.integers(0, self.n_mun, self.n_mun)
        weight = np.bincount(picks, minlength=self.n_mun).astype(np.float64)[self.hh.municipality()]
        return fit_model(self.hh, self.fit.spec, weight=weight, start=self.fit)

    def run_batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Replicates start .. stop-1: arrays (stop - start, n_mun) of REPLICATE_COLUMNS."""
        with threadpool_limits(limits=1, user_api="blas"):
            return self._run_batch(start, stop)

    def _run_batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        tables, noise = [], []
        for r in range(start, stop):
            rng = self.rng(r)
            if self.settings.method == "parametric":
                vp, pp = self.parametric_params(rng)
                t = (self.fit, vp, pp)
            else:
                t = (self.cluster_fit(rng), None, None)
            tables.append(t)
            noise.append((rng.standard_normal(self.n_mun), rng.standard_normal(self.n_mun)))
        sums = self.cells.sums(tables)
        out = {c: np.empty((stop - start, self.n_mun)) for c in REPLICATE_COLUMNS}
        for i in range(stop - start):
            cost, var = sums[:, 0, i], sums[:, 1, i]
            b = distribute(self.regime, cost, self.hist, self.inhabitants, self.tb)
            z, u = noise[i]
            out["objective_cost"][i] = cost
            out["budget"][i] = b.budget
            out["share"][i] = b.budget / b.budget.sum()
            out["effect_pct"][i] = effects(b.budget, self.spending, self.inhabitants).pct
            out["simulated_spending"][i] = ((cost + np.sqrt(var) * z) *
                                            np.exp(self.between_sd * u * (1.0 - self.rate)))
        return out


_CONTEXTS: dict[tuple, tuple[str | None, Context]] = {}


def context(settings: Settings, inputs: str | None = None) -> Context:
    """The process's Context for these settings (built once: workers load the data themselves).
    With ``inputs`` (:func:`inputs_digest`) it is rebuilt when the files behind the same paths
    changed since; without, the cached one is returned whatever its inputs."""
    key = tuple(sorted(settings.key().items()))
    cached = _CONTEXTS.get(key)
    if cached is None or (inputs is not None and cached[0] != inputs):
        _CONTEXTS.clear()
        _CONTEXTS[key] = (inputs, Context(settings))
    return _CONTEXTS[key][1]


def limit_numba_to_host_share(dask_threads: dict[str, int]) -> None:
    """In a Dask worker: Numba threads = this host's cores / the Dask threads of all workers on
    it (``dask_threads``, from :func:`dask_threads_per_host`), so the two never oversubscribe."""
    import numba
    from distributed import get_worker

    host = get_worker().address.rsplit(":", 1)[0].split("://")[-1]
    threads = (os.cpu_count() or 1) // max(1, dask_threads.get(host, 1))
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def batch_task(settings: Settings, start: int, stop: int, dask_threads: dict[str, int],
               inputs: str | None = None) -> dict[str, np.ndarray]:
    """A Dask task: one batch of replicates, with Numba limited to its share of the host's cores."""
    limit_numba_to_host_share(dask_threads)
    return context(settings, inputs).run_batch(start, stop)


def dask_threads_per_host(client) -> dict[str, int]:
    """Host -> Dask threads of all the cluster's workers on that host."""
    counts: dict[str, int] = {}
    for w in client.scheduler_info(n_workers=-1)["workers"].values():
        counts[w["host"]] = counts.get(w["host"], 0) + int(w["nthreads"])
    return counts


# --------------------------------------------------------------------------- files

def _batch_file(out: Path, start: int, stop: int) -> Path:
    return out / "batches" / f"replicates-{start:06d}-{stop:06d}.parquet"


def _write_batch(out: Path, start: int, stop: int, result: dict[str, np.ndarray], codes: np.ndarray) -> None:
    n = stop - start
    table = pa.table({"replicate": np.repeat(np.arange(start, stop, dtype=np.int64), len(codes)),
                      "code": np.tile(codes, n).tolist(),
                      **{c: result[c].ravel() for c in REPLICATE_COLUMNS}})
    path = _batch_file(out, start, stop)
    tmp = temporary_name(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _done_ranges(out: Path) -> list[tuple[int, int]]:
    """The finished batches: files ``replicates-START-STOP.parquet`` only (a batch is renamed into
    place when written whole; temporary names start with a dot and never count)."""
    done = []
    for f in sorted((out / "batches").glob("replicates-*-*.parquet")):
        try:
            a, b = f.stem.split("-")[1:]
            a, b = int(a), int(b)
        except ValueError:
            continue
        if 0 <= a < b and f.name == _batch_file(out, a, b).name:
            done.append((a, b))
    return done


def plan_batches(replicates: int, batch_size: int, done: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Batches of at most ``batch_size`` covering the replicates not in ``done``."""
    have = np.zeros(replicates, dtype=bool)
    for a, b in done:
        have[a:min(b, replicates)] = True
    todo, r = [], 0
    while r < replicates:
        if have[r]:
            r += 1
            continue
        s = r
        while r < replicates and not have[r] and r - s < batch_size:
            r += 1
        todo.append((s, r))
    return todo


def _file_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def inputs_digest(settings: Settings) -> str:
    """SHA-256 of the files behind ``settings`` that replicates depend on: the population tables,
    the fit (coefficients.parquet, covariances.npz, fit.json without its timings, the model spec
    file it names) and the regime file. Batches are resumed only for the same digest, so files
    replaced under the same paths (a regenerated population, a refit) never mix with old batches."""
    from engine.population import TABLE_NAMES
    from engine.rules import HERE as REGIMES

    h = hashlib.sha256()

    def add(label: str, data: str) -> None:
        h.update(f"{label}\0{data}\0".encode())

    pop, coef = Path(settings.population), Path(settings.coefficients)
    for name in TABLE_NAMES:
        f = pop / f"{name}.parquet"
        add(name, _file_digest(f) if f.is_file() else "missing")
    for name in ("coefficients.parquet", "covariances.npz"):
        f = coef / name
        add(name, _file_digest(f) if f.is_file() else "missing")
    try:
        info = json.loads((coef / "fit.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict):
        for comp in ("volume", "price"):
            if isinstance(info.get(comp), dict):
                info[comp].pop("seconds", None)
        spec = Path(str(info.get("spec", {}).get("file", "")))
        add("spec", _file_digest(spec) if spec.is_file() else "missing")
    add("fit.json", json.dumps(info, sort_keys=True))
    text = str(settings.regime)
    regime = REGIMES / f"{text}.toml" if "/" not in text and (REGIMES / f"{text}.toml").exists() else Path(text)
    add("regime", _file_digest(regime) if regime.is_file() else "missing")
    return h.hexdigest()


def _check_settings(out: Path, settings: Settings, inputs: str) -> None:
    """Refuse a folder of another bootstrap; discard the batches of the same settings on other input
    files (they would mix with new ones); record the settings and inputs of this run."""
    f = out / "bootstrap.json"
    if f.exists():
        old = json.loads(f.read_text(encoding="utf-8"))
        if old.get("settings") != settings.key():
            raise ValueError(f"{out} holds replicates of another bootstrap ({old.get('settings')}); use a new "
                             "--out folder")
        if old.get("inputs") == inputs:
            return
        for a, b in _done_ranges(out):           # deleted before the new record: a kill here loses nothing
            _batch_file(out, a, b).unlink(missing_ok=True)
    write_json(f, {"settings": settings.key(), "inputs": inputs})


def read_replicates(out: Path, replicates: int, codes: np.ndarray) -> dict[str, np.ndarray]:
    """Replicates 0 .. replicates-1 from the batch files: arrays (replicates, n_mun)."""
    res = {c: np.full((replicates, len(codes)), np.nan) for c in REPLICATE_COLUMNS}
    for a, b in _done_ranges(out):
        if a >= replicates:
            continue
        t = pq.read_table(_batch_file(out, a, b))
        k = (min(b, replicates) - a) * len(codes)
        for c in REPLICATE_COLUMNS:
            res[c][a:min(b, replicates)] = t.column(c).to_numpy()[:k].reshape(-1, len(codes))
    return res


# --------------------------------------------------------------------------- run

@dataclass(frozen=True)
class BootstrapResult:
    settings: Settings
    replicates: int
    codes: np.ndarray
    names: np.ndarray
    point_budget: np.ndarray
    spending: np.ndarray
    between_sd: float
    values: dict[str, np.ndarray]       # REPLICATE_COLUMNS -> (replicates, n_mun)
    seconds: float
    computed: int                       # replicates computed in this run (the rest were resumed)
    inputs: str = ""                    # inputs_digest(settings)


def use_tls(ca_file: str | None, cert: str | None, key: str | None) -> None:
    """Connect to Dask schedulers over TLS only, with these PEM files (Dask's own settings
    ``distributed.comm.tls.*`` and ``require-encryption``, set for this process; they can
    equally come from Dask's configuration files or ``DASK_DISTRIBUTED__COMM__TLS__*``)."""
    import dask

    files = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    missing = [flag for flag, f in files.items() if not f]
    if missing:
        raise ValueError(f"TLS needs all of --tls-ca-file, --tls-cert and --tls-key; missing {', '.join(missing)}")
    for flag, f in files.items():
        if not Path(f).is_file():
            raise FileNotFoundError(f"{flag}: no such file: {f}")
    dask.config.set({"distributed.comm.tls.ca-file": str(ca_file), "distributed.comm.tls.client.cert": str(cert),
                     "distributed.comm.tls.client.key": str(key), "distributed.comm.require-encryption": True})


def _client(workers: int, scheduler: str | None):
    from dask.distributed import Client, LocalCluster

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        return Client(address)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    return Client(cluster)


def run_bootstrap(settings: Settings, out: str | Path, replicates: int = 200, batch_size: int = 25,
                  workers: int | None = None, scheduler: str | None = None, progress=None,
                  client=None) -> BootstrapResult:
    """Run (or resume) a bootstrap into ``out``; finished batches are written as they complete.

    ``workers=0`` runs in this process without Dask; otherwise a ``LocalCluster`` of
    ``workers`` single-threaded processes on loopback (default: the number of cores), or the
    scheduler at ``scheduler`` / ``DASK_SCHEDULER_ADDRESS``, or an open ``client`` (left
    open: its workers keep the population loaded between runs). Numba threads per task are
    a host's cores / the Dask threads on that host, so the two never oversubscribe.
    """
    if settings.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, not {settings.method!r}")
    if replicates < 1 or batch_size < 1:
        raise ValueError("--replicates and --batch-size must be at least 1")
    out = Path(out)
    t0 = time.perf_counter()
    (out / "batches").mkdir(parents=True, exist_ok=True)
    remove_stale(out)                            # temporary files of a killed run
    remove_stale(out / "batches")
    inputs = inputs_digest(settings)
    _check_settings(out, settings, inputs)
    todo = plan_batches(replicates, batch_size, _done_ranges(out))
    cores = os.cpu_count() or 1
    workers = cores if workers is None else workers
    ctx = context(settings, inputs)              # the driver needs the codes and the point budget
    codes = ctx.hh.mun_codes
    done_n = replicates - sum(b - a for a, b in todo)
    if progress:
        progress(done_n, replicates)
    if todo and workers == 0:
        for a, b in todo:
            _write_batch(out, a, b, ctx.run_batch(a, b), codes)
            done_n += b - a
            if progress:
                progress(done_n, replicates)
    elif todo:
        from dask.distributed import as_completed

        own = client is None
        client = _client(workers, scheduler) if own else client
        try:
            threads = dask_threads_per_host(client)
            futures = {client.submit(batch_task, settings, a, b, threads, inputs, pure=False,
                                     key=f"buig-batch-{a}-{b}-{os.getpid()}-{time.time_ns()}"): (a, b)
                       for a, b in todo}
            for fut in as_completed(futures):
                a, b = futures[fut]
                _write_batch(out, a, b, fut.result(), codes)
                done_n += b - a
                if progress:
                    progress(done_n, replicates)
        finally:
            if own:
                client.close()
                if client.cluster is not None:
                    client.cluster.close()
    values = read_replicates(out, replicates, codes)
    return BootstrapResult(settings=settings, replicates=replicates, codes=codes,
                           names=np.asarray(ctx.municipalities.column("name").to_pylist(), dtype=object),
                           point_budget=ctx.point_budget.budget, spending=ctx.spending, between_sd=ctx.between_sd,
                           values=values, seconds=time.perf_counter() - t0, computed=sum(b - a for a, b in todo),
                           inputs=inputs)


# --------------------------------------------------------------------------- summaries

def bands_table(res: BootstrapResult) -> pa.Table:
    """Per municipality the point budget and the QUANTILES of budget, share and effect."""
    cols = {"code": res.codes.tolist(), "name": res.names.tolist(), "point_budget": res.point_budget}
    for c in ("budget", "share", "effect_pct"):
        q = np.quantile(res.values[c], QUANTILES, axis=0)
        for qi, v in zip(QUANTILES, q):
            cols[f"{c}_q{qi * 100:g}".replace(".", "_")] = v
        cols[f"{c}_sd"] = res.values[c].std(axis=0, ddof=1) if res.replicates > 1 else np.zeros(len(res.codes))
    return pa.table(cols)


def flags_table(res: BootstrapResult, level: float = 0.01) -> pa.Table:
    """p_explained per municipality and the flag ``surplus > 0 and p_explained < level``."""
    sim = res.values["simulated_spending"]
    p_explained = (sim <= res.spending[None, :]).mean(axis=0)
    lo, hi = np.quantile(sim, [0.025, 0.975], axis=0)
    surplus = res.point_budget - res.spending
    return pa.table({
        "code": res.codes.tolist(), "name": res.names.tolist(), "budget": res.point_budget,
        "actual_spending": res.spending, "surplus": surplus,
        "spending_band_q2_5": lo, "spending_band_q97_5": hi, "p_explained": p_explained,
        "flagged": (surplus > 0) & (p_explained < level),
    }).replace_schema_metadata({"level": repr(level), "between_sd": repr(res.between_sd),
                                "replicates": str(res.replicates)})


def replicates_table(res: BootstrapResult) -> pa.Table:
    n, g = res.values["budget"].shape
    return pa.table({"replicate": np.repeat(np.arange(n, dtype=np.int64), g), "code": np.tile(res.codes, n).tolist(),
                     **{c: res.values[c].ravel() for c in REPLICATE_COLUMNS}})


def write_results(res: BootstrapResult, out: str | Path, level: float = 0.01) -> None:
    """replicates.parquet, bands.parquet, flags.parquet (each atomically) and bootstrap.json.

    ``bootstrap.json`` names ``replicates`` only while the three tables belong to it: it is
    rewritten without them before the first table is replaced, and in full after the last."""
    out = Path(out)
    record = {"settings": res.settings.key(), "inputs": res.inputs}
    write_json(out / "bootstrap.json", record)
    for name, table in (("replicates", replicates_table(res)), ("bands", bands_table(res)),
                        ("flags", flags_table(res, level))):
        tmp = temporary_name(out / f"{name}.parquet")
        pq.write_table(table, tmp)
        os.replace(tmp, out / f"{name}.parquet")
    write_json(out / "bootstrap.json", {**record, "replicates": res.replicates, "flag_level": level,
                                         "between_sd": res.between_sd, "seconds": res.seconds,
                                         "computed": res.computed})
