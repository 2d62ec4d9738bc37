"""The command line's memory settings (engine.io.memory): NumPy's huge pages off and Arrow on the
system allocator in the ``buig`` process and the processes it starts, unless the user set them;
``engine.app.cli.main`` called from a script leaves them alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VARIABLES = ("NUMPY_MADVISE_HUGEPAGE", "ARROW_DEFAULT_MEMORY_POOL")
STATE = ("import numpy as np, pyarrow as pa; core = getattr(np, '_core', None) or np.core; "
         "print(bool(core.multiarray._set_madvise_hugepage(True)), pa.default_memory_pool().backend_name)")
SNIPPET = f"""
import json, os, subprocess, sys
from engine.app.cli import command, main
sys.argv = ["buig", "validate", sys.argv[1]]
code = main(sys.argv[1:]) if os.environ.get("ENTRY") == "main" else command()
{STATE.replace('; print(', '; own = (')}
child = subprocess.run([sys.executable, "-c", {STATE!r}], capture_output=True, text=True, check=True).stdout.split()
print(json.dumps({{"code": code, "own": [own[0], own[1]], "child": [child[0] == "True", child[1]],
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
    assert got["env"] == ["0", "system"]


def test_main_called_from_a_script_changes_nothing(tmp_path):
    got = _run(tmp_path, ENTRY="main")
    assert got["code"] == 2
    assert got["own"][0] is True and got["own"][1] != "system"      # the libraries' defaults on this machine
    assert got["env"] == [None, None]


@pytest.mark.parametrize("pages, pool", [("1", "mimalloc"), ("0", "mimalloc"), ("1", "system")])
def test_the_users_own_settings_stand(tmp_path, pages, pool):
    got = _run(tmp_path, NUMPY_MADVISE_HUGEPAGE=pages, ARROW_DEFAULT_MEMORY_POOL=pool)
    assert got["own"] == [pages == "1", pool]
    assert got["child"] == [pages == "1", pool]
    assert got["env"] == [pages, pool]
