"""The known truth of the synthetic Netherlands: the coefficients that generate outcomes.

Volume: P(bijstand or LKS) = logistic(alpha_g + x_h . BETA), where alpha_g is the
municipality's effect (common level + policy effect). Price: the expected fraction of
the gross norm paid = logistic(z_h . GAMMA). Magnitudes follow the published 2019
weights where they are known (wealth, disability benefit: Stcrt. 2018, 53998, Table 1)
and the SCP risk ratios otherwise [C: S22]; the rest is inferred.

Terms are named ``factor[level]`` (reference levels have no term) and continuous
neighbourhood factors by their column name, exactly as in ``coefficients.parquet``.
"""

from __future__ import annotations

# Reference level of each factor (the level with effect 0).
REFERENCE = {
    "household_type": "single",
    "age_class": "27-34",
    "migration": "dutch",
    "education": "high",
    "housing": "owner",
    "health": "none",
    "other_benefit": "none",
    "wealth": "below_limit",
}

VOLUME: dict[str, float] = {
    "household_type[single_parent]": 1.10,        # SCP: single mothers ~3x the risk of singles
    "household_type[couple_no_children]": -1.20,
    "household_type[couple_with_children]": -0.90,
    "household_type[other]": -0.40,
    "age_class[18-20]": -0.60,
    "age_class[21-26]": 0.10,
    "age_class[35-44]": 0.10,
    "age_class[45-54]": 0.20,
    "age_class[55-aow]": 0.35,                   # SCP: 55-65 ~1.5x the risk of 25-54
    "migration[western]": 0.30,
    "migration[moroccan]": 1.00,
    "migration[turkish]": 0.80,
    "migration[surinamese]": 0.70,
    "migration[antillean]": 1.10,
    "migration[other_non_western]": 1.30,
    "education[low]": 0.90,
    "education[medium]": 0.35,
    "education[unknown]": 0.60,
    "housing[social_rent]": 1.10,
    "housing[private_rent]": 0.60,
    "health[chronic_illness]": 0.45,
    "health[work_limitation]": 1.40,              # SCP: work limitation ~4x the risk
    "other_benefit[ww]": -1.60,
    "other_benefit[ao_partial]": -3.6719088,      # published 2019 weight [C: S6]
    "other_benefit[ao_full]": -4.20,
    "other_benefit[other]": -2.20,
    "wealth[single_home_equity]": -0.7157942,     # published 2019 weights [C: S6]
    "wealth[single_wealth]": -2.0799440,
    "wealth[family_home_equity]": -0.5623578,
    "wealth[family_wealth]": -1.6638611,
    "share_non_working": 2.20,                    # per unit share of non-working adults
    "liveability": -0.12,                         # per sd of the liveability index
    "jobs_access": -0.90,                         # per job per person in the labour force
}

# Municipality effects: alpha_g = VOLUME_LEVEL + natural policy effect (N(0, policy_sd))
# [+ planted effect]. What the generated characteristics do not explain of a municipality's
# real CBS bijstand rate is structural: it is carried by its neighbourhoods' share of
# non-working adults (an observed regressor), not by its policy.
VOLUME_LEVEL = -4.1
POLICY_SD = 0.05

PRICE: dict[str, float] = {
    "intercept": 2.10,
    "household_type[single_parent]": -0.45,
    "household_type[couple_no_children]": -0.25,
    "household_type[couple_with_children]": -0.50,
    "household_type[other]": -0.10,
    "age_class[18-20]": -0.30,
    "age_class[21-26]": -0.20,
    "age_class[35-44]": 0.00,
    "age_class[45-54]": 0.15,
    "age_class[55-aow]": 0.45,
    "migration[western]": 0.05,
    "migration[moroccan]": 0.20,
    "migration[turkish]": 0.20,
    "migration[surinamese]": 0.10,
    "migration[antillean]": 0.10,
    "migration[other_non_western]": 0.25,
    "education[low]": 0.30,
    "education[medium]": 0.10,
    "education[unknown]": 0.20,
    "other_benefit[ww]": -0.90,
    "other_benefit[ao_partial]": -1.10,
    "other_benefit[ao_full]": -1.60,
    "other_benefit[other]": -0.70,
    "health[chronic_illness]": 0.10,
    "health[work_limitation]": 0.35,
}

# Precision of the Beta distribution of the realised fraction around its mean, and the
# share of bijstand households paid more than their yearly norm (back payments), which
# the price model clips to 1.
PRICE_PRECISION = 15.0
PRICE_OVERPAID_SHARE = 0.003
# Share of volume-outcome households that are on LKS rather than bijstand (logit).
LKS_INTERCEPT = -3.9
LKS_WORK_LIMITATION = 1.6
# Persons with bijstand per bijstand household (CBS counts persons, the model households).
HOUSEHOLDS_PER_RECIPIENT = 0.8
