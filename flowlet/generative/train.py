"""Training loop of the wavelet flow-matching generator, with exact resumption and optional DDP.

Every random draw of optimisation step s (which volumes, their augmentation, t, the noise, condition
dropout, network dropout) comes from generators seeded by (seed, s, ...), never from state carried over
from step s - 1. Resuming from a checkpoint written after step k therefore continues exactly as the
uninterrupted run would have, with no RNG state to save; the checkpoint holds the model, EMA, optimiser,
scheduler, gradient scaler, step and the loss-log accumulators.

Under ``torchrun`` (WORLD_SIZE > 1) each rank takes its slice of every step's global batch
(batch_size x world_size items of one seeded stream of epoch permutations), gradients are averaged by
DistributedDataParallel, validation is sharded and summed, and only rank 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from flowlet.devices import resolve_device
from flowlet.errors import FlowletError
from flowlet.generative.checkpoint import check_compatible, extract_state_dict, read_checkpoint, save_checkpoint
from flowlet.generative.conditions import (
    ConditionRange,
    load_condition_ranges,
    save_condition_ranges,
)
from flowlet.generative.data import (
    Augmentation,
    VolumeDataset,
    collate,
    condition_ranges_from_records,
    load_volumes,
    read_training_table,
    smallest_model_input_size,
    working_shape,
)
from flowlet.generative.ema import ExponentialMovingAverage
from flowlet.generative.flows import get_flow, time_sampler
from flowlet.generative.loss import LOSS_SPACES, prediction_and_target, wavelet_flow_loss
from flowlet.generative.sampling_spec import PREDICTIONS, SPEC_KEY, SamplingSpec, band_statistics, sampling_spec
from flowlet.generative.seeds import derived_seed
from flowlet.generative.unet import FlowUNet, UNetConfig
from flowlet.generative.wavelets import dwt3d, pad_to_size

log = logging.getLogger(__name__)

LOSS_COLUMNS = ("step", "epoch", "train_loss", "lll", "detail", "val_loss", "lr", "seconds")
# Independent random streams of one step (first key after the seed).
STREAM_TIME, STREAM_NOISE, STREAM_AUGMENT, STREAM_MODEL, STREAM_VALIDATION, STREAM_SPLIT, STREAM_INIT = range(7)
# Validation scores each volume at these many evenly spaced times (fixed noise), for a low-variance estimate.
VALIDATION_TIMES = 4


OUTPUT_INITS = ("zero", "random")


@dataclasses.dataclass
class TrainingOptions:
    """Everything about a run except the network architecture (which is a UNetConfig)."""

    table: Path
    output_dir: Path
    steps: int = 20000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    adam_beta2: float = 0.999
    warmup_steps: int = 500
    min_lr: float = 1e-6
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.999
    output_init: str = "zero"
    flow: str = "rectified"
    time_sampling: str | None = None
    prediction: str = "velocity"
    loss_space: str = "velocity"
    standardise_bands: bool = False
    flip_probability: float = 0.0
    lll_loss_weight: float = 1.0
    detail_loss_weight: float = 1.0
    condition_ranges: Path | None = None
    val_split: float = 0.2
    val_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    max_steps_per_run: int | None = None
    seed: int = 42
    precision: str = "auto"
    downsample: int = 1
    model_input_size: tuple[int, int, int] | None = None
    augment: bool = True
    num_workers: int = 0
    device: str = "auto"
    resume: Path | None = None
    init_checkpoint: Path | None = None

    def validate(self) -> None:
        problems = []
        positive = ("steps", "batch_size", "val_every", "checkpoint_every", "log_every", "downsample")
        problems += [f"--{name.replace('_', '-')} must be at least 1" for name in positive if getattr(self, name) < 1]
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            problems.append(f"need 0 <= --min-lr ({self.min_lr}) <= --lr ({self.lr}) and --lr > 0")
        if self.warmup_steps < 0 or self.grad_clip_norm < 0 or self.weight_decay < 0 or self.num_workers < 0:
            problems.append("--warmup-steps, --grad-clip-norm, --weight-decay and --num-workers must be >= 0")
        if not 0.0 < self.adam_beta2 < 1.0:
            problems.append(f"--adam-beta2 must be in (0, 1), got {self.adam_beta2}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"--ema-decay must be in [0, 1) (0 disables), got {self.ema_decay}")
        if not 0.0 <= self.val_split < 1.0:
            problems.append(f"--val-split must be in [0, 1), got {self.val_split}")
        if self.max_steps_per_run is not None and self.max_steps_per_run < 1:
            problems.append("--max-steps-per-run must be at least 1")
        if self.output_init not in OUTPUT_INITS:
            problems.append(f"--output-init must be {' or '.join(OUTPUT_INITS)}, got {self.output_init}")
        if self.prediction not in PREDICTIONS:
            problems.append(f"--prediction must be {' or '.join(PREDICTIONS)}, got {self.prediction}")
        if self.loss_space not in LOSS_SPACES:
            problems.append(f"--loss-space must be {' or '.join(LOSS_SPACES)}, got {self.loss_space}")
        if (self.prediction, self.loss_space) != ("velocity", "velocity") and self.flow not in ("rectified", "cfm"):
            problems.append(
                f"--prediction data and --loss-space data need a straight path (rectified or cfm), "
                f"not --flow {self.flow}"
            )
        if not 0.0 <= self.flip_probability <= 1.0:
            problems.append(f"--flip-probability must be in [0, 1], got {self.flip_probability}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"--precision must be auto, fp32, bf16 or fp16, got {self.precision}")
        if problems:
            raise FlowletError("invalid training options: " + "; ".join(problems))


@dataclasses.dataclass
class TrainingSummary:
    steps_done: int
    best_metric: float
    output_dir: Path


# --------------------------------------------------------------------------------------------------
# Devices, precision, distribution


@dataclasses.dataclass(frozen=True)
class Distributed:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return Distributed(world_size, rank, local_rank)


def resolve_precision(name: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed). Mixed precision is CUDA-only."""
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            log.warning("--precision %s applies to CUDA only; training in fp32 on %s", name, device)
        return None, False
    if name == "auto":
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name], name == "fp16"


