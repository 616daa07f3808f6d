"""Assembles a generator training run: the data, the network and its optimisation, restored when resuming.

A run resumes from checkpoint_last.pth in the output folder when there is one trained with the same settings
and training table (or from --resume, whatever its settings); a run of other settings there is moved into a
superseded-<UTC time> folder. Otherwise training starts fresh, from --init-checkpoint's weights when given.
The network is initialised from a seed of its own stream, so its weights do not depend on how much data was
read before it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from flowlet.devices import resolve_device
from flowlet.errors import FlowletError
from flowlet.generative.checkpoint import check_compatible, extract_state_dict, read_checkpoint
from flowlet.generative.conditions import ConditionRange, load_condition_ranges
from flowlet.generative.data import (
    Augmentation,
    TrainingRecord,
    VolumeDataset,
    condition_ranges_from_records,
    load_volumes,
    read_training_table,
    smallest_model_input_size,
    training_augmentation,
    working_shape,
)
from flowlet.generative.distributed import Distributed, init_distributed
from flowlet.generative.ema import ExponentialMovingAverage
from flowlet.generative.flows import get_flow, time_sampler
from flowlet.generative.loss_log import LossLog
from flowlet.generative.precision import precision_name, resolve_precision
from flowlet.generative.sampling_spec import SPEC_KEY, SamplingSpec, band_standardisation, sampling_spec
from flowlet.generative.schedule import BatchSchedule, learning_rate_factor, split_records
from flowlet.generative.seeds import STREAM_INIT, STREAM_STATISTICS, derived_seed
from flowlet.generative.train_loop import TrainLoop
from flowlet.generative.training_options import TrainingOptions
from flowlet.generative.training_state import (
    TABLE_DIGEST_KEY,
    TrainingProgress,
    changed_settings,
    restore_from_checkpoint,
    table_digest,
)
from flowlet.generative.unet import FlowUNet, UNetConfig
from flowlet.generative.wavelets import dwt3d, pad_to_size

log = logging.getLogger(__name__)


def build_training(options: TrainingOptions, config: UNetConfig, threads: int | None = None) -> TrainLoop:
    """The training loop of ``options`` for a network like ``config``, ready to run (or to continue)."""
    options.validate()
    if threads:
        torch.set_num_threads(threads)
    distributed = init_distributed(options.device)
    device = resolve_device(options.device, distributed.local_rank)
    autocast_dtype, use_scaler = resolve_precision(options.precision, device)
    flow = get_flow(options.flow)
    time_sampling = options.time_sampling or flow.default_time_sampling
    sample_times = time_sampler(time_sampling)

    resume_path = _resume_path(options)
    checkpoint = read_checkpoint(resume_path, map_location=device) if resume_path else None
    if checkpoint is not None and not _resumes(checkpoint, options, config, distributed):
        checkpoint = resume_path = None
    # A resumed run continues from its own checkpoint; pretrained weights only start a new one.
    pretrained = None
    if options.init_checkpoint is not None and checkpoint is None:
        pretrained = read_checkpoint(options.init_checkpoint, map_location=device)

    records = read_training_table(options.table, config.condition_vars)
    condition_ranges = _condition_ranges(options, records, checkpoint)
    train_rows, val_rows = split_records(len(records), options.val_split, options.seed)
    if not val_rows:
        log.warning(
            "no validation set (%d training rows, --val-split %g): checkpoint_best.pth is chosen by the training loss",
            len(records),
            options.val_split,
        )
    mirrored = [] if options.flip_probability > 0 else None
    volumes, source_shape = load_volumes(records, options.downsample, mirrored)

    config = fit_config_to_data(config, source_shape, options.downsample, options.model_input_size)
    if checkpoint is not None:
        _check_same_network(checkpoint, config, resume_path)
    augmentation = training_augmentation(
        options.augment, options.flip_probability, _elastic_sd_voxels(records[0], options)
    )
    spec = _sampling_spec(
        options,
        checkpoint,
        pretrained,
        resume_path,
        source_shape,
        _training_bands(
            [volumes[i] for i in train_rows],
            mirrored and [mirrored[i] for i in train_rows],
            augmentation if options.standardise_per == "voxel" else None,
            config.model_input_size,
            derived_seed(options.seed, STREAM_STATISTICS),
        ),
    )
    config.extra[SPEC_KEY] = spec.to_dict()
    schedule = BatchSchedule(len(train_rows), options.batch_size, options.seed, distributed)
    config.extra.update(
        training_config_keys(
            options, len(train_rows), schedule.global_batch, time_sampling, precision_name(autocast_dtype)
        )
    )

    def subset(rows: list[int], augmentation: Augmentation | None) -> VolumeDataset | None:
        if not rows:
            return None
        return VolumeDataset(
            [records[i] for i in rows],
            [volumes[i] for i in rows],
            condition_ranges,
            config.model_input_size,
            augmentation,
            [mirrored[i] for i in rows] if mirrored else None,
        )

    train_set = subset(train_rows, augmentation)
    val_set = subset(val_rows, None)

    model = _initial_model(config, options, device, pretrained)
    ema = ExponentialMovingAverage(model, options.ema_decay) if options.ema_decay > 0 else None
    if ema is not None and pretrained is not None and "ema_state_dict" in pretrained:
        ema.load_state_dict(pretrained["ema_state_dict"], 0)
    optimizer = _optimizer(model, options)
    min_ratio = options.min_lr / options.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: learning_rate_factor(k, options.warmup_steps, options.steps, min_ratio)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    progress = TrainingProgress()
    if checkpoint is not None:
        progress = restore_from_checkpoint(
            checkpoint,
            resume_path,
            model=model,
            ema=ema,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
        )
        log.info("resuming from %s at step %d of %d", resume_path, progress.step, options.steps)
    # Wrapped after restoring: DistributedDataParallel broadcasts rank 0's weights when it is built.
    network = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if distributed.active
        else model
    )
    return TrainLoop(
        options=options,
        config=config,
        spec=spec,
        model=model,
        network=network,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        train_set=train_set,
        val_set=val_set,
        schedule=schedule,
        flow=flow,
        sample_times=sample_times,
        condition_ranges=condition_ranges,
        device=device,
        distributed=distributed,
        autocast_dtype=autocast_dtype,
        loss_log=LossLog(Path(options.output_dir), distributed.is_main),
        progress=progress,
    )


def _resume_path(options: TrainingOptions) -> Path | None:
    if options.resume is not None:
        if not Path(options.resume).is_file():
            raise FlowletError(f"--resume checkpoint {options.resume} does not exist")
        return Path(options.resume)
    last = Path(options.output_dir) / "checkpoint_last.pth"
    return last if last.is_file() else None


def _condition_ranges(
    options: TrainingOptions, records: Sequence[TrainingRecord], checkpoint: Mapping[str, Any] | None
) -> dict[str, ConditionRange]:
    if options.condition_ranges is not None:
        ranges = load_condition_ranges(options.condition_ranges)
    elif checkpoint is not None and "condition_ranges" in checkpoint:
        ranges = {name: ConditionRange(*bounds) for name, bounds in checkpoint["condition_ranges"].items()}
    else:
        ranges = condition_ranges_from_records(records)
    missing = [name for name in records[0].conditions if name not in ranges]
    if missing:
        raise FlowletError(f"condition ranges lack {missing} (have {sorted(ranges)})")
    return {name: ranges[name] for name in records[0].conditions}


def fit_config_to_data(
    config: UNetConfig,
    source_shape: Sequence[int],
    downsample: int,
    model_input_size: Sequence[int] | None = None,
) -> UNetConfig:
    """Set save_size / model_input_size from the data's grid at 1/``downsample`` (``model_input_size``: forced)."""
    grid = working_shape(source_shape, downsample)
    multiple = 2 ** len(config.channel_mult)
    if model_input_size is not None:
        input_size = tuple(model_input_size)
    elif (
        downsample == 1
        and all(m >= g for m, g in zip(config.model_input_size, grid))
        and all(m % multiple == 0 for m in config.model_input_size)
    ):
        input_size = tuple(config.model_input_size)
    else:
        input_size = smallest_model_input_size(grid, multiple)
    if any(m < g for m, g in zip(input_size, grid)):
        raise FlowletError(f"model input size {list(input_size)} is smaller than the working grid {list(grid)}")
    return dataclasses.replace(config, model_input_size=input_size, save_size=grid, extra=dict(config.extra))


