"""``python -m tests.golden [--regenerate]``: compare a fresh run with the golden master, or rewrite it.

See :mod:`tests.golden` for what is stored and when to regenerate."""

from __future__ import annotations

import argparse
import sys
import tempfile

from tests import golden


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.golden", description=golden.__doc__.split("\n\n")[0])
    ap.add_argument("--regenerate", action="store_true",
                    help=f"rewrite {golden.FILE.name} (deliberately: give the reason in the commit)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        numbers = golden.compute(tmp)
    if args.regenerate:
        golden.save(numbers)
        print(f"wrote {golden.FILE}")
        return 0
    problems, worst = golden.differences(numbers, golden.load())
    for name, rel in worst.items():
        print(f"{name:40s} largest relative difference {rel:.2e}")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
