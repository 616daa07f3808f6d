"""The study's answer, one row and one sentence per bin that synthetic subjects were meant to help.

Those bins are the ones controlled scarcity reduced and the ones the plan filled because they were
under-represented, plus all reduced bins pooled. One brain-age model answers: the feature set and regressor
named in the config, else the one with the lowest cross-validated MAE of the real arm inside the training
split (never chosen on the test set).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from flowlet.brainage.regressors import BASELINE
from flowlet.errors import FlowletError

AUTO = "auto"
MIN_TEST_FOR_INTERVAL = 3
# (column prefix, arm) of the MAE columns, in the order the table shows them.
ARM_COLUMNS = (("real", "real"), ("synthetic", "real+synthetic"), ("baseline", "real+baseline"), ("oracle", "oracle"))
COLUMNS = [
    "age_bin",
    "why",
    "model",
    "n_train_real",
    "n_withheld",
    "n_synthetic",
    "n_test",
    *(f"mae_{prefix}{part}" for prefix, _ in ARM_COLUMNS for part in ("", "_ci")),
    "delta",
    "delta_ci",
    "gap_closed",
    "gap_closed_ci",
    "sentence",
]


def chosen_model(models: pd.DataFrame, choice: str) -> tuple[str, str]:
    """(feature set, regressor) of ``choice`` ("feature_set/regressor"), or the real arm's best by CV MAE."""
    real = models[(models["arm"] == "real") & (models["regressor"] != BASELINE)]
    available = sorted({f"{row.feature_set}/{row.regressor}" for row in real.itertuples()})
    if choice != AUTO:
        if choice not in available:
            raise FlowletError(f"brainage.verdict_model: {choice!r} was not trained; choose auto or one of {available}")
        feature_set, regressor = choice.split("/")
        return feature_set, regressor
    if real.empty:
        raise FlowletError("the verdict needs the real arm, which was not trained (brainage.arms)")
    best = real.groupby(["feature_set", "regressor"], sort=False)["cv_mae"].mean().idxmin()
    return str(best[0]), str(best[1])


def verdict_bins(
    plan: pd.DataFrame | None, reduced_bins: list[str], synthetic_bins: list[str]
) -> list[tuple[str, str]]:
    """(bin, why) for every bin synthetic subjects were meant to help, in bin order."""
    if plan is not None:
        filled = plan.loc[plan["n_synthetic"] > 0, "age_bin"].astype(str).tolist()
        order = plan["age_bin"].astype(str).tolist()
    else:
        filled = synthetic_bins
        order = sorted(set(filled) | set(reduced_bins), key=lambda label: float(label.split("-")[0]))
    return [
        (label, "reduced" if label in reduced_bins else "under-represented")
        for label in order
        if label in reduced_bins or label in filled
    ]


def _interval(low: float, high: float, n_test: int) -> str:
    if n_test < MIN_TEST_FOR_INTERVAL:
        return "n too small"
    return f"[{low:.1f}, {high:.1f}]"