# --------------------------------------------------------------------------------------------------
# Batches and schedule


class BatchSchedule:
    """Which volumes step s uses: a stream of seeded epoch permutations, consumed batch_size x world_size at a time.

    Step s (1-based) takes global stream positions [(s-1) G, s G) with G = batch_size x world_size; rank r
    takes positions r B .. (r+1) B - 1 of that slice. Epoch e's order is a permutation seeded by (seed, e),
    so any step's batch is computable directly, which is what makes mid-epoch resumption exact.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, distributed: Distributed = Distributed()) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.distributed = distributed
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.distributed.world_size

    def epoch(self, step: int) -> float:
        """Epochs completed after ``step`` steps (fractional)."""
        return step * self.global_batch / self.num_items

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_items)}
        return self._permutations[epoch]

    def items(self, step: int) -> list[tuple[int, int]]:
        """This rank's ``(volume_index, augmentation_seed)`` pairs for 1-based ``step``."""
        first = (step - 1) * self.global_batch + self.distributed.rank * self.batch_size
        pairs = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.num_items)
            index = int(self._permutation(epoch)[offset])
            pairs.append((index, derived_seed(self.seed, STREAM_AUGMENT, step, position)))
        return pairs


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields the item lists of steps ``first_step .. last_step`` for a DataLoader's ``batch_sampler``."""

    def __init__(self, schedule: BatchSchedule, first_step: int, last_step: int) -> None:
        self.schedule = schedule
        self.first_step = first_step
        self.last_step = last_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.first_step, self.last_step + 1):
            yield self.schedule.items(step)

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step + 1)


