"""Golden master: a small fixed run reproduces the stored coefficients, costs, budgets and bands.

When a deliberate change moves these numbers, regenerate with ``python -m tests.golden
--regenerate`` and give the reason in the commit (see tests/golden/__init__.py)."""

from __future__ import annotations

import golden  # tests/golden/ (pytest puts tests/ on sys.path)


def test_small_run_reproduces_the_golden_master(tmp_path):
    problems, worst = golden.differences(golden.compute(tmp_path / "run"), golden.load())
    assert not problems, ("the numbers moved; if a change meant to move them, regenerate with "
                          "`python -m tests.golden --regenerate` and say why in the commit:\n" + "\n".join(problems))
    assert len(worst) == 15          # 4 coefficient columns, cost, budget, p_explained, 8 band columns
