"""Exponential moving average of a network's weights, kept in float32 under the network's own state-dict names.

Sampling from averaged weights gives smoother, better samples than the last iterate (the reference keeps
no EMA). The average is stored with the same names as ``flow_net_state_dict`` so a checkpoint's
``ema_state_dict`` loads straight into a :class:`~flowlet.generative.unet.FlowUNet`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn


class ExponentialMovingAverage:
    """``shadow <- d * shadow + (1 - d) * weights`` after every optimiser step.

    The effective decay is ``min(decay, (1 + n) / (10 + n))`` after n updates, so early in training the
    average follows the fast-moving weights instead of remembering the random initialisation for
    thousands of steps. Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {name: value.detach().float().clone() for name, value in model.state_dict().items()}
        self._parameter_names = {name for name, _ in model.named_parameters()}

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        for name, value in model.state_dict().items():
            if name in self._parameter_names:
                self.shadow[name].lerp_(value.detach().float(), 1.0 - decay)
            else:
                self.shadow[name].copy_(value)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (float32) under the model's state-dict names."""
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, torch.Tensor], num_updates: int) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} entries, e.g. {sorted(missing)[:3]}")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])
        self.num_updates = int(num_updates)

    @contextmanager
    def averaged_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``model`` (e.g. for validation), restoring them after."""
        backup = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict({name: value.to(backup[name].dtype) for name, value in self.shadow.items()})
        try:
            yield model
        finally:
            model.load_state_dict(backup)
