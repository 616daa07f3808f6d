"""Published rates of healthy brain ageing, as functions of age in years.

The phantoms age the MNI152 template anatomy (a young-adult average: the ICBM152
2009 population was 18-44 years old) along these curves. They are cross-sectional
norms for cognitively normal adults; individual subjects scatter around them
(see ``cohort.py`` for the per-subject variability).

Sources:
- Hedman AM, van Haren NEM, Schnack HG, Kahn RS, Hulshoff Pol HE (2012). Human
  brain changes across the life span: a review of 56 longitudinal magnetic
  resonance imaging studies. Hum Brain Mapp 33:1987-2002. Whole-brain volume is
  stable until about 35, then falls by about 0.2 %/year, the loss accelerating to
  about 0.5 %/year by 60 and beyond.
- Scahill RI, Frost C, Jenkins R, Whitwell JL, Rossor MN, Fox NC (2003). A
  longitudinal study of brain volume changes in normal aging using serial
  registered magnetic resonance imaging. Arch Neurol 60:989-994. Ventricular
  enlargement accelerates with age, to several percent per year after 60.
- Fjell AM, Walhovd KB, et al. (2009). One-year brain atrophy evident in healthy
  aging. J Neurosci 29:15223-15231. Lateral ventricles grow fastest of all
  structures in later life (about 3-5 %/year after 60), which across 20 to 80
  years amounts to a two- to threefold enlargement.
- Salat DH, Buckner RL, Snyder AZ, et al. (2004). Thinning of the cerebral cortex
  in aging. Cereb Cortex 14:721-730; Thambisetty M, et al. (2010). Longitudinal
  changes in cortical thickness associated with normal aging. NeuroImage
  52:1215-1223. Cortex thins by roughly 0.01-0.02 mm/year across adulthood.
"""

from __future__ import annotations

import numpy as np

# Hedman et al. 2012: no net loss before ~35, 0.2 %/year at 35, 0.5 %/year from 60 on.
BRAIN_LOSS_ONSET_AGE = 35.0
BRAIN_LOSS_RATE_KNOTS = ((35.0, 0.002), (60.0, 0.005), (100.0, 0.005))

# Ventricular growth rate rises from zero at 25 as ((age - 25) / 55) ** 1.5, peaking at
# 4.7 %/year at 80; this gives 2.4 %/year at 60, 3.5 %/year at 70 and a 2.8-fold
# enlargement between 20 and 80 (Fjell 2009, Scahill 2003).
VENTRICLE_GROWTH_ONSET_AGE = 25.0
VENTRICLE_GROWTH_RATE_AT_80 = 0.047
VENTRICLE_GROWTH_EXPONENT = 1.5

# Salat 2004 / Thambisetty 2010: 0.01-0.02 mm/year; we take the lower end since the
# template's cortex is smoother (and so thicker in voxels) than an individual's.
CORTICAL_THINNING_MM_PER_YEAR = 0.012
CORTICAL_THINNING_ONSET_AGE = 20.0


def brain_volume_fraction(age: float) -> float:
    """Parenchymal (grey + white matter) volume at ``age`` relative to the same brain before 35."""
    if age <= BRAIN_LOSS_ONSET_AGE:
        return 1.0
    ages = np.linspace(BRAIN_LOSS_ONSET_AGE, age, 200)
    knot_ages, knot_rates = zip(*BRAIN_LOSS_RATE_KNOTS)
    rates = np.interp(ages, knot_ages, knot_rates)
    # Rates are per year of the current volume, so the fraction is the exponential of the integral.
    lost = float(np.sum((rates[1:] + rates[:-1]) / 2 * np.diff(ages)))  # trapezoid rule
    return float(np.exp(-lost))


def ventricle_volume_factor(age: float) -> float:
    """Lateral-ventricle volume at ``age`` relative to a young adult (the template's)."""
    if age <= VENTRICLE_GROWTH_ONSET_AGE:
        return 1.0
    span = 80.0 - VENTRICLE_GROWTH_ONSET_AGE
    years = age - VENTRICLE_GROWTH_ONSET_AGE
    exponent = VENTRICLE_GROWTH_EXPONENT
    integral = VENTRICLE_GROWTH_RATE_AT_80 * span / (exponent + 1) * (years / span) ** (exponent + 1)
    return float(np.exp(integral))


def cortical_thinning_mm(age: float) -> float:
    """Cortical thickness lost since early adulthood, in millimetres."""
    return max(0.0, age - CORTICAL_THINNING_ONSET_AGE) * CORTICAL_THINNING_MM_PER_YEAR
