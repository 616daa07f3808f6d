"""Preprocessing: input validation, failure atomicity, stripped-input detection, QC aggregation (fast, synthetic)."""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from flowlet.cli import main as flowlet_main
from flowlet.errors import FlowletError
from flowlet.preprocess import checks
from flowlet.preprocess import cli as preprocess_cli
from flowlet.preprocess.pipeline import PreprocessSettings, run_and_write
from flowlet.preprocess.qc import aggregate_qc, robust_z
from flowlet.preprocess.register import RegistrationSettings, TransformFiles, register_to_mni
from flowlet.preprocess.skullstrip import SkullstripSettings, brain_mask, looks_skullstripped

SUBJECT = "sub-test01"


def _ellipsoid(shape, radii, centre=None) -> np.ndarray:
    centre = np.array(shape) / 2 if centre is None else np.asarray(centre)
    grid = np.indices(shape).astype(float)
    distance = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    return distance <= 1.0


def _write(tmp_path, data, affine=None, name="t1w.nii.gz"):
    path = tmp_path / name
    nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine).to_filename(str(path))
    return path


def _outputs(tmp_path):
    out = tmp_path / "out"
    return dict(
        brain_mask_path=out / "mask.nii.gz",
        output_path=out / "mni.nii.gz",
        transform=out / "xfm.mat",
        qc_png=out / "qc.png",
        qc_tsv=out / "qc.tsv",
    )


DEFAULT_SETTINGS = PreprocessSettings()


def _assert_fails_cleanly(tmp_path, path, match, settings=DEFAULT_SETTINGS):
    outputs = _outputs(tmp_path)
    with pytest.raises(FlowletError, match=match) as error:
        run_and_write(path, SUBJECT, settings, **outputs)
    assert SUBJECT in str(error.value)
    written = list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else []
    assert written == [], f"partial outputs left behind: {written}"


def test_several_volumes_are_rejected(tmp_path):
    path = _write(tmp_path, np.ones((20, 20, 20, 3), dtype=np.float32))
    _assert_fails_cleanly(tmp_path, path, "3 volumes")


def test_2d_image_is_rejected(tmp_path):
    path = _write(tmp_path, np.ones((64, 64), dtype=np.float32))
    _assert_fails_cleanly(tmp_path, path, "2D")


def test_single_slice_3d_image_is_rejected(tmp_path):
    path = _write(tmp_path, np.ones((64, 64, 1), dtype=np.float32))
    _assert_fails_cleanly(tmp_path, path, "2D")


def test_all_zero_image_is_rejected(tmp_path):
    path = _write(tmp_path, np.zeros((30, 30, 30), dtype=np.float32))
    _assert_fails_cleanly(tmp_path, path, "no positive voxels")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_voxels_are_rejected(tmp_path, bad_value):
    data = np.ones((30, 30, 30), dtype=np.float32)
    data[3, 4, 5] = bad_value
    path = _write(tmp_path, data)
    _assert_fails_cleanly(tmp_path, path, "NaN or Inf")


def test_truncated_gzip_is_rejected(tmp_path):
    data = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)
    path = _write(tmp_path, data)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    _assert_fails_cleanly(tmp_path, path, "not a readable NIfTI")


def test_sheared_affine_is_rejected(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[0, 1] = 0.5
    path = _write(tmp_path, np.ones((30, 30, 30), dtype=np.float32), affine)
    _assert_fails_cleanly(tmp_path, path, "shear")


def test_single_volume_4d_is_squeezed():
    image = nib.Nifti1Image(np.ones((20, 21, 22, 1), dtype=np.float32), np.eye(4))
    data, _ = checks.validate_t1w(image, SUBJECT)
    assert data.shape == (20, 21, 22)


def _brain_only_image(radii_vox, shape=(60, 60, 60), voxel_mm=2.0):
    rng = np.random.default_rng(1)
    brain = _ellipsoid(shape, radii_vox)
    data = np.where(brain, 100 + 10 * rng.standard_normal(shape), 0).astype(np.float32)
    return data, np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])


