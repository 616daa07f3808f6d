"""End-to-end `flowlet brainage` on a tiny cohort of age-structured volumes, and its bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowlet.brainage.experiment import Cohort, FeatureSet, Settings, fit_one, run_experiment
from flowlet.brainage.predict import predict_ages
from flowlet.cli import main
from flowlet.data.bins import AgeBins
from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask
from flowlet.errors import FlowletError

EDGES = ["20", "40", "60", "80", "100"]


def age_volume(age: float, rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Noise inside the brain mask with a dark central 'ventricle' whose radius grows with age."""
    grid = np.indices(mask.shape).transpose(1, 2, 3, 0)
    distance = np.sqrt(((grid - np.array([45, 60, 45])) ** 2).sum(-1))
    volume = 1.0 + 0.3 * rng.standard_normal(mask.shape)
    volume[distance < 4 + 0.15 * age] -= 1.5
    return (volume * mask).astype(np.float32)


def write_volumes(folder: Path, ages: np.ndarray, prefix: str, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    mask = template_brain_mask(2).get_fdata() > 0
    affine = mni_grid(2)[1]
    return [
        str(save_nifti(age_volume(age, rng, mask), affine, folder / f"{prefix}{i:03d}.nii.gz"))
        for i, age in enumerate(ages)
    ]


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    """36 real subjects aged 20-80 (none of 80-100; the 60-80 bin thin) and synthetic ones for 60-80, two failing QC."""
    root = tmp_path_factory.mktemp("brainage_cohort")
    rng = np.random.default_rng(0)
    ages = np.concatenate([rng.uniform(20, 40, 14), rng.uniform(40, 60, 14), rng.uniform(60, 80, 8)])
    images = write_volumes(root / "real", ages, "sub-", 1)
    split = ["test" if i % 3 == 0 else "train" for i in range(len(ages))]
    pd.DataFrame(
        {
            "participant_id": [f"sub-{i:03d}" for i in range(len(ages))],
            "age": ages.round(2),
            "sex": ["F", "M"] * (len(ages) // 2),
            "split": split,
            "image": images,
        }
    ).to_csv(root / "split.tsv", sep="\t", index=False)
    synthetic_ages = rng.uniform(60, 80, 12)
    synthetic_images = write_volumes(root / "synthetic", synthetic_ages, "synth_bin-60-80_", 2)
    pd.DataFrame(
        {
            "image": [str(Path(path).relative_to(root)) for path in synthetic_images],
            "age": synthetic_ages.round(2),
            "sex": "",
            "age_bin": "60-80",
            "qc_pass": [True] * 10 + [False] * 2,
        }
    ).to_csv(root / "synthetic_60-80.tsv", sep="\t", index=False)
    pd.DataFrame(columns=["image", "age", "sex", "age_bin"]).to_csv(root / "synthetic_empty.tsv", sep="\t", index=False)
    return root


@pytest.fixture(scope="module")
def brainage_run(cohort_dir: Path) -> Path:
    output = cohort_dir / "results"
    code = main(
        [
            "brainage",
            "--split",
            str(cohort_dir / "split.tsv"),
            "--synthetic",
            str(cohort_dir / "synthetic_60-80.tsv"),
            str(cohort_dir / "synthetic_empty.tsv"),
            "--output-dir",
            str(output),
            "--regressors",
            "ridge",
            "svr",
            "gpr",
            "cnn",
            "--seeds",
            "0",
            "1",
            "--bin-edges",
            *EDGES,
            "--downsample",
            "4",
            "--pca-components",
            "5",
            "10",
            "--cv-folds",
            "3",
            "--bootstrap",
            "300",
            "--cnn-epochs",
            "2",
            "--cnn-channels",
            "4",
            "8",
            "8",
            "--cnn-batch-size",
            "8",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    return output


@pytest.mark.slow
def test_metrics_table_has_every_bin_with_test_subjects_and_finite_intervals(brainage_run: Path):
    metrics = pd.read_csv(brainage_run / "metrics.tsv", sep="\t")
    for column in [
        "regressor",
        "arm",
        "age_bin",
        "correction",
        "n_test",
        "mae",
        "mae_ci_low",
        "mae_ci_high",
        "rmse",
        "r",
        "r2",
        "delta_mae_vs_real",
        "delta_ci_low",
        "delta_ci_high",
        "n_train_real",
        "n_train_synthetic",
        "n_seeds",
    ]:
        assert column in metrics.columns
    assert set(metrics["regressor"]) == {"ridge", "svr", "gpr", "cnn", "mean_baseline"}
    assert set(metrics["arm"]) == {"real", "real+synthetic", "synthetic"}
    for (regressor, arm, correction), rows in metrics.groupby(["regressor", "arm", "correction"]):
        assert set(rows["age_bin"]) == {"all", "20-40", "40-60", "60-80"}, (regressor, arm, correction)
    assert "80-100" not in set(metrics["age_bin"])
    assert np.isfinite(metrics[["mae", "mae_ci_low", "mae_ci_high"]].to_numpy()).all()
    assert (metrics["mae_ci_low"] <= metrics["mae"] + 1e-9).all() and (
        metrics["mae"] <= metrics["mae_ci_high"] + 1e-9
    ).all()
    augmented = metrics[metrics["arm"] != "real"]
    assert np.isfinite(augmented[["delta_mae_vs_real", "delta_ci_low", "delta_ci_high"]].to_numpy()).all()
    assert metrics.loc[metrics["arm"] == "real", "delta_mae_vs_real"].isna().all()
    overall = metrics[(metrics["age_bin"] == "all")]
    assert (overall["n_test"] == 12).all()
    assert (metrics.loc[metrics["arm"] == "real+synthetic", "n_train_synthetic"] == 10).all()
    assert (metrics.loc[metrics["arm"] == "synthetic", "n_train_real"] == 0).all()
    ridge_real = overall[
        (overall["regressor"] == "ridge") & (overall["arm"] == "real") & (overall["correction"] == "raw")
    ]
    baseline_real = overall[
        (overall["regressor"] == "mean_baseline") & (overall["arm"] == "real") & (overall["correction"] == "raw")
    ]
    assert ridge_real["mae"].iloc[0] < 0.5 * baseline_real["mae"].iloc[0]


@pytest.mark.slow
def test_predictions_notes_figures_and_saved_model(brainage_run: Path, cohort_dir: Path):
    predictions = pd.read_csv(brainage_run / "predictions.tsv", sep="\t")
    # 4 regressors x 3 arms x 2 seeds, plus the deterministic baseline once per arm, each on 12 test subjects.
    assert len(predictions) == (4 * 3 * 2 + 3) * 12
    assert np.isfinite(predictions[["predicted", "corrected"]].to_numpy()).all()
    notes = (brainage_run / "notes.txt").read_text()
    assert "dropped 2 of 12" in notes
    assert "80-100: no real test subjects" in notes
    assert "lists no volumes" in notes
    for figure in ("mae_per_bin.png", "pred_vs_true.png"):
        assert (brainage_run / figure).stat().st_size > 10_000
    split = pd.read_csv(cohort_dir / "split.tsv", sep="\t")
    test = split[split["split"] == "test"]
    models = pd.read_csv(brainage_run / "models.tsv", sep="\t")
    saved = (
        models[(models["arm"] == "real") & models["regressor"].isin(["ridge", "svr", "gpr"])]
        .sort_values("cv_mae")
        .iloc[0]
    )
    ages = predict_ages(brainage_run / "model_real.joblib", test["image"].tolist())
    expected = (
        predictions[
            (predictions["regressor"] == saved["regressor"])
            & (predictions["arm"] == "real")
            & (predictions["seed"] == saved["seed"])
        ]
        .set_index("participant_id")
        .loc[test["participant_id"], "predicted"]
    )
    np.testing.assert_allclose(ages, expected.to_numpy(), atol=1e-3)


@pytest.mark.slow
def test_corrected_predictions_follow_the_training_fit(brainage_run: Path):
    predictions = pd.read_csv(brainage_run / "predictions.tsv", sep="\t")
    models = pd.read_csv(brainage_run / "models.tsv", sep="\t")
    merged = predictions.merge(models, on=["feature_set", "regressor", "arm", "seed"])
    applied = merged[merged["correction_applied"]]
    assert len(applied) > 0
    expected = (applied["predicted"] - applied["correction_intercept"]) / applied["correction_slope"]
    np.testing.assert_allclose(applied["corrected"], expected, rtol=1e-3)
    baseline = merged[merged["regressor"] == "mean_baseline"]
    assert not baseline["correction_applied"].any()
    np.testing.assert_allclose(baseline["corrected"], baseline["predicted"])


def _table_cohort(n_train: int, test_ages: np.ndarray, rng: np.random.Generator) -> tuple[Cohort, FeatureSet]:
    """A cohort described by a few regional-like features linear in age, without images."""
    train_ages = rng.uniform(20, 80, n_train)

    def features(ages):
        return np.column_stack([ages + rng.normal(0, 4, len(ages)), rng.normal(size=(len(ages), 3))])

    def subjects(ages, prefix):
        return pd.DataFrame(
            {"participant_id": [f"{prefix}{i}" for i in range(len(ages))], "age": ages, "image": "", "age_bin": "all"}
        )

    bins = AgeBins.from_edges([20, 80])
    cohort = Cohort(
        train=subjects(train_ages, "train"),
        test_sets={"internal": subjects(test_ages, "test")},
        generated={},
        bins=bins,
        notes=[],
    )
    feature_set = FeatureSet("regional", features(train_ages), {}, {"internal": features(test_ages)}, volumetric=False)
    return cohort, feature_set


def test_bias_correction_is_fitted_on_training_subjects_only():
    settings = Settings(pca_components=[2], cv_folds=3)
    cohort, feature_set = _table_cohort(40, np.full(6, 50.0), np.random.default_rng(3))
    first = fit_one(feature_set, None, cohort, "ridge", "real", 0, settings)
    cohort.test_sets["internal"]["age"] = np.array([21.0, 30, 45, 60, 70, 79])
    second = fit_one(feature_set, None, cohort, "ridge", "real", 0, settings)
    assert first.correction == second.correction
    # Out-of-sample training predictions regress toward the mean: the fitted slope is below one.
    assert 0.3 < first.correction.slope < 1.0


def test_empty_synthetic_manifests_leave_the_real_arm_with_a_note(cohort_dir: Path):
    results = run_experiment(
        cohort_dir / "split.tsv",
        [cohort_dir / "synthetic_empty.tsv"],
        Settings(regressors=["ridge"], seeds=[0], bootstrap=100, bin_edges=[20, 40, 60, 80, 100]),
    )
    assert set(results.evaluation.metrics["arm"]) == {"real"}
    assert any("list no volume that passed QC" in note for note in results.evaluation.notes)
    assert any(
        "real+baseline, baseline skipped: no baseline generator manifests" in note for note in results.evaluation.notes
    )
    with pytest.raises(FlowletError, match="no arm of synthetic can be trained"):
        run_experiment(
            cohort_dir / "split.tsv",
            [cohort_dir / "synthetic_empty.tsv"],
            Settings(arms=["synthetic"], bin_edges=[20, 40, 60, 80, 100]),
        )


def test_missing_image_and_age_outside_bins_are_named(cohort_dir: Path, tmp_path: Path):
    split = pd.read_csv(cohort_dir / "split.tsv", sep="\t")
    broken = split.copy()
    broken.loc[3, "image"] = str(tmp_path / "gone.nii.gz")
    broken.to_csv(tmp_path / "missing.tsv", sep="\t", index=False)
    with pytest.raises(FlowletError, match="sub-003"):
        run_experiment(tmp_path / "missing.tsv", [], Settings(arms=["real"], bin_edges=[20, 40, 60, 80, 100]))
    with pytest.raises(FlowletError, match=r"sub-\d+ \(age"):
        run_experiment(cohort_dir / "split.tsv", [], Settings(arms=["real"], bin_edges=[30, 60, 90]))


def test_too_few_test_or_training_subjects(cohort_dir: Path, tmp_path: Path):
    split = pd.read_csv(cohort_dir / "split.tsv", sep="\t")
    few_test = split.assign(split=["test" if i < 2 else "train" for i in range(len(split))])
    few_test.to_csv(tmp_path / "few_test.tsv", sep="\t", index=False)
    with pytest.raises(FlowletError, match="2 test subject"):
        run_experiment(tmp_path / "few_test.tsv", [], Settings(arms=["real"], bin_edges=[20, 40, 60, 80, 100]))
    few_train = split.assign(split=["train" if i < 6 else "test" for i in range(len(split))])
    few_train.to_csv(tmp_path / "few_train.tsv", sep="\t", index=False)
    with pytest.raises(FlowletError, match="too few"):
        run_experiment(
            tmp_path / "few_train.tsv", [], Settings(arms=["real"], bin_edges=[20, 40, 60, 80, 100], cv_folds=5)
        )


def test_regional_features_match_subjects_by_id_or_image_name(tmp_path: Path):
    from flowlet.brainage.features import read_regional_features, regional_matrix

    pd.DataFrame(
        {
            "participant_id": ["sub-1", "", ""],
            "image": ["", "/data/synth_a.nii.gz", "/data/synth_b.nii.gz"],
            "ventricles": [1.0, 2.0, 3.0],
            "hippocampus": [4.0, 5.0, 6.0],
        }
    ).to_csv(tmp_path / "regions.tsv", sep="\t", index=False)
    table = read_regional_features(tmp_path / "regions.tsv")
    subjects = pd.DataFrame(
        {
            "participant_id": ["synthetic:x:0", "sub-1", "sub-9"],
            "image": ["/elsewhere/synth_b.nii.gz", "/real/sub-1.nii.gz", "/real/sub-9.nii.gz"],
        }
    )
    matrix, found = regional_matrix(table, subjects)
    assert list(found) == [True, True, False]
    np.testing.assert_array_equal(matrix[:2], [[3.0, 6.0], [1.0, 4.0]])
    pd.DataFrame({"participant_id": ["sub-1"], "label": ["x"]}).to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    with pytest.raises(FlowletError, match="no numeric region columns"):
        read_regional_features(tmp_path / "bad.tsv")


def test_regional_feature_set_end_to_end(cohort_dir: Path, tmp_path: Path):
    """`--feature-sets regional` trains on the table alone (no voxels), matching synthetic rows by image path."""
    split = pd.read_csv(cohort_dir / "split.tsv", sep="\t")
    synthetic = pd.read_csv(cohort_dir / "synthetic_60-80.tsv", sep="\t")
    rng = np.random.default_rng(5)

    def features(ages: np.ndarray) -> dict[str, np.ndarray]:
        # One volume that grows with age (a ventricle, as fraction of the brain) and two that do not.
        return {
            "ventricles_csf": 0.01 + 0.0004 * ages + rng.normal(0, 0.001, len(ages)),
            "a_grey": rng.normal(0.3, 0.01, len(ages)),
            "b_white": rng.normal(0.3, 0.01, len(ages)),
        }

    real = pd.DataFrame(
        {
            "participant_id": split["participant_id"],
            "image": split["image"],
            "group": split["split"],
            **features(split["age"].to_numpy()),
        }
    )
    images = [str(cohort_dir / image) for image in synthetic["image"]]
    fake = pd.DataFrame(
        {"participant_id": "", "image": images, "group": "synthetic", **features(synthetic["age"].to_numpy())}
    )
    pd.concat([real, fake]).to_csv(tmp_path / "regional_features.tsv", sep="\t", index=False)
    output = tmp_path / "out"
    common = ["brainage", "--split", str(cohort_dir / "split.tsv"), "--synthetic", str(cohort_dir / "synthetic_60-80.tsv"),
              "--output-dir", str(output), "--regressors", "ridge", "--seeds", "0", "--bin-edges", *EDGES,
              "--pca-components", "2", "--cv-folds", "3", "--bootstrap", "200"]  # fmt: skip
    assert (
        main([*common, "--regional-features", str(tmp_path / "regional_features.tsv"), "--feature-sets", "regional"])
        == 0
    )
    metrics = pd.read_csv(output / "metrics.tsv", sep="\t")
    assert set(metrics["feature_set"]) == {"regional"}
    assert set(metrics["arm"]) == {"real", "real+synthetic", "synthetic"}
    overall = metrics[(metrics["age_bin"] == "all") & (metrics["correction"] == "raw")].set_index(["regressor", "arm"])[
        "mae"
    ]
    assert overall[("ridge", "real")] < 0.5 * overall[("mean_baseline", "real")]
    # The saved real-only model is a voxel model (regions predicts ages from images): none without voxels.
    assert not (output / "model_real.joblib").exists()
    assert "model_real.joblib is not written" in (output / "notes.txt").read_text()
    with pytest.raises(FlowletError, match="--feature-sets regional needs --regional-features"):
        run_experiment(
            cohort_dir / "split.tsv",
            [],
            Settings(arms=["real"], bin_edges=[20, 40, 60, 80, 100], feature_sets=["regional"]),
        )
    real.iloc[1:].to_csv(tmp_path / "partial.tsv", sep="\t", index=False)
    with pytest.raises(FlowletError, match=r"no row for 1 .*sub-000"):
        run_experiment(
            cohort_dir / "split.tsv",
            [],
            Settings(arms=["real"], bin_edges=[20, 40, 60, 80, 100]),
            regional_features_path=tmp_path / "partial.tsv",
        )


def age_labels(age: float, mask: np.ndarray) -> np.ndarray:
    """Tissue labels like `flowlet regional-measures` writes: grey matter in the brain, a CSF ventricle growing with age."""
    grid = np.indices(mask.shape).transpose(1, 2, 3, 0)
    distance = np.sqrt(((grid - np.array([45, 60, 45])) ** 2).sum(-1))
    labels = np.where(mask, 2, 0).astype(np.uint8)
    labels[mask & (distance < 4 + 0.15 * age)] = 1
    return labels


def test_tissue_feature_set_learns_from_smoothed_density_maps(cohort_dir: Path, tmp_path: Path):
    """`--feature-sets tissue` reads each subject's label map named in the table (relative to its folder),
    smooths the CSF and grey densities and predicts age from them; tables without label maps are refused."""
    split = pd.read_csv(cohort_dir / "split.tsv", sep="\t")
    mask = template_brain_mask(2).get_fdata() > 0
    (tmp_path / "segmentations").mkdir()
    names = []
    for participant, age in zip(split["participant_id"], split["age"]):
        names.append(f"segmentations/{participant}_dseg.nii.gz")
        save_nifti(age_labels(age, mask), mni_grid(2)[1], tmp_path / names[-1], dtype=np.uint8)
    table = pd.DataFrame(
        {"participant_id": split["participant_id"], "image": split["image"], "segmentation": names, "whole_brain": 1.0}
    )
    table.to_csv(tmp_path / "regional_features.tsv", sep="\t", index=False)
    output = tmp_path / "out"
    assert main(["brainage", "--split", str(cohort_dir / "split.tsv"), "--output-dir", str(output), "--regressors", "ridge",
                 "--arms", "real", "--seeds", "0", "--bin-edges", *EDGES, "--pca-components", "2", "--cv-folds", "3",
                 "--bootstrap", "200", "--regional-features", str(tmp_path / "regional_features.tsv"),
                 "--feature-sets", "tissue", "--tissue-fwhm", "8"]) == 0  # fmt: skip
    metrics = pd.read_csv(output / "metrics.tsv", sep="\t")
    assert set(metrics["feature_set"]) == {"tissue"}
    overall = metrics[(metrics["age_bin"] == "all") & (metrics["correction"] == "raw")].set_index("regressor")["mae"]
    assert overall["ridge"] < 0.3 * overall["mean_baseline"]

    table.drop(columns="segmentation").to_csv(tmp_path / "no_maps.tsv", sep="\t", index=False)
    settings = Settings(arms=["real"], bin_edges=[20, 40, 60, 80, 100], feature_sets=["tissue"], cv_folds=3)
    with pytest.raises(FlowletError, match=r"no_maps.tsv.*segmentation"):
        run_experiment(cohort_dir / "split.tsv", [], settings, regional_features_path=tmp_path / "no_maps.tsv")
    (tmp_path / names[0]).unlink()
    with pytest.raises(FlowletError, match=r"sub-000_dseg.nii.gz"):
        run_experiment(
            cohort_dir / "split.tsv", [], settings, regional_features_path=tmp_path / "regional_features.tsv"
        )


def test_a_feature_constant_in_training_cannot_blow_up_predictions():
    """A synthetic-only arm can train on maps where one voxel never varies; a real image's ordinary value there
    must not become thousands of standard deviations (IXI's tissue set once predicted ages of 16 million years)."""
    from flowlet.brainage.regressors import fit_quietly, make_search

    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 40)
    informative = ages[:, None] / 60 + rng.normal(0, 0.05, (40, 20))
    nearly_constant = 0.5 + rng.normal(0, 1e-7, (40, 1))
    model = fit_quietly(
        make_search("ridge", 40, 21, pca_components=[5], cv_folds=4), np.hstack([informative, nearly_constant]), ages
    )
    test_ages = np.array([30.0, 60.0])
    test = np.hstack([test_ages[:, None] / 60 + np.zeros((2, 20)), np.full((2, 1), 0.6)])
    assert np.all(np.abs(model.predict(test) - test_ages) < 20)


def test_a_regressor_refuses_features_or_ages_that_are_not_finite():
    # The grid search skips sklearn's own per-fit checks; the regressor checks its inputs once instead.
    from flowlet.brainage.regressors import make_search

    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 40)
    features = ages[:, None] / 60 + rng.normal(0, 0.05, (40, 10))
    for bad_value in (np.nan, np.inf):
        broken = features.copy()
        broken[3, 4] = bad_value
        with pytest.raises(FlowletError, match="not all finite"):
            make_search("ridge", 40, 10, pca_components=[5], cv_folds=4).fit(broken, ages)
    with pytest.raises(FlowletError, match="not all finite"):
        make_search("ridge", 40, 10, pca_components=[5], cv_folds=4).fit(features, np.where(ages > 70, np.inf, ages))


def test_baseline_generator_arms_sit_beside_flowlets_on_the_same_test_subjects(cohort_dir: Path):
    manifest = cohort_dir / "synthetic_60-80.tsv"
    results = run_experiment(
        cohort_dir / "split.tsv",
        [manifest],
        Settings(
            regressors=["ridge"],
            seeds=[0],
            bootstrap=100,
            bin_edges=[20, 40, 60, 80, 100],
            feature_sets=["voxels"],
            downsample=4,
        ),
        baseline_paths=[manifest],
    )
    metrics = results.evaluation.metrics
    assert set(metrics["arm"]) == {"real", "real+synthetic", "synthetic", "real+baseline", "baseline"}
    overall = metrics[
        (metrics["age_bin"] == "all") & (metrics["correction"] == "raw") & (metrics["regressor"] == "ridge")
    ]
    by_arm = overall.set_index("arm")
    # The same volumes under both names train the same models: the arms must agree exactly.
    assert by_arm.loc["real+baseline", "mae"] == pytest.approx(by_arm.loc["real+synthetic", "mae"])
    assert by_arm.loc["baseline", "n_train_real"] == 0 and by_arm.loc["real+baseline", "n_train_synthetic"] == 10
    assert np.isfinite(
        by_arm.loc["real+baseline", ["delta_mae_vs_real", "delta_ci_low", "delta_ci_high"]].astype(float)
    ).all()


def test_an_external_cohort_is_only_evaluated_on(cohort_dir: Path, tmp_path: Path):
    rng = np.random.default_rng(9)
    ages = rng.uniform(25, 75, 6)
    # Another dataset may reuse the study's subject names; its rows stay apart by test set.
    pd.DataFrame(
        {
            "participant_id": [f"sub-{i:03d}" for i in range(len(ages))],
            "age": ages.round(2),
            "sex": "",
            "split": "test",
            "image": write_volumes(tmp_path, ages, "ext-", 5),
        }
    ).to_csv(tmp_path / "external.tsv", sep="\t", index=False)
    settings = Settings(
        regressors=["ridge"],
        seeds=[0],
        bootstrap=100,
        bin_edges=[20, 40, 60, 80, 100],
        feature_sets=["voxels"],
        downsample=4,
        arms=["real"],
    )
    results = run_experiment(cohort_dir / "split.tsv", [], settings, external_split_path=tmp_path / "external.tsv")
    internal_only = run_experiment(cohort_dir / "split.tsv", [], settings)
    external = results.evaluation.predictions[results.evaluation.predictions["test_set"] == "external"]
    assert sorted(external["participant_id"].unique()) == [f"sub-{i:03d}" for i in range(6)]
    overall = results.evaluation.metrics[
        (results.evaluation.metrics["age_bin"] == "all") & (results.evaluation.metrics["correction"] == "raw")
    ]
    assert set(overall["test_set"]) == {"internal", "external"}
    # The external subjects never train: the internal results are exactly those of a study without them.
    internal = results.evaluation.predictions[results.evaluation.predictions["test_set"] == "internal"].reset_index(
        drop=True
    )
    pd.testing.assert_frame_equal(internal, internal_only.evaluation.predictions.reset_index(drop=True))
    assert (
        overall["n_train_real"] == len(pd.read_csv(cohort_dir / "split.tsv", sep="\t").query("split == 'train'"))
    ).all()
