"""The training recipe's recorded hand-off to sampling, fine-tuning from pretrained weights, and the linear baseline."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from flowlet.cli import main
from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1
from flowlet.errors import FlowletError
from flowlet.generative.checkpoint import read_checkpoint
from flowlet.generative.generate import load_generator, sample_batch
from flowlet.generative.linear_baseline import LinearBaseline
from flowlet.generative.loss import prediction_and_target
from flowlet.generative.sampling_spec import (
    TENSORS_KEY,
    SamplingSpec,
    band_standardisation,
    clean_data,
    sampling_spec,
)
from flowlet.generative.train import train
from flowlet.generative.training_options import TrainingOptions
from flowlet.generative.unet import preset_config, preset_training
from flowlet.generative.wavelets import dwt3d


@pytest.fixture(scope="module")
def brains(tmp_path_factory) -> Path:
    """Four z-scored template brains whose intensities drift with age, and their training table."""
    work = tmp_path_factory.mktemp("brains")
    data = np.asarray(template_t1(2).dataobj, dtype=np.float32)
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    rows = []
    for age in (25.0, 40.0, 55.0, 70.0):
        image = np.where(mask, (data - data[mask].mean()) / data[mask].std() * (1 + (age - 50) / 200), 0.0)
        rows.append(f"{save_nifti(image, mni_grid(2)[1], work / f'brain_{age:g}.nii.gz')}\t{age}\n")
    (work / "train.tsv").write_text("image\tage\n" + "".join(rows))
    return work / "train.tsv"


def options(table: Path, output_dir: Path, **overrides) -> TrainingOptions:
    settings = dict(
        table=table,
        output_dir=output_dir,
        steps=30,
        batch_size=2,
        lr=3e-3,
        min_lr=3e-3,
        warmup_steps=5,
        downsample=4,
        val_split=0.0,
        log_every=5,
        checkpoint_every=100,
        val_every=100,
        ema_decay=0.9,
        output_init="random",
        device="cpu",
    )
    settings.update(overrides)
    return TrainingOptions(**settings)


def loss_rows(run: Path) -> list[float]:
    lines = (run / "loss.tsv").read_text().splitlines()[1:]
    return [float(line.split("\t")[2]) for line in lines]


# ------------------------------------------------------------------------------------- sampling spec


def test_band_standardisation_round_trips_and_data_prediction_gives_the_straight_velocity():
    bands = [dwt3d(torch.randn(1, 1, 8, 8, 8) * 3 + 1)[0] for _ in range(3)]
    spec = SamplingSpec(prediction="data", **band_standardisation(bands))
    batch = torch.stack(bands)
    standard = spec.to_model_units(batch)
    assert standard.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-5
    assert (standard.std(dim=(0, 2, 3, 4), unbiased=False) - 1).abs().max() < 1e-4
    torch.testing.assert_close(spec.from_model_units(standard), batch)
    # The velocity a perfect data prediction stands for is the straight path's x1 - x0.
    x0, x1, t = torch.randn(3, 8, 4, 4, 4), torch.randn(3, 8, 4, 4, 4), torch.tensor([0.1, 0.5, 0.9])
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * x1
    torch.testing.assert_close(spec.velocity(x1, x_t, t), x1 - x0)
    predicted, target = prediction_and_target(x1, x1, x_t, t, x1 - x0, "data", "velocity")
    torch.testing.assert_close(predicted, target)
    assert SamplingSpec.from_dict(spec.to_dict(), "test") == spec


def test_preconditioned_data_prediction_passes_x_t_through_near_the_clean_end():
    x0, x1 = torch.randn(4, 8, 4, 4, 4), torch.randn(4, 8, 4, 4, 4)
    t = torch.tensor([0.0, 0.3, 0.7, 0.99])
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * x1
    # A network that outputs nothing predicts the best linear guess of x1 from x_t: x_t itself at t = 1 ...
    guess = clean_data(torch.zeros_like(x_t), x_t, t, "preconditioned")
    torch.testing.assert_close(guess[3], x_t[3] * 0.99 / (0.99**2 + 0.01**2))
    assert guess[0].abs().max() == 0
    # ... whose error is smaller than predicting the mean (0), as in the data parameterisation.
    assert ((guess - x1) ** 2)[2:].mean() < 0.5 * (x1**2)[2:].mean()
    # The output it takes to predict x1 exactly, and the straight velocity that stands for.
    norm = t**2 + (1 - t) ** 2
    ideal = (x1 - (t / norm).view(-1, 1, 1, 1, 1) * x_t) / ((1 - t) / norm.sqrt()).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(clean_data(ideal, x_t, t, "preconditioned"), x1)
    spec = SamplingSpec(prediction="preconditioned")
    torch.testing.assert_close(spec.velocity(ideal, x_t, t)[:3], (x1 - x0)[:3], rtol=1e-4, atol=1e-4)
    predicted, target = prediction_and_target(ideal, x1, x_t, t, x1 - x0, "preconditioned", "data")
    torch.testing.assert_close(predicted, target)


def test_min_snr_loss_weighs_the_data_error_by_the_capped_signal_to_noise_ratio():
    x0, x1 = torch.randn(4, 8, 4, 4, 4), torch.randn(4, 8, 4, 4, 4)
    t = torch.tensor([0.2, 0.5, 0.8, 0.99])
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * x1
    guess = torch.zeros_like(x1)
    predicted, target = prediction_and_target(guess, x1, x_t, t, x1 - x0, "data", "min_snr")
    weighted = ((predicted - target) ** 2).mean(dim=(1, 2, 3, 4))
    plain = ((guess - x1) ** 2).mean(dim=(1, 2, 3, 4))
    # SNR = (t / (1 - t))^2: 1/16 and 1 below the cap of 5, 16 and 9801 above it (weight 1, as the data loss).
    torch.testing.assert_close(weighted / plain, torch.tensor([1 / 16 / 5, 1 / 5, 1.0, 1.0]))
    # A velocity-predicting network is weighed the same way, through the data its velocity stands for.
    velocity = (guess - x_t) / (1 - t.view(-1, 1, 1, 1, 1))
    predicted, target = prediction_and_target(velocity, x1, x_t, t, x1 - x0, "velocity", "min_snr")
    torch.testing.assert_close(((predicted - target) ** 2).mean(dim=(1, 2, 3, 4)), weighted)


def test_per_voxel_standardisation_round_trips_and_keeps_errors_small_where_the_training_set_agrees():
    generator = torch.Generator().manual_seed(0)
    volumes = torch.zeros(40, 1, 8, 8, 8)
    # Only the central block varies from volume to volume: the rest is a constant background, like the space
    # around registered brains.
    volumes[:, :, 2:6, 2:6, 2:6] = torch.randn(40, 1, 4, 4, 4, generator=generator) * 2 + 1
    bands = [dwt3d(volume[None])[0] for volume in volumes]
    units = band_standardisation(bands, "voxel", voxel_std_floor=0.1)
    spec = SamplingSpec(prediction="data", **units)
    assert spec.standardise_per == "voxel" and spec.voxel_mean.shape == (8, 4, 4, 4)
    batch = torch.stack(bands)
    standard = spec.to_model_units(batch)
    varying = units["voxel_std"] > 0.1 * torch.tensor(units["band_std"]).view(-1, 1, 1, 1) + 1e-6
    assert standard.mean(dim=0)[varying].abs().max() < 1e-4
    assert (standard.std(dim=0, unbiased=False)[varying] - 1).abs().max() < 1e-3
    torch.testing.assert_close(spec.from_model_units(standard), batch)
    # The same error in the network's units: per voxel it leaves the background nearly untouched, per subband not.
    error = torch.ones(1, 8, 4, 4, 4)
    per_subband = SamplingSpec(prediction="data", **band_standardisation(bands))
    corner = (slice(None), slice(None), 0, 0, 0)
    background_change = lambda s: (s.from_model_units(s.to_model_units(batch[:1]) + error) - batch[:1])[corner].abs()  # noqa: E731
    assert background_change(spec).max() < 0.2 * background_change(per_subband).max()
    # The record goes into the config; the maps only with the checkpoint's tensors.
    record = spec.to_dict()
    assert record["standardise_per"] == "voxel" and "voxel_mean" not in record
    restored = SamplingSpec.from_dict(record, "test", spec.tensors())
    torch.testing.assert_close(restored.from_model_units(standard), batch)
    with pytest.raises(FlowletError, match="lacks \\['voxel_mean', 'voxel_std'\\]"):
        SamplingSpec.from_dict(record, "model.pth", {})
    with pytest.raises(FlowletError, match="sample from the checkpoint, not from config.json"):
        SamplingSpec.from_dict(record, "config.json").to_model_units(batch)


def test_per_voxel_units_are_saved_with_the_weights_and_applied_by_generation(brains, tmp_path):
    import json

    run = tmp_path / "run"
    recipe = dict(prediction="data", loss_space="data", standardise_bands=True, standardise_per="voxel")
    train(options(brains, run, steps=3, flip_probability=0.5, **recipe), preset_config("smoke"), threads=1)
    for name in ("checkpoint_last.pth", "checkpoint_best.pth"):
        stored = read_checkpoint(run / name)
        assert stored["config"]["sampling"]["standardise_per"] == "voxel"
        assert stored[TENSORS_KEY]["voxel_std"].shape == (8, *small_config_grid(stored))
    assert "voxel_mean" not in json.loads((run / "config.json").read_text())["sampling"]
    generator = load_generator(run / "checkpoint_last.pth")
    torch.testing.assert_close(
        generator.spec.voxel_mean, read_checkpoint(run / "checkpoint_last.pth")[TENSORS_KEY]["voxel_mean"]
    )
    conditions = {"Age": torch.tensor([[0.5]])}
    recorded = sample_batch(generator, conditions, [3], num_steps=2)
    as_subband = dataclasses.replace(generator, spec=dataclasses.replace(generator.spec, standardise_per="subband"))
    assert not np.allclose(recorded, sample_batch(as_subband, conditions, [3], num_steps=2))
    # Resuming keeps the maps the run started with.
    train(options(brains, run, steps=4, flip_probability=0.5, **recipe), preset_config("smoke"), threads=1)
    torch.testing.assert_close(
        read_checkpoint(run / "checkpoint_last.pth")[TENSORS_KEY]["voxel_std"], generator.spec.voxel_std
    )
    # A checkpoint that lost its maps is refused by name.
    payload = read_checkpoint(run / "checkpoint_last.pth")
    del payload[TENSORS_KEY]
    torch.save(payload, tmp_path / "stripped.pth")
    with pytest.raises(FlowletError, match="stripped.pth: trained on per-voxel standardised bands"):
        load_generator(tmp_path / "stripped.pth", condition_ranges_path=run / "condition_ranges.json")


def small_config_grid(checkpoint: dict) -> tuple[int, ...]:
    return tuple(size // 2 for size in checkpoint["config"]["model_input_size"])


def test_training_records_the_spec_and_generation_applies_it(brains, tmp_path):
    run = tmp_path / "run"
    train(
        options(brains, run, prediction="data", loss_space="data", standardise_bands=True, flip_probability=0.5),
        preset_config("smoke"),
        threads=1,
    )
    stored = read_checkpoint(run / "checkpoint_last.pth")["config"]["sampling"]
    assert stored["prediction"] == "data" and stored["downsample"] == 4
    assert stored["full_resolution_size"] == [91, 109, 91] and len(stored["band_mean"]) == 8
    generator = load_generator(run / "checkpoint_last.pth")
    assert generator.spec.standardised and generator.spec.prediction == "data"
    conditions = {"Age": torch.tensor([[0.5]])}
    recorded = sample_batch(generator, conditions, [3], num_steps=4)
    # The same network read as if it predicted raw-band velocities (what ignoring the record would do) differs.
    ignored = dataclasses.replace(generator, spec=SamplingSpec(downsample=4, full_resolution_size=(91, 109, 91)))
    assert not np.allclose(recorded, sample_batch(ignored, conditions, [3], num_steps=4))
    # And the recorded path is the standardised data-prediction path, computed here by hand.
    noise = torch.randn((8, *generator.config.wavelet_grid), generator=torch.Generator().manual_seed(3))[None]
    x = noise
    with torch.no_grad():
        for step in range(4):
            t = torch.full((1,), step / 4)
            x = x + 0.25 * (generator.model(x, t, conditions) - x) / (1 - t.view(-1, 1, 1, 1, 1))
    by_hand = generator.spec.from_model_units(x)
    from flowlet.generative.data import upsample_to_grid
    from flowlet.generative.wavelets import center_crop, idwt3d

    volume = upsample_to_grid(center_crop(idwt3d(by_hand).clamp(-1, 1), (23, 28, 23)), 4, (91, 109, 91))[:, 0].numpy()
    np.testing.assert_allclose(recorded, volume, atol=1e-5)


def test_a_checkpoint_without_a_record_samples_as_the_reference_with_one_log_line(reference_checkpoint_dir, caplog):
    with caplog.at_level(logging.INFO, logger="flowlet.generative.sampling_spec"):
        generator = load_generator(
            reference_checkpoint_dir / "tiny_slim.pth",
            condition_ranges_path=reference_checkpoint_dir / "condition_ranges.json",
        )
    assert generator.spec == SamplingSpec()
    said = [record.getMessage() for record in caplog.records if "sampling as the reference does" in record.getMessage()]
    assert len(said) == 1
    assert sampling_spec({"downsample": 2, "full_resolution_size": [91, 109, 91]}).downsample == 2


# ---------------------------------------------------------------------------------------- fine-tuning


@pytest.mark.slow
def test_fine_tuning_continues_from_the_pretrained_loss_level(brains, tmp_path):
    recipe = dict(prediction="data", loss_space="data", standardise_bands=True)
    pretrained = tmp_path / "pretrained"
    train(options(brains, pretrained, steps=60, **recipe), preset_config("smoke"), threads=1)
    scratch = loss_rows(pretrained)
    tuned = tmp_path / "tuned"
    train(
        options(brains, tuned, steps=10, seed=7, init_checkpoint=pretrained / "checkpoint_last.pth", **recipe),
        preset_config("smoke"),
        threads=1,
    )
    continued = loss_rows(tuned)
    fresh = tmp_path / "fresh"
    train(options(brains, fresh, steps=10, seed=7, **recipe), preset_config("smoke"), threads=1)
    # From pretrained weights the first steps sit where pretraining ended, well below a fresh start's.
    assert continued[0] < 0.6 * loss_rows(fresh)[0]
    assert continued[0] < 1.3 * np.mean(scratch[-3:])
    stored = read_checkpoint(tuned / "checkpoint_last.pth")
    assert stored["step"] == 10 and stored["training_options"]["init_checkpoint"].endswith("checkpoint_last.pth")


def test_fine_tuning_from_the_released_reference_checkpoint_loads_its_weights(
    brains, reference_checkpoint_dir, tmp_path
):
    run = tmp_path / "from_reference"
    train(
        options(
            brains,
            run,
            steps=1,
            lr=1e-12,
            min_lr=1e-12,
            ema_decay=0.0,
            init_checkpoint=reference_checkpoint_dir / "tiny_slim.pth",
        ),
        preset_config("tiny"),
        threads=1,
    )
    reference = read_checkpoint(reference_checkpoint_dir / "tiny_slim.pth")["model_state_dict"]
    tuned = read_checkpoint(run / "checkpoint_last.pth")["flow_net_state_dict"]
    for name, value in reference.items():
        torch.testing.assert_close(tuned[name], value, atol=1e-6, rtol=0)
    # A reference checkpoint predicts velocities on raw bands, and fine-tuning keeps that.
    assert sampling_spec(read_checkpoint(run / "checkpoint_last.pth")["config"]) == SamplingSpec(
        downsample=4, full_resolution_size=(91, 109, 91)
    )


@pytest.mark.parametrize("problem", ["missing", "corrupt", "pickled", "architecture"])
def test_a_bad_init_checkpoint_is_an_error_naming_the_file_and_reason(
    brains, reference_checkpoint_dir, tmp_path, problem
):
    path = tmp_path / f"{problem}.pth"
    if problem == "corrupt":
        whole = (reference_checkpoint_dir / "tiny_slim.pth").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif problem == "pickled":
        torch.save({"model_state_dict": {}, "payload": Path("arbitrary-object")}, path)
    elif problem == "architecture":
        path = reference_checkpoint_dir / "tiny_slim.pth"
    expected = {
        "missing": "does not exist",
        "corrupt": "unreadable or corrupt",
        "pickled": "refusing to load",
        "architecture": r"does not match the network to train.*shape mismatches",
    }[problem]
    with pytest.raises(FlowletError, match=expected):
        train(options(brains, tmp_path / "run", steps=1, init_checkpoint=path), preset_config("smoke"), threads=1)


def test_a_mismatched_checkpoint_lists_missing_and_unexpected_keys(brains, reference_checkpoint_dir, tmp_path):
    state = read_checkpoint(reference_checkpoint_dir / "tiny_slim.pth")["model_state_dict"]
    state = {("renamed." + name if i < 3 else name): value for i, (name, value) in enumerate(state.items())}
    path = tmp_path / "renamed.pth"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(FlowletError, match=r"3 missing keys: .*3 unexpected keys: renamed\."):
        train(options(brains, tmp_path / "run", steps=1, init_checkpoint=path), preset_config("tiny"), threads=1)


# --------------------------------------------------------------------------------------------- presets


def test_the_cpu_preset_carries_its_recipe_and_flags_override_it(brains, tmp_path):
    import argparse

    from flowlet.generative.train_cli import build_parser, options_from_args

    parser = argparse.ArgumentParser()
    build_parser(parser)
    recipe = preset_training("cpu")
    chosen = options_from_args(parser.parse_args([str(brains), "--output-dir", str(tmp_path), "--preset", "cpu"]))
    assert (chosen.prediction, chosen.standardise_bands, chosen.steps) == ("data", True, recipe["steps"])
    overridden = options_from_args(
        parser.parse_args(
            [str(brains), "--output-dir", str(tmp_path), "--preset", "cpu", "--steps", "7", "--no-standardise-bands"]
        )
    )
    assert (overridden.steps, overridden.standardise_bands, overridden.prediction) == (7, False, "data")
    reference = options_from_args(parser.parse_args([str(brains), "--output-dir", str(tmp_path), "--preset", "base"]))
    assert reference == TrainingOptions(table=brains, output_dir=tmp_path)
    assert "training" not in preset_config("cpu").extra


# ------------------------------------------------------------------------------------------ baseline


def test_the_linear_baseline_recovers_a_known_age_effect(tmp_path):
    rng = np.random.default_rng(0)
    shape = (10, 12, 10)
    slope_map = rng.normal(0, 0.005, shape).astype(np.float32)
    base = rng.normal(0, 0.1, shape).astype(np.float32)
    ages = rng.uniform(20, 80, 60)
    images = [base + slope_map * (age - 50) + rng.normal(0, 0.02, shape).astype(np.float32) for age in ages]
    model = LinearBaseline.fit(images, ages, downsample=1, full_resolution_size=shape)
    assert np.corrcoef(model.slope.ravel(), slope_map.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(model.slope, slope_map, atol=0.001)
    young, old = model.sample([25.0] * 40, range(40)), model.sample([75.0] * 40, range(40, 80))
    np.testing.assert_allclose(old.mean(0) - young.mean(0), 50 * slope_map, atol=0.05)
    # Residuals are drawn with the training residuals' spread, and each seed gives its own brain.
    assert 0.01 < young.std(axis=0).mean() < 0.03
    np.testing.assert_array_equal(model.sample([30.0], [5]), model.sample([30.0], [5]))
    model.save(tmp_path / "model.npz")
    np.testing.assert_array_equal(
        LinearBaseline.load(tmp_path / "model.npz").sample([30.0], [5]), model.sample([30.0], [5])
    )


def test_the_linear_baseline_refuses_too_few_images_and_bad_files(tmp_path):
    with pytest.raises(FlowletError, match="needs at least 4 training images"):
        LinearBaseline.fit([np.zeros((4, 4, 4))] * 3, [20, 30, 40], 1, (4, 4, 4))
    with pytest.raises(FlowletError, match="all 5 training images have age 30"):
        LinearBaseline.fit([np.zeros((4, 4, 4))] * 5, [30] * 5, 1, (4, 4, 4))
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(FlowletError, match="unreadable or not one"):
        LinearBaseline.load(tmp_path / "bad.npz")
    with pytest.raises(FlowletError, match="does not exist"):
        LinearBaseline.load(tmp_path / "missing.npz")


def test_baseline_cli_fits_and_generates_with_qc_metrics(brains, tmp_path, capsys):
    model = tmp_path / "linear.npz"
    assert main(["fit-baseline", str(brains), "--downsample", "2", "--output", str(model)]) == 0
    out = tmp_path / "samples"
    assert (
        main(
            [
                "generate",
                "--backend",
                "linear",
                "--checkpoint-path",
                str(model),
                "--generation-conditions",
                "Age=30",
                "Age=60",
                "--num-synthetic",
                "2",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    manifest = (out / "manifest.tsv").read_text().splitlines()
    assert len(manifest) == 5 and "dice_template" in manifest[0]
    three = tmp_path / "three.tsv"
    three.write_text("\n".join(brains.read_text().splitlines()[:4]) + "\n")
    assert main(["fit-baseline", str(three), "--output", str(tmp_path / "few.npz")]) == 1
    assert "needs at least 4 training images" in capsys.readouterr().err


def test_config_json_carries_the_same_record_as_the_checkpoint(brains, tmp_path):
    import json

    run = tmp_path / "run"
    train(options(brains, run, steps=2, standardise_bands=True), preset_config("smoke"), threads=1)
    from_json = json.loads((run / "config.json").read_text())["sampling"]
    assert from_json == read_checkpoint(run / "checkpoint_last.pth")["config"]["sampling"]
    assert from_json["band_std"] is not None and from_json["prediction"] == "velocity"


@pytest.mark.slow
def test_the_gpu_check_runs_its_tiny_configuration_on_a_cpu():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    result = subprocess.run(
        [sys.executable, str(script), "--train-steps", "4", "--samples", "2", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device cpu (CPU)") and "dtype float32" in lines[0]
    assert any("training step:" in line and "batch 2" in line for line in lines)
    assert any("QC pass rate" in line and "4 steps" in line for line in lines)


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    """Twelve template brains, each smoothly and individually warped, with ventricles and contrast that change with
    age: a cohort (not one brain) a generator must learn as a distribution."""
    from scipy import ndimage

    work = tmp_path_factory.mktemp("cohort")
    data = np.asarray(template_t1(2).dataobj, dtype=np.float32)
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    grid = np.indices(data.shape, dtype=np.float32)
    rng = np.random.default_rng(11)
    rows = ["image\tage\tsplit"]
    for index, age in enumerate(np.linspace(22, 80, 12)):
        displacement = [
            ndimage.gaussian_filter(rng.normal(0, 1, data.shape[:1] + data.shape[1:]).astype(np.float32), 8) * 200
            for _ in range(3)
        ]
        warped = ndimage.map_coordinates(data, grid + np.stack(displacement), order=1)
        brain = ndimage.map_coordinates(mask.astype(np.float32), grid + np.stack(displacement), order=1) > 0.5
        image = np.where(brain, (warped - warped[brain].mean()) / warped[brain].std() * (1 + (age - 50) / 150), 0.0)
        path = save_nifti(image.astype(np.float32), mni_grid(2)[1], work / f"sub-{index:02d}.nii.gz")
        rows.append(f"{path}\t{age:.1f}\t{'train' if index % 4 else 'test'}")
    (work / "split.tsv").write_text("\n".join(rows) + "\n")
    return work / "split.tsv"


@pytest.mark.slow
def test_the_cpu_recipe_learns_a_small_cohort_whose_samples_pass_qc(small_cohort, tmp_path):
    """A few minutes of the cpu preset's recipe (at 8 mm here) give samples with the cohort's anatomy."""
    import pandas as pd

    from flowlet.generative.generate import generate, requests_from_table
    from flowlet.generative.synthetic_qc import flag_outliers, read_reference, reference_metrics

    recipe = {
        **preset_training("cpu"),
        "steps": 400,
        "downsample": 4,
        "val_split": 0.0,
        "log_every": 50,
        "checkpoint_every": 1000,
        "val_every": 1000,
        "device": "cpu",
    }
    train(TrainingOptions(table=small_cohort, output_dir=tmp_path / "run", **recipe), preset_config("smoke"), threads=2)
    generator = load_generator(tmp_path / "run" / "checkpoint_last.pth")
    ages = tmp_path / "ages.tsv"
    ages.write_text(
        "age\tfile\n" + "".join(f"{age:.1f}\ts{i}.nii.gz\n" for i, age in enumerate(np.linspace(25, 75, 10)))
    )
    manifest = generate(
        generator, requests_from_table(ages, 5, generator.config), tmp_path / "samples", 20, batch_size=5
    )
    images = [Path(line.split("\t")[0]) for line in small_cohort.read_text().splitlines()[1:] if line.endswith("train")]
    reference_metrics(images, 4).to_csv(tmp_path / "reference.tsv", sep="\t", index=False)
    reference = read_reference(tmp_path / "reference.tsv")
    verdicts = flag_outliers(pd.read_csv(manifest, sep="\t"), reference, 3.0)
    shown = verdicts[["dice_template", "ncc_template", "qc_reasons"]]
    # Anatomy: most samples correlate with the template as the cohort's brains do (NCC within the QC gate).
    assert (~verdicts["qc_reasons"].str.contains("ncc_template")).mean() >= 0.7, shown
    # Outline: every brain mask is within 0.05 Dice of the cohort's. QC's Dice limit is tighter still, and a noisy
    # background around the brain still fails it for most samples after 400 steps (README: the same on IXI).
    assert (verdicts["dice_template"] > reference["dice_template"].median() - 0.05).all(), shown
    assert (~verdicts["qc_outlier"]).any(), shown
