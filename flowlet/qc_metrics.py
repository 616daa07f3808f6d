"""Image QC metrics shared by the QC of real preprocessed brains (flowlet.preprocess.qc) and of synthetic ones
(flowlet.generative.synthetic_qc). numpy and pandas only, so that every stage's environment can import them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# 1.4826 makes the MAD a consistent estimate of the standard deviation for normal data.
_MAD_TO_SD = 1.4826


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return float(2 * np.count_nonzero(a & b) / total) if total else 1.0


def normalised_cross_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def robust_z(values: pd.Series, reference: pd.Series | None = None) -> pd.Series:
    """(x - median) / (1.4826 MAD), median and MAD of ``reference`` (default: of ``values`` themselves);
    0 where the MAD is 0 and the value equals the median.

    A reference lets values from elsewhere (synthetic volumes) be scored against a cohort (real subjects).
    """
    reference = values if reference is None else reference
    median = reference.median()
    mad = (reference - median).abs().median() * _MAD_TO_SD
    if not mad > 0:
        # All typical subjects agree exactly: any departure from them is an outlier.
        difference = values - median
        return pd.Series(np.where(difference == 0, 0.0, np.sign(difference) * np.inf), index=values.index)
    return (values - median) / mad


def outlier_reason(metric: str, value: float, score: float) -> str:
    """How a flagged metric is reported in ``outlier_reasons``."""
    return f"{metric}={value:.3g} (robust z {score:+.1f})"


def outlier_reasons(
    table: pd.DataFrame, metrics: Sequence[str], threshold: float, reference: pd.DataFrame | None = None
) -> list[list[str]]:
    """Per row of ``table``, why it is an outlier: a metric missing, or its robust z-score (against
    ``reference``, default the table itself) beyond ``threshold``. An empty list is a row that passes."""
    reasons: list[list[str]] = [[] for _ in range(len(table))]
    for metric in metrics:
        values = pd.to_numeric(table[metric], errors="coerce").reset_index(drop=True)
        scores = robust_z(values, None if reference is None else pd.to_numeric(reference[metric], errors="coerce"))
        for i, (value, score) in enumerate(zip(values, scores)):
            if pd.isna(value):
                reasons[i].append(f"{metric} missing")
            elif abs(score) > threshold:
                reasons[i].append(outlier_reason(metric, value, score))
    return reasons
