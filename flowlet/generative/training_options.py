"""The settings of a generator training run (`flowlet train`'s flags) and their validation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowlet.errors import FlowletError
from flowlet.generative.loss import LOSS_SPACES
from flowlet.generative.sampling_spec import PREDICTIONS, STANDARDISE_PER

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
    standardise_per: str = "subband"
    voxel_std_floor: float = 0.2
    flip_probability: float = 0.0
    elastic_mm: float = 0.0
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
        if self.standardise_per not in STANDARDISE_PER:
            problems.append(f"--standardise-per must be {' or '.join(STANDARDISE_PER)}, got {self.standardise_per}")
        if not self.voxel_std_floor > 0:
            problems.append(f"--voxel-std-floor must be > 0, got {self.voxel_std_floor}")
        if not 0.0 <= self.flip_probability <= 1.0:
            problems.append(f"--flip-probability must be in [0, 1], got {self.flip_probability}")
        if self.elastic_mm < 0:
            problems.append(f"--elastic-mm must be >= 0 (0 disables), got {self.elastic_mm}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"--precision must be auto, fp32, bf16 or fp16, got {self.precision}")
        if problems:
            raise FlowletError("invalid training options: " + "; ".join(problems))


def option_defaults() -> dict[str, Any]:
    """Every TrainingOptions field that has a default, with it (the only home of the defaults)."""
    return {
        field.name: field.default
        for field in dataclasses.fields(TrainingOptions)
        if field.default is not dataclasses.MISSING
    }


def settings_over_preset(preset: str, preset_settings: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a run uses: TrainingOptions' defaults, then the preset's training settings, then the values
    ``given`` that are not None (keys that are not TrainingOptions fields, such as a config's ``device``, pass
    through)."""
    unknown = sorted(set(preset_settings) - {field.name for field in dataclasses.fields(TrainingOptions)})
    if unknown:
        raise FlowletError(f"preset {preset}: unknown training settings {unknown}")
    return {
        **option_defaults(),
        **preset_settings,
        **{name: value for name, value in given.items() if value is not None},
    }