def verdict_table(
    metrics: pd.DataFrame,
    models: pd.DataFrame,
    plan: pd.DataFrame | None,
    counts: dict[str, dict[str, int]],
    reduced_label: str,
    choice: str = AUTO,
    correction: str = "corrected",
) -> pd.DataFrame:
    """One row per verdict bin (and the pooled reduced bins) on the internal test set, with its sentence.

    ``counts`` maps a bin to its real training, withheld and QC-passed synthetic counts
    (keys ``train``, ``withheld``, ``synthetic``).
    """
    feature_set, regressor = chosen_model(models, choice)
    rows_of_model = metrics[
        (metrics["feature_set"] == feature_set)
        & (metrics["regressor"] == regressor)
        & (metrics["test_set"] == "internal")
        & (metrics["correction"] == correction)
    ]
    reduced = [label for label, count in counts.items() if count.get("withheld", 0) > 0]
    bins = verdict_bins(plan, reduced, [label for label, count in counts.items() if count.get("synthetic", 0) > 0])
    if len(reduced) > 1:
        bins.append((reduced_label, "reduced"))
    rows = []
    for label, why in bins:
        at_bin = rows_of_model[rows_of_model["age_bin"] == label].set_index("arm")
        members = reduced if label == reduced_label else [label]
        row = {
            "age_bin": label,
            "why": why,
            "model": f"{feature_set}/{regressor} ({correction})",
            "n_train_real": sum(counts.get(m, {}).get("train", 0) for m in members),
            "n_withheld": sum(counts.get(m, {}).get("withheld", 0) for m in members),
            "n_synthetic": sum(counts.get(m, {}).get("synthetic", 0) for m in members),
            "n_test": int(at_bin["n_test"].iloc[0]) if not at_bin.empty else 0,
        }
        for prefix, arm in ARM_COLUMNS:
            present = arm in at_bin.index
            row[f"mae_{prefix}"] = float(at_bin.at[arm, "mae"]) if present else np.nan
            row[f"mae_{prefix}_ci"] = (
                _interval(at_bin.at[arm, "mae_ci_low"], at_bin.at[arm, "mae_ci_high"], row["n_test"]) if present else ""
            )
        augmented = at_bin.loc["real+synthetic"] if "real+synthetic" in at_bin.index else None
        row["delta"] = float(augmented["delta_mae_vs_real"]) if augmented is not None else np.nan
        row["delta_ci"] = (
            _interval(augmented["delta_ci_low"], augmented["delta_ci_high"], row["n_test"])
            if augmented is not None
            else ""
        )
        has_gap = augmented is not None and pd.notna(augmented.get("gap_closed", np.nan))
        row["gap_closed"] = float(augmented["gap_closed"]) if has_gap else np.nan
        if not has_gap:
            row["gap_closed_ci"] = ""
        elif row["n_test"] < MIN_TEST_FOR_INTERVAL:
            row["gap_closed_ci"] = "n too small"
        else:
            row["gap_closed_ci"] = f"[{100 * augmented['gap_ci_low']:.0f}%, {100 * augmented['gap_ci_high']:.0f}%]"
        row["sentence"] = sentence(row, augmented) + baseline_clause(at_bin, row["n_test"])
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def baseline_clause(at_bin: pd.DataFrame, n_test: int) -> str:
    """What the linear baseline generator's subjects did in the same bin, so FlowLet's effect has its yardstick."""
    if "real+baseline" not in at_bin.index or n_test < MIN_TEST_FOR_INTERVAL:
        return ""
    baseline = at_bin.loc["real+baseline"]
    return (
        f" The linear baseline generator's subjects changed the MAE by {baseline['delta_mae_vs_real']:+.1f} years "
        f"[{baseline['delta_ci_low']:.1f}, {baseline['delta_ci_high']:.1f}]."
    )


def sentence(row: dict, augmented: pd.Series | None) -> str:
    """The row in plain words."""
    where = f"In {row['age_bin']}"
    if row["n_withheld"]:
        kept = row["n_train_real"]
        where += f" (kept {kept} of {kept + row['n_withheld']} real training subjects)"
    else:
        where += f" ({row['n_train_real']} real training subjects)"
    if row["n_test"] == 0:
        return f"{where}, there are no held-out real test subjects: no answer."
    if augmented is None or math.isnan(row["delta"]):
        return f"{where}, no synthetic subject passed QC (or the real+synthetic arm was not trained): no answer."
    if row["n_test"] < MIN_TEST_FOR_INTERVAL:
        return (
            f"{where}, {row['n_test']} held-out test subject(s) are too few to tell whether "
            f"{row['n_synthetic']} synthetic subjects helped."
        )
    low, high = float(augmented["delta_ci_low"]), float(augmented["delta_ci_high"])
    change = -row["delta"]
    if low > 0:
        effect = f"synthetic data raised the MAE by {row['delta']:.1f} years {row['delta_ci']}"
    elif high < 0:
        effect = f"synthetic data lowered the MAE by {change:.1f} years [{-high:.1f}, {-low:.1f}]"
    else:
        effect = (
            f"synthetic data changed the MAE by {row['delta']:+.1f} years {row['delta_ci']}, "
            f"an interval that includes no change"
        )
    text = f"{where}, with {row['n_synthetic']} synthetic subjects, {effect}"
    if not math.isnan(row["gap_closed"]):
        text += f", closing {100 * row['gap_closed']:.0f}% {row['gap_closed_ci']} of the gap to the oracle"
    elif row["n_withheld"]:
        text += "; the gap closed is not estimable (the oracle itself did not beat the reduced real arm clearly)"
    return text + f" (n = {row['n_test']} test subjects)."
