"""Repeated splits (split.folds): stratified test folds that test every subject once, and the folds' brain-age
results pooled into one evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flowlet.brainage.experiment import Settings
from flowlet.brainage.outputs import COUNTS_FILE
from flowlet.brainage.pool import pool_folds
from flowlet.cli import main
from flowlet.data.split import WITHHELD, check_fold_bins, fold_split, withhold_training_subjects
from flowlet.errors import FlowletError
from flowlet.report.summary import fold_scorecards

EDGES = [20, 40, 60, 80]


def participants(counts: list[int], missing_age: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    ages = np.concatenate([rng.uniform(low, high, n) for low, high, n in zip(EDGES[:-1], EDGES[1:], counts)])
    ages = np.concatenate([ages, np.full(missing_age, np.nan)])
    return pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(len(ages))], "age": ages, "sex": "F"})


def test_every_usable_subject_is_tested_by_exactly_one_fold_and_every_fold_tests_every_bin():
    table = participants([11, 7, 4], missing_age=2)
    folds = [
        fold_split(table, EDGES, 4, fold, seed=1, failed={"sub-005": "preprocessing failed: x"})
        for fold in (1, 2, 3, 4)
    ]
    tested = pd.concat([split.loc[split["split"] == "test", "participant_id"] for split in folds])
    usable = set(table["participant_id"][table["age"].notna()]) - {"sub-005"}
    assert sorted(tested) == sorted(usable)
    for split in folds:
        assert set(split.loc[split["split"] == "test", "age_bin"]) == {"20-40", "40-60", "60-80"}
        assert set(split.loc[split["split"] == "excluded", "participant_id"]) == {"sub-005", "sub-022", "sub-023"}
        assert set(split["split"]) == {"train", "test", "excluded"}
    sizes = [int((split["split"] == "test").sum()) for split in folds]
    assert max(sizes) - min(sizes) <= 1
    pd.testing.assert_frame_equal(
        folds[1], fold_split(table, EDGES, 4, 2, seed=1, failed={"sub-005": "preprocessing failed: x"})
    )
    assert not folds[0].equals(fold_split(table, EDGES, 4, 1, seed=2, failed={"sub-005": "preprocessing failed: x"}))


def test_controlled_scarcity_reduces_each_folds_training_set_and_keeps_its_test_set():
    table = participants([12, 8, 5])
    for fold in (1, 2, 3):
        split = fold_split(table, EDGES, 3, fold, seed=0)
        scarce = withhold_training_subjects(split, ["20-40"], keep=3, seed=0)
        assert ((scarce["age_bin"] == "20-40") & (scarce["split"] == "train")).sum() == 3
        assert (scarce["split"] == WITHHELD).sum() == 8 - 3  # 12 in the bin, 4 in each fold's test set
        assert (scarce["split"] == "test").equals(split["split"] == "test")


def test_more_folds_than_a_bin_allows_is_an_error_naming_the_key_and_the_bin():
    table = participants([12, 8, 2])
    with pytest.raises(FlowletError, match=r"split.folds: 3 folds .* bin 60-80 has 2; set split.folds to at most 2"):
        fold_split(table, EDGES, 3, 1, seed=0)
    with pytest.raises(FlowletError, match="bin 60-80 has 2"):
        check_fold_bins(table, EDGES, 3)
    check_fold_bins(table, EDGES, 2)
    with pytest.raises(FlowletError, match="--fold must lie between 1 and split.folds"):
        fold_split(table, EDGES, 3, 4, seed=0)


def test_a_longitudinal_dataset_is_checked_per_subject():
    scans = pd.DataFrame(
        {
            "participant_id": ["sub-1_ses-1", "sub-1_ses-2", "sub-2_ses-1", "sub-3_ses-1"],
            "subject": ["sub-1", "sub-1", "sub-2", "sub-3"],
            "age": [25.0, 27.0, 30.0, 45.0],
        }
    )
    with pytest.raises(FlowletError, match="bin 40-60 has 1"):
        check_fold_bins(scans, EDGES, 2)
    with pytest.raises(FlowletError, match="bin 20-40 has 2"):
        check_fold_bins(scans, EDGES, 3)


def fold_folder(folder, fold_subjects, ages, errors, external_errors=None, arms=("real", "real+synthetic")):
    """A fold's `flowlet brainage` tables with known predictions: age + error per subject (both seeds)."""
    folder.mkdir(parents=True)
    rows = []
    for arm in arms:
        for seed in (0, 1):
            for subject in fold_subjects:
                age = ages[subject]
                predicted = age + errors[arm][subject]
                rows.append(("internal", subject, age, predicted, arm, seed))
            for subject, error in (external_errors or {}).items():
                rows.append(("external", subject, 50.0, 50.0 + error[arm], arm, seed))
    predictions = pd.DataFrame(rows, columns=["test_set", "participant_id", "age", "predicted", "arm", "seed"])
    predictions = predictions.assign(
        feature_set="voxels",
        regressor="ridge",
        corrected=predictions["predicted"],
        age_bin=np.where(predictions["age"] < 40, "20-40", "40-60"),
    )
    predictions.to_csv(folder / "predictions.tsv", sep="\t", index=False)
    models = pd.DataFrame(
        [
            {
                "feature_set": "voxels",
                "regressor": "ridge",
                "arm": arm,
                "seed": seed,
                "n_train_real": 6,
                "n_train_synthetic": 2,
                "cv_mae": 5.0,
                "correction_applied": True,
            }
            for arm in arms
            for seed in (0, 1)
        ]
    )
    models.to_csv(folder / "models.tsv", sep="\t", index=False)
    pd.DataFrame({"age_bin": ["20-40", "40-60"], "train": [4, 3], "withheld": [0, 0], "synthetic": [2, 0]}).to_csv(
        folder / COUNTS_FILE, sep="\t", index=False
    )
    return folder


