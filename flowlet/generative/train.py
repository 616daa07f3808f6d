"""Train (or resume training) the wavelet flow-matching generator in one call.

:mod:`~flowlet.generative.training_setup` assembles the parts and :mod:`~flowlet.generative.train_loop` runs
them; the latter states the guarantees (exact resumption, seeded per-step draws, DDP).
"""

from __future__ import annotations

from flowlet.generative.distributed import leave_distributed
from flowlet.generative.train_loop import TrainingSummary
from flowlet.generative.training_options import TrainingOptions
from flowlet.generative.training_setup import build_training
from flowlet.generative.unet import UNetConfig


def train(options: TrainingOptions, config: UNetConfig, threads: int | None = None) -> TrainingSummary:
    """Train (or resume training) and return where it stopped."""
    loop = build_training(options, config, threads)
    try:
        return loop.run()
    finally:
        leave_distributed(loop.distributed)