def test_implausibly_small_mask_is_rejected(tmp_path):
    data, affine = _brain_only_image((8, 8, 8))  # about 17 ml
    path = _write(tmp_path, data, affine)
    _assert_fails_cleanly(tmp_path, path, "implausibly small", PreprocessSettings(skullstripped="force"))


def test_implausibly_large_mask_is_rejected(tmp_path):
    data, affine = _brain_only_image((40, 40, 40), shape=(90, 90, 90), voxel_mm=3.0)  # about 7.2 l
    path = _write(tmp_path, data, affine)
    _assert_fails_cleanly(tmp_path, path, "implausibly large", PreprocessSettings(skullstripped="force"))


def test_empty_mask_is_rejected():
    with pytest.raises(FlowletError, match=f"{SUBJECT}.*empty"):
        checks.check_mask_volume(np.zeros((10, 10, 10), bool), np.eye(4), SUBJECT)


def test_mask_with_rounded_header_is_accepted_and_other_grids_are_not(tmp_path):
    affine = np.array([[-1.2, 0, 0, 90.123456], [0, 1.2, 0, -126.5], [0, 0, 1.3, -72.25], [0, 0, 0, 1]])
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:15, 5:15, 5:15] = 1
    rounded = affine.copy()
    rounded[:3, 3] += 1e-4
    path = _write(tmp_path, mask, rounded.astype(np.float32), "mask.nii.gz")
    loaded = checks.load_mask_on_grid(path, (20, 20, 20), affine, "mask")
    assert loaded.sum() == 1000
    shifted = affine.copy()
    shifted[:3, 3] += 2.0
    path = _write(tmp_path, mask, shifted, "shifted.nii.gz")
    with pytest.raises(FlowletError, match="not on the image's grid"):
        checks.load_mask_on_grid(path, (20, 20, 20), affine, "mask")


def test_stripped_input_is_detected_and_a_head_is_not():
    brain, affine = _brain_only_image((28, 24, 22), shape=(80, 80, 80))  # about 500 ml
    assert looks_skullstripped(brain, affine)
    head = np.where(_ellipsoid((80, 80, 80), (39, 39, 39)), 50.0, 0.0).astype(np.float32) + brain
    head[:, :, :5] = 30.0  # the neck runs out of the field of view
    assert not looks_skullstripped(head, affine)


def test_fsl_backends_without_fsl_name_fsldir(monkeypatch):
    monkeypatch.delenv("FSLDIR", raising=False)
    data, affine = _brain_only_image((20, 20, 20))
    with pytest.raises(FlowletError, match="FSLDIR"):
        brain_mask(data, affine, SkullstripSettings(backend="fsl"))
    with pytest.raises(FlowletError, match="FSLDIR"):
        register_to_mni(data, affine, RegistrationSettings(backend="fsl"))


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
@pytest.mark.parametrize("level", ["sampling_rate", "fine_sampling_rate"])
def test_a_registration_sampling_rate_outside_0_1_is_an_error_that_says_so(rate, level):
    data, affine = _brain_only_image((20, 20, 20))
    with pytest.raises(FlowletError, match=f"sampling rate must lie in \\(0, 1\\], got {rate}"):
        register_to_mni(data, affine, RegistrationSettings(**{level: rate}))


def test_the_registration_sampling_flags_reach_the_registration():
    parser = argparse.ArgumentParser()
    preprocess_cli.build_parser(parser)
    arguments = ["in.nii.gz", "--output", "o.nii.gz", "--brain-mask", "m.nii.gz", "--transform", "x.mat"]
    default = preprocess_cli.settings_from_args(parser.parse_args(arguments)).registration
    assert (default.sampling_rate, default.fine_sampling_rate) == (0.2, 0.05)
    chosen = parser.parse_args([*arguments, "--registration-sampling", "0.1", "--registration-fine-sampling", "0.02"])
    registration = preprocess_cli.settings_from_args(chosen).registration
    assert (registration.sampling_rate, registration.fine_sampling_rate) == (0.1, 0.02)


