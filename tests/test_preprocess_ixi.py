"""Preprocessing on real IXI scans: brain-mask accuracy against DLMUSE, MNI transfer, transform round trip,
orientation invariance and the QC picture. The scans are preprocessed once per module."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from flowlet.data.nifti import tilted_copy
from flowlet.data.templates import template_brain_mask
from flowlet.preprocess import apply_to_mni, apply_to_native
from flowlet.preprocess.pipeline import PreprocessSettings, run_and_write
from flowlet.preprocess.qc import QC_COLUMNS, dice

pytestmark = pytest.mark.slow

SETTINGS = PreprocessSettings(threads=2)
OLDEST = 4
YOUNGEST = 1


def _t1w(ixi_dir, subject):
    return ixi_dir / subject / "anat" / f"{subject}_T1w.nii.gz"


def _reference(ixi_dir, subject) -> nib.Nifti1Image:
    return nib.load(str(ixi_dir / "derivatives" / "dlmuse" / subject / "anat" / f"{subject}_dseg.nii.gz"))


@pytest.fixture(scope="module")
def subjects(ixi_dir) -> list[str]:
    participants = pd.read_csv(ixi_dir / "participants.tsv", sep="\t").dropna(subset=["age"])
    by_age = participants.sort_values("age", ascending=False)["participant_id"].tolist()
    return by_age[:OLDEST] + by_age[-YOUNGEST:]


@pytest.fixture(scope="module")
def preprocessed(ixi_dir, subjects, tmp_path_factory):
    out = tmp_path_factory.mktemp("preprocessed")
    runs = {}
    for subject in subjects:
        paths = {
            "brain_mask_path": out / f"{subject}_mask.nii.gz",
            "output_path": out / f"{subject}_mni.nii.gz",
            "transform": out / f"{subject}_xfm.mat",
            "qc_png": out / f"{subject}_qc.png",
            "qc_tsv": out / f"{subject}_qc.tsv",
        }
        result = run_and_write(_t1w(ixi_dir, subject), subject, SETTINGS, **paths)
        runs[subject] = (paths, result)
    return runs


def test_brain_masks_match_dlmuse_including_the_oldest(ixi_dir, preprocessed):
    scores = {}
    for subject, (paths, _) in preprocessed.items():
        mask_image = nib.load(str(paths["brain_mask_path"]))
        t1w = nib.load(str(_t1w(ixi_dir, subject)))
        assert mask_image.shape == t1w.shape and np.allclose(mask_image.affine, t1w.affine, atol=1e-4)
        reference = np.asarray(_reference(ixi_dir, subject).dataobj) > 0
        scores[subject] = dice(np.asarray(mask_image.dataobj) > 0, reference)
    assert min(scores.values()) >= 0.97, scores
    assert float(np.median(list(scores.values()))) >= 0.975, scores


def test_reference_mask_carried_to_mni_overlaps_the_template(ixi_dir, preprocessed):
    template = template_brain_mask(2).get_fdata() > 0
    scores = {}
    for subject, (paths, _) in preprocessed.items():
        reference = _reference(ixi_dir, subject)
        as_float = nib.Nifti1Image((np.asarray(reference.dataobj) > 0).astype(np.float32), reference.affine)
        carried = apply_to_mni(as_float, paths["transform"], "linear", 2).get_fdata() >= 0.5
        scores[subject] = dice(carried, template)
    assert min(scores.values()) >= 0.93, scores


def test_outputs_are_on_the_mni_grid_and_z_scored(preprocessed):
    for paths, result in preprocessed.values():
        image = nib.load(str(paths["output_path"]))
        assert image.shape == (91, 109, 91)
        assert np.allclose(image.affine, [[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
        data = image.get_fdata()
        inside = data[result.mni_mask]
        assert abs(inside.mean()) < 1e-3 and abs(inside.std() - 1) < 1e-3
        assert np.all(data[~result.mni_mask] == 0)


def test_qc_outputs(preprocessed):
    for subject, (paths, _) in preprocessed.items():
        row = pd.read_csv(paths["qc_tsv"], sep="\t")
        assert (
            list(row.columns) == [*QC_COLUMNS, "status"]
            and row.loc[0, "status"] == "ok"
            and row.loc[0, "subject"] == subject
        )
        assert 0.9 < row.loc[0, "dice_template"] <= 1 and 0.3 < row.loc[0, "ncc_template"] <= 1
        assert 900 < row.loc[0, "mask_volume_ml"] < 2100
        assert paths["qc_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_label_map_round_trip_through_mni(ixi_dir, subjects, preprocessed):
    subject = subjects[0]
    paths, _ = preprocessed[subject]
    reference = _reference(ixi_dir, subject)
    labels = np.asarray(reference.dataobj)
    in_mni = apply_to_mni(reference, paths["transform"], "label", 2)
    assert set(np.unique(in_mni.get_fdata())) <= set(np.unique(labels))
    # The MNI grid is as fine as the native one, so a label map survives the round trip nearly intact.
    back = apply_to_native(in_mni, paths["transform"], paths["brain_mask_path"], "label").get_fdata()
    assert dice(back > 0, labels > 0) > 0.95
    assert np.mean(back[labels > 0] == labels[labels > 0]) > 0.6


def _reoriented_copies(ixi_dir, subject, tmp_path):
    image = nib.load(str(_t1w(ixi_dir, subject)))
    canonical = nib.as_closest_canonical(image)
    ras_path = tmp_path / "ras.nii.gz"
    nib.Nifti1Image(np.asarray(canonical.dataobj), canonical.affine).to_filename(str(ras_path))
    oblique_path = tmp_path / "oblique.nii.gz"
    tilted_copy(image).to_filename(str(oblique_path))
    return ras_path, oblique_path


def test_reoriented_and_oblique_inputs_give_the_same_mni_output(ixi_dir, subjects, preprocessed, tmp_path):
    subject = subjects[-1]
    _, baseline = preprocessed[subject]
    for path in _reoriented_copies(ixi_dir, subject, tmp_path):
        out = tmp_path / path.name.split(".")[0]
        result = run_and_write(
            path, subject, SETTINGS, brain_mask_path=out / "mask.nii.gz", output_path=out / "mni.nii.gz"
        )
        assert dice(result.mni_mask, baseline.mni_mask) > 0.95, path.name
        both = result.mni_mask & baseline.mni_mask
        correlation = np.corrcoef(result.mni_image[both], baseline.mni_image[both])[0, 1]
        assert correlation > 0.9, (path.name, correlation)


def test_template_backend_without_a_learned_model_finds_the_oldest_brain(ixi_dir, subjects):
    """The template backend (no network) on the oldest IXI scan; on the 6 oldest it reaches median Dice 0.969."""
    from flowlet.preprocess.bias import N4Settings, head_region, n4_correct
    from flowlet.preprocess.skullstrip import SkullstripSettings, brain_mask

    subject = subjects[0]
    image = nib.load(str(_t1w(ixi_dir, subject)))
    data = image.get_fdata(dtype=np.float32)
    corrected = n4_correct(data, image.affine, N4Settings(), head_region(data))
    mask = brain_mask(corrected, image.affine, SkullstripSettings(backend="template"))
    reference = np.asarray(_reference(ixi_dir, subject).dataobj) > 0
    assert dice(mask, reference) >= 0.95, f"{subject}: template mask Dice {dice(mask, reference):.4f}"


def test_n4_on_a_fine_scan_fits_a_coarse_copy_and_removes_a_known_field(ixi_dir, subjects):
    """A scan with voxels finer than 2 mm is bias-corrected from a 2 mm copy (the field is smooth). An IXI scan,
    corrected, upsampled to 1 mm and multiplied by a known smooth field: most of the field is removed. (On the
    first IXI scan the 5-95% spread of corrected over clean goes from 1.40 to 1.16 in about 3 s; the
    full-resolution fit used before gave 1.20 in 25 s.)"""
    from scipy import ndimage

    from flowlet.preprocess.bias import N4Settings, head_region, n4_correct

    image = nib.load(str(_t1w(ixi_dir, subjects[0])))
    data = image.get_fdata(dtype=np.float32)
    clean = ndimage.zoom(n4_correct(data, image.affine, N4Settings(), head_region(data)), 2, order=1)
    fine_affine = image.affine.copy()
    fine_affine[:3, :3] /= 2
    grid = np.indices(clean.shape, dtype=np.float32) / np.array(clean.shape, np.float32).reshape(3, 1, 1, 1) - 0.5
    biased = clean * np.exp(0.4 * grid[0] - 0.3 * grid[2])
    corrected = n4_correct(biased, fine_affine, N4Settings(), head_region(biased))
    assert corrected.shape == clean.shape and corrected.dtype == np.float32
    brain = head_region(clean).fit & (clean > np.percentile(clean[clean > 0], 50))

    def spread(values: np.ndarray) -> float:
        ratio = values[brain] / clean[brain]
        return float(np.percentile(ratio, 95) / np.percentile(ratio, 5))

    assert spread(biased) > 1.3 and spread(corrected) - 1 < 0.65 * (spread(biased) - 1)
