"""The generator's training loop: optimisation steps, validation, the loss log and checkpoints.

Every random draw of optimisation step s (which volumes, their augmentation, t, the noise, condition
dropout, network dropout) comes from generators seeded by (seed, s, ...), never from state carried over
from step s - 1. Resuming from a checkpoint written after step k therefore continues exactly as the
uninterrupted run would have, with no RNG state to save (:mod:`flowlet.generative.training_state` lists
what the checkpoint holds).

Under ``torchrun`` (WORLD_SIZE > 1) each rank takes its slice of every step's global batch
(batch_size x world_size items of one seeded stream of epoch permutations), gradients are averaged by
DistributedDataParallel, validation is sharded and summed, and only rank 0 writes files.

The loop receives its parts built, and restored when resuming; :mod:`flowlet.generative.training_setup`
assembles them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from flowlet.errors import FlowletError
from flowlet.generative.checkpoint import save_checkpoint
from flowlet.generative.conditions import ConditionRange, save_condition_ranges
from flowlet.generative.data import VolumeDataset, collate
from flowlet.generative.distributed import Distributed
from flowlet.generative.ema import ExponentialMovingAverage
from flowlet.generative.flows import TimeSampler
from flowlet.generative.loss import prediction_and_target, wavelet_flow_loss
from flowlet.generative.loss_log import LossLog
from flowlet.generative.sampling_spec import TENSORS_KEY, SamplingSpec
from flowlet.generative.schedule import BatchSchedule, StepBatchSampler
from flowlet.generative.seeds import STREAM_MODEL, STREAM_NOISE, STREAM_TIME, STREAM_VALIDATION, derived_seed
from flowlet.generative.training_options import TrainingOptions
from flowlet.generative.training_state import (
    TrainingProgress,
    checkpoint_entries,
    empty_loss_sums,
    empty_selection_sums,
)
from flowlet.generative.unet import FlowUNet, UNetConfig
from flowlet.generative.wavelets import dwt3d

log = logging.getLogger(__name__)

# Validation scores each volume at these many evenly spaced times (fixed noise), for a low-variance estimate.
VALIDATION_TIMES = 4


@dataclasses.dataclass
class TrainingSummary:
    steps_done: int
    best_metric: float
    output_dir: Path


class TrainLoop:
    """Runs the optimisation steps of ``options`` from ``progress.step`` on, writing into ``options.output_dir``.

    ``network`` is ``model`` as the forward pass sees it: the model itself, or its DistributedDataParallel
    wrapper under torchrun. ``condition_ranges`` and ``config`` are written next to the checkpoints so that
    sampling can read them.
    """

    def __init__(
        self,
        *,
        options: TrainingOptions,
        config: UNetConfig,
        spec: SamplingSpec,
        model: FlowUNet,
        network: torch.nn.Module,
        ema: ExponentialMovingAverage | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        train_set: VolumeDataset,
        val_set: VolumeDataset | None,
        schedule: BatchSchedule,
        flow: Any,
        sample_times: TimeSampler,
        condition_ranges: Mapping[str, ConditionRange],
        device: torch.device,
        distributed: Distributed,
        autocast_dtype: torch.dtype | None,
        loss_log: LossLog,
        progress: TrainingProgress,
    ) -> None:
        self.options = options
        self.output_dir = Path(options.output_dir)
        self.config = config
        self.spec = spec
        self.model = model
        self.network = network
        self.ema = ema
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.train_set = train_set
        self.val_set = val_set
        self.schedule = schedule
        self.flow = flow
        self.sample_times = sample_times
        self.condition_ranges = condition_ranges
        self.device = device
        self.distributed = distributed
        self.autocast_dtype = autocast_dtype
        self.loss_log = loss_log
        self.progress = progress

    # ---- files

    def _save(self, name: str, full: bool) -> None:
        if not self.distributed.is_main:
            return
        entries = checkpoint_entries(
            self.progress,
            epoch=int(self.schedule.epoch(self.progress.step)),
            condition_ranges=self.condition_ranges,
            ema=self.ema,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            options=self.options,
            full=full,
        )
        tensors = self.spec.tensors()
        if tensors:
            entries[TENSORS_KEY] = tensors
        save_checkpoint(self.output_dir / name, self.model, self.config, entries)

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
        options, step, rank = self.options, self.progress.step + 1, self.distributed.rank
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
        options, progress = self.options, self.progress
        if progress.step >= options.steps:
            log.info(
                "training in %s is already complete (%d of %d steps)", self.output_dir, progress.step, options.steps
            )
            return TrainingSummary(progress.step, progress.best_metric, self.output_dir)
        self._write_run_files()
        self.loss_log.start(progress.step)
        last_step = options.steps
        if options.max_steps_per_run is not None:
            last_step = min(last_step, progress.step + options.max_steps_per_run)
        loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=StepBatchSampler(self.schedule, progress.step + 1, last_step),
            collate_fn=collate,
            num_workers=options.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        progress_bar = tqdm(
            total=options.steps,
            initial=progress.step,
            desc="training",
            unit="step",
            disable=not self.distributed.is_main,
        )
        started = time.perf_counter() - progress.elapsed_seconds
        for batch in loader:
            lr = self.optimizer.param_groups[0]["lr"]
            total, lll, detail = self._train_step(batch)
            if not math.isfinite(total):
                raise FlowletError(
                    f"training loss became {total} at step {progress.step + 1}; lower --lr or use --precision fp32/bf16"
                )
            progress.step += 1
            for key, value in (("total", total), ("lll", lll), ("detail", detail)):
                progress.interval[key] += value
            progress.interval["count"] += 1
            progress.selection["total"] += total
            progress.selection["count"] += 1
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{total:.4g}", lr=f"{lr:.2e}")

            final = progress.step == last_step
            evaluation_step = progress.step % options.val_every == 0 or progress.step == options.steps
            val_loss = self.validate() if evaluation_step else None
            # Rows fall on the log grid, validation steps and the last step only (not where --max-steps-per-run
            # pauses), so a paused-and-resumed run logs exactly the rows of an uninterrupted one.
            if progress.step % options.log_every == 0 or val_loss is not None or progress.step == options.steps:
                progress.elapsed_seconds = time.perf_counter() - started
                count = progress.interval["count"]
                self.loss_log.append(
                    {
                        "step": progress.step,
                        "epoch": self.schedule.epoch(progress.step),
                        "train_loss": progress.interval["total"] / count,
                        "lll": progress.interval["lll"] / count,
                        "detail": progress.interval["detail"] / count,
                        "val_loss": val_loss,
                        "lr": lr,
                        "seconds": progress.elapsed_seconds,
                    }
                )
                progress.interval = empty_loss_sums()
            if evaluation_step:
                self._select_best(val_loss)
            if progress.step % options.checkpoint_every == 0 or final:
                progress.elapsed_seconds = time.perf_counter() - started
                self._save("checkpoint_last.pth", full=True)
                self.loss_log.plot()
        progress_bar.close()
        if self.distributed.active:
            dist.barrier()
        if progress.step < options.steps:
            log.info(
                "stopped after step %d of %d (--max-steps-per-run); rerun to continue", progress.step, options.steps
            )
        return TrainingSummary(progress.step, progress.best_metric, self.output_dir)

    def _select_best(self, val_loss: float | None) -> None:
        """Keep checkpoint_best.pth at the lowest validation loss (mean training loss when there is no validation set)."""
        progress = self.progress
        if val_loss is None:
            if not progress.selection["count"]:
                return
            metric = progress.selection["total"] / progress.selection["count"]
        else:
            metric = val_loss
        progress.selection = empty_selection_sums()
        if metric < progress.best_metric:
            progress.best_metric = metric
            self._save("checkpoint_best.pth", full=False)
