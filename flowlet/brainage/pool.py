"""Repeated splits pooled (split.folds): each held-out subject's predictions come from the one fold that tested
it, so the K folds together are one evaluation of every subject, summarised, judged and drawn as one study.

An external cohort is predicted by every fold's models; its replicates are then (fold, seed) pairs, and each
subject's error is averaged over them as over seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flowlet.brainage.experiment import SUBJECT, Evaluation, Settings, summarise
from flowlet.brainage.outputs import COUNT_KEYS, COUNTS_FILE
from flowlet.data.bins import AgeBins
from flowlet.data.tables import read_tsv
from flowlet.errors import FlowletError

FOLD = "fold"
MODEL_KEYS = ["feature_set", "regressor", "arm", "seed"]


def _read_fold(folder: Path, fold: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    what = f"fold {fold}'s brain-age"
    text = {"participant_id": str, "age_bin": str, SUBJECT: str}
    predictions = read_tsv(folder / "predictions.tsv", f"{what} predictions", dtype=text).assign(**{FOLD: fold})
    models = read_tsv(folder / "models.tsv", f"{what} models").assign(**{FOLD: fold})
    counts = read_tsv(folder / COUNTS_FILE, f"{what} bin counts", ("age_bin", *COUNT_KEYS), dtype={"age_bin": str})
    notes_path = folder / "notes.txt"
    notes = [f"fold {fold}: {line}" for line in notes_path.read_text().splitlines()] if notes_path.exists() else []
    return predictions, models, counts.assign(**{FOLD: fold}), notes


def pool_folds(folders: list[Path], settings: Settings) -> Evaluation:
    """The folds' predictions as one evaluation; an internal subject tested by two folds is an error (the folders
    are not the folds of one split.folds run)."""
    if len(folders) < 2:
        raise FlowletError(f"pooling needs the brain-age folders of 2 or more folds, got {len(folders)}")
    parts = [_read_fold(Path(folder), fold) for fold, folder in enumerate(folders, start=1)]
    predictions = pd.concat([part[0] for part in parts], ignore_index=True)
    internal = predictions["test_set"] == "internal"
    folds_per_subject = predictions[internal].groupby("participant_id")[FOLD].nunique()
    repeated = folds_per_subject[folds_per_subject > 1]
    if not repeated.empty:
        raise FlowletError(
            f"{len(repeated)} internal test subject(s) (e.g. {repeated.index[0]}) are tested by more than one fold: "
            f"{', '.join(map(str, folders))} are not the folds of one split.folds run"
        )
    # An arm a fold could not train (say, no synthetic volume passed its QC gate) has no predictions for that
    # fold's subjects, so it cannot be pooled.
    folds_per_arm = predictions.groupby(["feature_set", "regressor", "arm"])[FOLD].nunique()
    incomplete = folds_per_arm[folds_per_arm < len(parts)]
    dropped = [
        f"{feature_set}/{regressor}/{arm} left out of the pooled metrics: trained in {count} of {len(parts)} folds"
        for (feature_set, regressor, arm), count in incomplete.items()
    ]
    if dropped:
        keys = pd.MultiIndex.from_frame(predictions[["feature_set", "regressor", "arm"]])
        predictions = predictions[~keys.isin(incomplete.index)].reset_index(drop=True)
        internal = predictions["test_set"] == "internal"
    # Every fold predicts an external subject: each (fold, seed) pair is one replicate.
    predictions["seed"] = predictions["seed"].astype(object)
    predictions.loc[~internal, "seed"] = [
        f"fold-{fold}/seed-{seed}"
        for fold, seed in zip(predictions.loc[~internal, FOLD], predictions.loc[~internal, "seed"])
    ]
    subject_columns = ["participant_id", *([SUBJECT] if SUBJECT in predictions else []), "age", "age_bin"]
    test_sets = {
        name: group.drop_duplicates("participant_id")[subject_columns].reset_index(drop=True)
        for name, group in predictions.groupby("test_set", sort=False)
    }
    models = pd.concat([part[1] for part in parts], ignore_index=True)
    per_model = (
        models.groupby(MODEL_KEYS, sort=False)
        .agg(
            n_train_real=("n_train_real", "mean"),
            n_train_synthetic=("n_train_synthetic", "mean"),
            cv_mae=("cv_mae", "mean"),
            correction_applied=("correction_applied", "all"),
        )
        .reset_index()
    )
    per_model[["n_train_real", "n_train_synthetic"]] = (
        per_model[["n_train_real", "n_train_synthetic"]].round().astype(int)
    )
    counts = pd.concat([part[2] for part in parts], ignore_index=True)
    reduced_bins = sorted(
        set(counts.loc[counts["withheld"] > 0, "age_bin"]), key=AgeBins.from_edges(settings.bin_edges).labels.index
    )
    # What one fold's models saw: the folds' mean (every subject trains in K - 1 of them).
    mean_counts = counts.groupby("age_bin", sort=False)[list(COUNT_KEYS)].mean().round().astype(int)
    metrics = summarise(
        predictions, per_model, test_sets, AgeBins.from_edges(settings.bin_edges).labels, reduced_bins, settings
    )
    notes = [
        f"{len(folders)} folds pooled: each internal test subject predicted by the fold that held it out; "
        "training counts (n_train_*, verdict) are the folds' means",
        *dropped,
        *(note for part in parts for note in part[3]),
    ]
    return Evaluation(
        metrics=metrics,
        predictions=predictions,
        models=models,
        counts={label: row.to_dict() for label, row in mean_counts.iterrows()},
        notes=notes,
    )


def pooled_plan(plans: list[pd.DataFrame]) -> pd.DataFrame:
    """The bins any fold's plan filled, in plan order: the bins the pooled verdict answers for."""
    table = pd.concat(plans, ignore_index=True)
    return table.groupby("age_bin", sort=False)["n_synthetic"].sum().reset_index()
