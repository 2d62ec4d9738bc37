"""What the ``buig`` commands print and the copies they add: progress bars, messages, notes on
stderr and ``--format csv`` copies; shared by :mod:`engine.app.cli` and its command modules."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr, shown only on a terminal and when not quiet."""

    def __init__(self, label: str, quiet: bool = False):
        self.label, self.on = label, (not quiet) and sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.on:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{self.label:<12} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{total} {time.perf_counter() - self.t0:6.1f}s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def say(args, text: str) -> None:
    """Print ``text`` unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(text, flush=True)


def csv_copies(args, *names: str) -> list[str]:
    """``--format csv``: a CSV copy next to each of the Parquet files ``names`` in ``args.out``."""
    if getattr(args, "format", "parquet") != "csv":
        return []
    from engine.io.outputs import write_csv_copies

    return [f.name for f in write_csv_copies(args.out, names)]


def say_csv_copies(args, *names: str) -> None:
    """:func:`csv_copies`, and say what was written."""
    written = csv_copies(args, *names)
    if written:
        say(args, f"wrote {', '.join(written)} to {args.out}")


def warn_sparse(args, fit) -> None:
    """On stderr (unless quiet): the municipalities and levels left out of the shared estimate."""
    if getattr(args, "quiet", False):
        return
    for c in (fit.volume, fit.price):
        if c.dropped_municipalities:
            print(f"buig: note: {c.name}: {len(c.dropped_municipalities)} municipalities whose households have no or "
                  f"only outcomes are left out of the shared estimate (predicted with the common effect): "
                  f"{', '.join(c.dropped_municipalities)}", file=sys.stderr)
        if c.separated_terms:
            print(f"buig: note: {c.name}: levels with no or only outcomes left out of the shared estimate, each "
                  f"with an estimate of its own and no standard error: {', '.join(c.separated_terms)}",
                  file=sys.stderr)