def test_pooled_metrics_are_those_of_every_subject_predicted_by_the_fold_that_held_it_out(tmp_path):
    rng = np.random.default_rng(0)
    subjects = [f"sub-{i:02d}" for i in range(12)]
    ages = dict(zip(subjects, rng.uniform(20, 60, 12)))
    errors = {arm: dict(zip(subjects, rng.normal(0, 5, 12))) for arm in ("real", "real+synthetic")}
    external = {"ext-1": {"real": 4.0, "real+synthetic": 2.0}}
    external_second = {"ext-1": {"real": -2.0, "real+synthetic": 1.0}}
    first = fold_folder(tmp_path / "fold-1", subjects[:6], ages, errors, external)
    second = fold_folder(tmp_path / "fold-2", subjects[6:], ages, errors, external_second)
    pooled = pool_folds([first, second], Settings(bin_edges=[20, 40, 60], bootstrap=200))
    overall = pooled.metrics[(pooled.metrics["age_bin"] == "all") & (pooled.metrics["correction"] == "raw")]
    internal = overall[overall["test_set"] == "internal"].set_index("arm")
    for arm in ("real", "real+synthetic"):
        assert internal.at[arm, "n_test"] == 12
        assert internal.at[arm, "mae"] == pytest.approx(np.mean(np.abs(list(errors[arm].values()))))
    # The external subject is predicted by both folds' models: its error is the mean over (fold, seed) replicates.
    outside = overall[overall["test_set"] == "external"].set_index("arm")
    assert outside.at["real", "n_test"] == 1 and outside.at["real", "mae"] == pytest.approx(3.0)
    assert pooled.counts["20-40"]["train"] == 4
    predicted = pooled.predictions[pooled.predictions["test_set"] == "internal"]
    assert predicted.groupby("participant_id")["fold"].nunique().eq(1).all()


