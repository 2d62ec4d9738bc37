"""The command line's memory settings (engine.io.memory): NumPy's huge pages off, Arrow on the
system allocator and glibc's malloc keeping freed memory in the ``buig`` process and the processes
it starts, unless the user set them; ``engine.app.cli.main`` called from a script leaves them alone.
Malloc's settings are seen in what they do: a 64 MiB array freed and made again faults in its
16,384 pages afresh without them and not with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import platform

import pytest

REPO = Path(__file__).resolve().parents[1]
MALLOC = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
VARIABLES = ("NUMPY_MADVISE_HUGEPAGE", "ARROW_DEFAULT_MEMORY_POOL", *MALLOC)
# huge pages, Arrow's pool, and the page faults of a 64 MiB array made again after it was freed (huge pages off first:
# 4 KiB pages, whatever the process had)
STATE = ("import numpy as np, pyarrow as pa, resource; core = getattr(np, '_core', None) or np.core; "
         "pages = bool(core.multiarray._set_madvise_hugepage(False)); "
         "faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt; a = np.ones(8 << 20); del a; "
         "f0 = faults(); a = np.ones(8 << 20); print(pages, pa.default_memory_pool().backend_name, faults() - f0)")
GLIBC = platform.libc_ver()[0] == "glibc"
SNIPPET = f"""
import json, os, subprocess, sys
from engine.app.cli import command, main
sys.argv = ["buig", "validate", sys.argv[1]]
code = main(sys.argv[1:]) if os.environ.get("ENTRY") == "main" else command()
{STATE.replace('; print(', '; own = (')}
child = subprocess.run([sys.executable, "-c", {STATE!r}], capture_output=True, text=True, check=True).stdout.split()
print(json.dumps({{"code": code, "own": [own[0], own[1]], "child": [child[0] == "True", child[1]],
                   "faults": [own[2], int(child[2])],
                   "env": [os.environ.get(v) for v in {VARIABLES!r}]}}))
"""


def _run(tmp_path, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, "-c", SNIPPET, str(tmp_path / "no-such-population")], env={**base, **env},
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_command_turns_huge_pages_off_and_arrow_to_malloc_for_itself_and_its_children(tmp_path):
    got = _run(tmp_path)
    assert got["code"] == 2                           # the command ran (and refused the missing folder)
    assert got["own"] == [False, "system"]
    assert got["child"] == [False, "system"]          # a Dask worker started from it reads the same
    assert got["env"][:2] == ["0", "system"]


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc settings")
def test_the_command_keeps_freed_memory_for_itself_and_its_children(tmp_path):
    got = _run(tmp_path)
    assert got["env"][2:] == [str(256 << 20), str(1 << 30)]
    assert max(got["faults"]) < 2000                  # of 16,384 pages: the freed block was kept and reused


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc settings")
def test_a_users_malloc_setting_stands(tmp_path):
    got = _run(tmp_path, MALLOC_MMAP_THRESHOLD_="131072")
    assert got["env"][2:] == ["131072", None]        # neither threshold of the command's is made
    assert min(got["faults"]) > 8000                  # 64 MiB mapped and unmapped, as the user asked


def test_main_called_from_a_script_changes_nothing(tmp_path):
    got = _run(tmp_path, ENTRY="main")
    assert got["code"] == 2
    assert got["own"][0] is True and got["own"][1] != "system"      # the libraries' defaults on this machine
    assert got["env"] == [None] * len(VARIABLES)


@pytest.mark.parametrize("pages, pool", [("1", "mimalloc"), ("0", "mimalloc"), ("1", "system")])
def test_the_users_own_settings_stand(tmp_path, pages, pool):
    got = _run(tmp_path, NUMPY_MADVISE_HUGEPAGE=pages, ARROW_DEFAULT_MEMORY_POOL=pool)
    assert got["own"] == [pages == "1", pool]
    assert got["child"] == [pages == "1", pool]
    assert got["env"][:2] == [pages, pool]
