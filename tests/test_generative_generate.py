"""`flowlet generate`: reference file naming, MNI space, intensity conventions, determinism and user errors."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from flowlet.cli import main
from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1

AGES = (20.0, 40.0, 60.0, 80.0)
TINY_ARCHITECTURE = [
    "--preset", "tiny", "--model-channels", "16", "--channel-mult", "1", "2", "--num-res-blocks", "1",
    "--attention-res", "2", "--norm-num-groups", "8", "--num-heads", "4", "--condition-embedding-dim", "32",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A briefly trained tiny generator (8 mm working grid) on the z-scored template, via `flowlet train`."""
    work = tmp_path_factory.mktemp("generator")
    data = np.asarray(template_t1(2).dataobj, dtype=np.float32)
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    image = save_nifti(np.where(mask, (data - data[mask].mean()) / data[mask].std(), 0.0), mni_grid(2)[1], work / "brain.nii.gz")
    table = work / "train.tsv"
    table.write_text("image\tage\n" + "".join(f"{image}\t{age}\n" for age in AGES))
    run_dir = work / "run"
    code = main([
        "train", str(table), "--output-dir", str(run_dir), *TINY_ARCHITECTURE, "--downsample", "4", "--steps", "6",
        "--batch-size", "2", "--lr", "1e-3", "--warmup-steps", "2", "--val-split", "0.25", "--val-every", "3",
        "--log-every", "2", "--condition-dropout", "0.2", "--device", "cpu", "--threads", "1",
    ])
    assert code == 0
    return run_dir


def generate(run_dir: Path, output: Path, *extra: str) -> int:
    return main([
        "generate", "--checkpoint_path", str(run_dir / "checkpoint_last.pth"), "--output_dir", str(output),
        "--num_flow_steps", "2", "--device", "cpu", *extra,
    ])


def load(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


@pytest.mark.slow
def test_reference_naming_mni_affine_and_zscore_convention(trained_run, tmp_path):
    output = tmp_path / "synthetic"
    assert generate(trained_run, output, "--generation_conditions", "Age=45", "Age=70.5", "--num_synthetic", "2") == 0
    expected = [output / folder / f"FlowLet_synthetic_brain_{i}.nii.gz" for folder in ("Age_45.00", "Age_70.50") for i in (0, 1)]
    assert sorted(output.rglob("*.nii.gz")) == sorted(expected)
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    shape, affine = mni_grid(2)
    for path in expected:
        image = load(path)
        assert image.shape == shape
        np.testing.assert_allclose(image.affine, affine)
        data = np.asarray(image.dataobj)
        assert np.all(data[~mask] == 0)
        assert data[mask].mean() == pytest.approx(0.0, abs=1e-4) and data[mask].std() == pytest.approx(1.0, abs=1e-3)
    with (output / "manifest.tsv").open() as stream:
        manifest = list(csv.DictReader(stream, delimiter="\t"))
    assert [row["image"] for row in manifest] == [str(p.relative_to(output)) for p in expected]
    assert [float(row["age"]) for row in manifest] == [45.0, 45.0, 70.5, 70.5]
    assert len({row["seed"] for row in manifest}) == 4


@pytest.mark.slow
def test_outputs_do_not_depend_on_batch_size_and_follow_the_seed(trained_run, tmp_path):
    def volumes(name: str, *extra: str) -> list[np.ndarray]:
        output = tmp_path / name
        assert generate(trained_run, output, "--generation_conditions", "Age=30", "--num_synthetic", "3", *extra) == 0
        return [np.asarray(load(output / "Age_30.00" / f"FlowLet_synthetic_brain_{i}.nii.gz").dataobj) for i in range(3)]

    one_by_one = volumes("batch1", "--batch-size", "1")
    together = volumes("batch3", "--batch-size", "3")
    for a, b in zip(one_by_one, together):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(one_by_one[0], one_by_one[1])
    other_seed = volumes("seed7", "--seed", "7")
    assert not np.allclose(other_seed[0], one_by_one[0])


@pytest.mark.slow
def test_unit_intensity_ages_table_and_raw_weights(trained_run, tmp_path):
    table = tmp_path / "bin.tsv"
    table.write_text("age\tfile\n33.5\tsub-synth01_T1w.nii.gz\n61\tbin/sub-synth02_T1w.nii.gz\n")
    output = tmp_path / "bin"
    assert generate(trained_run, output, "--ages-tsv", str(table), "--intensity", "unit") == 0
    first = np.asarray(load(output / "sub-synth01_T1w.nii.gz").dataobj)
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert (output / "bin" / "sub-synth02_T1w.nii.gz").is_file()
    with (output / "manifest.tsv").open() as stream:
        assert [(r["image"], r["age"]) for r in csv.DictReader(stream, delimiter="\t")] == [
            ("sub-synth01_T1w.nii.gz", "33.5"), ("bin/sub-synth02_T1w.nii.gz", "61"),
        ]
    raw = tmp_path / "raw"
    assert generate(trained_run, raw, "--ages-tsv", str(table), "--intensity", "unit", "--no-use-ema") == 0
    assert not np.allclose(np.asarray(load(raw / "sub-synth01_T1w.nii.gz").dataobj), first)


@pytest.mark.slow
def test_guidance_and_second_order_samplers_change_the_sample(trained_run, tmp_path):
    def volume(name: str, *extra: str) -> np.ndarray:
        assert generate(trained_run, tmp_path / name, "--generation_conditions", "Age=50", *extra) == 0
        return np.asarray(load(tmp_path / name / "Age_50.00" / "FlowLet_synthetic_brain_0.nii.gz").dataobj)

    plain = volume("plain")
    guided = volume("guided", "--guidance-scale", "3")
    heun = volume("heun", "--sampler", "heun")
    assert np.isfinite(guided).all() and np.isfinite(heun).all()
    assert not np.allclose(guided, plain) and not np.allclose(heun, plain)


@pytest.mark.slow
def test_out_of_range_ages_are_clamped_with_a_warning(trained_run, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    assert generate(trained_run, tmp_path / "old", "--generation_conditions", "Age=97") == 0
    assert (tmp_path / "old" / "Age_97.00" / "FlowLet_synthetic_brain_0.nii.gz").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Age" in w and "97" in w and "clamped" in w for w in warnings), warnings


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--generation_conditions", "Weight=70"], "unknown condition"),
        (["--generation_conditions", "Age=old"], "not a number"),
        (["--generation_conditions", "Age=40", "--save_size", "64", "64", "64"], "not an MNI grid"),
    ],
)
def test_bad_requests_fail_with_a_reason(trained_run, tmp_path, capsys, arguments, message):
    assert generate(trained_run, tmp_path / "out", *arguments) == 1
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.nii.gz"))


def test_missing_checkpoint_is_an_error(tmp_path, capsys):
    code = main([
        "generate", "--checkpoint_path", str(tmp_path / "nope.pth"), "--output_dir", str(tmp_path / "out"),
        "--generation_conditions", "Age=40", "--device", "cpu",
    ])
    assert code == 1
    assert "nope.pth does not exist" in capsys.readouterr().err
