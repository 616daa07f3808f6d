"""The demo cohort of synthetic whole-head phantoms: layout, determinism, anatomy, ageing and ground truth."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from flowlet.cli import main
from flowlet.data.templates import MNI_GRIDS
from flowlet.errors import FlowletError
from flowlet.phantoms import aging
from flowlet.phantoms.cohort import AGE_BINS, CohortSettings, draw_subject, sample_age, subject_paths, write_cohort

N_SUBJECTS = 20


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms") / "bids"
    write_cohort(CohortSettings(output_dir=root, n_subjects=N_SUBJECTS, seed=0), threads=1)
    truth = pd.read_csv(root / "derivatives" / "phantoms" / "ground_truth.tsv", sep="\t")
    return root, truth


def _load(path):
    image = nib.load(str(path))
    return image, np.asanyarray(image.dataobj)


@pytest.mark.slow
def test_bids_layout_and_tables(cohort):
    root, truth = cohort
    participants = pd.read_csv(root / "participants.tsv", sep="\t", dtype={"age": str})
    assert list(participants.columns) == ["participant_id", "age", "sex"]
    assert list(participants.participant_id) == [f"sub-demo{i:03d}" for i in range(1, N_SUBJECTS + 1)]
    assert participants.age.str.fullmatch(r"\d+\.\d\d").all()
    assert set(participants.sex) <= {"M", "F"}
    assert json.loads((root / "dataset_description.json").read_text())["BIDSVersion"]
    derivative = json.loads((root / "derivatives" / "phantoms" / "dataset_description.json").read_text())
    assert derivative["DatasetType"] == "derivative"
    labels = pd.read_csv(root / "derivatives" / "phantoms" / "dseg.tsv", sep="\t")
    assert list(labels["index"]) == [1, 2, 3, 4]
    descriptions = json.loads((root / "derivatives" / "phantoms" / "ground_truth.json").read_text())
    assert set(truth.columns) - {"participant_id", "age", "sex"} <= set(descriptions)
    for participant_id in participants.participant_id:
        for path in subject_paths(root, participant_id).values():
            assert path.exists(), path
    for column in ("brain_volume_ml", "ventricle_volume_ml", "gm_volume_ml", "rotation_x_deg", "translation_z_mm"):
        assert column in truth.columns
    assert np.allclose(truth.age, participants.age.astype(float))


@pytest.mark.slow
def test_same_seed_gives_identical_files_and_subject_k_ignores_cohort_size(cohort, tmp_path):
    root, _ = cohort
    smaller = tmp_path / "bids"
    assert main(["phantoms", "--output-dir", str(smaller), "--n-subjects", "2", "--seed", "0"]) == 0
    for participant_id in ("sub-demo001", "sub-demo002"):
        for kind, path in subject_paths(root, participant_id).items():
            other = subject_paths(smaller, participant_id)[kind]
            assert path.read_bytes() == other.read_bytes(), f"{participant_id} {kind} differs"
    other_seed = draw_subject(1, 0, 20, 80)
    assert other_seed.rotation_deg != draw_subject(0, 0, 20, 80).rotation_deg


@pytest.mark.slow
def test_native_grid_is_not_mni_and_mask_shares_it(cohort):
    root, truth = cohort
    oblique = 0
    for participant_id in truth.participant_id:
        paths = subject_paths(root, participant_id)
        t1, t1_data = _load(paths["t1"])
        mask, mask_data = _load(paths["brain_mask"])
        assert t1_data.dtype == np.int16 and mask_data.dtype == np.uint8
        assert nib.aff2axcodes(t1.affine) == ("P", "S", "R")
        assert not any(np.allclose(t1.affine, grid) for _, grid in MNI_GRIDS.values())
        zooms = np.asarray(t1.header.get_zooms()[:3])
        assert np.all((zooms > 1.85) & (zooms < 2.25))
        assert np.all(np.asarray(t1.shape) * zooms >= 190), "field of view must cover the whole head"
        assert mask.shape == t1.shape and np.allclose(mask.affine, t1.affine)
        direction = t1.affine[:3, :3] / zooms
        oblique += int(np.sum(np.abs(direction) > 1e-3) > 3)
        volume = mask_data.astype(bool).sum() * zooms.prod() / 1000
        assert volume == pytest.approx(truth.set_index("participant_id").brain_mask_volume_ml[participant_id], rel=1e-3)
        assert 850 < volume < 1800
    assert oblique > N_SUBJECTS // 2
    assert 1000 < truth.brain_mask_volume_ml.median() < 1700


@pytest.mark.slow
def test_t1_contrast_and_head_outside_the_brain(cohort):
    root, truth = cohort
    for participant_id in truth.participant_id[:4]:
        paths = subject_paths(root, participant_id)
        _, t1 = _load(paths["t1"])
        _, mask = _load(paths["brain_mask"])
        labels_image, labels = _load(paths["tissue_labels"])
        t1 = t1.astype(float)
        csf, grey, white, ventricles = (np.median(t1[(labels == k) & (mask > 0)]) for k in (1, 2, 3, 4))
        assert white > grey > ventricles
        assert grey > np.median(t1[labels == 1])
        # Scalp fat outside the intracranial volume is as bright as white matter; the skull is dark.
        outside = labels == 0
        voxel_ml = np.prod(labels_image.header.get_zooms()[:3]) / 1000
        assert (outside & (t1 > 0.9 * white)).sum() * voxel_ml > 50
        assert (outside & (t1 < 0.3 * white) & (t1 > 0)).sum() > 0
        # Air in the corners of the field of view is only noise.
        assert np.median(t1[:8, :8, :8]) < 0.1 * white


@pytest.mark.slow
def test_ageing_shows_in_ground_truth_and_written_masks(cohort):
    root, truth = cohort
    # Ventricle size varies widely between people of one age, so compare age groups as well as ranks.
    assert spearmanr(truth.age, truth.ventricle_volume_ml)[0] > 0.2
    older, younger = truth.ventricle_volume_ml[truth.age >= 60], truth.ventricle_volume_ml[truth.age < 40]
    assert older.mean() > 1.4 * younger.mean()
    assert spearmanr(truth.age, truth.brain_volume_ml / truth.icv_ml)[0] < -0.7
    assert spearmanr(truth.age, truth.gm_volume_ml / truth.icv_ml)[0] < -0.7
    # The written brain mask is intracranial (brain, ventricles and CSF, as skull-stripping tools and the IXI
    # reference draw it), so ageing shows as a falling share of parenchyma inside it, not as a smaller mask.
    parenchyma_share = []
    for participant_id in truth.participant_id:
        paths = subject_paths(root, participant_id)
        _, mask = _load(paths["brain_mask"])
        _, labels = _load(paths["tissue_labels"])
        mask = mask.astype(bool)
        parenchyma_share.append(np.isin(labels[mask], (2, 3)).mean())
        assert (labels[mask] > 0).mean() > 0.98, f"{participant_id}: mask reaches outside the intracranial volume"
    ratio = truth.brain_mask_volume_ml / truth.icv_ml
    assert ratio.between(0.93, 1.0).all(), ratio
    assert spearmanr(truth.age, parenchyma_share)[0] < -0.7


@pytest.mark.slow
def test_cohort_ages_leave_decade_bins_under_represented(cohort):
    _, truth = cohort
    counts = np.histogram(truth.age, bins=[20, 40, 60, 80])[0]
    assert counts[2] < counts[0] / 2


def test_age_mixture_is_skewed_towards_the_young():
    rng = np.random.default_rng(0)
    ages = np.array([sample_age(rng, 20, 80) for _ in range(4000)])
    assert ages.min() >= 20 and ages.max() <= 80
    shares = np.histogram(ages, bins=[20, 30, 40, 50, 60, 70, 80])[0] / len(ages)
    assert shares[0] + shares[1] > 0.55
    assert shares[4] + shares[5] < 0.22
    assert shares[2] < shares[1] / 2
    assert AGE_BINS[0][0] <= 20 and AGE_BINS[-1][1] >= 80


def test_ageing_curves_follow_published_rates():
    def annual_loss(curve, age):
        return 1 - curve(age + 1) / curve(age)

    assert aging.brain_volume_fraction(30) == 1.0
    assert 0.0015 < annual_loss(aging.brain_volume_fraction, 40) < 0.003
    assert 0.004 < annual_loss(aging.brain_volume_fraction, 70) < 0.006
    growth_70 = aging.ventricle_volume_factor(71) / aging.ventricle_volume_factor(70) - 1
    assert 0.03 <= growth_70 <= 0.05
    assert 2.0 < aging.ventricle_volume_factor(80) / aging.ventricle_volume_factor(20) < 3.0
    thinning_rate = aging.cortical_thinning_mm(61) - aging.cortical_thinning_mm(60)
    assert 0.01 <= thinning_rate <= 0.02


def test_bad_settings_raise_clear_errors(tmp_path):
    with pytest.raises(FlowletError, match="orientation"):
        write_cohort(CohortSettings(output_dir=tmp_path / "a", n_subjects=1, orientation="PSA"))
    with pytest.raises(FlowletError, match="age range"):
        write_cohort(CohortSettings(output_dir=tmp_path / "b", n_subjects=1, age_min=5, age_max=80))
    (tmp_path / "c" / "sub-other").mkdir(parents=True)
    with pytest.raises(FlowletError, match="sub-other"):
        write_cohort(CohortSettings(output_dir=tmp_path / "c", n_subjects=1))
