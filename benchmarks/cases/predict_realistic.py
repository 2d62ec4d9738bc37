"""Prediction + aggregation with the realistic model (8 household factors and 42 household indicators read through 8 joint uint8 codes, 9 neighbourhood columns) on a `--truth realistic` world: the kernel `kernels.predict.group_sums` vs plain NumPy vs a memory copy, households per second.

As ``predict`` (its functions do the work), with the realistic spec fitted in setup
(``engine.model.fitted.fit_model(hh, "realistic")``): one pass over all households returning
the (n_mun * 5, 8) sums of p, p f, p N, p f N, households, observed outcomes, p (1 - p) f N and
p (1 - p) (f N)^2 per municipality and household type. Target: at
least 100 million households per second on 2 cores at full scale (``target_100M_per_s_met``).
"""

from __future__ import annotations

from benchmarks.cases import predict as pr
from benchmarks.protocol import Floor, Impl

REPEAT = 5
TRUTH = "realistic"
SPEC = "realistic"

# As predict's full-scale floor: the kernel at least twice as fast as one-thread NumPy on the same tables.
FLOORS = [Floor(peer="numpy", min_ratio=2.0, scales=("full",))]


def setup_buig(ctx):
    return pr.setup_buig(ctx, SPEC)


def setup_buig_8factor(ctx):
    """The built-in 2019 spec (8 factors: 3 joint codes per household) on the same households."""
    return pr.setup_buig(ctx, "2019", save=False)


def extras_buig_8factor(state, sums, timing):
    return pr._base_extras(state["pd"], timing)


def setup_numpy(ctx):
    return pr.setup_numpy(ctx, SPEC)


def setup_copy(ctx):
    return pr.setup_copy(ctx, SPEC)


IMPLEMENTATIONS = [
    Impl("buig", setup=setup_buig, run=pr.run_buig, extras=pr.extras_buig,
         note="kernels.predict.group_sums as engine.model.predict.predict calls it, realistic spec (8 joint codes "
              "per household); tables and design built in setup"),
    Impl("numpy", setup=setup_numpy, run=pr.run_numpy, extras=pr.extras_numpy,
         note=f"plain NumPy (one thread) in chunks of {pr.NUMPY_CHUNK:,} rows: one table look-up per joint code + "
              "the neighbourhood look-up per component, np.exp, np.bincount of the 8 sums; buig's tables"),
    Impl("buig_8factor", setup=setup_buig_8factor, run=pr.run_buig, extras=extras_buig_8factor, role="floor",
         note="the same kernel with the built-in 2019 spec (8 factors in 3 joint codes) on the same households: the "
              "8-factor figure beside the realistic one"),
    Impl("copy", setup=setup_copy, run=pr.run_copy, extras=pr.extras_copy, role="floor",
         note="np.copyto of the per-household arrays the kernel reads (8 joint codes uint8, nbhd int32, norm_index "
              "uint16, group uint16, outcome int8 = 17 bytes/household), one thread"),
]
