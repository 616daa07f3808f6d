"""What a brain-age run writes, for one split or for K folds pooled: the tables, the verdict and the figures."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from flowlet.brainage.experiment import REDUCED, Evaluation
from flowlet.brainage.figures import gap_closed_per_bin, mae_per_bin, pred_vs_true
from flowlet.brainage.verdict import verdict_table

log = logging.getLogger(__name__)

# Per bin: real training, withheld and QC-passed synthetic subjects; the pooled run reads each fold's.
COUNTS_FILE = "bin_counts.tsv"
COUNT_KEYS = ("train", "withheld", "synthetic")


def counts_table(counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"age_bin": label, **{key: values.get(key, 0) for key in COUNT_KEYS}} for label, values in counts.items()],
        columns=["age_bin", *COUNT_KEYS],
    )


def write_evaluation(
    evaluation: Evaluation,
    output: Path,
    labels: list[str],
    plan: pd.DataFrame | None,
    verdict_model: str,
    verdict_correction: str,
    model_note: str = "",
) -> pd.DataFrame:
    """metrics, predictions, models, bin counts, verdict (its sentences logged), figures and notes.txt;
    ``model_note`` is added to the verdict's model column (how the predictions were pooled)."""
    output.mkdir(parents=True, exist_ok=True)
    metrics = evaluation.metrics
    metrics.to_csv(output / "metrics.tsv", sep="\t", index=False, float_format="%.4f")
    evaluation.predictions.to_csv(output / "predictions.tsv", sep="\t", index=False, float_format="%.4f")
    evaluation.models.to_csv(output / "models.tsv", sep="\t", index=False, float_format="%.4f")
    counts_table(evaluation.counts).to_csv(output / COUNTS_FILE, sep="\t", index=False)
    verdict = verdict_table(
        metrics, evaluation.models, plan, evaluation.counts, REDUCED, verdict_model, verdict_correction
    )
    if model_note:
        verdict["model"] = verdict["model"] + model_note
    verdict.to_csv(output / "verdict.tsv", sep="\t", index=False, float_format="%.4f")
    for line in verdict["sentence"]:
        log.info("verdict: %s", line)
    # The figures read the predictions the verdict reads (raw or age-bias corrected).
    mae_per_bin(metrics, labels, output / "mae_per_bin.png", verdict_correction)
    gap_closed_per_bin(metrics, labels, output / "gap_closed.png", verdict_correction)
    column = "corrected" if verdict_correction == "corrected" else "predicted"
    pred_vs_true(evaluation.predictions, output / "pred_vs_true.png", column)
    if (metrics["test_set"] == "external").any():
        mae_per_bin(metrics, labels, output / "mae_per_bin_external.png", verdict_correction, test_set="external")
        pred_vs_true(evaluation.predictions, output / "pred_vs_true_external.png", column, test_set="external")
    overall = metrics[(metrics["age_bin"] == "all") & (metrics["correction"] == "raw")]
    for row in overall.itertuples(index=False):
        log.info(
            "%s %s/%s %s: MAE %.2f [%.2f, %.2f] years on %d test subjects",
            row.test_set,
            row.feature_set,
            row.regressor,
            row.arm,
            row.mae,
            row.mae_ci_low,
            row.mae_ci_high,
            row.n_test,
        )
    (output / "notes.txt").write_text("".join(f"{note}\n" for note in evaluation.notes))
    return verdict