def test_transform_spec_forms():
    files = TransformFiles.from_spec("/x/sub-1_xfm.mat")
    assert (str(files.affine), str(files.warp)) == ("/x/sub-1_xfm.mat", "/x/sub-1_xfm_warp.nii.gz")
    files = TransformFiles.from_spec("/x/sub-1_")
    assert (str(files.affine), str(files.inverse_warp)) == ("/x/sub-1_affine.mat", "/x/sub-1_invwarp.nii.gz")


def _qc_rows(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "subject": [f"sub-{i:02d}" for i in range(n)],
            "mask_volume_ml": 1400 + 60 * rng.standard_normal(n),
            "native_volume_factor": 0.75 + 0.05 * rng.standard_normal(n),
            "dice_template": 0.955 + 0.005 * rng.standard_normal(n),
            "ncc_template": 0.8 + 0.01 * rng.standard_normal(n),
            "seconds_n4": 2.0,
            "seconds_skullstrip": 2.0,
            "seconds_register": 3.0,
            "seconds_total": 8.0,
            "skullstrip_backend": "deepbet",
            "registration": "ants-affine",
        }
    )


def test_qc_aggregation_flags_outliers_first():
    rows = _qc_rows()
    rows.loc[7, "dice_template"] = 0.80  # a failed registration
    table = aggregate_qc([rows.iloc[:10], rows.iloc[10:]])
    assert len(table) == 20
    assert table.loc[0, "subject"] == "sub-07" and bool(table.loc[0, "outlier"])
    assert "dice_template" in table.loc[0, "outlier_reasons"]
    assert int(table["outlier"].sum()) == 1


