"""What a training checkpoint records besides the network's weights and config, and how a run resumes from it.

No random-number state is saved: every draw of step s is seeded by (seed, s, ...) (see
:mod:`flowlet.generative.train_loop`), so the EMA, optimiser, scheduler, gradient scaler, step and the
loss-log accumulators are all a resumed run needs. checkpoint_best.pth carries the weights part only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from flowlet.generative.conditions import ConditionRange
from flowlet.generative.ema import ExponentialMovingAverage
from flowlet.generative.training_options import TrainingOptions, option_defaults

log = logging.getLogger(__name__)

# Options that say where and how a run executes, not what it learns: a run resumes across changes to them.
# The training table is compared by its contents (TABLE_DIGEST_KEY of the run's config), not its path.
RUN_ONLY_OPTIONS = (
    "table",
    "output_dir",
    "resume",
    "checkpoint_every",
    "log_every",
    "max_steps_per_run",
    "num_workers",
    "device",
    "precision",
)
TABLE_DIGEST_KEY = "training_table_sha256"


def empty_loss_sums() -> dict[str, float]:
    return {"total": 0.0, "lll": 0.0, "detail": 0.0, "count": 0}


def empty_selection_sums() -> dict[str, float]:
    return {"total": 0.0, "count": 0}


@dataclasses.dataclass
class TrainingProgress:
    """The counters a run carries from one step to the next."""

    step: int = 0
    best_metric: float = math.inf
    elapsed_seconds: float = 0.0
    # Training-loss sums since the last loss.tsv row, and since checkpoint_best.pth was last chosen; both are
    # saved so that a resumed run writes the rows and picks the best checkpoint of an uninterrupted one.
    interval: dict[str, float] = dataclasses.field(default_factory=empty_loss_sums)
    selection: dict[str, float] = dataclasses.field(default_factory=empty_selection_sums)


def checkpoint_entries(
    progress: TrainingProgress,
    *,
    epoch: int,
    condition_ranges: Mapping[str, ConditionRange],
    ema: ExponentialMovingAverage | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    options: TrainingOptions,
    full: bool,
) -> dict[str, Any]:
    """The entries :func:`~flowlet.generative.checkpoint.save_checkpoint` adds; ``full`` adds what resuming needs."""
    entries: dict[str, Any] = {
        "step": progress.step,
        "epoch": epoch,
        "best_val_loss": progress.best_metric,
        "condition_ranges": {name: [r.min, r.max] for name, r in condition_ranges.items()},
    }
    if ema is not None:
        entries["ema_state_dict"] = ema.state_dict()
        entries["ema_num_updates"] = ema.num_updates
    if full:
        entries.update(
            optimizer_state_dict=optimizer.state_dict(),
            scheduler_state_dict=scheduler.state_dict(),
            scaler_state_dict=scaler.state_dict(),
            elapsed_seconds=progress.elapsed_seconds,
            loss_interval=dict(progress.interval),
            selection_interval=dict(progress.selection),
            training_options=recorded_options(options),
        )
    return entries


def recorded_options(options: TrainingOptions) -> dict[str, Any]:
    """``options`` as a checkpoint stores them (paths as strings, tuples as lists)."""
    return {field: _as_recorded(value) for field, value in dataclasses.asdict(options).items()}


def _as_recorded(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value


def table_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def changed_settings(checkpoint: Mapping[str, Any], options: TrainingOptions) -> list[str]:
    """The options deciding what a run learns that differ between ``checkpoint``'s run and ``options``, and the
    training table when its contents changed.

    An option the checkpoint does not record counts as its default: the run was trained before the option existed,
    which is what its default does. A checkpoint that records no options at all is compared on its table only.
    """
    stored = checkpoint.get("training_options", {})
    requested = recorded_options(options)
    defaults = {name: _as_recorded(value) for name, value in option_defaults().items()}
    changed = [
        name
        for name, value in requested.items()
        if stored and name not in RUN_ONLY_OPTIONS and stored.get(name, defaults.get(name)) != value
    ]
    digest = checkpoint.get("config", {}).get(TABLE_DIGEST_KEY)
    if digest is not None and digest != table_digest(options.table):
        changed.append("the training table's contents")
    return changed


def restore_from_checkpoint(
    checkpoint: Mapping[str, Any],
    path: Path,
    *,
    model: torch.nn.Module,
    ema: ExponentialMovingAverage | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> TrainingProgress:
    """Load a full checkpoint into freshly built parts and return the progress it records."""
    model.load_state_dict(checkpoint["flow_net_state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
    scaler.load_state_dict(checkpoint["scaler_state_dict"])
    if ema is not None:
        if "ema_state_dict" in checkpoint:
            ema.load_state_dict(checkpoint["ema_state_dict"], checkpoint["ema_num_updates"])
        else:
            log.warning("%s has no EMA weights; the average restarts from the current weights", path)
    return TrainingProgress(
        step=int(checkpoint["step"]),
        best_metric=float(checkpoint["best_val_loss"]),
        elapsed_seconds=float(checkpoint["elapsed_seconds"]),
        interval=dict(checkpoint["loss_interval"]),
        selection=dict(checkpoint["selection_interval"]),
    )
