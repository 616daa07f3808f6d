"""Which volumes each training step sees, the learning-rate schedule, and the train/validation split.

All three are pure functions of the seed (and the step), never of state carried between steps, which is
what lets a run resume mid-epoch exactly and lets any number of processes share one stream of batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from flowlet.generative.distributed import SINGLE_PROCESS, Distributed
from flowlet.generative.seeds import STREAM_AUGMENT, STREAM_SPLIT, derived_seed


class BatchSchedule:
    """Which volumes step s uses: a stream of seeded epoch permutations, consumed batch_size x world_size at a time.

    Step s (1-based) takes global stream positions [(s-1) G, s G) with G = batch_size x world_size; rank r
    takes positions r B .. (r+1) B - 1 of that slice. Epoch e's order is a permutation seeded by (seed, e),
    so any step's batch is computable directly, which is what makes mid-epoch resumption exact.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, distributed: Distributed = SINGLE_PROCESS) -> None:
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


def split_records(num_records: int, val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/validation split of row indices; no validation set when val_split is 0 or only one row."""
    order = np.random.default_rng([seed, STREAM_SPLIT]).permutation(num_records)
    num_val = round(num_records * val_split) if num_records > 1 else 0
    num_val = min(max(num_val, 1 if val_split > 0 and num_records > 1 else 0), num_records - 1)
    return sorted(order[num_val:].tolist()), sorted(order[:num_val].tolist())
