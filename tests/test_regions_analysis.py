"""`flowlet regions` end to end on a small simulated cohort whose ageing is known.

The cohort is made from the MNI template: each subject gets its own smooth deformation, bias field and
noise, and ventricles enlarged by a number of voxels that grows with age (brain tissue turning into CSF),
so the true ventricle growth per year is known. One "synthetic" image is a shifted copy of a training
subject, which the memorisation check must flag.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from flowlet.cli import main
from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1
from flowlet.regions.atlas import load_atlas
from flowlet.regions.memorisation import chance_flagged_at_least, share_flagged_by_chance
from flowlet.regions.trajectories import ols_slope

pytestmark = pytest.mark.slow

TRAIN_AGES = (20, 32, 44, 56, 68, 80)
TEST_AGES = (26, 50, 74)
SYNTHETIC_AGES = (38, 77)
VOXEL_ML = 0.008
TABLES = (
    "atlas_regions.tsv",
    "paired_pairs.tsv",
    "paired_region_summary.tsv",
    "paired_global.tsv",
    "slopes.tsv",
    "slope_agreement.tsv",
    "fidelity.tsv",
    "realism.tsv",
    "memorisation.tsv",
    "memorisation_summary.tsv",
)


def _ventricle_growth(age: float) -> int:
    """Voxels by which the lateral ventricles grow outward at this age: 0 at 20, 2 at 80."""
    return int(round((age - 20) / 30))


class Simulator:
    def __init__(self):
        self.shape, self.affine = mni_grid(2)
        self.t1 = np.asarray(template_t1(2).get_fdata(), dtype=np.float32)
        self.brain = template_brain_mask(2).get_fdata() > 0
        atlas = load_atlas(2)
        lateral = np.isin(atlas.labels, [r.labels[0] for r in atlas.atlas_regions if "Lateral-Ventricle" in r.name])
        csf_level = np.percentile(self.t1[self.brain], 10)
        self.ventricles = lateral & (self.t1 < np.percentile(self.t1[lateral], 60))
        self.csf_value = float(min(csf_level, self.t1[self.ventricles].mean()))
        # Expected CSF fraction of each template voxel (linear partial-volume model between CSF and white matter),
        # so that the true CSF gained by growth counts only the part of a voxel that was not CSF already.
        white_level = np.percentile(self.t1[self.brain], 90)
        self.csf_fraction = np.clip((white_level - self.t1) / (white_level - self.csf_value), 0, 1)
        white = np.isin(atlas.labels, [r.labels[0] for r in atlas.atlas_regions if "Cerebral-White-Matter" in r.name])
        self.growable = white | lateral

    def ventricle_mask(self, age: float) -> np.ndarray:
        steps = _ventricle_growth(age)
        if steps == 0:
            return self.ventricles
        return self.ventricles | (ndimage.binary_dilation(self.ventricles, iterations=steps) & self.growable)

    def csf_gain_ml(self, age: float) -> float:
        grown = self.ventricle_mask(age) & ~self.ventricles
        return float((1 - self.csf_fraction[grown]).sum() * VOXEL_ML)

    def _smooth_field(self, rng: np.random.Generator, coarse: tuple[int, int, int]) -> np.ndarray:
        """A smooth random field with unit SD, made on a coarse grid and interpolated (fast)."""
        factors = [target / size for target, size in zip(self.shape, coarse)]
        field = ndimage.zoom(rng.normal(size=coarse), factors, order=3)[
            : self.shape[0], : self.shape[1], : self.shape[2]
        ]
        return (field / field.std()).astype(np.float32)

    def subject(self, age: float, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        image = self.t1.copy()
        image[self.ventricle_mask(age)] = self.csf_value
        displacement = np.stack([0.8 * self._smooth_field(rng, (8, 9, 8)) for _ in range(3)])
        coordinates = np.indices(self.shape, dtype=np.float32) + displacement
        image = ndimage.map_coordinates(image, coordinates, order=1)
        brain = ndimage.map_coordinates(self.brain.astype(np.float32), coordinates, order=1) > 0.5
        image = image * (1 + 0.05 * self._smooth_field(rng, (5, 6, 5))) + rng.normal(
            0, 0.02 * self.t1.max(), self.shape
        )
        inside = image[brain]
        return np.where(brain, (image - inside.mean()) / inside.std(), 0).astype(np.float32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("regions_cohort")
    simulator = Simulator()
    rows = []
    for index, (age, split) in enumerate([(a, "train") for a in TRAIN_AGES] + [(a, "test") for a in TEST_AGES]):
        name = f"sub-{index:02d}"
        path = save_nifti(simulator.subject(age, index), simulator.affine, folder / "mni" / f"{name}.nii.gz")
        rows.append(
            {
                "participant_id": name,
                "age": age,
                "sex": "F" if index % 2 else "M",
                "age_bin": f"{age // 10 * 10}s",
                "split": split,
                "image": str(path),
                "native_volume_factor": 0.8 + 0.01 * index,
            }
        )
    rows.append(
        {
            "participant_id": "sub-99",
            "age": None,
            "sex": "F",
            "age_bin": None,
            "split": "excluded",
            "image": "missing.nii.gz",
            "native_volume_factor": None,
        }
    )
    pd.DataFrame(rows).to_csv(folder / "split.tsv", sep="\t", index=False)
    synthetic = []
    for index, age in enumerate(SYNTHETIC_AGES):
        path = save_nifti(
            simulator.subject(age, 100 + index),
            simulator.affine,
            folder / "synthetic" / f"Age_{age}" / "brain_0.nii.gz",
        )
        synthetic.append(
            {"image": str(path.relative_to(folder)), "age": age, "sex": "F", "age_bin": f"{age // 10 * 10}s"}
        )
    # A copy of training subject sub-03, displaced by 2 mm: memorised, not generated.
    copy = np.roll(simulator.subject(TRAIN_AGES[3], 3), 1, axis=1)
    save_nifti(copy, simulator.affine, folder / "synthetic" / "copy.nii.gz")
    synthetic.append({"image": "synthetic/copy.nii.gz", "age": TRAIN_AGES[3], "sex": "M", "age_bin": "50s"})
    pd.DataFrame(synthetic).to_csv(folder / "synthetic.tsv", sep="\t", index=False)
    pd.DataFrame(columns=["image", "age", "sex", "age_bin"]).to_csv(folder / "empty.tsv", sep="\t", index=False)
    gains = [simulator.csf_gain_ml(age) for age in TRAIN_AGES + TEST_AGES]
    truth = ols_slope(np.array(TRAIN_AGES + TEST_AGES, float), np.array(gains))["slope"]
    (folder / "true_ventricle_slope.txt").write_text(str(truth))
    model = _real_only_brainage_model(
        [r["image"] for r in rows if r["split"] == "train"], list(TRAIN_AGES), folder / "brainage.joblib"
    )
    return {
        "folder": folder,
        "split": folder / "split.tsv",
        "synthetic": folder / "synthetic.tsv",
        "empty": folder / "empty.tsv",
        "model": model,
    }


def _real_only_brainage_model(images: list[str], ages: list[float], path: Path) -> Path:
    """A ridge regression on downsampled voxels, saved the way `flowlet brainage` saves its real-only model."""
    from sklearn.linear_model import Ridge

    from flowlet.brainage.features import load_voxel_features
    from flowlet.brainage.predict import save_model

    features = load_voxel_features(images, downsample=2)
    estimator = Ridge(alpha=1.0).fit(features.matrix, np.asarray(ages, float))
    return save_model(path, estimator, "ridge", 2, 2, slope=1.0, intercept=0.0, applied=False, cv_mae=float("nan"))


@pytest.fixture(scope="module")
def measures_dir(cohort) -> Path:
    """`flowlet regional-measures` on every real and synthetic image of the cohort (what `flowlet regions` reads)."""
    output = cohort["folder"] / "measures"
    status = main(
        [
            "regional-measures",
            "--split",
            str(cohort["split"]),
            "--synthetic",
            str(cohort["synthetic"]),
            "--output-dir",
            str(output),
        ]
    )
    assert status == 0
    return output


@pytest.fixture(scope="module")
def full_run(cohort, measures_dir) -> Path:
    output = cohort["folder"] / "out"
    status = main(
        [
            "regions",
            "--split", str(cohort["split"]),
            "--synthetic", str(cohort["synthetic"]),
            "--measures", str(measures_dir / "regional_measures.tsv"),
            "--output-dir", str(output),
            "--msssim-pairs", "3",
            "--brainage-model", str(cohort["model"]),
        ]
    )  # fmt: skip
    assert status == 0
    return output


def _read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / name, sep="\t")


def test_every_table_figure_and_caption_is_written(full_run, measures_dir):
    for name in TABLES:
        assert len(_read(full_run, name)) > 0, name
    captions = json.loads((full_run / "captions.json").read_text())
    for figure in (
        "paired_dice.png",
        "trajectories.png",
        "slope_difference_map.png",
        "slope_correlation.png",
        "memorisation.png",
    ):
        path = full_run / "figures" / figure
        assert path.stat().st_size > 5000, figure
        assert len(captions["figures"][f"figures/{figure}"]) > 100
    assert set(TABLES) <= set(captions["tables"])
    measures = _read(measures_dir, "regional_measures.tsv")
    assert set(measures["group"]) == {"train", "test", "synthetic"}
    assert measures["image_id"].nunique() == len(TRAIN_AGES) + len(TEST_AGES) + len(SYNTHETIC_AGES) + 1
    assert "sub-99" not in set(measures["image_id"])
    # Native volumes: MNI volumes scaled by each real subject's factor from the split table; none for synthetic images.
    sub01 = measures[(measures["image_id"] == "sub-01") & (measures["region"] == "cortex")].iloc[0]
    assert sub01["native_volume_ml"] == pytest.approx(sub01["volume_ml"] * 0.81, rel=1e-4)
    assert measures.loc[measures["group"] == "synthetic", "native_volume_ml"].isna().all()
    slopes = _read(full_run, "slopes.tsv")
    native = slopes[slopes["measure"] == "native_volume_ml"]
    assert len(native) == measures["region"].nunique() and native["synthetic_slope"].isna().all()
    features = _read(measures_dir, "regional_features.tsv")
    assert {"participant_id", "image", "group", "ventricles_csf", "cortex_grey", "brain_white"} <= set(features.columns)
    assert len(features) == measures["image_id"].nunique()
    # Features are tissue volumes as fractions of the image's brain mask, so they compare across head sizes.
    row = measures[(measures["image_id"] == "sub-01") & (measures["region"] == "cortex")].iloc[0]
    sub01 = features[features["participant_id"] == "sub-01"].iloc[0]
    assert sub01["cortex_grey"] == pytest.approx(row["grey_ml"] / row["brain_mask_ml"], rel=1e-4)
    assert features.loc[features["group"] == "synthetic", "participant_id"].isna().all()


def test_segmentation_volumes_are_anatomically_sensible(measures_dir):
    measures = _read(measures_dir, "regional_measures.tsv").set_index(["image_id", "region"])
    young = measures.loc["sub-00"]
    assert 900 < young.loc["brain", "volume_ml"] < 1800
    assert young.loc["Left-Cerebral-White-Matter", "white_ml"] > young.loc["Left-Cerebral-White-Matter", "grey_ml"]
    assert young.loc["cortex", "grey_ml"] > young.loc["cortex", "white_ml"]
    assert young.loc["Left-Lateral-Ventricle", "csf_ml"] > young.loc["Left-Lateral-Ventricle", "white_ml"]
    # White matter is bright and CSF dark in a T1w image.
    assert (
        young.loc["Left-Cerebral-White-Matter", "mean_intensity"]
        > young.loc["cortex", "mean_intensity"]
        > young.loc["Left-Lateral-Ventricle", "mean_intensity"]
    )


def test_real_slopes_recover_the_simulated_ventricle_growth(full_run, measures_dir, cohort):
    truth = float((cohort["folder"] / "true_ventricle_slope.txt").read_text())
    table = _read(full_run, "slopes.tsv")
    slopes = table[table["measure"] == "volume_ml"].set_index("region")
    measured = slopes.loc["ventricles", "real_slope"]
    assert truth > 0
    # Right sign and order of magnitude: the deformation, noise and the template priors blur some of the gain.
    assert 0.4 * truth < measured < 1.5 * truth
    assert slopes.loc["ventricles", "real_ci_low"] > 0
    # The enlarged ventricles take their space from the surrounding tissue.
    measures = _read(measures_dir, "regional_measures.tsv")
    ventricles = measures[(measures["region"] == "ventricles") & (measures["group"] != "synthetic")]
    tissue = ols_slope(ventricles["age"].to_numpy(), (ventricles["grey_ml"] + ventricles["white_ml"]).to_numpy())
    assert tissue["ci_high"] < 0
    assert slopes.loc["ventricles", "synthetic_slope"] > 0


def test_paired_analysis_has_synthetic_and_real_floor_rows(full_run):
    overall = _read(full_run, "paired_global.tsv").set_index("comparison")
    assert list(overall.index) == ["synthetic-vs-train", "test-vs-train"]
    assert overall.loc["synthetic-vs-train", "n_pairs"] == len(SYNTHETIC_AGES) + 1
    assert overall.loc["test-vs-train", "n_pairs"] == len(TEST_AGES)
    for comparison in overall.index:
        assert 0.3 < overall.loc[comparison, "dice_mean"] < 1.0
        assert overall.loc[comparison, "kl_union_mean"] > 0
    pairs = _read(full_run, "paired_pairs.tsv")
    copy_pairs = pairs[pairs["compared_id"].str.endswith("copy.nii.gz")]
    assert set(copy_pairs["reference_age"]) == {TRAIN_AGES[3]}


def test_memorisation_flags_the_shifted_copy_only(full_run):
    table = _read(full_run, "memorisation.tsv")
    synthetic = table[table["group"] == "synthetic"].set_index("image_id")
    copy = [name for name in synthetic.index if name.endswith("copy.nii.gz")][0]
    assert bool(synthetic.loc[copy, "flagged"])
    assert synthetic.loc[copy, "nearest_training_id"] == "sub-03"
    assert synthetic.loc[copy, "max_similarity"] > 0.98
    assert synthetic["flagged"].sum() == 1
    summary = _read(full_run, "memorisation_summary.tsv")
    assert summary.loc[0, "n_flagged"] == 1
    # The threshold's real images: the test images, and every training image against the others.
    n_real = len(TEST_AGES) + len(TRAIN_AGES)
    expected = len(synthetic) * share_flagged_by_chance(n_real, summary.loc[0, "percentile"])
    assert summary.loc[0, "expected_flagged_by_chance"] == pytest.approx(expected)
    chance = chance_flagged_at_least(1, len(synthetic), n_real, summary.loc[0, "percentile"])
    assert summary.loc[0, "chance_of_as_many_flagged"] == pytest.approx(chance)
    assert f"{len(TEST_AGES)} test images" in summary.loc[0, "threshold_from"]
    # The training images' own rows: each against another subject's training image, never itself.
    training = table[table["group"] == "train"]
    assert len(training) == len(TRAIN_AGES) and not training["flagged"].any()
    assert (training["image_id"] != training["nearest_training_id"]).all()


def test_a_coarse_generators_blur_is_not_taken_for_copying(cohort):
    from flowlet.generative.synthetic_qc import generator_view
    from flowlet.regions.analysis import SYNTHETIC, AnalysisOptions, _as_generated, _memorisation
    from flowlet.regions.measures import ImageEntry, MeasuredImage

    def measured(image_id: str, group: str, age: float, data: np.ndarray) -> MeasuredImage:
        entry = ImageEntry(image_id, group, age, "F", "all", Path(f"{image_id}.nii.gz"))
        return MeasuredImage(entry, data.astype(np.float32), np.zeros(data.shape, np.uint8))

    split = pd.read_csv(cohort["split"], sep="\t")
    groups = {
        group: [
            measured(row.participant_id, group, row.age, np.asarray(nib.load(row.image).dataobj))
            for row in split[split["split"] == group].itertuples()
        ]
        for group in ("train", "test")
    }
    simulator = Simulator()
    # What an 8 mm generator returns: new people, and a copy of training subject sub-03, at its resolution.
    coarse = {f"new-{age}": generator_view(simulator.subject(age, 200 + age), 4) for age in (30, 62, 75)}
    coarse["copy"] = generator_view(groups["train"][3].intensities, 4)
    groups[SYNTHETIC] = [measured(name, SYNTHETIC, 50, data) for name, data in coarse.items()]
    mask = template_brain_mask(2).get_fdata() > 0

    def flagged(downsample: int) -> dict[str, bool]:
        table = _memorisation(groups, AnalysisOptions(downsample=downsample), mask, _as_generated(groups, downsample))[
            0
        ]
        return table[table["group"] == SYNTHETIC].set_index("image_id")["flagged"].to_dict()

    sharp = flagged(1)  # beside sharp real images, blur alone looks like copying
    assert sharp["copy"] and sum(sharp[name] for name in coarse if name != "copy") >= 2
    assert flagged(4) == {"new-30": False, "new-62": False, "new-75": False, "copy": True}


def test_realism_reports_each_value_beside_its_real_floor(full_run):
    table = _read(full_run, "realism.tsv")
    assert list(table["metric"]) == ["frechet_distance", "mmd2_rbf_median", "ms_ssim", "ms_ssim"]
    assert table[["value", "real_vs_real"]].notna().all().all()
    ms_ssim = table[table["metric"] == "ms_ssim"]
    assert ((ms_ssim["value"] > 0) & (ms_ssim["value"] < 1)).all()


def test_age_fidelity_compares_predicted_with_requested_age_per_bin(full_run):
    fidelity = _read(full_run, "fidelity.tsv")
    synthetic = fidelity[fidelity["set"].str.startswith("synthetic")].set_index("age_bin")
    assert synthetic.loc["all", "n"] == len(SYNTHETIC_AGES) + 1
    assert set(synthetic.index) == {"all", "30s", "50s", "70s"}
    assert (synthetic["mae"] >= 0).all()
    real = fidelity[fidelity["set"].str.startswith("real test")].set_index("age_bin")
    assert real.loc["all", "n"] == len(TEST_AGES)
    images = _read(full_run, "fidelity_images.tsv")
    np.testing.assert_allclose(images["error"], images["predicted_age"] - images["age"], atol=1e-3)
    assert (full_run / "figures" / "fidelity.png").stat().st_size > 5000


def test_without_synthetic_images_the_synthetic_parts_are_explicit_notes(cohort, measures_dir):
    output = cohort["folder"] / "out_real_only"
    split = _read(cohort["folder"], "split.tsv")
    small = split[split["participant_id"].isin(["sub-00", "sub-03", "sub-05", "sub-06", "sub-07"])]
    small.to_csv(cohort["folder"] / "small_split.tsv", sep="\t", index=False)
    # A measures table of more images than the split names serves: its rows for the others are left out.
    measures = str(measures_dir / "regional_measures.tsv")
    status = main(
        [
            "regions",
            "--split",
            str(cohort["folder"] / "small_split.tsv"),
            "--synthetic",
            str(cohort["empty"]),
            "--measures",
            measures,
            "--output-dir",
            str(output),
            "--msssim-pairs",
            "1",
        ]
    )
    assert status == 0
    for name in TABLES:
        assert len(_read(output, name)) > 0, name
    overall = _read(output, "paired_global.tsv").set_index("comparison")
    assert "no synthetic images" in overall.loc["synthetic-vs-train", "note"]
    assert np.isfinite(overall.loc["test-vs-train", "dice_mean"])
    assert _read(output, "realism.tsv")["note"].str.contains("no synthetic images").any()
    memorisation = _read(output, "memorisation_summary.tsv").loc[0]
    assert "no synthetic images" in memorisation["note"]
    assert np.isnan(memorisation["n_flagged"]) and np.isnan(memorisation["chance_of_as_many_flagged"])
    assert _read(output, "slopes.tsv")["note"].str.contains("no synthetic images").all()
    assert "no --brainage-model" in _read(output, "fidelity.tsv").loc[0, "note"]
    assert (output / "figures" / "trajectories.png").exists()


def test_user_errors_name_the_file_and_the_reason(cohort, measures_dir, tmp_path, capsys):
    bad_split = tmp_path / "split.tsv"
    pd.DataFrame({"participant_id": ["a"], "age": [30]}).to_csv(bad_split, sep="\t", index=False)
    assert main(["regional-measures", "--split", str(bad_split), "--output-dir", str(tmp_path / "out")]) == 1
    assert "lacks the column(s) sex, age_bin, split, image" in capsys.readouterr().err
    wrong_grid = tmp_path / "wrong.nii.gz"
    save_nifti(np.ones((10, 10, 10)), np.eye(4), wrong_grid)
    manifest = tmp_path / "manifest.tsv"
    pd.DataFrame({"image": [str(wrong_grid)], "age": [50], "sex": ["F"], "age_bin": ["50s"]}).to_csv(
        manifest, sep="\t", index=False
    )
    assert (
        main(
            [
                "regional-measures",
                "--split",
                str(cohort["split"]),
                "--synthetic",
                str(manifest),
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
        == 1
    )
    error = capsys.readouterr().err
    assert str(wrong_grid) in error and "not FSL's MNI grid" in error
    # Measures of other images than the split and manifests name: regions refuses rather than mixing them up.
    measures = str(measures_dir / "regional_measures.tsv")
    other = Path(shutil.copy(cohort["folder"] / "mni" / "sub-00.nii.gz", tmp_path / "other.nii.gz"))
    pd.DataFrame({"image": [str(other)], "age": [50], "sex": ["F"], "age_bin": ["50s"]}).to_csv(
        manifest, sep="\t", index=False
    )
    assert (
        main(
            [
                "regions",
                "--split",
                str(cohort["split"]),
                "--synthetic",
                str(manifest),
                "--measures",
                measures,
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
        == 1
    )
    error = capsys.readouterr().err
    assert (
        "has no rows for 1 image(s)" in error and str(other) in error and "rerun `flowlet regional-measures`" in error
    )


def test_per_image_jobs_are_merged_without_segmenting_their_images_again(
    cohort, measures_dir, tmp_path, capsys, caplog
):
    """The workflow's per-subject jobs: `measure-images` per subject, then `regional-measures --measured` with a
    {participant_id} path; a subject without a job is segmented by the merge itself."""
    split = pd.read_csv(cohort["split"], sep="\t")
    small = split[split["participant_id"].isin(["sub-00", "sub-01", "sub-06"])]
    small.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    for participant, image in small[["participant_id", "image"]].to_numpy()[:2]:
        assert main(["measure-images", "--images", image, "--output-dir", str(tmp_path / "jobs" / participant)]) == 0
    pattern = str(tmp_path / "jobs" / "{participant_id}" / "measured.tsv")
    merged = tmp_path / "merged"
    command = ["regional-measures", "--split", str(tmp_path / "split.tsv"), "--output-dir", str(merged)]
    with caplog.at_level("INFO", logger="flowlet.regions.measures"):
        assert main([*command, "--measured", pattern]) == 0
    assert "2 of 3 image(s) measured earlier; segmenting 1" in caplog.text
    table = _read(merged, "regional_measures.tsv").set_index(["image_id", "region"])
    # Exactly what the subject's own job measured, with who it is from the split.
    job = _read(tmp_path / "jobs" / "sub-00", "measured.tsv").set_index("region")
    merged_rows = table.loc["sub-00"].loc[job.index]
    for column in ("volume_ml", "csf_ml", "grey_ml", "white_ml", "tissue_fraction", "brain_mask_ml"):
        np.testing.assert_allclose(merged_rows[column], job[column], rtol=1e-5, err_msg=column)
    subject = small.set_index("participant_id").loc["sub-00"]
    assert (merged_rows["group"] == subject["split"]).all() and (merged_rows["age"] == subject["age"]).all()
    native = merged_rows["volume_ml"] * subject["native_volume_factor"]
    np.testing.assert_allclose(merged_rows["native_volume_ml"], native, rtol=1e-5)
    # The same segmentation as in one job for all: Atropos runs with a constant seed, so a subject's regions do
    # not depend on which job measured it.
    whole = _read(measures_dir, "regional_measures.tsv").set_index(["image_id", "region"])
    for column in ("volume_ml", "csf_ml", "grey_ml", "white_ml"):
        np.testing.assert_allclose(table[column], whole[column].loc[table.index], rtol=1e-5, err_msg=column)
    segmentations = table.groupby(level="image_id")["segmentation"].first()
    assert segmentations["sub-00"].startswith("../jobs/sub-00/segmentations/")
    assert segmentations["sub-06"].startswith("segmentations/")
    assert all((merged / name).is_file() for name in segmentations)
    assert main([*command, "--measured", str(tmp_path / "jobs" / "sub-99" / "measured.tsv")]) == 1
    assert "sub-99/measured.tsv does not exist" in capsys.readouterr().err
    assert main(["measure-images", "--output-dir", str(tmp_path / "none")]) == 1
    assert "needs --images or --manifests" in capsys.readouterr().err


def test_a_bin_whose_volumes_all_failed_qc_is_measured_without_segmenting(cohort, tmp_path):
    """A synthetic bin with no volume past the QC gate: its job writes the declared outputs without segmenting."""
    image = pd.read_csv(cohort["split"], sep="\t")["image"].iloc[0]
    manifest = tmp_path / "manifest.tsv"
    pd.DataFrame({"image": [image], "age": [70.0], "qc_pass": ["false"]}).to_csv(manifest, sep="\t", index=False)
    job = tmp_path / "bin-70-80"
    assert main(["measure-images", "--manifests", str(manifest), "--output-dir", str(job)]) == 0
    assert (job / "segmentations").is_dir() and not any((job / "segmentations").iterdir())
    table = _read(job, "measured.tsv")
    assert table.empty and {"image", "region", "volume_ml", "segmentation"} <= set(table.columns)


def test_a_1_mm_study_is_measured_on_the_1_mm_grid(cohort, measures_dir, tmp_path):
    """preprocess.resolution: 1 gives 1 mm images; the regional stage follows the images' grid, and measures the
    same brains (here two of the cohort, upsampled) as at 2 mm."""
    shape, affine = mni_grid(1)
    split = pd.read_csv(cohort["split"], sep="\t")
    pair = split[split["participant_id"].isin(["sub-00", "sub-06"])].copy()
    for row in pair.itertuples():
        data = np.asarray(nib.load(row.image).dataobj, dtype=np.float32)
        fine = ndimage.zoom(data, 2, order=1)[: shape[0], : shape[1], : shape[2]]
        pair.loc[row.Index, "image"] = str(save_nifti(fine, affine, tmp_path / f"{row.participant_id}_1mm.nii.gz"))
    pair.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    output = tmp_path / "measures"
    assert main(["regional-measures", "--split", str(tmp_path / "split.tsv"), "--output-dir", str(output)]) == 0
    fine = _read(output, "regional_measures.tsv").set_index(["image_id", "region"])
    coarse = _read(measures_dir, "regional_measures.tsv").set_index(["image_id", "region"])
    # The 1 mm atlas keeps a few small regions that fall below the size floor at 2 mm.
    fine, coarse = fine.loc[fine.index.intersection(coarse.index)], coarse.loc[fine.index.intersection(coarse.index)]
    labels = nib.load(output / fine["segmentation"].iloc[0])
    assert labels.shape == shape and np.allclose(labels.affine, affine)
    # Close, not equal: linear upsampling blurs the boundary (the 1 mm brain mask comes out about 6% larger) and
    # the small ventricles differ by about 12% between grids; a wrong voxel size or grid would be off 8-fold.
    np.testing.assert_allclose(fine["brain_mask_ml"], coarse["brain_mask_ml"], rtol=0.1)
    for region, tolerance in (("brain", 0.1), ("ventricles", 0.2)):
        volumes = fine.xs(region, level="region")["volume_ml"], coarse.xs(region, level="region")["volume_ml"]
        np.testing.assert_allclose(*volumes, rtol=tolerance, err_msg=region)
