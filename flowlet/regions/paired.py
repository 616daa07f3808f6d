"""The paper's paired regional comparison: age-sorted pairs, regional Dice and intensity-histogram distances.

For each pair (a reference training image and a compared image: synthetic, or real test as the floor) and
each region, the two subjects' own region masks (atlas region ∩ the region's tissue in each segmentation)
are compared by Dice, and the two images' intensity histograms are compared inside the intersection and
inside the union of the masks by mean absolute error, mean squared error and Kullback-Leibler divergence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from flowlet.errors import FlowletError
from flowlet.regions.atlas import Atlas
from flowlet.regions.measures import MeasuredImage, region_mask

HISTOGRAM_METRICS = ("mae", "mse", "kl")
MASKS = ("intersection", "union")
METRIC_COLUMNS = ("dice",) + tuple(f"{metric}_{mask}" for mask in MASKS for metric in HISTOGRAM_METRICS)
# Added to every bin before the KL divergence so that empty bins in one histogram do not make it infinite.
KL_EPSILON = 1e-10


def pair_by_age(reference_ages: np.ndarray, compared_ages: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (reference index, compared index) that minimise the total age gap, in order of age.

    Both sets sorted by age and matched rank by rank is the optimal matching when the sets are the same
    size (the paper's pairing); with different sizes, the smaller set is matched to the nearest ages of the
    larger one without reusing an image.
    """
    reference_ages, compared_ages = np.asarray(reference_ages, float), np.asarray(compared_ages, float)
    if len(reference_ages) == 0 or len(compared_ages) == 0:
        return []
    rows, columns = linear_sum_assignment(np.abs(reference_ages[:, None] - compared_ages[None, :]))
    order = np.argsort(reference_ages[rows], kind="stable")
    return [(int(rows[i]), int(columns[i])) for i in order]


def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice overlap of two boolean masks; NaN when both are empty (nothing to compare)."""
    total = int(first.sum()) + int(second.sum())
    if total == 0:
        return float("nan")
    return 2.0 * float(np.logical_and(first, second).sum()) / total


def histogram_distances(first: np.ndarray, second: np.ndarray, bins: int = 256) -> dict[str, float]:
    """MAE, MSE and KL(first || second) between the normalised histograms of two intensity samples.

    Both histograms share ``bins`` equal bins spanning the pooled range of the two samples.
    """
    if first.size == 0 or second.size == 0:
        return {metric: float("nan") for metric in HISTOGRAM_METRICS}
    low = float(min(first.min(), second.min()))
    high = float(max(first.max(), second.max()))
    if high <= low:
        high = low + 1.0
    p = np.histogram(first, bins=bins, range=(low, high))[0].astype(float)
    q = np.histogram(second, bins=bins, range=(low, high))[0].astype(float)
    p /= p.sum()
    q /= q.sum()
    difference = p - q
    p_smooth = (p + KL_EPSILON) / (1 + bins * KL_EPSILON)
    q_smooth = (q + KL_EPSILON) / (1 + bins * KL_EPSILON)
    return {
        "mae": float(np.abs(difference).mean()),
        "mse": float((difference**2).mean()),
        "kl": float(np.sum(p_smooth * np.log(p_smooth / q_smooth))),
    }


def compare_pair(reference: MeasuredImage, compared: MeasuredImage, atlas: Atlas, bins: int) -> list[dict]:
    rows = []
    reference_flat, compared_flat = reference.intensities.ravel(), compared.intensities.ravel()
    for region in atlas.regions:
        first, second = region_mask(reference.labels, region), region_mask(compared.labels, region)
        row = {"region": region.name, "dice": dice(first, second)}
        reference_values, compared_values = reference_flat[region.voxels], compared_flat[region.voxels]
        for mask_name, mask in (("intersection", first & second), ("union", first | second)):
            distances = histogram_distances(reference_values[mask], compared_values[mask], bins)
            row.update({f"{metric}_{mask_name}": value for metric, value in distances.items()})
        rows.append(row)
    return rows


@dataclass(frozen=True)
class PairedComparison:
    name: str  # e.g. "synthetic-vs-train"
    references: list[MeasuredImage]
    compared: list[MeasuredImage]


def paired_table(comparison: PairedComparison, atlas: Atlas, bins: int = 256) -> pd.DataFrame:
    """Per pair and region: the ids and ages of both images and every metric."""
    if bins < 2:
        raise FlowletError(f"histogram bins must be at least 2, got {bins}")
    pairs = pair_by_age([m.entry.age for m in comparison.references], [m.entry.age for m in comparison.compared])
    rows = []
    for pair_index, (i, j) in enumerate(tqdm(pairs, desc=f"pairs {comparison.name}", unit="pair", disable=None)):
        reference, compared = comparison.references[i], comparison.compared[j]
        for row in compare_pair(reference, compared, atlas, bins):
            rows.append(
                {
                    "comparison": comparison.name,
                    "pair": pair_index,
                    "reference_id": reference.entry.image_id,
                    "compared_id": compared.entry.image_id,
                    "reference_age": reference.entry.age,
                    "compared_age": compared.entry.age,
                    **row,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "comparison",
            "pair",
            "reference_id",
            "compared_id",
            "reference_age",
            "compared_age",
            "region",
            *METRIC_COLUMNS,
        ],
    )


def region_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per comparison and region: number of pairs, and mean and SD over pairs of every metric."""
    grouped = pairs.groupby(["comparison", "region"], sort=False)
    summary = grouped[list(METRIC_COLUMNS)].agg(["mean", "std"])
    summary.columns = [f"{metric}_{statistic}" for metric, statistic in summary.columns]
    summary.insert(0, "n_pairs", grouped.size())
    return summary.reset_index()


def global_summary(pairs: pd.DataFrame, atlas: Atlas) -> pd.DataFrame:
    """Per comparison: every metric averaged over the atlas's own regions (composites left out) and pairs.

    ``mean_age_gap`` says how well the pairs were matched in age.
    """
    single = {region.name for region in atlas.atlas_regions}
    rows = []
    for name, table in pairs.groupby("comparison", sort=False):
        regional = table[table["region"].isin(single)]
        per_pair = regional.groupby("pair")[list(METRIC_COLUMNS)].mean()
        row = {
            "comparison": name,
            "n_pairs": int(table["pair"].nunique()),
            "n_regions": int(regional["region"].nunique()),
            "mean_age_gap": float(
                (table.drop_duplicates("pair")["compared_age"] - table.drop_duplicates("pair")["reference_age"])
                .abs()
                .mean()
            ),
        }
        for metric in METRIC_COLUMNS:
            row[f"{metric}_mean"] = float(per_pair[metric].mean())
            row[f"{metric}_sd_over_pairs"] = float(per_pair[metric].std()) if len(per_pair) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)
