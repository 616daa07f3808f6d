"""Training of the wavelet flow-matching generator: data loading, learning on a real brain, exact resumption."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1
from flowlet.errors import FlowletError
from flowlet.generative import precision
from flowlet.generative.checkpoint import read_checkpoint
from flowlet.generative.conditions import normalise_conditions
from flowlet.generative.data import (
    Augmentation,
    deform_volume,
    downsample_volume,
    percentile_to_unit_range,
    read_training_table,
    training_augmentation,
    upsample_to_grid,
)
from flowlet.generative.ema import ExponentialMovingAverage
from flowlet.generative.generate import load_generator, sample_batch
from flowlet.generative.schedule import BatchSchedule, learning_rate_factor
from flowlet.generative.train import train
from flowlet.generative.train_cli import architecture_from_args, build_parser
from flowlet.generative.training_options import TrainingOptions
from flowlet.generative.training_setup import build_training
from flowlet.generative.training_state import changed_settings, recorded_options
from flowlet.generative.unet import preset_config

IXI_SUBJECT = "sub-IXI039HH1261"
IXI_AGE = 23.35


def preprocess_ixi_t1w(t1w: Path, work: Path) -> Path:
    """A minimal version of the preprocessing the study uses: skull strip, N4, affine to MNI, z-score in the mask."""
    import ants
    from deepbet import run_bet

    brain, head_mask_path = work / "brain.nii.gz", work / "head_mask.nii.gz"
    run_bet([str(t1w)], [str(brain)], [str(head_mask_path)], no_gpu=True)
    head = ants.image_read(str(t1w))
    head_mask = ants.image_read(str(head_mask_path))
    corrected = ants.n4_bias_field_correction(head, mask=head_mask, shrink_factor=4)
    template_path = work / "template.nii.gz"
    template_t1(2).to_filename(str(template_path))
    registration = ants.registration(
        fixed=ants.image_read(str(template_path)), moving=corrected * head_mask, type_of_transform="Affine"
    )
    warped = registration["warpedmovout"].numpy()
    brain_mask = np.asarray(template_brain_mask(2).dataobj) > 0
    inside = warped[brain_mask]
    zscored = np.where(brain_mask, (warped - inside.mean()) / inside.std(), 0.0)
    return save_nifti(zscored, mni_grid(2)[1], work / f"{IXI_SUBJECT}_desc-preproc_T1w.nii.gz")


@pytest.fixture(scope="session")
def ixi_preprocessed(ixi_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ixi_preproc")
    return preprocess_ixi_t1w(ixi_dir / IXI_SUBJECT / "anat" / f"{IXI_SUBJECT}_T1w.nii.gz", work)


def write_table(path: Path, rows: list[tuple[Path, float]]) -> Path:
    path.write_text("image\tage\n" + "".join(f"{image}\t{age}\n" for image, age in rows))
    return path


def read_loss_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


# ---------------------------------------------------------------------------------------------- data


def test_percentile_mapping_clips_to_the_volumes_own_percentiles():
    volume = np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32)
    volume[0, 0, 0] = 1000.0  # an outlier must not set the scale
    mapped = percentile_to_unit_range(volume)
    low, high = np.percentile(volume, (0.5, 99.5))
    assert mapped.min() == pytest.approx(-1.0) and mapped.max() == pytest.approx(1.0)
    inside = (volume > low) & (volume < high)
    np.testing.assert_allclose(mapped[inside], (volume[inside] - low) / (high - low) * 2 - 1, atol=1e-5)


def test_downsampling_averages_blocks_and_upsampling_returns_to_the_grid():
    volume = np.random.default_rng(1).normal(size=(91, 109, 91)).astype(np.float32)
    coarse = downsample_volume(volume, 2)
    assert coarse.shape == (46, 55, 46)
    assert coarse[3, 4, 5] == pytest.approx(volume[6:8, 8:10, 10:12].mean(), abs=1e-6)
    # Edge blocks replicate the last plane: block 45 along D averages plane 90 with itself.
    assert coarse[45, 0, 0] == pytest.approx(volume[90, 0:2, 0:2].mean(), abs=1e-6)
    smooth = np.fromfunction(lambda d, h, w: 0.1 * d + 0.05 * h - 0.02 * w, (91, 109, 91)).astype(np.float32)
    back = upsample_to_grid(torch.from_numpy(downsample_volume(smooth, 2))[None, None], 2, smooth.shape)[0, 0]
    assert tuple(back.shape) == (91, 109, 91)
    # A linear ramp survives block-averaging and trilinear upsampling away from the clamped border.
    np.testing.assert_allclose(back[2:-2, 2:-2, 2:-2].numpy(), smooth[2:-2, 2:-2, 2:-2], atol=1e-4)


def test_augmentation_is_reproducible_for_a_seed_and_varies_between_seeds():
    volume = percentile_to_unit_range(np.asarray(template_t1(2).dataobj, dtype=np.float32))[::2, ::2, ::2].copy()
    augment = Augmentation(rotation_probability=1.0, intensity_probability=1.0, noise_probability=1.0)
    first = augment(volume, np.random.default_rng(7))
    np.testing.assert_array_equal(first, augment(volume, np.random.default_rng(7)))
    assert not np.allclose(first, augment(volume, np.random.default_rng(8)))
    # Rotation by at most 5 degrees, scaling by at most 20 %, noise 0.02: still the same image.
    assert np.corrcoef(first.ravel(), volume.ravel())[0, 1] > 0.85
    untouched = Augmentation(rotation_probability=0.0, intensity_probability=0.0, noise_probability=0.0)
    np.testing.assert_array_equal(untouched(volume, np.random.default_rng(7)), volume)


def test_flips_without_the_reference_augmentation_only_mirror_and_fall_on_the_same_draws():
    # A left-right ramp: mirroring reverses it, while rotation, rescaling and noise keep its direction.
    volume = np.broadcast_to(np.linspace(-1, 1, 24, dtype=np.float32)[:, None, None], (24, 28, 24)).copy()
    mirrored = np.ascontiguousarray(volume[::-1])
    assert training_augmentation(False, 0.0) is None
    flips_only, reference = training_augmentation(False, 0.5), training_augmentation(True, 0.5)
    flipped = []
    for seed in range(12):
        out = flips_only(volume, np.random.default_rng(seed), mirrored)
        assert np.array_equal(out, volume) or np.array_equal(out, mirrored)
        flipped.append(np.array_equal(out, mirrored))
        # The reference's draws are made either way, so the same seeds mirror with it on.
        with_reference = reference(volume, np.random.default_rng(seed), mirrored)
        assert (np.corrcoef(with_reference.ravel(), volume.ravel())[0, 1] < 0) == flipped[-1]
    assert 0 < sum(flipped) < len(flipped)


def test_elastic_deformation_moves_voxels_by_its_sd_and_keeps_the_other_draws():
    # A "brain" whose intensity ramps along x on a flat background: deep inside it, the warped value minus the
    # original is the displacement along x (cubic splines are exact on a ramp).
    volume = np.zeros((32, 36, 32), dtype=np.float32)
    volume[2:-2, 2:-2, 2:-2] = 10.0 + np.arange(28, dtype=np.float32)[:, None, None]
    deformed = deform_volume(volume, 0.5, 4.0, seed=3)
    displacement = (deformed - volume)[8:-8, 8:-8, 8:-8]
    assert 0.3 < displacement.std() < 0.6 and abs(displacement.mean()) < 0.15
    # Smooth: neighbours move together, unlike independent noise.
    assert np.corrcoef(displacement[:-1].ravel(), displacement[1:].ravel())[0, 1] > 0.8
    np.testing.assert_array_equal(deformed, deform_volume(volume, 0.5, 4.0, seed=3))
    # The outline stays: the background and the brain's edge keep their values.
    edge = np.zeros(volume.shape, dtype=bool)
    edge[1:-1, 1:-1, 1:-1] = True
    edge[3:-3, 3:-3, 3:-3] = False
    np.testing.assert_allclose(deformed[edge], volume[edge], atol=1e-4)
    brain = percentile_to_unit_range(np.asarray(template_t1(2).dataobj, dtype=np.float32))[::4, ::4, ::4].copy()
    deformed = training_augmentation(False, 0.0, elastic_std=0.4)(brain, np.random.default_rng(5))
    assert 0.8 < np.corrcoef(deformed.ravel(), brain.ravel())[0, 1] < 0.999
    # Drawn last: the flips fall on the same volumes with or without it, then the volume is warped.
    flips, flips_and_warps = training_augmentation(False, 0.5), training_augmentation(False, 0.5, elastic_std=0.4)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        expected = deform_volume(flips(brain, rng), 0.4, 4.0, int(rng.integers(2**63)))
        np.testing.assert_array_equal(flips_and_warps(brain, np.random.default_rng(seed)), expected)


def test_training_table_parses_sex_codes_and_reports_bad_rows(tmp_path):
    table = tmp_path / "train.tsv"
    table.write_text("image\tage\tsex\na.nii.gz\t30\tM\nsub/b.nii.gz\t40.5\t0\n")
    (tmp_path / "sub").mkdir()
    for name in ("a.nii.gz", "sub/b.nii.gz"):
        (tmp_path / name).touch()
    records = read_training_table(table, ["Age", "Sex"])
    assert records[0].image == tmp_path / "a.nii.gz"
    assert [r.conditions for r in records] == [{"Age": 30.0, "Sex": 1.0}, {"Age": 40.5, "Sex": 0.0}]
    table.write_text("image\tage\tsex\na.nii.gz\tforty\tM\n")
    with pytest.raises(FlowletError, match="line 2.*age must be a number"):
        read_training_table(table, ["Age"])
    table.write_text("image\tage\tsex\na.nii.gz\t40\tX\n")
    with pytest.raises(FlowletError, match="sex must be 0/1 or M/F"):
        read_training_table(table, ["Age", "Sex"])
    table.write_text("image\tsex\na.nii.gz\tM\n")
    with pytest.raises(FlowletError, match="lacks columns \\['age'\\]"):
        read_training_table(table, ["Age"])


def test_batch_schedule_visits_every_volume_once_per_epoch_and_shards_ranks():
    from flowlet.generative.distributed import Distributed

    schedule = BatchSchedule(num_items=5, batch_size=2, seed=3)
    first_epoch = [index for step in (1, 2) for index, _ in schedule.items(step)] + [schedule.items(3)[0][0]]
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]
    assert schedule.epoch(5) == 2.0
    ranks = [BatchSchedule(5, 1, 3, Distributed(world_size=2, rank=r)) for r in (0, 1)]
    # Two ranks with batch 1 consume the same global stream as one process with batch 2.
    for step in (1, 2, 3, 4):
        assert [ranks[0].items(step)[0], ranks[1].items(step)[0]] == schedule.items(step)


def test_learning_rate_warms_up_then_decays_to_the_minimum():
    factors = [learning_rate_factor(k, 10, 100, 0.01) for k in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert learning_rate_factor(100, 10, 100, 0.01) == pytest.approx(0.01)


def test_ema_follows_the_weights_and_swaps_back():
    model = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model, decay=0.5)
    original = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: effective decay min(0.5, 1/10) = 0.1
    np.testing.assert_allclose(ema.state_dict()["weight"], original + 0.9, atol=1e-6)
    with ema.averaged_weights(model):
        np.testing.assert_allclose(model.weight.detach(), original + 0.9, atol=1e-6)
    np.testing.assert_allclose(model.weight.detach(), original + 1.0)


def test_cli_overrides_the_preset_architecture():
    import argparse

    parser = argparse.ArgumentParser()
    build_parser(parser)
    args = parser.parse_args(
        [
            "t.tsv",
            "--output-dir",
            "out",
            "--preset",
            "tiny",
            "--model-channels",
            "16",
            "--channel-mult",
            "1",
            "2",
            "4",
            "--attention-res",
            "--no-use-cross-attn",
            "--condition-vars",
            "Age",
            "Sex",
            "--grad-checkpointing",
        ]
    )
    config = architecture_from_args(args)
    assert config.model_channels == 16 and config.channel_mult == (1, 2, 4)
    assert config.attention_resolutions == () and not config.use_cross_attn and config.use_checkpointing
    assert config.condition_vars == ("Age", "Sex")
    assert preset_config("tiny").model_channels == 32  # the preset itself is untouched


# -------------------------------------------------------------------------------------------- training


def training_options(table: Path, output_dir: Path, **overrides) -> TrainingOptions:
    settings = dict(
        table=table,
        output_dir=output_dir,
        batch_size=1,
        lr=3e-3,
        warmup_steps=10,
        min_lr=1e-5,
        downsample=4,
        val_split=0.0,
        log_every=10,
        checkpoint_every=100,
        val_every=100,
        ema_decay=0.99,
        device="cpu",
    )
    settings.update(overrides)
    return TrainingOptions(**settings)


@pytest.fixture(scope="module")
def reference_ranges(reference_checkpoint_dir) -> Path:
    return reference_checkpoint_dir / "condition_ranges.json"


@pytest.mark.slow
def test_tiny_generator_learns_one_real_brain_and_samples_it(ixi_preprocessed, reference_ranges, tmp_path):
    """The whole path on a real preprocessed IXI brain: padding, DWT, flow, training, Euler sampling, inverse DWT,
    crop and upsampling back to the MNI grid. Within 300 steps the loss falls tenfold and 10-step samples reproduce
    the brain.

    With the reference's settings (zero output layer, AdamW beta2 0.999, cosine decay) this network first fits the
    mean image and sits there for 50-250 steps, depending on the seed, before it learns to use its noisy input:
    at step 300 the loss has fallen 2-8x. A random output layer, beta2 0.99, a constant learning rate after a
    50-step warm-up, stratified times and clipping at 0.5 reach 10-12x and correlations of 0.93-0.94 at 300 steps
    for seeds 1, 2 and 42 (measured on this brain through the study's preprocessing).
    """
    table = write_table(tmp_path / "one.tsv", [(ixi_preprocessed, IXI_AGE)])
    output = tmp_path / "run"
    options = training_options(
        table,
        output,
        steps=300,
        batch_size=4,
        lr=2e-3,
        min_lr=2e-3,
        warmup_steps=50,
        adam_beta2=0.99,
        grad_clip_norm=0.5,
        time_sampling="stratified",
        output_init="random",
        ema_decay=0.95,
        augment=False,
        condition_ranges=reference_ranges,
        val_every=300,
        checkpoint_every=300,
    )
    train(options, preset_config("smoke"), threads=2)

    rows = read_loss_rows(output / "loss.tsv")
    # Interval means of steps 1-10 and of the last 30 steps.
    first, last = float(rows[0]["train_loss"]), np.mean([float(row["train_loss"]) for row in rows[-3:]])
    assert last < first / 10, f"training loss only fell from {first:.4g} to {last:.4g}"
    for name in ("checkpoint_last.pth", "checkpoint_best.pth", "config.json", "condition_ranges.json", "loss.png"):
        assert (output / name).is_file(), name
    config = json.loads((output / "config.json").read_text())
    assert config["unet_channel_mult"] == "1,2" and config["flow_type"] == "rectified"
    assert config["sampling"]["downsample"] == 4 and config["sampling"]["full_resolution_size"] == [91, 109, 91]
    assert config["save_size"] == [23, 28, 23] and config["model_input_size"] == [24, 28, 24]
    assert read_checkpoint(output / "checkpoint_last.pth")["step"] == 300

    generator = load_generator(output / "checkpoint_best.pth")
    assert generator.uses_ema
    conditions = normalise_conditions({"Age": [IXI_AGE, IXI_AGE]}, generator.condition_ranges)
    samples = sample_batch(generator, conditions, seeds=[11, 12], num_steps=10)
    assert samples.shape == (2, 91, 109, 91)
    real = percentile_to_unit_range(np.asarray(nib.load(ixi_preprocessed).dataobj, dtype=np.float32))
    # The model works at 8 mm: compare with the brain as it sees it (block-averaged, upsampled back).
    seen = upsample_to_grid(torch.from_numpy(downsample_volume(real, 4))[None, None], 4, real.shape)[0, 0].numpy()
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    seen_correlations = [np.corrcoef(sample[mask], seen[mask])[0, 1] for sample in samples]
    real_correlations = [np.corrcoef(sample[mask], real[mask])[0, 1] for sample in samples]
    print(
        f"training loss {first:.4g} -> {last:.4g} ({first / last:.1f}x); sample correlations with the brain "
        f"at 8 mm {np.round(seen_correlations, 3)}, at 2 mm {np.round(real_correlations, 3)}"
    )
    assert min(seen_correlations) >= 0.9
    # 8 mm cannot hold 2 mm detail: the brain itself, block-averaged and upsampled, correlates 0.78 with the original.
    assert min(real_correlations) >= 0.6


@pytest.fixture(scope="module")
def template_brain(tmp_path_factory) -> Path:
    """The MNI template z-scored inside its brain mask: a stand-in preprocessed volume that needs no registration."""
    data = np.asarray(template_t1(2).dataobj, dtype=np.float32)
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    zscored = np.where(mask, (data - data[mask].mean()) / data[mask].std(), 0.0)
    return save_nifti(zscored, mni_grid(2)[1], tmp_path_factory.mktemp("template") / "template_brain.nii.gz")


def test_cpu_trains_in_bf16_only_where_the_cpu_does_bf16_natively(monkeypatch):
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert precision.resolve_precision("auto", cpu) == ((torch.bfloat16 if native else None), False)
        assert precision.resolve_precision("bf16", cpu) == (torch.bfloat16, False)
    assert precision.resolve_precision("fp32", cpu) == (None, False)
    assert precision.resolve_precision("fp16", cpu) == (None, False)


def test_bf16_on_a_cpu_reaches_the_network_and_keeps_the_loss(template_brain, tmp_path):
    table = write_table(tmp_path / "two.tsv", [(template_brain, 30.0), (template_brain, 60.0)])
    first_losses = {}
    for name in ("fp32", "bf16"):
        options = training_options(table, tmp_path / name, steps=1, log_every=1, precision=name, output_init="random")
        train(options, preset_config("smoke"), threads=1)
        first_losses[name] = float(read_loss_rows(tmp_path / name / "loss.tsv")[0]["train_loss"])
        assert json.loads((tmp_path / name / "config.json").read_text())["precision"] == name
    # The same weights, batch and noise (a random output layer, so the output is not 0 whatever the arithmetic):
    # only the network's arithmetic differs.
    assert first_losses["bf16"] != first_losses["fp32"]
    assert first_losses["bf16"] == pytest.approx(first_losses["fp32"], rel=0.02)


def test_the_warp_is_set_in_millimetres_whatever_the_grid(template_brain, tmp_path):
    """``elastic_mm`` is millimetres: on 2 mm images trained at downsample 4 (8 mm voxels) 4 mm is half a voxel."""
    table = write_table(tmp_path / "two.tsv", [(template_brain, 30.0), (template_brain, 60.0)])
    for elastic_mm, voxels in ((4.0, 0.5), (0.0, 0.0)):
        options = training_options(table, tmp_path / f"warp_{elastic_mm}", steps=1, augment=True, elastic_mm=elastic_mm)
        loop = build_training(options, preset_config("smoke"), threads=1)
        assert loop.train_set.augmentation.elastic_std == pytest.approx(voxels)


@pytest.mark.slow
def test_resumed_training_reproduces_the_uninterrupted_loss_curve(template_brain, tmp_path):
    rows = [(template_brain, age) for age in (20.0, 35.0, 50.0, 65.0)]
    table = write_table(tmp_path / "four.tsv", rows)
    config = dataclasses.replace(preset_config("smoke"), condition_dropout=0.2, dropout=0.1)
    common = dict(steps=24, batch_size=2, log_every=3, checkpoint_every=6, val_every=9, val_split=0.25, lr=1e-3)

    straight = tmp_path / "straight"
    train(training_options(table, straight, **common), config, threads=1)

    interrupted = tmp_path / "interrupted"
    assert (
        train(training_options(table, interrupted, max_steps_per_run=12, **common), config, threads=1).steps_done == 12
    )
    at_step_12 = (interrupted / "checkpoint_last.pth").read_bytes()
    assert (
        train(training_options(table, interrupted, max_steps_per_run=5, **common), config, threads=1).steps_done == 17
    )
    # Simulate a crash before the step-17 checkpoint was written: loss.tsv has rows the checkpoint does not hold.
    (interrupted / "checkpoint_last.pth").write_bytes(at_step_12)
    assert int(read_loss_rows(interrupted / "loss.tsv")[-1]["step"]) == 15
    assert train(training_options(table, interrupted, **common), config, threads=1).steps_done == 24

    assert _curve(interrupted) == _curve(straight)
    assert [int(row["step"]) for row in read_loss_rows(straight / "loss.tsv")] == [3, 6, 9, 12, 15, 18, 21, 24]
    assert sum(1 for row in read_loss_rows(straight / "loss.tsv") if row["val_loss"]) == 3
    final_straight = read_checkpoint(straight / "checkpoint_last.pth")
    final_resumed = read_checkpoint(interrupted / "checkpoint_last.pth")
    for key in ("flow_net_state_dict", "ema_state_dict"):
        for name, value in final_straight[key].items():
            assert torch.equal(value, final_resumed[key][name]), f"{key}.{name}"
    # Rerunning a finished run changes nothing.
    assert train(training_options(table, interrupted, **common), config, threads=1).steps_done == 24
    assert _curve(interrupted) == _curve(straight)
    # An explicit --resume of another network is refused; the error names what changed and how to start afresh.
    with pytest.raises(FlowletError, match=r"differs .* in \['model_channels'\]; to train the new network, delete .*"):
        train(
            training_options(table, interrupted, resume=interrupted / "checkpoint_last.pth", **common),
            dataclasses.replace(config, model_channels=8),
            threads=1,
        )


def test_an_option_an_older_checkpoint_does_not_record_counts_as_its_default(tmp_path):
    table = write_table(tmp_path / "one.tsv", [(tmp_path / "a.nii.gz", 30.0)])
    older = recorded_options(training_options(table, tmp_path / "run"))
    del older["flip_probability"]
    checkpoint = {"training_options": older}
    assert changed_settings(checkpoint, training_options(table, tmp_path / "run")) == []
    # A run asking for a new option's non-default value is not the older run, which trained without it.
    mirrored = training_options(table, tmp_path / "run", flip_probability=0.5)
    assert changed_settings(checkpoint, mirrored) == ["flip_probability"]
    # Nothing recorded at all: nothing to compare but the table.
    assert changed_settings({}, mirrored) == []


def test_a_run_with_other_settings_is_set_aside_and_training_starts_afresh(template_brain, tmp_path, caplog):
    table = write_table(tmp_path / "two.tsv", [(template_brain, 30.0), (template_brain, 60.0)])
    run = tmp_path / "run"
    common = dict(steps=2, log_every=1)
    train(training_options(table, run, **common), preset_config("smoke"), threads=1)
    first = (run / "checkpoint_last.pth").read_bytes()

    # Where and how a run executes is not what it learns: the finished run is kept as it is.
    rerun = training_options(table, run, checkpoint_every=1, max_steps_per_run=1, **common)
    train(rerun, preset_config("smoke"), threads=1)
    assert (run / "checkpoint_last.pth").read_bytes() == first and not list(run.glob("superseded-*"))

    # Snakemake reruns training when its config changed; the old run must not be handed back as the new one.
    narrower = dataclasses.replace(preset_config("smoke"), model_channels=8)
    changes = [
        (preset_config("smoke"), "lr"),
        (narrower, "network model_channels"),
        (narrower, "the training table's contents"),
    ]
    for number, (config, named) in enumerate(changes, start=1):
        if named == "the training table's contents":
            write_table(table, [(template_brain, 30.0), (template_brain, 61.0)])
        caplog.clear()
        with caplog.at_level("WARNING", logger="flowlet.generative.training_setup"):
            train(training_options(table, run, lr=1e-3, **common), config, threads=1)
        assert f"other settings ({named})" in caplog.text
        superseded = sorted(run.glob("superseded-*"))
        assert len(superseded) == number, "each change sets the previous run aside, whole"
        assert {path.name for path in superseded[-1].iterdir()} >= {"checkpoint_last.pth", "loss.tsv", "config.json"}
        assert [int(row["step"]) for row in read_loss_rows(run / "loss.tsv")] == [1, 2]
    assert (superseded[0] / "checkpoint_last.pth").read_bytes() == first

    # --resume continues the run it names whatever its settings, and says what differs.
    caplog.clear()
    with caplog.at_level("WARNING", logger="flowlet.generative.training_setup"):
        resumed = training_options(table, tmp_path / "other", resume=superseded[0] / "checkpoint_last.pth", steps=3)
        assert train(resumed, preset_config("smoke"), threads=1).steps_done == 3
    assert "continuing a run trained with other settings (steps, the training table's contents)" in caplog.text
    # except with another seed, from which every step's draws derive.
    with pytest.raises(FlowletError, match=r"other.*was trained with --seed 42, not 7"):
        train(dataclasses.replace(resumed, output_dir=tmp_path / "another", seed=7), preset_config("smoke"), threads=1)


def _curve(path: Path) -> list[tuple[str, ...]]:
    return [
        tuple(value for column, value in row.items() if column != "seconds")
        for row in read_loss_rows(path / "loss.tsv")
    ]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(template_brain, tmp_path):
    """torchrun with 2 gloo CPU ranks x batch 1 trains like one process with batch 2; only rank 0 writes."""
    import os
    import socket
    import subprocess
    import sys

    table = write_table(tmp_path / "three.tsv", [(template_brain, age) for age in (20.0, 50.0, 80.0)])
    common = [
        "--preset",
        "smoke",
        "--downsample",
        "4",
        "--steps",
        "4",
        "--val-split",
        "0",
        "--log-every",
        "1",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            "-m",
            "flowlet.cli",
            "train",
            str(table),
            "--output-dir",
            str(tmp_path / "ddp"),
            "--batch-size",
            "1",
            *common,
        ],
        check=True,
        env=environment,
        capture_output=True,
    )
    from flowlet.cli import main

    assert main(["train", str(table), "--output-dir", str(tmp_path / "single"), "--batch-size", "2", *common]) == 0
    ddp, single = read_loss_rows(tmp_path / "ddp" / "loss.tsv"), read_loss_rows(tmp_path / "single" / "loss.tsv")
    assert [row["step"] for row in ddp] == ["1", "2", "3", "4"]
    for a, b in zip(ddp, single):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-4)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