def test_folds_that_test_a_subject_twice_are_refused_and_an_arm_missing_in_a_fold_is_left_out(tmp_path):
    subjects = [f"sub-{i:02d}" for i in range(8)]
    ages = dict.fromkeys(subjects, 30.0)
    errors = {arm: dict.fromkeys(subjects, 1.0) for arm in ("real", "real+synthetic")}
    first = fold_folder(tmp_path / "a", subjects[:5], ages, errors)
    overlapping = fold_folder(tmp_path / "b", subjects[4:], ages, errors)
    with pytest.raises(FlowletError, match="tested by more than one fold"):
        pool_folds([first, overlapping], Settings(bin_edges=[20, 40, 60], bootstrap=50))
    real_only = fold_folder(tmp_path / "c", subjects[5:], ages, errors, arms=("real",))
    pooled = pool_folds([first, real_only], Settings(bin_edges=[20, 40, 60], bootstrap=50))
    assert set(pooled.metrics["arm"]) == {"real"}
    assert any(
        "real+synthetic left out of the pooled metrics: trained in 1 of 2 folds" in note for note in pooled.notes
    )


def test_the_pool_command_writes_the_verdict_and_figures(tmp_path):
    subjects = [f"sub-{i:02d}" for i in range(10)]
    rng = np.random.default_rng(1)
    ages = dict(zip(subjects, rng.uniform(20, 60, 10)))
    errors = {arm: dict(zip(subjects, rng.normal(0, 4, 10))) for arm in ("real", "real+synthetic")}
    folders = [
        fold_folder(tmp_path / "f1", subjects[:5], ages, errors),
        fold_folder(tmp_path / "f2", subjects[5:], ages, errors),
    ]
    output = tmp_path / "pooled"
    arguments = ["brainage-pool", "--folds", *map(str, folders), "--bin-edges", "20", "40", "60", "--bootstrap", "100"]
    assert main([*arguments, "--output-dir", str(output)]) == 0
    verdict = pd.read_csv(output / "verdict.tsv", sep="\t")
    assert verdict["age_bin"].tolist() == ["20-40"] and verdict["model"].str.endswith("2 folds pooled").all()
    for name in (
        "metrics.tsv",
        "predictions.tsv",
        "models.tsv",
        "mae_per_bin.png",
        "gap_closed.png",
        "pred_vs_true.png",
    ):
        assert (output / name).stat().st_size > 0, name


def test_the_report_shows_every_folds_generator_scorecard_side_by_side(tmp_path):
    """With repeated splits the summary shows fold 1's sections, and the scorecard of every fold beside it."""
    columns = ["generator", "criterion", "value", "real_reference", "definition"]
    for fold, (passed, distance) in {1: (0.9, 120.0), 2: (0.5, 150.0), 10: (0.0, None)}.items():
        rows = [["FlowLet", "QC pass rate", passed, 1.0, "share passing"]]
        if distance is None:
            rows.append(["FlowLet", "note", np.nan, np.nan, "fewer than two volumes passed QC"])
        else:
            rows.append(["FlowLet", "Fréchet distance", distance, 100.0, "voxel features"])
        folder = tmp_path / "folds" / f"fold-{fold}" / "synthetic"
        folder.mkdir(parents=True)
        pd.DataFrame(rows, columns=columns).to_csv(folder / "scorecard.tsv", sep="\t", index=False)
    table = fold_scorecards(tmp_path / "folds" / "fold-1").set_index(["generator", "criterion"])
    assert list(table.columns) == ["fold-1", "fold-2", "fold-10"]
    assert table.loc[("FlowLet", "QC pass rate")].tolist() == ["0.9 [1]", "0.5 [1]", "0 [1]"]
    assert table.loc[("FlowLet", "Fréchet distance"), "fold-2"] == "150 [100]"
    assert table.loc[("FlowLet", "note"), "fold-10"] == "fewer than two volumes passed QC"