def training_config_keys(
    options: TrainingOptions, num_train: int, global_batch: int, time_sampling: str, precision: str
) -> dict:
    """The reference's training keys of config.json, plus ours (``precision``: what `auto` resolved to)."""
    return {
        TABLE_DIGEST_KEY: table_digest(options.table),
        "flow_type": get_flow(options.flow).name,
        "time_sampling": time_sampling,
        "lr": options.lr,
        "min_lr": options.min_lr,
        "warmup_steps": options.warmup_steps,
        "weight_decay": options.weight_decay,
        "batch_size": options.batch_size,
        "world_size": global_batch // options.batch_size,
        "steps": options.steps,
        "epochs": math.ceil(options.steps * global_batch / num_train),
        "grad_clip_norm": options.grad_clip_norm,
        "ema_decay": options.ema_decay,
        "val_split": options.val_split,
        "seed": options.seed,
        "loss_space": options.loss_space,
        "flip_probability": options.flip_probability,
        "elastic_mm": options.elastic_mm,
        "init_checkpoint": str(options.init_checkpoint) if options.init_checkpoint else None,
        "lll_loss_weight": options.lll_loss_weight,
        "detail_loss_weight": options.detail_loss_weight,
        "augmentation": options.augment,
        "precision": precision,
    }


def _elastic_sd_voxels(record: TrainingRecord, options: TrainingOptions) -> float:
    """The warp's SD in working-grid voxels: the (isotropic MNI) images' voxel, times the downsampling."""
    if options.elastic_mm == 0:
        return 0.0
    # load_volumes has read and checked every image: the header is all that is needed here.
    working_voxel_mm = float(min(nib.load(str(record.image)).header.get_zooms()[:3])) * options.downsample
    return options.elastic_mm / working_voxel_mm


