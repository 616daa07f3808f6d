"""Age trajectories: per region, the OLS slope of volume against age in real and in synthetic images."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from flowlet.regions.measures import BASELINE, REAL_GROUPS, SYNTHETIC

# The regions that change most with age in adults, with the measure plotted for each.
FAST_AGEING_PANELS = (
    ("ventricles", "volume_ml"),
    ("hippocampus", "volume_ml"),
    ("cortex", "volume_ml"),
    ("brain", "tissue_fraction"),
)


def ols_slope(ages: np.ndarray, values: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Slope and intercept of values ~ age by ordinary least squares, with the slope's t-based interval.

    NaN everywhere when fewer than three points or no spread in age make the slope's error undefined.
    """
    ages, values = np.asarray(ages, float), np.asarray(values, float)
    keep = np.isfinite(ages) & np.isfinite(values)
    ages, values = ages[keep], values[keep]
    n = len(ages)
    empty = {
        "n": n,
        "slope": np.nan,
        "slope_se": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "intercept": np.nan,
        "r": np.nan,
        "p": np.nan,
    }
    if n < 3 or np.ptp(ages) == 0:
        return empty
    fit = stats.linregress(ages, values)
    half_width = stats.t.ppf(0.5 + level / 2, n - 2) * fit.stderr
    return {
        "n": n,
        "slope": float(fit.slope),
        "slope_se": float(fit.stderr),
        "ci_low": float(fit.slope - half_width),
        "ci_high": float(fit.slope + half_width),
        "intercept": float(fit.intercept),
        "r": float(fit.rvalue),
        "p": float(fit.pvalue),
    }


def _source(group: str) -> str:
    return {SYNTHETIC: "synthetic", BASELINE: "baseline"}.get(group, "real")


MEASURES = ("volume_ml", "tissue_fraction", "native_volume_ml")


def slopes_table(measures: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per region and measure: real and synthetic slopes on age and their difference.

    Measures: own-tissue volume (ml, MNI space), own-tissue fraction of the region and, when the split table
    gives each real image's scale to native space, native own-tissue volume (ml). Slopes are per year and also
    in percent of the real mean per year. Real uses training and test images together; synthetic uses the
    requested ages. The difference's interval treats the two fits as independent (normal approximation).
    """
    rows = []
    z = stats.norm.ppf(0.5 + level / 2)
    # Native volumes exist only for real images whose split table row carries the scale to native space.
    present = [m for m in MEASURES if m in measures.columns and measures[m].notna().any()]
    for measure in present:
        for region, table in measures.groupby("region", sort=False):
            real = table[table["group"].isin(REAL_GROUPS)]
            reference = float(real[measure].mean()) if len(real) else np.nan
            scale = 100.0 / reference if np.isfinite(reference) and reference != 0 else np.nan
            row: dict[str, object] = {
                "region": region,
                "measure": measure,
                "region_tissue": table["region_tissue"].iloc[0],
                "real_mean": reference,
            }
            for source in ("real", "synthetic"):
                subset = table[table["group"].map(_source) == source]
                fit = ols_slope(subset["age"].to_numpy(), subset[measure].to_numpy(), level)
                row.update({f"{source}_{key}": value for key, value in fit.items()})
                row[f"{source}_slope_percent_per_year"] = fit["slope"] * scale
            difference = row["synthetic_slope"] - row["real_slope"]
            se = float(np.hypot(row["real_slope_se"], row["synthetic_slope_se"]))
            row.update(
                {
                    "slope_difference": difference,
                    "difference_ci_low": difference - z * se,
                    "difference_ci_high": difference + z * se,
                }
            )
            row["slope_difference_percent_per_year"] = (
                row["synthetic_slope_percent_per_year"] - row["real_slope_percent_per_year"]
            )
            rows.append(row)
    return pd.DataFrame(rows)


def slope_agreement(slopes: pd.DataFrame, region_names: set[str], measure: str = "volume_ml") -> dict[str, float]:
    """Pearson and Spearman correlation of real and synthetic slopes (%/year) of one measure across the given regions."""
    subset = slopes[slopes["region"].isin(region_names) & (slopes["measure"] == measure)]
    real, synthetic = (
        subset["real_slope_percent_per_year"].to_numpy(float),
        subset["synthetic_slope_percent_per_year"].to_numpy(float),
    )
    keep = np.isfinite(real) & np.isfinite(synthetic)
    if keep.sum() < 3:
        return {"n_regions": int(keep.sum()), "pearson_r": np.nan, "spearman_rho": np.nan}
    return {
        "n_regions": int(keep.sum()),
        "pearson_r": float(stats.pearsonr(real[keep], synthetic[keep])[0]),
        "spearman_rho": float(stats.spearmanr(real[keep], synthetic[keep])[0]),
    }
