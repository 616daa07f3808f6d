"""Figures of the brain-age experiment: MAE per age bin by arm (with bootstrap intervals) and predicted versus true age."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flowlet.brainage.regressors import BASELINE  # noqa: E402

ARM_COLOURS = {"real": "#4c72b0", "real+synthetic": "#dd8452", "synthetic": "#55a868"}


def _panels(table: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(table["feature_set"], table["regressor"])))


def mae_per_bin(metrics: pd.DataFrame, bin_labels: list[str], path: Path, correction: str = "raw", test_set: str = "internal") -> Path:
    """One panel per regressor: grouped bars of MAE per bin (and overall) by arm, 95% bootstrap intervals, baseline as ticks."""
    table = metrics[(metrics["correction"] == correction) & (metrics["test_set"] == test_set)]
    models = table[table["regressor"] != BASELINE]
    baseline = table[(table["regressor"] == BASELINE) & (table["arm"] == "real") & (table["feature_set"] == "voxels")]
    panels = _panels(models)
    columns = min(2, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(7 * columns, 3.6 * rows), squeeze=False)
    present_bins = [label for label in ["all", *bin_labels] if label in set(table["age_bin"])]
    positions = np.arange(len(present_bins))
    for axis, (feature_set, regressor) in zip(axes.flat, panels):
        panel = models[(models["feature_set"] == feature_set) & (models["regressor"] == regressor)]
        arms = list(dict.fromkeys(panel["arm"]))
        width = 0.8 / len(arms)
        for offset, arm in enumerate(arms):
            rows_arm = panel[panel["arm"] == arm].set_index("age_bin").reindex(present_bins)
            centre = positions - 0.4 + width * (offset + 0.5)
            errors = np.vstack([rows_arm["mae"] - rows_arm["mae_ci_low"], rows_arm["mae_ci_high"] - rows_arm["mae"]])
            axis.bar(centre, rows_arm["mae"], width, yerr=errors, capsize=2, label=arm, color=ARM_COLOURS.get(arm))
        if not baseline.empty:
            levels = baseline.set_index("age_bin").reindex(present_bins)["mae"]
            axis.scatter(positions, levels, marker="_", s=600, color="black", label="predict training mean", zorder=3)
        axis.set_xticks(positions, present_bins)
        axis.set_xlabel("age bin (years)")
        axis.set_ylabel(f"MAE (years, {correction})")
        axis.set_title(f"{regressor} on {feature_set}")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def pred_vs_true(predictions: pd.DataFrame, path: Path, column: str = "predicted", test_set: str = "internal") -> Path:
    """Rows: regressors; columns: arms; each point one test subject's prediction averaged over seeds."""
    table = predictions[(predictions["test_set"] == test_set) & (predictions["regressor"] != BASELINE)]
    panels = _panels(table)
    arms = list(dict.fromkeys(table["arm"]))
    figure, axes = plt.subplots(len(panels), len(arms), figsize=(3.4 * len(arms), 3.2 * len(panels)), squeeze=False)
    low = float(min(table["age"].min(), table[column].min())) - 2
    high = float(max(table["age"].max(), table[column].max())) + 2
    for row, (feature_set, regressor) in enumerate(panels):
        for col, arm in enumerate(arms):
            axis = axes[row, col]
            chosen = table[(table["feature_set"] == feature_set) & (table["regressor"] == regressor) & (table["arm"] == arm)]
            averaged = chosen.groupby("participant_id")[["age", column]].mean()
            axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
            axis.scatter(averaged["age"], averaged[column], s=12, color=ARM_COLOURS.get(arm))
            axis.set_xlim(low, high)
            axis.set_ylim(low, high)
            axis.set_title(f"{regressor} ({feature_set}), {arm}", fontsize=9)
            axis.set_xlabel("true age")
            axis.set_ylabel(f"{column} age")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