def test_robust_z_uses_median_and_mad():
    z = robust_z(pd.Series([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert z.iloc[2] == 0.0
    assert z.iloc[4] == pytest.approx((100 - 3) / (1.4826 * 1.0))


def test_qc_command_writes_flagged_first_with_failed_subjects(tmp_path):
    rows = _qc_rows()
    rows.loc[3, "mask_volume_ml"] = 2400.0
    inputs = []
    for i in range(0, 20, 5):
        path = tmp_path / f"qc{i}.tsv"
        rows.iloc[i : i + 5].to_csv(path, sep="\t", index=False)
        inputs.append(str(path))
    failed = tmp_path / "failed.tsv"
    pd.DataFrame({"subject": ["sub-99"], "reason": ["truncated gzip"]}).to_csv(failed, sep="\t", index=False)
    output = tmp_path / "qc.tsv"
    assert flowlet_main(["qc", "--inputs", *inputs, "--output", str(output), "--failed-list", str(failed)]) == 0
    table = pd.read_csv(output, sep="\t")
    assert list(table["subject"][:2]) == ["sub-03", "sub-99"]
    assert table["outlier"].tolist()[:2] == [True, True] and not table["outlier"][2:].any()
    assert "truncated gzip" in table.loc[1, "outlier_reasons"]
    # The workflow's form: a path pattern filled in from the participant table, for cohorts of thousands.
    participants = tmp_path / "participants.tsv"
    pd.DataFrame({"participant_id": [f"qc{i}" for i in range(0, 20, 5)]}).to_csv(participants, sep="\t", index=False)
    by_pattern = tmp_path / "by_pattern.tsv"
    pattern = str(tmp_path / "{participant_id}.tsv")
    arguments = ["qc", "--input-pattern", pattern, "--participants", str(participants), "--output", str(by_pattern)]
    assert flowlet_main([*arguments, "--failed-list", str(failed)]) == 0
    assert by_pattern.read_text() == output.read_text()


def test_preprocess_command_reports_bad_input(tmp_path, capsys):
    path = _write(tmp_path, np.zeros((30, 30, 30), dtype=np.float32), name="sub-77_T1w.nii.gz")
    code = flowlet_main(
        ["preprocess", str(path), "--brain-mask", str(tmp_path / "m.nii.gz"), "--output", str(tmp_path / "o.nii.gz")]
    )
    assert code == 1
    assert "sub-77" in capsys.readouterr().err


def test_every_preprocess_config_key_is_a_command_flag():
    """The Snakemake rule passes each key of the config's preprocess section as --kebab-case-flag."""
    from pathlib import Path

    import yaml

    from flowlet.preprocess.cli import build_parser

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml").read_text())
    parser = argparse.ArgumentParser()
    build_parser(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    keys = schema["properties"]["preprocess"]["properties"]
    assert "template" in keys["skullstrip_backend"]["enum"]
    missing = [key for key in keys if "--" + key.replace("_", "-") not in flags]
    assert missing == [], f"config keys without a flowlet preprocess flag: {missing}"


def _head_open_at_the_neck(shape=(48, 56, 52)) -> tuple[np.ndarray, np.ndarray]:
    """A bright scalp shell around a dark band and a grey brain, cut open by the bottom of the field of view, as
    a real head is at the neck: (image, brain)."""
    centre = (24, 28, 20)
    head = _ellipsoid(shape, (20, 24, 26), centre)
    inside_scalp = _ellipsoid(shape, (17, 21, 23), centre)
    brain = _ellipsoid(shape, (13, 17, 19), centre) & (np.indices(shape)[2] > 6)
    image = np.where(head & ~inside_scalp, 900.0, 0.0) + np.where(brain, 600.0, 0.0)
    image += np.random.default_rng(0).normal(30, 5, shape).clip(1)
    return image.astype(np.float32), brain


def test_n4_fit_region_holds_a_brain_that_the_scalp_shell_does_not_close():
    """3D hole filling leaves the inside of a head open at the neck empty; the region N4 fits must hold the brain
    (on 5 of 16 demo phantoms it held none of it, so their brains were never bias-corrected)."""
    from flowlet.preprocess.bias import head_region

    image, brain = _head_open_at_the_neck()
    assert not _3d_hole_filling_closes(image), "the shell must be open for this test to mean anything"
    assert head_region(image).fit[brain].mean() > 0.99


def _3d_hole_filling_closes(image: np.ndarray) -> bool:
    from scipy import ndimage

    from flowlet.preprocess.bias import otsu_threshold

    shell = image > otsu_threshold(image[image > 0])
    labels, _ = ndimage.label(shell)
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return bool(ndimage.binary_fill_holes(largest).sum() > 1.5 * largest.sum())


def test_n4_corrects_the_whole_head_inside_its_outline_and_leaves_the_air():
    """ANTs' corrected image is divided by the field only inside the fit region; the dark band between scalp and
    brain (CSF, skull), outside the region but inside the head's outline, must be corrected like the brain, and
    the air around the head keeps its raw scale (the field there is an extrapolation)."""
    from flowlet.preprocess.bias import N4Settings, head_region, n4_correct

    image, brain = _head_open_at_the_neck()
    axis = np.linspace(-1, 1, image.shape[0], dtype=np.float32)[:, None, None]
    biased = image * np.exp(0.6 * axis)
    region = head_region(biased)
    band = _ellipsoid(image.shape, (17, 21, 23), (24, 28, 20)) & ~brain & (np.indices(image.shape)[2] > 10)
    band &= ~region.fit
    assert band.sum() > 10000, "the band must lie outside the fit region for this test to mean anything"
    corrected = n4_correct(biased, np.diag([2.0, 2.0, 2.0, 1.0]), N4Settings(), region)
    ratio, raw_ratio = corrected / image, biased / image
    assert np.percentile(raw_ratio[brain], 95) / np.percentile(raw_ratio[brain], 5) > 1.5
    spread = np.percentile(ratio[brain], 95) / np.percentile(ratio[brain], 5)
    assert spread < 1.15, f"the corrected brain keeps a 95/5 spread of {spread:.2f} against the bias-free one"
    # N4's scale is arbitrary (here about 1.7 times the input): the band must be on the brain's, not the input's.
    band_to_brain = np.median(ratio[band]) / np.median(ratio[brain])
    assert abs(band_to_brain - 1) < 0.2, f"the band is scaled {band_to_brain:.2f} times the brain"
    air = ~ndimage.binary_dilation(_ellipsoid(image.shape, (20, 24, 26), (24, 28, 20)), iterations=3)
    np.testing.assert_array_equal(corrected[air], biased[air])


@pytest.mark.parametrize("step", [1, 2])
def test_a_given_n4_mask_has_an_outline_with_what_it_encloses_and_nothing_beyond(step):
    """A user's N4 mask (--n4-mask) is the fit region as given; the field divides it and what it encloses (a
    ventricle-like hole, open in no slice), and leaves everything beyond it raw."""
    from flowlet.preprocess.bias import N4Region

    shape = (47, 55, 41)  # odd: the coarse grid's last block is cropped
    brain = _ellipsoid(shape, (13, 17, 15))
    hole = _ellipsoid(shape, (4, 5, 4))
    region = N4Region.around(brain & ~hole, step=step)
    np.testing.assert_array_equal(region.fit, brain & ~hole)
    assert region.outline[hole].all()
    # Found on every step-th voxel, the outline may reach step - 1 voxels beyond the mask, no further.
    reach = brain if step == 1 else ndimage.binary_dilation(brain, np.ones((3, 3, 3)), iterations=step - 1)
    assert not region.outline[~reach].any()


@pytest.mark.parametrize("step", [1, 2])
def test_the_head_region_outline_holds_its_fit_region_and_the_dark_band_around_the_brain(step):
    """With step 2 on the toy head at twice the resolution, as a 1 mm scan's region is found."""
    from flowlet.preprocess.bias import head_region

    image, brain = _head_open_at_the_neck()
    band = _ellipsoid(image.shape, (17, 21, 23), (24, 28, 20)) & ~brain & (np.indices(image.shape)[2] > 10)
    image, band = (ndimage.zoom(volume, step, order=0) for volume in (image, band))
    region = head_region(image, step=step)
    assert region.fit.shape == region.outline.shape == image.shape
    assert not region.fit[~region.outline].any()
    assert region.outline[band].mean() > 0.99 and region.fit[band].mean() < 0.5


def test_an_n4_mask_file_is_the_fit_region_and_its_outline_holds_what_it_encloses(tmp_path):
    """--n4-mask: the file's mask is where N4 fits, as given; the field divides the mask and what it encloses
    (here on a 1 mm grid, whose outline is found on every second voxel)."""
    from flowlet.preprocess.pipeline import _n4_region

    shape, affine = (47, 55, 41), np.diag([1.0, 1.0, 1.0, 1.0])
    brain, hole = _ellipsoid(shape, (13, 17, 15)), _ellipsoid(shape, (4, 5, 4))
    path = _write(tmp_path, (brain & ~hole).astype(np.uint8), affine, name="n4_mask.nii.gz")
    data = np.where(brain, 100.0, 0.0).astype(np.float32)
    region = _n4_region(PreprocessSettings(n4_mask=str(path)), data, affine, SUBJECT)
    np.testing.assert_array_equal(region.fit, brain & ~hole)
    assert region.outline[brain].all()
    assert _n4_region(PreprocessSettings(n4_mask="none"), data, affine, SUBJECT) is None


@pytest.mark.parametrize("method", ["affine", "syn"])
def test_registration_levels_that_do_not_match_are_an_error_that_says_so(method):
    data, affine = _brain_only_image((20, 20, 20))
    with pytest.raises(FlowletError, match="3 levels of iterations but 2 shrink factors"):
        register_to_mni(data, affine, RegistrationSettings(method=method, shrink_factors=(4, 2)))


_LINEAR_REGISTRATION_TWICE = """
import sys
import numpy as np
from scipy import ndimage
from flowlet.data.templates import template_brain_mask, template_t1
from flowlet.lazy_ants import import_ants
from flowlet.preprocess.register import (
    LINEAR_RESOLUTION_MM, RegistrationSettings, _moving_image, _register_linear, _template_brain
)
from pathlib import Path

ants = import_ants()
method, workdir = sys.argv[1], Path(sys.argv[2])
template = template_t1(LINEAR_RESOLUTION_MM)
mask = template_brain_mask(LINEAR_RESOLUTION_MM).get_fdata(dtype=np.float32)
brain = template.get_fdata(dtype=np.float32) * mask
moving = ndimage.shift(ndimage.rotate(brain, 8, axes=(0, 1), reshape=False, order=1), (3, -2, 4), order=1)
settings = RegistrationSettings(method=method, iterations=(20, 10, 5), sampling_rate=0.2, fine_sampling_rate=0.2)
_register_linear(moving, template.affine, settings, workdir)
ours = ants.read_transform(str(workdir / "out_affine.mat"))
ants.config._random_seed = settings.seed
result = ants.registration(
    fixed=_template_brain(LINEAR_RESOLUTION_MM), moving=_moving_image(moving, template.affine, method),
    type_of_transform=method.capitalize(), outprefix=str(workdir / "antspy_"), aff_iterations=settings.iterations,
    aff_shrink_factors=settings.shrink_factors, aff_smoothing_sigmas=settings.smoothing_sigmas,
    aff_random_sampling_rate=settings.sampling_rate,
)
theirs = ants.read_transform(next(p for p in result["fwdtransforms"] if p.endswith(".mat")))
moved = np.linalg.norm(np.subtract(ours.apply_to_point((60.0, 0.0, 0.0)), (60.0, 0.0, 0.0)))
print(np.abs(ours.parameters - theirs.parameters).max(), moved)
"""


@pytest.mark.parametrize("method", ["rigid", "affine"])
def test_the_linear_registration_runs_as_ants_registration_does_with_equal_sampling_rates(tmp_path, method):
    """Rigid and affine call antsRegistration with our own arguments (so the finest level can sample fewer points);
    with one sampling rate on every level they must be ants.registration's, to the last bit (one ITK thread and a
    fixed seed make ANTs repeatable; a fresh process, because ITK reads its thread count once)."""
    import os
    import subprocess
    import sys

    environment = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
    printed = subprocess.run(
        [sys.executable, "-c", _LINEAR_REGISTRATION_TWICE, method, str(tmp_path)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    difference, moved_mm = float(printed[-2]), float(printed[-1])
    assert moved_mm > 5, "the moving image must be turned for the comparison to mean anything"
    assert difference == 0.0, f"{method}: our transform differs from ants.registration's by {difference}"


def test_a_syn_registration_saves_its_affine_and_both_warps_under_the_transform_names():
    """The syn method (affine then SyN through ants.registration) leaves out_affine.mat, out_warp.nii.gz and
    out_invwarp.nii.gz, which apply_to_mni reads; a shifted template brain is carried back onto the template."""
    from flowlet.data.templates import template_brain_mask, template_t1
    from flowlet.preprocess.register import apply_to_mni

    template = template_t1(2)
    brain = template.get_fdata(dtype=np.float32) * template_brain_mask(2).get_fdata(dtype=np.float32)
    moving = ndimage.shift(brain, (3, -2, 4), order=1)
    settings = RegistrationSettings(method="syn", iterations=(20, 10, 5), syn_iterations=(5, 0, 0))
    registration = register_to_mni(moving, template.affine, settings)
    try:
        assert sorted(path.name for path in registration.workdir.iterdir()) == [
            "out_affine.mat",
            "out_invwarp.nii.gz",
            "out_warp.nii.gz",
        ]
        assert registration.files.has_warp
        carried = apply_to_mni(nib.Nifti1Image(moving, template.affine), registration.files, "linear", 2)
        inside = brain > 0
        assert np.corrcoef(carried.get_fdata()[inside], brain[inside])[0, 1] > 0.95
    finally:
        registration.cleanup()
