"""Controlled scarcity: withholding real training subjects, filling their bins, the oracle arm, the gap closed and
the verdict the report opens with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowlet.brainage.experiment import REDUCED, Settings, gap_closed, run_experiment
from flowlet.brainage.metrics import bootstrap_resamples
from flowlet.brainage.regressors import BASELINE
from flowlet.brainage.verdict import chosen_model, verdict_table
from flowlet.cli import main
from flowlet.data.bins import AgeBins
from flowlet.data.split import WITHHELD, evaluation_only, scarcity_bins, stratified_split, withhold_training_subjects
from flowlet.errors import FlowletError
from flowlet.generative.plan import make_plan

EDGES = [20, 40, 60, 80]


def participants(counts: list[int]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ages = np.concatenate([rng.uniform(low, high, n) for low, high, n in zip(EDGES[:-1], EDGES[1:], counts)])
    return pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(len(ages))], "age": ages, "sex": "F"})


def test_the_best_covered_bin_keeps_the_asked_count_and_the_test_set_does_not_move():
    split = stratified_split(participants([20, 12, 4]), EDGES, 0.25, seed=5)
    reduced = scarcity_bins(split, EDGES, [], best_covered=1)
    assert reduced == ["20-40"]
    scarce = withhold_training_subjects(split, reduced, keep=3, seed=5)
    in_bin = scarce[scarce["age_bin"] == "20-40"]
    assert (in_bin["split"] == "train").sum() == 3
    assert (in_bin["split"] == WITHHELD).sum() == (split[split["age_bin"] == "20-40"]["split"] == "train").sum() - 3
    assert in_bin.loc[in_bin["split"] == WITHHELD, "reason"].str.contains("oracle arm only").all()
    # Only training subjects of the reduced bin change side; the test set is the same as without scarcity.
    assert (scarce["split"] == "test").equals(split["split"] == "test")
    assert scarce[scarce["age_bin"] != "20-40"]["split"].equals(split[split["age_bin"] != "20-40"]["split"])
    again = withhold_training_subjects(split, reduced, keep=3, seed=5)
    pd.testing.assert_frame_equal(scarce, again)


def test_a_share_keeps_at_least_one_subject_and_named_bins_win_over_best_covered():
    split = stratified_split(participants([20, 12, 4]), EDGES, 0.25, seed=1)
    assert scarcity_bins(split, EDGES, ["40-60"], best_covered=2) == ["40-60"]
    scarce = withhold_training_subjects(split, ["40-60", "60-80"], keep=0.1, seed=1)
    for label in ("40-60", "60-80"):
        assert (scarce[scarce["age_bin"] == label]["split"] == "train").sum() == 1


def test_bad_scarcity_settings_say_what_to_change():
    split = stratified_split(participants([20, 12, 4]), EDGES, 0.25, seed=1)
    with pytest.raises(FlowletError, match="'90-99'.* are not age bins"):
        scarcity_bins(split, EDGES, ["90-99"], best_covered=0)
    with pytest.raises(FlowletError, match="bin 60-80 has 3 real training subject"):
        withhold_training_subjects(split, ["60-80"], keep=3, seed=1)
    no_test = split.copy()
    no_test.loc[no_test["age_bin"] == "40-60", "split"] = "train"
    with pytest.raises(FlowletError, match="bin 40-60 has no real test subjects"):
        withhold_training_subjects(no_test, ["40-60"], keep=2, seed=1)
    with pytest.raises(FlowletError, match="whole number"):
        withhold_training_subjects(split, ["20-40"], keep=2.5, seed=1)
    with pytest.raises(FlowletError, match="positive"):
        withhold_training_subjects(split, ["20-40"], keep=0, seed=1)


def test_the_plan_gives_a_reduced_bin_as_many_synthetic_subjects_as_it_lost():
    split = withhold_training_subjects(
        stratified_split(participants([20, 12, 4]), EDGES, 0.25, seed=2), ["20-40"], 3, 2
    )
    plan, ages = make_plan(split, AgeBins.from_edges(EDGES))
    row = plan.set_index("age_bin").loc["20-40"]
    assert row["reduced"] and row["underrepresented"] and row["n_withheld"] > 0
    assert row["n_synthetic"] == row["n_withheld"] == len(ages["20-40"])
    assert not plan.set_index("age_bin").loc["40-60", "reduced"]


def test_gap_closed_is_the_share_of_the_oracles_gain_won_back():
    resamples = bootstrap_resamples(6, 200, seed=0)
    real, oracle = np.full(6, 10.0), np.full(6, 6.0)
    value, low, high = gap_closed(real, np.full(6, 8.0), oracle, resamples)
    assert value == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)
    # An oracle that does not beat the reduced real arm leaves nothing to close.
    assert gap_closed(real, np.full(6, 8.0), real + np.array([1, -1, 1, -1, 1, -1.0]), resamples) is None


@pytest.fixture(scope="module")
def scarce_cohort(tmp_path_factory) -> Path:
    """The brain-age test cohort with most 20-40 training subjects withheld."""
    from test_brainage_experiment import write_volumes

    root = tmp_path_factory.mktemp("scarce")
    rng = np.random.default_rng(3)
    ages = np.concatenate([rng.uniform(20, 40, 18), rng.uniform(40, 60, 12), rng.uniform(60, 80, 9)])
    split = ["test" if i % 3 == 0 else "train" for i in range(len(ages))]
    young_train = [i for i, age in enumerate(ages) if age < 40 and split[i] == "train"]
    for i in young_train[2:]:
        split[i] = WITHHELD
    pd.DataFrame(
        {
            "participant_id": [f"sub-{i:03d}" for i in range(len(ages))],
            "age": ages.round(2),
            "sex": "F",
            "split": split,
            "image": write_volumes(root / "real", ages, "sub-", 1),
        }
    ).to_csv(root / "split.tsv", sep="\t", index=False)
    synthetic_ages = rng.uniform(20, 40, len(young_train) - 2)
    pd.DataFrame(
        {
            "image": write_volumes(root / "synthetic", synthetic_ages, "synth_bin-20-40_", 2),
            "age": synthetic_ages.round(2),
            "sex": "",
            "age_bin": "20-40",
        }
    ).to_csv(root / "synthetic.tsv", sep="\t", index=False)
    return root


def test_the_oracle_trains_on_the_withheld_subjects_and_the_verdict_reads_the_reduced_bin(scarce_cohort: Path):
    settings = Settings(
        regressors=["ridge"],
        seeds=[0],
        bootstrap=200,
        bin_edges=EDGES,
        feature_sets=["voxels"],
        downsample=4,
        cv_folds=3,
    )
    results = run_experiment(scarce_cohort / "split.tsv", [scarce_cohort / "synthetic.tsv"], settings)
    metrics = results.evaluation.metrics
    overall = metrics[
        (metrics["age_bin"] == "all") & (metrics["correction"] == "raw") & (metrics["regressor"] == "ridge")
    ].set_index("arm")
    assert (
        overall.loc["oracle", "n_train_real"]
        == overall.loc["real", "n_train_real"] + results.evaluation.counts["20-40"]["withheld"]
    )
    assert results.evaluation.counts["20-40"] == {"train": 2, "withheld": 10, "synthetic": 10}
    # One reduced bin: its pooled row is the bin itself.
    reduced = metrics[metrics["age_bin"] == REDUCED]
    in_bin = metrics[metrics["age_bin"] == "20-40"]
    assert reduced["mae"].to_numpy() == pytest.approx(in_bin["mae"].to_numpy())
    augmented = in_bin[(in_bin["arm"] == "real+synthetic")]
    assert augmented["gap_closed"].notna().any() or augmented["notes"].str.contains("gap closed not estimable").all()
    # Only the reduced bins (and all bins together) lost subjects to the oracle: nowhere else is there a gap.
    elsewhere = metrics[~metrics["age_bin"].isin(["20-40", REDUCED, "all"])]
    assert not elsewhere.empty and elsewhere["gap_closed"].isna().all()

    verdict = verdict_table(metrics, results.evaluation.models, None, results.evaluation.counts, REDUCED)
    assert verdict["age_bin"].tolist() == ["20-40"]
    row = verdict.iloc[0]
    assert row["why"] == "reduced" and row["n_train_real"] == 2 and row["n_withheld"] == 10
    assert row["sentence"].startswith("In 20-40 (kept 2 of 12 real training subjects), with 10 synthetic subjects")
    assert np.isfinite([row["mae_real"], row["mae_synthetic"], row["mae_oracle"]]).all()


def test_the_verdict_model_is_chosen_inside_training_and_few_test_subjects_give_no_interval():
    models = pd.DataFrame(
        {
            "feature_set": ["voxels", "voxels", "tissue", "tissue"],
            "regressor": ["ridge", BASELINE, "ridge", "svr"],
            "arm": "real",
            "cv_mae": [9.0, 1.0, 7.0, 8.0],
        }
    )
    # The constant baseline never answers, however low its number.
    assert chosen_model(models, "auto") == ("tissue", "ridge")
    assert chosen_model(models, "voxels/ridge") == ("voxels", "ridge")
    with pytest.raises(FlowletError, match="was not trained"):
        chosen_model(models, "regional/gpr")
    metrics = pd.DataFrame(
        [
            {
                "feature_set": "tissue",
                "regressor": "ridge",
                "test_set": "internal",
                "correction": "corrected",
                "age_bin": "60-80",
                "arm": arm,
                "n_test": 2,
                "mae": mae,
                "mae_ci_low": mae - 1,
                "mae_ci_high": mae + 1,
                "delta_mae_vs_real": mae - 8.0,
                "delta_ci_low": -3.0,
                "delta_ci_high": 1.0,
                "gap_closed": np.nan,
                "gap_ci_low": np.nan,
                "gap_ci_high": np.nan,
            }
            for arm, mae in (("real", 8.0), ("real+synthetic", 7.0))
        ]
    )
    counts = {"60-80": {"train": 3, "withheld": 0, "synthetic": 6}}
    row = verdict_table(metrics, models, None, counts, REDUCED).iloc[0]
    assert row["mae_real_ci"] == "n too small" and row["delta_ci"] == "n too small"
    assert "too few to tell" in row["sentence"]
    no_test = verdict_table(
        metrics, models, None, {**counts, "40-60": {"train": 4, "withheld": 0, "synthetic": 2}}, REDUCED
    )
    assert no_test.set_index("age_bin").loc["40-60", "sentence"].endswith("no held-out real test subjects: no answer.")


def test_split_command_writes_withheld_rows(tmp_path: Path):
    table = participants([16, 8, 4])
    table.to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    output = tmp_path / "split.tsv"
    assert (
        main(
            [
                "split",
                "--participants",
                str(tmp_path / "participants.tsv"),
                "--image-pattern",
                "{participant_id}.nii.gz",
                "--bin-edges",
                *map(str, EDGES),
                "--scarcity-best-covered",
                "1",
                "--scarcity-keep",
                "2",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    split = pd.read_csv(output, sep="\t")
    assert ((split["age_bin"] == "20-40") & (split["split"] == "train")).sum() == 2
    assert (split["split"] == WITHHELD).sum() == 10


def test_an_evaluation_only_dataset_puts_every_usable_subject_in_test():
    table = participants([3, 2, 1])
    table.loc[0, "age"] = np.nan
    split = evaluation_only(table, EDGES, failed={"sub-001": "preprocessing failed: empty mask"})
    assert split.set_index("participant_id").loc[["sub-000", "sub-001"], "split"].tolist() == ["excluded", "excluded"]
    assert (split["split"] == "test").sum() == 4 and not (split["split"] == "train").any()


def test_the_verdict_gives_the_baseline_generators_effect_beside_flowlets():
    models = pd.DataFrame({"feature_set": ["tissue"], "regressor": ["ridge"], "arm": "real", "cv_mae": [7.0]})
    rows = [
        {"feature_set": "tissue", "regressor": "ridge", "test_set": "internal", "correction": "corrected",
         "age_bin": "60-80", "arm": arm, "n_test": 5, "mae": mae, "mae_ci_low": mae - 1, "mae_ci_high": mae + 1,
         "delta_mae_vs_real": mae - 8.0, "delta_ci_low": low, "delta_ci_high": high, "gap_closed": np.nan,
         "gap_ci_low": np.nan, "gap_ci_high": np.nan}
        for arm, mae, low, high in (("real", 8.0, np.nan, np.nan), ("real+synthetic", 6.0, -3.5, -0.5),
                                    ("real+baseline", 8.5, -0.5, 1.5))
    ]  # fmt: skip
    counts = {"60-80": {"train": 3, "withheld": 0, "synthetic": 6}}
    text = verdict_table(pd.DataFrame(rows), models, None, counts, REDUCED).iloc[0]["sentence"]
    assert "synthetic data lowered the MAE by 2.0 years [0.5, 3.5]" in text
    assert text.endswith("The linear baseline generator's subjects changed the MAE by +0.5 years [-0.5, 1.5].")


def test_the_methods_paragraph_says_who_was_withheld():
    from flowlet.report.summary import scarcity_sentence

    split = pd.DataFrame({"age_bin": ["20-40", "20-40", "40-60", "40-60"],
                          "split": [WITHHELD, "train", WITHHELD, "test"]})  # fmt: skip
    text = scarcity_sentence(split, 2)
    assert "bin(s) 20-40, 40-60 were cut to 2 subjects each; the 2 withheld subjects" in text
    assert scarcity_sentence(split.assign(split="train"), 2) == ""
