"""The synthetic Netherlands: households of 2017 calibrated to public CBS aggregates.

``generate(out, households=N, seed=S)`` writes ``households.parquet`` (one row group per
municipality), ``neighbourhoods.parquet``, ``municipalities.parquet`` and ``truth.json``.

How it is built (everything random comes from ``SeedSequence(seed)``; municipality g
draws from child g, so the output is bit-identical for the same seed):

1. Geography of 2017 (388 municipalities, 3,070 wijken as neighbourhoods) from the CBS
   extracts in ``engine/data/cbs`` (:mod:`engine.world.geography`). Labour-market regions: province x urbanity band (about 35).
2. Households per wijk proportional to the real counts, scaled to N (largest remainder).
3. A deprivation score per municipality from its real bijstand density (CBS 2017), varied
   per wijk, drives the neighbourhood factors and, through a household latent, the
   household characteristics. Household type, migration background and urbanity come from
   the wijk's real shares; age, education, housing, health, other benefit, wealth and
   co-resident adults are drawn with plausible dependence on those.
4. Outcomes from the known truth (``engine.world.truth``): the expected number of bijstand-or-LKS
   households of each municipality equals 0.8 x its real 2017 CBS count of recipients
   (scaled to N). The part of that calibration the characteristics do not explain is
   structural and shifts the share of non-working adults of the municipality's wijken;
   the municipality effect is a common level plus a small natural policy effect, and
   ``planted`` municipalities get a strict planted policy (a drawn surplus of 10-30% of their expected
   spending). Benefit paid = realised fraction x gross 2019 norm (kostendelersnorm
   applied; its gross-up is calibrated so that expected national spending equals the 2019 macro
   budget, see ``engine/data/norms/2019.toml``); duration classes, the granieten voorraad, spending
   in t and in t-2 (each municipality's own expected cost in t times the real change of its CBS
   recipients from 2015 to 2017: its policy persists), and W-deel need follow.
5. The 14 municipal measures of the 2011-2014 model (shares of the generated households where the
   measure is one, the rest drawn from their own seed; :mod:`engine.world.characteristics`), in
   every world; ``truth_model`` ``realistic`` or ``scp2015`` adds every further characteristic of
   the catalogue ``realistic`` and its truth. Every world writes its catalogue as ``catalogue.toml``.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.world import truth
from engine.world.tables import write_tables, write_truth
from engine.world.geography import Geography, allocate_households, load_geography
from engine.model.norms import load_norms
from engine.io.outputs import atomic_dir
from engine.model.schema import CATEGORIES, schema, tables
from engine.world.characteristics import world_model

REAL_HOUSEHOLDS = 7_794_075
NONWESTERN = ("moroccan", "turkish", "surinamese", "antillean", "other_non_western")


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


def _draw(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One categorical draw per row from unnormalised log-probabilities (n, K) -> int8."""
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    cdf = np.cumsum(p, axis=1)
    u = rng.random(len(p)) * cdf[:, -1]
    return (u[:, None] >= cdf[:, :-1]).sum(axis=1).astype(np.int8)


