"""Dask: the client (local cluster on loopback, a scheduler, TLS) and Numba's share of a host.

A batch of replicates is one task (:func:`batch_task`); each task gives Numba the host's
cores divided by the Dask threads on that host, so the two never oversubscribe.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import numpy as np

from engine.uncertainty.draws import context
from engine.uncertainty.settings import Settings


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


def resolve_workers(workers: int | None) -> int | None:
    """``--workers``: -1 means every core (``os.cpu_count()``); 0 no Dask; N workers; ``None`` the
    command's default. Other negative numbers are refused."""
    if workers is None or workers >= 0:
        return workers
    if workers == -1:
        return os.cpu_count() or 1
    raise ValueError(f"--workers {workers}: give 0 (no Dask, in this process), a number of workers, "
                     "or -1 for every core")


def client_for(workers: int, scheduler: str | None):
    from dask.distributed import Client, LocalCluster

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        return Client(address)
    # the workers start with Ctrl-C ignored (an ignored signal stays ignored in a child process):
    # an interrupt stops the driver, which closes the cluster, and no worker prints a traceback
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        # worker and nanny logs from ERROR up: their warnings when an interrupted run cancels tasks and
        # closes the cluster (cancelled tasks, workers killed after a timeout) are expected, not news
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=dashboard_address(), silence_logs=logging.ERROR)
    finally:
        if main:
            signal.signal(signal.SIGINT, old)
    from engine.uncertainty.worker_logs import QuietLostHeartbeat

    client = Client(cluster)
    client.register_plugin(QuietLostHeartbeat())
    return client


def dashboard_address() -> str | None:
    """Where a local cluster serves Dask's dashboard: on loopback (port 8787, or a free one if
    that is taken) when bokeh is installed (``pip install 'buig[dask-dashboard]'``), else none."""
    import importlib.util

    return "127.0.0.1:8787" if importlib.util.find_spec("bokeh") is not None else None
