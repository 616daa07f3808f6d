"""Preprocessing: input validation, failure atomicity, stripped-input detection, QC aggregation (fast, synthetic)."""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

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
def test_a_registration_sampling_rate_outside_0_1_is_an_error_that_says_so(rate):
    data, affine = _brain_only_image((20, 20, 20))
    with pytest.raises(FlowletError, match=f"sampling rate must lie in \\(0, 1\\], got {rate}"):
        register_to_mni(data, affine, RegistrationSettings(sampling_rate=rate))


def test_the_registration_sampling_flag_reaches_the_registration():
    parser = argparse.ArgumentParser()
    preprocess_cli.build_parser(parser)
    arguments = ["in.nii.gz", "--output", "o.nii.gz", "--brain-mask", "m.nii.gz", "--transform", "x.mat"]
    assert preprocess_cli.settings_from_args(parser.parse_args(arguments)).registration.sampling_rate == 0.2
    chosen = parser.parse_args([*arguments, "--registration-sampling", "0.05"])
    assert preprocess_cli.settings_from_args(chosen).registration.sampling_rate == 0.05


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
