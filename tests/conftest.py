"""Shared fixtures: small synthetic worlds generated once per test session."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# JIT compilation happens on the first example: no per-example deadline.
settings.register_profile("buig", deadline=None, max_examples=40)
settings.load_profile("buig")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")

SMALL_HOUSEHOLDS = 30_000
SMALL_SEED = 7


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A 30,000-household synthetic Netherlands (all 388 municipalities)."""
    from engine.world.synth import generate

    out = tmp_path_factory.mktemp("small_world")
    generate(out, households=SMALL_HOUSEHOLDS, seed=SMALL_SEED)
    return out


@pytest.fixture(scope="session")
def small_population(small_world):
    from engine.model.population import read_population

    return read_population(small_world)
