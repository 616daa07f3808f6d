"""Brain-age metrics, the linear age-bias correction, and paired bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowlet.errors import FlowletError

# Below this slope of predicted-on-true age, dividing by the slope (the correction)
# would blow the predictions up rather than correct them; the correction is then skipped.
MIN_CORRECTION_SLOPE = 0.1


def regression_metrics(true_ages: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, Pearson r and R^2 (coefficient of determination against the test mean).

    r is NaN when either side is constant or there are fewer than two subjects; R^2 is
    NaN when the true ages are constant.
    """
    true_ages = np.asarray(true_ages, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    if true_ages.shape != predicted.shape or true_ages.size == 0:
        raise FlowletError(f"metrics need matching, non-empty arrays; got {true_ages.shape} and {predicted.shape}")
    errors = predicted - true_ages
    mae = float(np.mean(np.abs(errors)))
    rmse = float(np.sqrt(np.mean(errors**2)))
    if len(true_ages) >= 2 and np.ptp(true_ages) > 0 and np.ptp(predicted) > 0:
        r = float(np.corrcoef(true_ages, predicted)[0, 1])
    else:
        r = float("nan")
    total = np.sum((true_ages - true_ages.mean()) ** 2)
    r2 = float(1.0 - np.sum(errors**2) / total) if total > 0 else float("nan")
    return {"mae": mae, "rmse": rmse, "r": r, "r2": r2}


@dataclass(frozen=True)
class BiasCorrection:
    """The linear fit predicted = slope * age + intercept on training data, inverted at prediction time.

    corrected = (predicted - intercept) / slope (Cole et al. 2018): it needs no true
    age at prediction time, and removes the regression-to-the-mean bias (old subjects
    predicted too young, young ones too old).
    """

    slope: float
    intercept: float

    @classmethod
    def fit(cls, true_ages: np.ndarray, predicted: np.ndarray) -> BiasCorrection:
        true_ages = np.asarray(true_ages, dtype=float)
        predicted = np.asarray(predicted, dtype=float)
        if len(true_ages) < 3 or np.ptp(true_ages) == 0:
            raise FlowletError("the age-bias correction needs at least three training subjects of different ages")
        slope, intercept = np.polyfit(true_ages, predicted, 1)
        return cls(float(slope), float(intercept))

    @property
    def usable(self) -> bool:
        return self.slope >= MIN_CORRECTION_SLOPE

    def apply(self, predicted: np.ndarray) -> np.ndarray:
        return (np.asarray(predicted, dtype=float) - self.intercept) / self.slope


@dataclass(frozen=True)
class Resamples:
    """Bootstrap resamples of the test scans, shared by all arms so that comparisons are paired: scan indices
    drawn with replacement, or, where subjects have several scans (sessions), how often each scan's subject was
    drawn, since a subject's scans are not independent of each other."""

    indices: np.ndarray | None = None  # (n_resamples, n_scans) scan indices
    weights: np.ndarray | None = None  # (n_resamples, n_scans) draws of each scan's subject

    def means(self, values: np.ndarray) -> np.ndarray:
        """The mean of ``values`` (one per scan) in every resample."""
        values = np.asarray(values, dtype=float)
        if self.weights is None:
            return values[self.indices].mean(axis=1)
        return self.weights @ values / self.weights.sum(axis=1)


def bootstrap_resamples(n_scans: int, n_resamples: int, seed, subjects: Sequence[str] | None = None) -> Resamples:
    """Resamples of ``n_scans`` test scans; whole subjects are drawn when ``subjects`` (each scan's subject)
    repeats one. With one scan per subject the draws are those of a plain scan bootstrap."""
    if n_scans < 1:
        raise FlowletError("the bootstrap needs at least one test subject")
    if n_resamples < 1:
        raise FlowletError(f"--bootstrap must be a positive number of resamples, got {n_resamples}")
    rng = np.random.default_rng(seed)
    repeated_subjects = subjects is not None and pd.Series(subjects).nunique() < n_scans
    if not repeated_subjects:
        return Resamples(indices=rng.integers(0, n_scans, size=(n_resamples, n_scans)))
    codes, unique = pd.factorize(pd.Series(subjects))
    drawn = rng.integers(0, len(unique), size=(n_resamples, len(unique)))
    counts = np.zeros((n_resamples, len(unique)))
    np.add.at(counts, (np.arange(n_resamples)[:, None], drawn), 1.0)
    return Resamples(weights=counts[:, codes])


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_mae(absolute_errors: np.ndarray, resamples: Resamples, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the MAE over bootstrap resamples of subjects."""
    return percentile_interval(resamples.means(absolute_errors), level)


def bootstrap_mae_difference(
    errors_augmented: np.ndarray, errors_reference: np.ndarray, resamples: Resamples, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of MAE(augmented) - MAE(reference), resampling the same subjects for both (paired)."""
    difference = np.asarray(errors_augmented, dtype=float) - np.asarray(errors_reference, dtype=float)
    return percentile_interval(resamples.means(difference), level)