def _draw_probs(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cdf[:, -1]
    return (u[:, None] >= cdf[:, :-1]).sum(axis=1).astype(np.int8)


def _code(col: str, label: str) -> int:
    return CATEGORIES[col].index(label)


def _term_vector(coefs: dict[str, float], factor: str) -> np.ndarray:
    """Effect of every level of ``factor`` (0 for the reference level)."""
    return np.array([coefs.get(f"{factor}[{lab}]", 0.0) for lab in CATEGORIES[factor]])


FACTORS = ("household_type", "age_class", "migration", "education", "housing", "health",
           "other_benefit", "wealth")

AGE_BY_TYPE = np.log(np.array([
    [0.060, 0.140, 0.170, 0.150, 0.200, 0.280],   # single
    [0.010, 0.060, 0.170, 0.330, 0.300, 0.130],   # single parent
    [0.005, 0.070, 0.170, 0.100, 0.200, 0.455],   # couple without children
    [0.002, 0.030, 0.170, 0.360, 0.330, 0.108],   # couple with children
    [0.080, 0.220, 0.180, 0.140, 0.160, 0.220],   # other
]))
AGE_YOUNG_TILT = np.array([1.0, 0.6, 0.2, 0.0, -0.1, -0.3])


@dataclass
class WorldParams:
    """Neighbourhood, regional and municipal parameters of one synthetic world."""

    dep_wijk: np.ndarray
    share_non_working: np.ndarray
    liveability: np.ndarray
    jobs_access: np.ndarray
    jobs_availability: np.ndarray   # per municipality (its region's value)
    job_growth: np.ndarray          # per municipality
    long_term: np.ndarray           # per municipality tilt towards long durations
    price_level: np.ndarray         # per municipality noise on t-2 spending
    need_noise: np.ndarray
    household_growth: np.ndarray
    target_rate: np.ndarray         # expected volume outcome per household
    policy: np.ndarray              # natural policy effect per municipality (log-odds)
    planted: np.ndarray             # municipality indices with a planted policy effect
    planted_surplus: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per planted municipality
    world: object = None            # engine.world.characteristics.WorldModel (--truth)


SNW_MIN, SNW_MAX = 0.01, 0.95


def _world_params(geo: Geography, rng: np.random.Generator, planted: int, policy_sd: float,
                  planted_surplus: tuple[float, float] = (0.10, 0.30)) -> WorldParams:
    n_mun, W = len(geo.mun_code), len(geo.wk_code)
    rate = np.maximum(truth.HOUSEHOLDS_PER_RECIPIENT * geo.rec2017 / geo.households, 0.002)
    lg = np.log(rate / (1 - rate))
    dep_mun = (lg - lg.mean()) / lg.std()
    nonwest = geo.wk_migration[:, 2:].sum(1)
    single = geo.wk_type_shares[:, 0]

    def within(x):
        w = np.maximum(geo.wk_households, 1)
        m = np.bincount(geo.wk_mun, weights=x * w, minlength=n_mun) / np.bincount(geo.wk_mun, weights=w, minlength=n_mun)
        return x - m[geo.wk_mun]

    z = within(nonwest) / 0.10 + within(single) / 0.15
    dep = dep_mun[geo.wk_mun] + 0.35 * z + rng.normal(0, 0.25, W)
    snw = np.clip(_logistic(-1.15 + 0.40 * dep + rng.normal(0, 0.15, W)), SNW_MIN, SNW_MAX)
    liv = -0.6 * dep - 0.15 * (3 - geo.wk_urbanity) + rng.normal(0, 0.7, W)
    liv = (liv - liv.mean()) / liv.std()
    n_reg = len(geo.region_code)
    urban_share = np.bincount(geo.region, weights=(geo.urbanity <= 2), minlength=n_reg) / np.bincount(geo.region, minlength=n_reg)
    jobs_reg = np.clip(0.62 + 0.25 * urban_share + rng.normal(0, 0.08, n_reg), 0.35, 1.3)
    growth_reg = rng.normal(0.012, 0.008, n_reg)
    jobs_access = jobs_reg[geo.region[geo.wk_mun]] * np.exp(rng.normal(0, 0.10, W)) * (1 + 0.06 * (3 - geo.wk_urbanity))
    large = np.flatnonzero(geo.inhabitants > 40_000)
    chosen = np.sort(rng.choice(large, size=min(planted, large.size), replace=False)) if planted else np.array([], int)
    wp = WorldParams(
        dep_wijk=dep, share_non_working=snw, liveability=liv, jobs_access=jobs_access,
        jobs_availability=jobs_reg[geo.region], job_growth=growth_reg[geo.region],
        long_term=rng.normal(0, 0.25, n_mun), price_level=rng.normal(0, 0.04, n_mun),
        need_noise=rng.normal(0, 0.15, n_mun), household_growth=rng.normal(0.006, 0.008, n_mun),
        target_rate=rate, policy=rng.normal(0, policy_sd, n_mun), planted=chosen)
    wp.planted_surplus = rng.uniform(*planted_surplus, chosen.size)   # drawn last: the rest does not change
    return wp


def _solve_alpha(eta0: np.ndarray, target: float) -> float:
    """alpha such that sum(logistic(alpha + eta0)) == target (Newton, monotone)."""
    n = eta0.size
    target = min(max(target, 1e-6), n - 1e-6)
    a = np.log(target / (n - target)) - float(np.mean(eta0))
    for _ in range(60):
        p = _logistic(a + eta0)
        f = p.sum() - target
        d = (p * (1 - p)).sum()
        step = f / max(d, 1e-12)
        a -= np.clip(step, -2, 2)
        if abs(f) < 1e-9 * max(target, 1):
            break
    return float(a)


def planted_alpha(alpha: float, eta0: np.ndarray, price: np.ndarray, planted_effect: float, surplus: float) -> float:
    """The municipality effect with a planted strict policy: ``alpha + planted_effect`` when
    that is not 0, else the effect at which the expected cost sum logistic(alpha + eta0) x
    price is (1 - ``surplus``) times the cost without it (Newton, monotone)."""
    if planted_effect != 0:
        return alpha + planted_effect
    # sums by NumPy's pairwise summation, not np.dot: a BLAS dot product of a long vector depends
    # on the number of BLAS threads in its last bits, and the world must not
    target = (1.0 - surplus) * float(np.sum(_logistic(alpha + eta0) * price))
    a = alpha + np.log(1.0 - surplus)
    for _ in range(60):
        p = _logistic(a + eta0)
        f = float(np.sum(p * price)) - target
        a -= np.clip(f / max(float(np.sum(p * (1 - p) * price)), 1e-300), -2, 2)
        if abs(f) < 1e-10 * max(target, 1.0):
            break
    return float(a)


@dataclass
class MunicipalityResult:
    table: pa.Table
    eta0: np.ndarray              # x . beta without the municipality effect (float64)
    price: np.ndarray             # expected fraction x gross norm, for the truth's costs
    alpha: float
    share_non_working: np.ndarray  # the municipality's wijken after calibration
    stats: dict = field(default_factory=dict)


def generate_municipality(g: int, geo: Geography, wp: WorldParams, n_wijk: np.ndarray,
                          first_id: int, seed_seq: np.random.SeedSequence, planted_effect: float,
                          scale: float, norm_table: np.ndarray) -> MunicipalityResult:
    """All households of municipality ``g`` (pure function of its inputs and seed)."""
    rng = np.random.default_rng(seed_seq)
    wks = np.flatnonzero(geo.wk_mun == g)
    counts = n_wijk[wks]
    n = int(counts.sum())
    wk = np.repeat(wks, counts)                    # global wijk index per household

    mig = _draw_probs(rng, geo.wk_migration[wk])
    nonwest = mig >= _code("migration", "moroccan")
    u = 0.8 * wp.dep_wijk[wk] + 0.4 * nonwest + rng.normal(0, 1, n)

    ts = geo.wk_type_shares[wk]
    sp_share = _logistic(-1.6 + 0.4 * u + 0.3 * nonwest)
    htype_probs = np.column_stack([ts[:, 0], ts[:, 2] * sp_share, ts[:, 1] * 0.9,
                                   ts[:, 2] * (1 - sp_share), ts[:, 1] * 0.1])
    htype = _draw_probs(rng, htype_probs)

    young = geo.wk_young_share[wk]
    age = _draw(rng, AGE_BY_TYPE[htype] + 0.04 * (young - 12)[:, None] * AGE_YOUNG_TILT)
    older = age >= _code("age_class", "45-54")
    under27 = age <= _code("age_class", "21-26")

    zeros = np.zeros(n)
    edu = _draw(rng, np.column_stack([
        0.8 * u + 0.4 * nonwest + 0.3 * (age == 5) - 0.3,
        0.2 * u + 0.4,
        zeros,
        -2.6 + 1.2 * nonwest + 0.3 * (mig == 1)]))
    urban = geo.wk_urbanity[wk] <= 2
    single_like = (htype == 0) | (htype == 1)
    housing = _draw(rng, np.column_stack([
        zeros,
        -1.3 + 0.9 * u + 0.8 * single_like + 0.5 * urban + 0.3 * nonwest,
        -2.0 + 0.3 * u + 1.0 * under27 + 0.8 * urban]))
    health = _draw(rng, np.column_stack([
        zeros,
        -1.7 + 0.3 * u + 0.5 * older,
        -3.1 + 0.6 * u + 0.7 * older]))
    worklim = health == 2
    other = _draw(rng, np.column_stack([
        zeros,
        -3.4 + 0.2 * u,
        -4.3 + 2.2 * worklim + 0.8 * (health == 1) + 0.3 * older,
        -5.0 + 2.8 * worklim + 0.5 * (age == 5),
        -4.0 + 0.3 * u]))
    owner = housing == 0
    p_wealth = _logistic(-1.0 - 0.9 * u + 0.6 * owner + 0.5 * older + 0.5 * (edu == 2))
    p_equity = owner * _logistic(0.2 - 0.5 * u + 0.6 * older)
    r = rng.random(n)
    wealth_kind = np.where(r < p_wealth, 2, np.where(r < p_wealth + (1 - p_wealth) * p_equity, 1, 0))
    family = (htype == 1) | (htype == 2) | (htype == 3)
    wealth = np.where(wealth_kind == 0, 0, wealth_kind + 2 * family).astype(np.int8)

    # co-resident adults outside the benefit unit (adult children, lodgers, house mates)
    is_other = htype == 4
    p_share = _logistic(-3.2 + 0.4 * u + 1.3 * ((htype == 1) | (htype == 3)) * older)
    has = is_other | (rng.random(n) < p_share)
    extra = _draw_probs(rng, np.tile([0.72, 0.21, 0.07], (n, 1)))
    sharing = (has * (1 + extra)).astype(np.int8)
    p_young = np.where(is_other, 0.4, 0.7)
    under = rng.binomial(sharing.astype(np.int64), p_young).astype(np.int8)

    # outcomes from the known truth
    nb_snw, nb_liv, nb_jobs = wp.share_non_working[wk], wp.liveability[wk], wp.jobs_access[wk]
    codes = {"household_type": htype, "age_class": age, "migration": mig, "education": edu,
             "housing": housing, "health": health, "other_benefit": other, "wealth": wealth}
    world = wp.world                # the catalogue's further characteristics, from their own seed
    extras = {} if world.default else world.households(codes, u, np.random.default_rng(
        np.random.SeedSequence(seed_seq.entropy, spawn_key=(*seed_seq.spawn_key, 1))))
    eta0 = (truth.VOLUME["share_non_working"] * nb_snw + truth.VOLUME["liveability"] * nb_liv
            + truth.VOLUME["jobs_access"] * nb_jobs)
    zeta = np.full(n, truth.PRICE["intercept"])
    for f in FACTORS:
        eta0 = eta0 + _term_vector(truth.VOLUME, f)[codes[f]]
        zeta = zeta + _term_vector(truth.PRICE, f)[codes[f]]
    if world.published is not None:     # --truth scp2015: the published model itself, not calibrated
        eta0, snw_new, alpha = world.published_eta(codes, extras, wk, g), wp.share_non_working[wks], wp.policy[g]
    else:
        eta0 = eta0 + (0.0 if world.default else world.extra_eta(codes, extras, wk, g))
        # structural part of the calibration -> the wijken's share of non-working adults
        beta_snw = truth.VOLUME["share_non_working"]
        target = wp.target_rate[g] * n
        wanted = truth.VOLUME_LEVEL + wp.policy[g]
        shift = (_solve_alpha(eta0, target) - wanted) / beta_snw
        snw_new = np.clip(wp.share_non_working[wks] + shift, SNW_MIN, SNW_MAX)
        eta0 = eta0 + beta_snw * (snw_new[np.searchsorted(wks, wk)] - nb_snw)
        alpha = _solve_alpha(eta0, target)                 # = wanted, up to the clipping
    if g in wp.planted:
        alpha = planted_alpha(alpha, eta0, _logistic(zeta) * norm_table[htype, age, sharing], planted_effect,
                              float(wp.planted_surplus[np.searchsorted(wp.planted, g)]))
    p = _logistic(alpha + eta0)
    y = rng.random(n) < p
    p_lks = _logistic(truth.LKS_INTERCEPT + truth.LKS_WORK_LIMITATION * worklim)
    lks = y & (rng.random(n) < p_lks) & (world.published is None)    # no LKS in 2015
    bij = y & ~lks

    norm = norm_table[htype, age, sharing]          # 2019 rules: cut-off 21 counts all sharers
    f_true = _logistic(zeta)
    a_b = f_true * truth.PRICE_PRECISION
    frac = rng.beta(a_b, truth.PRICE_PRECISION - a_b)
    over = rng.random(n) < truth.PRICE_OVERPAID_SHARE
    frac = np.where(over, 1.0 + 0.2 * rng.random(n), frac)
    paid = np.where(y, frac * norm, 0.0)

    dur_logits = np.column_stack([
        zeros - 0.3 * older + 0.8 * under27,
        zeros - 0.5,
        zeros - 0.2,
        zeros - 1.2 + 0.3 * older - 1.0 * under27 + wp.long_term[g],
        zeros + 0.2 + 0.6 * older + 0.4 * (edu == 0) + 0.5 * worklim - 1.5 * under27 + 2 * wp.long_term[g]])
    duration = np.where(y, _draw(rng, dur_logits) + 1, 0).astype(np.int8)

    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    wk_local = np.searchsorted(wks, wk).astype(np.int32)
    columns = {
        "id": ids,
        "municipality": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                                        pa.array([geo.mun_code[g]], pa.string())),
        "neighbourhood": pa.DictionaryArray.from_arrays(pa.array(wk_local),
                                                         pa.array(list(geo.wk_code[wks]), pa.string())),
        **codes, **extras,
        "adults_sharing": sharing,
        "adults_sharing_under_27": under,
        "bijstand": bij.astype(np.int8),
        "lks": lks.astype(np.int8),
        "benefit_paid": paid,
        "duration_class": duration,
    }
    table = pa.Table.from_arrays([pa.array(columns[c.name]) if not isinstance(columns[c.name], pa.Array)
                                  else columns[c.name] for c in tables(world.catalogue)["households"]],
                                 schema=schema("households", world.catalogue))
    # W-deel need: the chance of a reintegration trajectory by person characteristics (as the
    # letter of 14 May 2004 describes the need study) x EUR 4,000 per trajectory [I], summed over the
    # bijstand households; independent of the benefit duration and of any W-deel model's weights.
    p_traj = _logistic(-0.4 + 0.5 * under27 - 0.6 * older + 0.4 * (edu == 0) - 0.8 * worklim)
    stats = {
        "n": n, "bijstand": int(bij.sum()), "lks": int(lks.sum()), "expected": float(p.sum()),
        "spending": float(paid.sum()), "paid_bijstand": float(paid[bij].sum()),
        "long": int((duration[bij] >= 4).sum()), "need": float(p_traj[bij].sum() * 4000.0),
        "expected_cost": float((p * f_true * norm).sum()),
        "measures": world.measure_counts(codes, geo.wk_urbanity[wk]),
    }
    return MunicipalityResult(table=table, eta0=eta0, price=f_true * norm, alpha=alpha, share_non_working=snw_new,
                              stats=stats)


