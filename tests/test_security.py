"""Security: loopback-only local clusters, TLS to a remote scheduler, nothing unpickled or evaluated."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import dask
import distributed  # noqa: F401  (its configuration defaults are loaded before any test changes them)
import numpy as np
import pytest

from engine.uncertainty.bootstrap import run_bootstrap
from engine.uncertainty.executor import client_for
from engine.uncertainty.settings import Settings
from engine.uncertainty.store import read_replicates
from engine.app.cli import main
from engine.model.fitted import fit_to_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def settings(small_world, small_population, tmp_path_factory):
    coef = tmp_path_factory.mktemp("security_fit")
    fit_to_folder(small_population, coef)
    return Settings(population=str(small_world), coefficients=str(coef), regime="2019", seed=9)


@pytest.fixture
def dask_config():
    """Whatever a test sets in Dask's configuration is undone afterwards."""
    saved = copy.deepcopy(dask.config.config)
    yield
    dask.config.config.clear()
    dask.config.config.update(saved)


def test_default_local_cluster_listens_on_loopback_only():
    psutil = pytest.importorskip("psutil")
    with client_for(2, None) as client:
        try:
            addresses = [client.scheduler.address, *client.scheduler_info()["workers"]]
            assert len(addresses) == 3
            for address in addresses:
                assert address.startswith("tcp://127.0.0.1:"), address
            # every listening socket of the scheduler (this process) and the workers, the HTTP ones included
            procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
            listening = [c.laddr for p in procs for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            assert len(listening) >= 3
            assert {a.ip for a in listening} <= {"127.0.0.1", "::1"}, listening
        finally:
            client.cluster.close()


def test_bootstrap_over_tls_equals_the_in_process_run(settings, tmp_path, dask_config):
    pytest.importorskip("cryptography")        # Security.temporary makes its certificates with it
    from dask.distributed import LocalCluster
    from distributed.security import Security

    sec = Security.temporary()
    pem = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    pem["ca"].write_text(sec.tls_ca_file)
    pem["cert"].write_text(sec.tls_client_cert)
    pem["key"].write_text(sec.tls_client_key)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls", host="127.0.0.1",
                      security=sec, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        common = ["bootstrap", "--population", settings.population, "--coefficients", settings.coefficients,
                  "--replicates", "4", "--batch-size", "2", "--seed", str(settings.seed), "--quiet",
                  "--scheduler", address]
        # without certificates the scheduler cannot be reached: a clear failure, nothing computed
        with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
            assert main([*common, "--out", str(tmp_path / "plain")]) != 0
        assert not list((tmp_path / "plain").glob("batches/*.parquet"))
        assert main([*common, "--out", str(tmp_path / "tls"), "--tls-ca-file", str(pem["ca"]),
                     "--tls-cert", str(pem["cert"]), "--tls-key", str(pem["key"])]) == 0
    assert dask.config.get("distributed.comm.require-encryption") is True
    serial = run_bootstrap(settings, tmp_path / "serial", replicates=4, batch_size=4, workers=0)
    tls = read_replicates(tmp_path / "tls", 4, serial.codes)
    for k, v in serial.values.items():
        np.testing.assert_array_equal(tls[k], v)


def test_tls_flags_need_all_three_files_and_a_scheduler(tmp_path, capsys, dask_config):
    ca = tmp_path / "ca.pem"
    ca.write_text("not used")
    base = ["bootstrap", "--population", str(tmp_path), "--replicates", "2", "--out", str(tmp_path / "o")]
    assert main([*base, "--tls-ca-file", str(ca)]) == 2
    assert "--scheduler tls://" in capsys.readouterr().err
    assert main([*base, "--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", str(ca)]) == 2
    assert "missing --tls-cert, --tls-key" in capsys.readouterr().err
    assert main([*base, "--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", str(ca), "--tls-cert", str(ca),
                 "--tls-key", str(tmp_path / "nope.pem")]) == 2
    assert "--tls-key: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


UNSAFE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
                ("marshal", "load"), ("marshal", "loads"), ("shelve", "open"), ("yaml", "load"),
                ("yaml", "unsafe_load"), ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle")}


def _unsafe_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in {"eval", "exec", "compile", "__import__"}:
            found.append(f"{path.name}:{node.lineno} {f.id}()")
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in UNSAFE_CALLS:
            found.append(f"{path.name}:{node.lineno} {f.value.id}.{f.attr}()")
        for kw in node.keywords:
            if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{path.name}:{node.lineno} allow_pickle")
    return found


def test_nothing_read_from_a_file_is_unpickled_or_evaluated(tmp_path):
    sources = [p for d in ("engine", "kernels", "scripts", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 30
    assert [u for p in sources for u in _unsafe_uses(p)] == []
    # the checker itself finds what it looks for
    probe = tmp_path / "probe.py"
    probe.write_text("import pickle, numpy as np\npickle.loads(b'')\neval('1')\nnp.load('x', allow_pickle=True)\n")
    assert len(_unsafe_uses(probe)) == 3