def learning_rate_factor(step_index: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier for the (0-based) optimisation step: linear warm-up, then cosine decay to ``min_ratio``."""
    if step_index < warmup_steps:
        return (step_index + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step_index - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------------
# Loss log


class LossLog:
    """loss.tsv and loss.png in the output folder (rank 0 only)."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.path = output_dir / "loss.tsv"
        self.plot_path = output_dir / "loss.png"
        self.enabled = enabled

    def start(self, resumed_step: int) -> None:
        """Keep the rows up to the resumed step (a crash may have logged steps the checkpoint does not hold)."""
        if not self.enabled:
            return
        rows = self.read() if resumed_step and self.path.exists() else []
        with self.path.open("w", newline="") as stream:
            writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
            writer.writerow(LOSS_COLUMNS)
            writer.writerows([row[c] for c in LOSS_COLUMNS] for row in rows if int(row["step"]) <= resumed_step)

    def read(self) -> list[dict[str, str]]:
        with self.path.open(newline="") as stream:
            return list(csv.DictReader(stream, delimiter="\t"))

    def append(self, row: dict[str, float | int | None]) -> None:
        if not self.enabled:
            return
        formatted = []
        for column in LOSS_COLUMNS:
            value = row.get(column)
            if value is None:
                formatted.append("")
            elif isinstance(value, int):
                formatted.append(str(value))
            else:
                formatted.append(f"{value:.8g}")
        with self.path.open("a") as stream:
            stream.write("\t".join(formatted) + "\n")

    def plot(self) -> None:
        if not self.enabled or not self.path.exists():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read()
        if not rows:
            return
        steps = [int(row["step"]) for row in rows]
        train = [float(row["train_loss"]) for row in rows]
        validation = [(int(row["step"]), float(row["val_loss"])) for row in rows if row["val_loss"]]
        figure, axes = plt.subplots(figsize=(7, 4))
        axes.plot(steps, train, label="training loss", linewidth=1)
        if validation:
            axes.plot(*zip(*validation), "o-", label="validation loss", markersize=3)
        axes.set_yscale("log")
        axes.set_xlabel("optimisation step")
        axes.set_ylabel("flow-matching loss")
        axes.legend()
        axes.grid(alpha=0.3, which="both")
        figure.tight_layout()
        figure.savefig(self.plot_path, dpi=120)
        plt.close(figure)


# --------------------------------------------------------------------------------------------------
# Setup helpers


def split_records(num_records: int, val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/validation split of row indices; no validation set when val_split is 0 or only one row."""
    order = np.random.default_rng([seed, STREAM_SPLIT]).permutation(num_records)
    num_val = round(num_records * val_split) if num_records > 1 else 0
    num_val = min(max(num_val, 1 if val_split > 0 and num_records > 1 else 0), num_records - 1)
    return sorted(order[num_val:].tolist()), sorted(order[:num_val].tolist())


def fit_config_to_data(config: UNetConfig, source_shape: Sequence[int], options: TrainingOptions) -> UNetConfig:
    """Set save_size / model_input_size (and our downsampling keys) from the data's grid."""
    grid = working_shape(source_shape, options.downsample)
    multiple = 2 ** len(config.channel_mult)
    if options.model_input_size is not None:
        input_size = tuple(options.model_input_size)
    elif (
        options.downsample == 1
        and all(m >= g for m, g in zip(config.model_input_size, grid))
        and all(m % multiple == 0 for m in config.model_input_size)
    ):
        input_size = tuple(config.model_input_size)
    else:
        input_size = smallest_model_input_size(grid, multiple)
    if any(m < g for m, g in zip(input_size, grid)):
        raise FlowletError(f"model input size {list(input_size)} is smaller than the working grid {list(grid)}")
    return dataclasses.replace(config, model_input_size=input_size, save_size=grid, extra=dict(config.extra))


def training_config_keys(options: TrainingOptions, num_train: int, global_batch: int, time_sampling: str) -> dict:
    """The reference's training keys of config.json, plus ours."""
    return {
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
        "init_checkpoint": str(options.init_checkpoint) if options.init_checkpoint else None,
        "lll_loss_weight": options.lll_loss_weight,
        "detail_loss_weight": options.detail_loss_weight,
        "augmentation": options.augment,
        "precision": options.precision,
    }


def _network_fields(config: UNetConfig) -> dict[str, Any]:
    fields = dataclasses.asdict(config)
    fields.pop("extra")
    fields.pop("use_checkpointing")
    return fields


# --------------------------------------------------------------------------------------------------
# The loop


class Trainer:
    def __init__(self, options: TrainingOptions, config: UNetConfig, threads: int | None = None) -> None:
        options.validate()
        self.options = options
        if threads:
            torch.set_num_threads(threads)
        self.distributed = init_distributed(options.device)
        self.device = resolve_device(options.device, self.distributed.local_rank)
        self.autocast_dtype, use_scaler = resolve_precision(options.precision, self.device)
        self.output_dir = Path(options.output_dir)
        self.flow = get_flow(options.flow)
        self.time_sampling = options.time_sampling or self.flow.default_time_sampling
        self.sample_times = time_sampler(self.time_sampling)

        resume_path = self._resume_path()
        checkpoint = read_checkpoint(resume_path, map_location=self.device) if resume_path else None
        # A resumed run continues from its own checkpoint; pretrained weights only start a new one.
        pretrained = None
        if options.init_checkpoint is not None and checkpoint is None:
            pretrained = read_checkpoint(options.init_checkpoint, map_location=self.device)

        records = read_training_table(options.table, config.condition_vars)
        self.condition_ranges = self._condition_ranges(records, checkpoint)
        train_rows, val_rows = split_records(len(records), options.val_split, options.seed)
        if not val_rows:
            log.warning(
                "no validation set (%d training rows, --val-split %g): checkpoint_best.pth is chosen by the training loss",
                len(records),
                options.val_split,
            )
        mirrored = [] if options.augment and options.flip_probability > 0 else None
        volumes, source_shape = load_volumes(records, options.downsample, mirrored)

        config = fit_config_to_data(config, source_shape, options)
        if checkpoint is not None:
            config = self._checkpoint_config(checkpoint, config, resume_path)
        self.spec = self._sampling_spec(
            checkpoint, pretrained, resume_path, source_shape, [volumes[i] for i in train_rows], config.model_input_size
        )
        config.extra[SPEC_KEY] = self.spec.to_dict()
        self.schedule = BatchSchedule(len(train_rows), options.batch_size, options.seed, self.distributed)
        config.extra.update(
            training_config_keys(options, len(train_rows), self.schedule.global_batch, self.time_sampling)
        )
        self.config = config

        def subset(rows: list[int], augmentation: Augmentation | None) -> VolumeDataset | None:
            if not rows:
                return None
            return VolumeDataset(
                [records[i] for i in rows],
                [volumes[i] for i in rows],
                self.condition_ranges,
                config.model_input_size,
                augmentation,
                [mirrored[i] for i in rows] if mirrored else None,
            )

        augmentation = Augmentation(flip_probability=options.flip_probability) if options.augment else None
        self.train_set = subset(train_rows, augmentation)
        self.val_set = subset(val_rows, None)

        torch.manual_seed(derived_seed(options.seed, STREAM_INIT))
        self.model = FlowUNet(config).to(self.device)
        if options.output_init == "random":
            # A zero output layer (the reference's) predicts zero velocity at first; on small data the network
            # then fits the mean image and can sit 50-250 steps (seed-dependent) before it learns to use x_t.
            self.model.out[-1].reset_parameters()
        if pretrained is not None:
            self._load_pretrained(pretrained, Path(options.init_checkpoint))
        self.ema = ExponentialMovingAverage(self.model, options.ema_decay) if options.ema_decay > 0 else None
        if self.ema is not None and pretrained is not None and "ema_state_dict" in pretrained:
            self.ema.load_state_dict(pretrained["ema_state_dict"], 0)
        decay, no_decay = [], []
        for parameter in self.model.parameters():
            # Norm gains, biases and null embeddings are not weights to shrink.
            (no_decay if parameter.dim() <= 1 else decay).append(parameter)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=options.lr,
            betas=(0.9, options.adam_beta2),
        )
        min_ratio = options.min_lr / options.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: learning_rate_factor(k, options.warmup_steps, options.steps, min_ratio)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.step = 0
        self.best_metric = math.inf
        self.elapsed_seconds = 0.0
        self.interval = {"total": 0.0, "lll": 0.0, "detail": 0.0, "count": 0}
        self.selection = {"total": 0.0, "count": 0}
        if checkpoint is not None:
            self._restore(checkpoint, resume_path)
        self.network = (
            torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.distributed.active
            else self.model
        )
        self.loss_log = LossLog(self.output_dir, self.distributed.is_main)

    # ---- setup pieces

    def _resume_path(self) -> Path | None:
        if self.options.resume is not None:
            if not Path(self.options.resume).is_file():
                raise FlowletError(f"--resume checkpoint {self.options.resume} does not exist")
            return Path(self.options.resume)
        last = self.output_dir / "checkpoint_last.pth"
        return last if last.is_file() else None

    def _condition_ranges(self, records, checkpoint) -> dict[str, ConditionRange]:
        if self.options.condition_ranges is not None:
            ranges = load_condition_ranges(self.options.condition_ranges)
        elif checkpoint is not None and "condition_ranges" in checkpoint:
            ranges = {name: ConditionRange(*bounds) for name, bounds in checkpoint["condition_ranges"].items()}
        else:
            ranges = condition_ranges_from_records(records)
        missing = [name for name in records[0].conditions if name not in ranges]
        if missing:
            raise FlowletError(f"condition ranges lack {missing} (have {sorted(ranges)})")
        return {name: ranges[name] for name in records[0].conditions}

    def _sampling_spec(
        self,
        checkpoint: dict | None,
        pretrained: dict | None,
        resume_path: Path | None,
        source_shape: Sequence[int],
        train_volumes: list[np.ndarray],
        model_input_size: Sequence[int],
    ) -> SamplingSpec:
        """What the network's inputs and outputs will mean; see :mod:`flowlet.generative.sampling_spec`."""
        options = self.options
        grid = dict(downsample=options.downsample, full_resolution_size=tuple(int(s) for s in source_shape))
        if checkpoint is not None:
            return dataclasses.replace(sampling_spec(checkpoint["config"], str(resume_path)), **grid)
        if pretrained is not None:
            # Pretrained weights only help in the units and with the target they were trained on.
            inherited = sampling_spec(pretrained.get("config") or {}, str(options.init_checkpoint))
            if (inherited.prediction, inherited.standardised) != (options.prediction, options.standardise_bands):
                log.warning(
                    "%s was trained with prediction %s on %s bands; fine-tuning keeps those (the options asked for "
                    "prediction %s, standardise_bands %s)",
                    options.init_checkpoint,
                    inherited.prediction,
                    "standardised" if inherited.standardised else "raw",
                    options.prediction,
                    options.standardise_bands,
                )
            return dataclasses.replace(inherited, **grid)
        mean = std = None
        if options.standardise_bands:
            mean, std = band_statistics(
                [
                    dwt3d(pad_to_size(torch.from_numpy(volume)[None], model_input_size)[None])[0]
                    for volume in train_volumes
                ]
            )
        return SamplingSpec(prediction=options.prediction, band_mean=mean, band_std=std, **grid)

    def _load_pretrained(self, payload: dict, path: Path) -> None:
        state = extract_state_dict(payload, path)
        check_compatible(self.model, state, path, against="the network to train (--preset or --config and overrides)")
        self.model.load_state_dict(state)
        log.info("starting from the weights of %s (fresh optimiser and schedule)", path)

    def _checkpoint_config(self, checkpoint: dict, requested: UNetConfig, path: Path) -> UNetConfig:
        stored = UNetConfig.from_reference_dict(checkpoint["config"])
        if _network_fields(stored) != _network_fields(requested):
            changed = sorted(k for k, v in _network_fields(requested).items() if _network_fields(stored)[k] != v)
            raise FlowletError(
                f"cannot resume from {path}: its network differs from the requested one in {changed}; "
                "use a new --output-dir or the original architecture options"
            )
        return requested

    def _restore(self, checkpoint: dict, path: Path) -> None:
        stored_seed = checkpoint.get("training_options", {}).get("seed")
        if stored_seed is not None and stored_seed != self.options.seed:
            raise FlowletError(
                f"cannot resume from {path}: it was trained with --seed {stored_seed}, not {self.options.seed}"
            )
        self.model.load_state_dict(checkpoint["flow_net_state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        self.scaler.load_state_dict(checkpoint["scaler_state_dict"])
        if self.ema is not None:
            if "ema_state_dict" in checkpoint:
                self.ema.load_state_dict(checkpoint["ema_state_dict"], checkpoint["ema_num_updates"])
            else:
                log.warning("%s has no EMA weights; the average restarts from the current weights", path)
        self.step = int(checkpoint["step"])
        self.best_metric = float(checkpoint["best_val_loss"])
        self.elapsed_seconds = float(checkpoint["elapsed_seconds"])
        self.interval = dict(checkpoint["loss_interval"])
        self.selection = dict(checkpoint["selection_interval"])
        log.info("resuming from %s at step %d of %d", path, self.step, self.options.steps)

    # ---- checkpoints

    def _checkpoint_payload(self, full: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "step": self.step,
            "epoch": int(self.schedule.epoch(self.step)),
            "best_val_loss": self.best_metric,
            "condition_ranges": {name: [r.min, r.max] for name, r in self.condition_ranges.items()},
        }
        if self.ema is not None:
            payload["ema_state_dict"] = self.ema.state_dict()
            payload["ema_num_updates"] = self.ema.num_updates
        if full:
            payload.update(
                optimizer_state_dict=self.optimizer.state_dict(),
                scheduler_state_dict=self.scheduler.state_dict(),
                scaler_state_dict=self.scaler.state_dict(),
                elapsed_seconds=self.elapsed_seconds,
                loss_interval=dict(self.interval),
                selection_interval=dict(self.selection),
                training_options={
                    k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                    for k, v in dataclasses.asdict(self.options).items()
                },
            )
        return payload

    def _save(self, name: str, full: bool) -> None:
        if self.distributed.is_main:
            save_checkpoint(self.output_dir / name, self.model, self.config, self._checkpoint_payload(full))

    def _write_run_files(self) -> None:
        if not self.distributed.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "config.json").write_text(json.dumps(self.config.to_reference_dict(), indent=2) + "\n")
        save_condition_ranges(self.output_dir / "condition_ranges.json", self.condition_ranges)

    # ---- one step

    def _batch_loss(
        self,
        images: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        t: torch.Tensor,
        x0: torch.Tensor,
        drop: torch.Tensor | None,
        network: torch.nn.Module,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x1 = self.spec.to_model_units(dwt3d(images))
        x_t, velocity = self.flow.sample_path(x0, x1, t)
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with autocast:
            output = network(x_t, t, conditions, drop_conditions=drop)
        prediction, target = prediction_and_target(
            output, x1, x_t, t, velocity, self.spec.prediction, self.options.loss_space
        )
        return wavelet_flow_loss(prediction, target, self.options.lll_loss_weight, self.options.detail_loss_weight)

    def _train_step(self, batch: dict[str, Any]) -> tuple[float, float, float]:
        options, step, rank = self.options, self.step + 1, self.distributed.rank
        self.network.train()
        images = batch["image"].to(self.device, non_blocking=True)
        conditions = {name: value.to(self.device) for name, value in batch["conditions"].items()}
        # t and condition dropout are drawn for the whole global batch (stratified t spans it), then sliced.
        step_generator = torch.Generator().manual_seed(derived_seed(options.seed, STREAM_TIME, step))
        global_batch = self.schedule.global_batch
        local = slice(rank * options.batch_size, (rank + 1) * options.batch_size)
        t = self.sample_times(global_batch, generator=step_generator)[local].to(self.device)
        drop = None
        if self.config.condition_dropout > 0:
            drop = (torch.rand(global_batch, generator=step_generator) < self.config.condition_dropout)[local]
            drop = drop.to(self.device)
        # Noise per global batch position, so a step's batch is the same whatever the number of processes.
        wavelet_shape = (8 * images.shape[1], *(s // 2 for s in images.shape[2:]))
        x0 = torch.stack(
            [
                torch.randn(
                    wavelet_shape,
                    device=self.device,
                    generator=torch.Generator(self.device).manual_seed(
                        derived_seed(options.seed, STREAM_NOISE, step, position)
                    ),
                )
                for position in range(local.start, local.stop)
            ]
        )
        # Network dropout draws from the global generator; reseed it so it too depends on the step only.
        torch.manual_seed(derived_seed(options.seed, STREAM_MODEL, step, rank))

        self.optimizer.zero_grad(set_to_none=True)
        total, lll, detail = self._batch_loss(images, conditions, t, x0, drop, self.network)
        self.scaler.scale(total).backward()
        if options.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), options.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        values = torch.stack([total.detach(), lll.detach(), detail.detach()]).float()
        if self.distributed.active:
            dist.all_reduce(values)
            values /= self.distributed.world_size
        return tuple(values.tolist())

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean loss over the validation volumes at fixed times and noise (EMA weights when enabled)."""
        if self.val_set is None:
            return None
        model = self.model
        context = self.ema.averaged_weights(model) if self.ema is not None else nullcontext(model)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        with context:
            model.eval()
            times = (torch.arange(VALIDATION_TIMES, dtype=torch.float32) + 0.5) / VALIDATION_TIMES
            for position in range(self.distributed.rank, len(self.val_set), self.distributed.world_size):
                item = self.val_set[position]
                images = item["image"][None].expand(VALIDATION_TIMES, -1, -1, -1, -1).to(self.device)
                conditions = {
                    name: value[None].expand(VALIDATION_TIMES, -1).to(self.device)
                    for name, value in item["conditions"].items()
                }
                generator = torch.Generator().manual_seed(derived_seed(self.options.seed, STREAM_VALIDATION, position))
                shape = (VALIDATION_TIMES, 8 * images.shape[1], *(s // 2 for s in images.shape[2:]))
                x0 = torch.randn(shape, generator=generator).to(self.device)
                total, _, _ = self._batch_loss(images, conditions, times.to(self.device), x0, None, model)
                sums += torch.stack([total.double(), torch.ones((), dtype=torch.float64, device=self.device)])
        if self.distributed.active:
            dist.all_reduce(sums)
        return float(sums[0] / sums[1])

    # ---- driver

    def run(self) -> TrainingSummary:
        options = self.options
        if self.step >= options.steps:
            log.info("training in %s is already complete (%d of %d steps)", self.output_dir, self.step, options.steps)
            return TrainingSummary(self.step, self.best_metric, self.output_dir)
        self._write_run_files()
        self.loss_log.start(self.step)
        last_step = options.steps
        if options.max_steps_per_run is not None:
            last_step = min(last_step, self.step + options.max_steps_per_run)
        loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=StepBatchSampler(self.schedule, self.step + 1, last_step),
            collate_fn=collate,
            num_workers=options.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        progress = tqdm(
            total=options.steps, initial=self.step, desc="training", unit="step", disable=not self.distributed.is_main
        )
        started = time.perf_counter() - self.elapsed_seconds
        for batch in loader:
            lr = self.optimizer.param_groups[0]["lr"]
            total, lll, detail = self._train_step(batch)
            if not math.isfinite(total):
                raise FlowletError(
                    f"training loss became {total} at step {self.step + 1}; lower --lr or use --precision fp32/bf16"
                )
            self.step += 1
            for key, value in (("total", total), ("lll", lll), ("detail", detail)):
                self.interval[key] += value
            self.interval["count"] += 1
            self.selection["total"] += total
            self.selection["count"] += 1
            progress.update(1)
            progress.set_postfix(loss=f"{total:.4g}", lr=f"{lr:.2e}")

            final = self.step == last_step
            evaluation_step = self.step % options.val_every == 0 or self.step == options.steps
            val_loss = self.validate() if evaluation_step else None
            # Rows fall on the log grid, validation steps and the last step only (not where --max-steps-per-run
            # pauses), so a paused-and-resumed run logs exactly the rows of an uninterrupted one.
            if self.step % options.log_every == 0 or val_loss is not None or self.step == options.steps:
                self.elapsed_seconds = time.perf_counter() - started
                count = self.interval["count"]
                self.loss_log.append(
                    {
                        "step": self.step,
                        "epoch": self.schedule.epoch(self.step),
                        "train_loss": self.interval["total"] / count,
                        "lll": self.interval["lll"] / count,
                        "detail": self.interval["detail"] / count,
                        "val_loss": val_loss,
                        "lr": lr,
                        "seconds": self.elapsed_seconds,
                    }
                )
                self.interval = {"total": 0.0, "lll": 0.0, "detail": 0.0, "count": 0}
            if evaluation_step:
                self._select_best(val_loss)
            if self.step % options.checkpoint_every == 0 or final:
                self.elapsed_seconds = time.perf_counter() - started
                self._save("checkpoint_last.pth", full=True)
                self.loss_log.plot()
        progress.close()
        if self.distributed.active:
            dist.barrier()
        if self.step < options.steps:
            log.info("stopped after step %d of %d (--max-steps-per-run); rerun to continue", self.step, options.steps)
        return TrainingSummary(self.step, self.best_metric, self.output_dir)

    def _select_best(self, val_loss: float | None) -> None:
        """Keep checkpoint_best.pth at the lowest validation loss (mean training loss when there is no validation set)."""
        if val_loss is None:
            if not self.selection["count"]:
                return
            metric = self.selection["total"] / self.selection["count"]
        else:
            metric = val_loss
        self.selection = {"total": 0.0, "count": 0}
        if metric < self.best_metric:
            self.best_metric = metric
            self._save("checkpoint_best.pth", full=False)


def train(options: TrainingOptions, config: UNetConfig, threads: int | None = None) -> TrainingSummary:
    """Train (or resume training) and return where it stopped; see the module docstring for the guarantees."""
    trainer = Trainer(options, config, threads)
    try:
        return trainer.run()
    finally:
        if trainer.distributed.active and dist.is_initialized():
            dist.destroy_process_group()