def _ordered(pool: ThreadPoolExecutor, fn, n: int, window: int):
    """``fn(0), ..., fn(n-1)`` computed on ``pool`` with at most ``window`` in flight, in order."""
    pending = deque()
    for i in range(n):
        pending.append(pool.submit(fn, i))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass(frozen=True)
class SynthSummary:
    households: int
    municipalities: int
    neighbourhoods: int
    bijstand: int
    lks: int
    seconds: float
    out: Path


def generate(out: str | Path, households: int = REAL_HOUSEHOLDS, seed: int = 0, planted: int = 10,
             planted_effect: float = 0.0, policy_sd: float = truth.POLICY_SD, threads: int | None = None,
             progress=None, planted_surplus: tuple[float, float] = (0.10, 0.30),
             truth_model: str = "default") -> SynthSummary:
    """Generate a synthetic Netherlands of ``households`` households into folder ``out``.

    ``planted`` municipalities (chosen among those above 40,000 inhabitants) get an extra
    strict policy that leaves a surplus the model cannot explain: their expected spending is
    (1 - s) times what it would be without it, s drawn uniformly from ``planted_surplus``
    (min, max) per municipality, or, when ``planted_effect`` is not 0, a fixed effect of that
    size on the log-odds of bijstand (negative: a surplus); every municipality has a natural
    policy effect drawn from N(0, ``policy_sd``). ``progress(done, total)`` is called
    after each municipality. Municipalities are generated on ``threads`` threads (default:
    the number of cores) and written in order; the output does not depend on ``threads``.
    ``truth_model``: ``default``, ``realistic`` or ``scp2015`` (:mod:`engine.world.characteristics`;
    the other two write their catalogue as ``catalogue.toml``).
    """
    t0 = time.perf_counter()
    threads = threads or os.cpu_count() or 1
    geo = load_geography()
    n_mun = len(geo.mun_code)
    if households < n_mun:
        raise ValueError(f"--households must be at least {n_mun} (one per municipality), not {households}")
    if not 0 <= policy_sd < math.inf:
        raise ValueError(f"--policy-sd must be a finite number >= 0, not {policy_sd}")
    if not math.isfinite(planted_effect):
        raise ValueError(f"--planted-effect must be a finite number, not {planted_effect}")
    if planted < 0:
        raise ValueError(f"--planted must be >= 0, not {planted}")
    root = np.random.SeedSequence(seed)
    world_ss, *mun_ss = root.spawn(n_mun + 1)
    if not 0 <= planted_surplus[0] <= planted_surplus[1] < 1:
        raise ValueError(f"--planted-surplus must be MIN,MAX with 0 <= MIN <= MAX < 1, not {planted_surplus}")
    wp = _world_params(geo, np.random.default_rng(world_ss), planted, policy_sd, planted_surplus)
    n_wijk = allocate_households(geo, households)
    n_mun_hh = np.bincount(geo.wk_mun, weights=n_wijk, minlength=n_mun).astype(np.int64)
    wp.world = world_model(truth_model, geo, wp, n_mun_hh, seed)
    scale = households / REAL_HOUSEHOLDS
    norm_table = load_norms(2019).table()
    first_ids = np.concatenate([[0], np.cumsum(n_mun_hh)[:-1]])

    eta0 = np.empty(households)
    price = np.empty(households)
    alpha = np.empty(n_mun)
    stats = []
    def one(g: int) -> MunicipalityResult:
        return generate_municipality(g, geo, wp, n_wijk, int(first_ids[g]), mun_ss[g],
                                     planted_effect, scale, norm_table)

    with atomic_dir(out) as tmp, ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        with pq.ParquetWriter(tmp / "households.parquet", schema("households", wp.world.catalogue)) as writer:
            for g, res in enumerate(_ordered(pool, one, n_mun, window=4 * max(1, threads))):
                writer.write_table(res.table, row_group_size=max(res.table.num_rows, 1))
                s = slice(first_ids[g], first_ids[g] + n_mun_hh[g])
                eta0[s], price[s], alpha[g] = res.eta0, res.price, res.alpha
                wp.share_non_working[geo.wk_mun == g] = res.share_non_working
                stats.append(res.stats)
                if progress:
                    progress(g + 1, n_mun)
        wp.world.fill_measures(stats, n_mun_hh)
        write_tables(tmp, geo, wp, n_mun_hh, stats, scale, seed)
        write_truth(tmp, geo, wp, n_mun_hh, stats, eta0, price, alpha, seed, households, planted_effect,
                    _solve_alpha(eta0, sum(s["expected"] for s in stats)))
    return SynthSummary(households=households, municipalities=n_mun, neighbourhoods=len(geo.wk_code),
                        bijstand=sum(s["bijstand"] for s in stats), lks=sum(s["lks"] for s in stats),
                        seconds=time.perf_counter() - t0, out=Path(out))
