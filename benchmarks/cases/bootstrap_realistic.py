"""Parametric bootstrap replicates per second with the realistic model on a `--truth realistic` world: `Context.run_batch` of 50 draws vs the c675859 kernel and a NumPy loop.

As ``bootstrap`` (its functions do the work), with the realistic spec (8 household factors and
42 household indicators read through 8 joint codes, 9 neighbourhood columns) fitted in setup:
the size at which the ratio is reported. The peers run at full scale only (at small scale the
case times buig alone, so the gate stays within its budget); JAX is left out (its
intermediates hold several arrays of all households per draw).
"""

from __future__ import annotations

from benchmarks.cases import bootstrap as bs
from benchmarks.protocol import Impl

REPEAT = 3
TRUTH = "realistic"
SPEC = "realistic"
TIMEOUT = 5400
FLOORS = []      # reported, not gated


def setup_buig(ctx):
    return bs.setup_buig(ctx, SPEC)


def setup_old(ctx):
    return bs.setup_old(ctx, SPEC)


def setup_numpy(ctx):
    return bs.setup_numpy(ctx, SPEC)


IMPLEMENTATIONS = [
    Impl("buig", setup=setup_buig, run=bs.run_buig, extras=bs.extras_buig,
         note=f"engine.uncertainty.draws.Context.run_batch(0, {bs.DRAWS}) with the realistic spec, as in bootstrap"),
    Impl("kernel_c675859", setup=setup_old, run=bs.run_old, extras=bs.extras_peer, scales=("full",),
         note=f"the same {bs.DRAWS} draws through commit c675859's path (kernels.bootstrap.draw_sums), realistic spec"),
    Impl("numpy", setup=setup_numpy, run=bs.run_numpy, extras=bs.extras_peer, scales=("full",),
         note=f"the same {bs.DRAWS} draws and tables, the NumPy loop of bootstrap, realistic spec"),
]
