"""Figures of the brain-age experiment: MAE per age bin by arm (with bootstrap intervals) and predicted versus true age."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flowlet.brainage.regressors import BASELINE  # noqa: E402
from flowlet.regions.figures import not_defined  # noqa: E402

ARM_COLOURS = {
    "real": "#4c72b0",
    "real+synthetic": "#dd8452",
    "synthetic": "#55a868",
    "real+baseline": "#8172b3",
    "baseline": "#937860",
    "oracle": "#333333",
}
# The y-axis follows these arms, the ones trained on real subjects; an arm far above them is drawn cut at the top
# with an arrow and its value, so that it cannot squash the comparison that matters.
SCALE_ARMS = ("real", "real+synthetic", "real+baseline", "oracle")
HEADROOM = 1.3


def _panels(table: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(table["feature_set"], table["regressor"])))


def mae_per_bin(
    metrics: pd.DataFrame, bin_labels: list[str], path: Path, correction: str = "raw", test_set: str = "internal"
) -> Path:
    """One panel per regressor: grouped bars of MAE per bin (and overall) by arm, 95% bootstrap intervals, baseline as ticks."""
    table = metrics[(metrics["correction"] == correction) & (metrics["test_set"] == test_set)]
    models = table[table["regressor"] != BASELINE]
    baseline = table[(table["regressor"] == BASELINE) & (table["arm"] == "real") & (table["feature_set"] == "voxels")]
    panels = _panels(models)
    columns = min(2, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(7 * columns, 3.6 * rows), squeeze=False)
    present_bins = [
        label for label in ["all", *bin_labels, *pooled_labels(table, bin_labels)] if label in set(table["age_bin"])
    ]
    positions = np.arange(len(present_bins))
    for axis, (feature_set, regressor) in zip(axes.flat, panels):
        panel = models[(models["feature_set"] == feature_set) & (models["regressor"] == regressor)]
        arms = list(dict.fromkeys(panel["arm"]))
        width = 0.8 / len(arms)
        on_scale = panel[panel["arm"].isin(SCALE_ARMS)]
        top = HEADROOM * float(np.nanmax(on_scale["mae_ci_high"] if not on_scale.empty else panel["mae_ci_high"]))
        for offset, arm in enumerate(arms):
            rows_arm = panel[panel["arm"] == arm].set_index("age_bin").reindex(present_bins)
            centre = positions - 0.4 + width * (offset + 0.5)
            errors = np.vstack([rows_arm["mae"] - rows_arm["mae_ci_low"], rows_arm["mae_ci_high"] - rows_arm["mae"]])
            inside = (rows_arm["mae"] <= top).to_numpy()
            axis.bar(
                centre[inside],
                rows_arm["mae"][inside],
                width,
                yerr=errors[:, inside],
                capsize=2,
                label=arm,
                color=ARM_COLOURS.get(arm),
            )
            for x, value in zip(centre[~inside], rows_arm["mae"][~inside]):
                if np.isfinite(value):
                    axis.bar(x, top, width, color=ARM_COLOURS.get(arm), alpha=0.4)
                    axis.annotate(
                        f"{value:.0f}",
                        (x, top),
                        xytext=(x, top * 0.8),
                        ha="center",
                        fontsize=7,
                        arrowprops={"arrowstyle": "->", "color": "black"},
                    )
        axis.set_ylim(0, top)
        if not baseline.empty:
            levels = baseline.set_index("age_bin").reindex(present_bins)["mae"]
            axis.scatter(positions, levels, marker="_", s=600, color="black", label="predict training mean", zorder=3)
        bin_ticks(axis, positions, present_bins)
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


def bin_ticks(axis: plt.Axes, positions: np.ndarray, labels: list[str]) -> None:
    """Age-bin labels, slanted so that long ones ("reduced bins") do not run into their neighbours."""
    axis.set_xticks(positions, labels, rotation=30, ha="right", rotation_mode="anchor")


def pooled_labels(table: pd.DataFrame, bin_labels: list[str]) -> list[str]:
    """Rows of the metrics table that pool several bins (controlled scarcity's reduced bins)."""
    return [label for label in dict.fromkeys(table["age_bin"]) if label != "all" and label not in bin_labels]


def gap_closed_per_bin(
    metrics: pd.DataFrame, bin_labels: list[str], path: Path, correction: str = "raw", test_set: str = "internal"
) -> Path:
    """Per bin, the share of the oracle's gain that each augmented arm won back, with its paired bootstrap interval."""
    table = (
        metrics[
            (metrics["correction"] == correction)
            & (metrics["test_set"] == test_set)
            & (metrics["regressor"] != BASELINE)
            & metrics["gap_closed"].notna()
        ]
        if "gap_closed" in metrics
        else metrics.iloc[0:0]
    )
    if table.empty:
        reason = (
            "no gap closed to show: controlled scarcity is off (split.scarcity_*), or the oracle did not "
            "beat the reduced real arm clearly in any bin"
        )
        not_defined(reason, path)
        return path
    panels = _panels(table)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    labels = [label for label in [*bin_labels, *pooled_labels(table, bin_labels)] if label in set(table["age_bin"])]
    positions = np.arange(len(labels))
    for axis, (feature_set, regressor) in zip(axes.flat, panels):
        panel = table[(table["feature_set"] == feature_set) & (table["regressor"] == regressor)]
        arms = list(dict.fromkeys(panel["arm"]))
        for offset, arm in enumerate(arms):
            rows = panel[panel["arm"] == arm].set_index("age_bin").reindex(labels)
            x = positions + 0.15 * (offset - (len(arms) - 1) / 2)
            errors = (
                np.vstack([rows["gap_closed"] - rows["gap_ci_low"], rows["gap_ci_high"] - rows["gap_closed"]]) * 100
            )
            axis.errorbar(
                x, rows["gap_closed"] * 100, yerr=errors, fmt="o", capsize=3, label=arm, color=ARM_COLOURS.get(arm)
            )
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.axhline(100, color="black", linewidth=0.8, linestyle="--", label="oracle")
        bin_ticks(axis, positions, labels)
        axis.set_ylabel(f"gap closed (%, {correction})")
        axis.set_title(f"{regressor} on {feature_set}")
        axis.legend(fontsize=7)
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
            chosen = table[
                (table["feature_set"] == feature_set) & (table["regressor"] == regressor) & (table["arm"] == arm)
            ]
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