def _network_fields(config: UNetConfig) -> dict[str, Any]:
    fields = dataclasses.asdict(config)
    fields.pop("extra")
    fields.pop("use_checkpointing")
    return fields


def _network_changes(checkpoint: Mapping[str, Any], requested: UNetConfig, ignore: Sequence[str] = ()) -> list[str]:
    """The architecture fields in which ``requested`` differs from ``checkpoint``'s network."""
    stored = _network_fields(UNetConfig.from_reference_dict(checkpoint["config"]))
    return sorted(k for k, v in _network_fields(requested).items() if k not in ignore and stored[k] != v)


def _resumes(
    checkpoint: Mapping[str, Any], options: TrainingOptions, config: UNetConfig, distributed: Distributed
) -> bool:
    """Whether training continues ``checkpoint``'s run: yes when its settings are the requested ones or --resume
    names it; otherwise the output folder's run is set aside and training starts afresh.

    What Snakemake expects when it reruns training for a changed config: a run of the new settings, not the old
    run continued (or, when finished, handed back as if new).
    """
    # The grid sizes follow from the data; they are compared once it is loaded.
    changed = changed_settings(checkpoint, options) + [
        f"network {name}" for name in _network_changes(checkpoint, config, ("model_input_size", "save_size"))
    ]
    if not changed:
        return True
    if options.resume is not None:
        if "seed" in changed:
            # Every draw of step s derives from the seed: a continued run would match neither seed's.
            raise FlowletError(
                f"cannot resume from {options.resume}: it was trained with --seed "
                f"{checkpoint['training_options']['seed']}, not {options.seed}"
            )
        log.warning(
            "--resume %s: continuing a run trained with other settings (%s)", options.resume, ", ".join(changed)
        )
        return True
    log.warning(
        "%s holds a run with other settings (%s): moved it to %s; training starts afresh",
        options.output_dir,
        ", ".join(changed),
        _set_aside(Path(options.output_dir), distributed),
    )
    return False


def _set_aside(output_dir: Path, distributed: Distributed) -> Path:
    """Move the files of the run in ``output_dir`` into a new superseded-<UTC time> folder inside it."""
    stamp = f"superseded-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    folder = next(
        output_dir / name
        for name in itertools.chain([stamp], (f"{stamp}-{n}" for n in itertools.count(2)))
        if not (output_dir / name).exists()
    )
    # Every process has read the checkpoint before the main one moves it.
    distributed.barrier()
    if distributed.is_main:
        folder.mkdir()
        for path in output_dir.iterdir():
            if path.is_file():
                path.rename(folder / path.name)
    distributed.barrier()
    return folder


def _check_same_network(checkpoint: Mapping[str, Any], requested: UNetConfig, path: Path) -> None:
    changed = _network_changes(checkpoint, requested)
    if changed:
        raise FlowletError(
            f"cannot resume from {path}: its network differs from the requested one in {changed}; "
            f"to train the new network, delete {path.parent} or use a new --output-dir; to resume it, give the "
            "original architecture options"
        )


def _sampling_spec(
    options: TrainingOptions,
    checkpoint: Mapping[str, Any] | None,
    pretrained: Mapping[str, Any] | None,
    resume_path: Path | None,
    source_shape: Sequence[int],
    training_bands: Iterator[torch.Tensor],
) -> SamplingSpec:
    """What the network's inputs and outputs will mean; see :mod:`flowlet.generative.sampling_spec`."""
    grid = dict(downsample=options.downsample, full_resolution_size=tuple(int(s) for s in source_shape))
    if checkpoint is not None:
        return dataclasses.replace(sampling_spec(checkpoint["config"], str(resume_path), checkpoint), **grid)
    if pretrained is not None:
        # Pretrained weights only help in the units and with the target they were trained on.
        inherited = sampling_spec(pretrained.get("config") or {}, str(options.init_checkpoint), pretrained)
        units = inherited.standardise_per if inherited.standardised else "raw"
        asked = options.standardise_per if options.standardise_bands else "raw"
        if (inherited.prediction, units) != (options.prediction, asked):
            log.warning(
                "%s was trained with prediction %s on %s bands; fine-tuning keeps those (the options asked for "
                "prediction %s on %s bands)",
                options.init_checkpoint,
                inherited.prediction,
                units,
                options.prediction,
                asked,
            )
        return dataclasses.replace(inherited, **grid)
    units = {}
    if options.standardise_bands:
        units = band_standardisation(training_bands, options.standardise_per, options.voxel_std_floor)
    return SamplingSpec(prediction=options.prediction, **units, **grid)


# Augmented draws per training volume that per-voxel statistics see besides the volume itself: rotations move
# tissue into voxels where the unaugmented brains never reach, and the network is trained on those draws.
STATISTICS_DRAWS = 3


def _training_bands(
    volumes: Sequence[np.ndarray],
    mirrored: Sequence[np.ndarray] | None,
    augmentation: Augmentation | None,
    model_input_size: Sequence[int],
    seed: int,
) -> Iterator[torch.Tensor]:
    """The training volumes' wavelet bands as the network sees them, each followed by STATISTICS_DRAWS
    augmented draws when ``augmentation`` is given (per-voxel statistics need the augmented spread)."""
    draws = STATISTICS_DRAWS if augmentation is not None else 0
    rng = np.random.default_rng(seed)
    for index, volume in enumerate(volumes):
        mirror = mirrored[index] if mirrored else None
        for draw in [volume] + [augmentation(volume, rng, mirror) for _ in range(draws)]:
            yield dwt3d(pad_to_size(torch.from_numpy(np.ascontiguousarray(draw))[None], model_input_size)[None])[0]


def _initial_model(
    config: UNetConfig, options: TrainingOptions, device: torch.device, pretrained: Mapping[str, Any] | None
) -> FlowUNet:
    torch.manual_seed(derived_seed(options.seed, STREAM_INIT))
    model = FlowUNet(config).to(device)
    if options.output_init == "random":
        # A zero output layer (the reference's) predicts zero velocity at first; on small data the network
        # then fits the mean image and can sit 50-250 steps (seed-dependent) before it learns to use x_t.
        model.out[-1].reset_parameters()
    if pretrained is not None:
        path = Path(options.init_checkpoint)
        state = extract_state_dict(pretrained, path)
        check_compatible(model, state, path, against="the network to train (--preset or --config and overrides)")
        model.load_state_dict(state)
        log.info("starting from the weights of %s (fresh optimiser and schedule)", path)
    return model


def _optimizer(model: FlowUNet, options: TrainingOptions) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for parameter in model.parameters():
        # Norm gains, biases and null embeddings are not weights to shrink.
        (no_decay if parameter.dim() <= 1 else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=options.lr,
        betas=(0.9, options.adam_beta2),
    )
