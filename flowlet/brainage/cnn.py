"""3D CNN brain-age regressors in PyTorch: SFCN (Peng et al. 2021, the default) and the paper's 3D DenseNet-121.

Both regress the standardised age with an L1 loss. SFCN here keeps Peng et al.'s
layout (five conv3-BN-maxpool-ReLU blocks, a conv1-BN-ReLU block, global average
pooling, dropout, a 1x1x1 convolution) with a single regression output instead of
the soft-classification head, and configurable widths so it runs on a CPU at small
size. DenseNet-121 follows Huang et al. with 3D layers (growth 32, blocks 6-12-24-16),
as in the FlowLet paper's brain-age evaluation. Training follows the paper: SGD
(momentum 0.9), learning rate 0.01, cosine annealing with warm restarts (T0 17,
T_mult 2), batch 16 by default.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from flowlet.devices import resolve_device
from flowlet.errors import FlowletError

log = logging.getLogger(__name__)

CNN_ARCHITECTURES = ("sfcn", "densenet121")
DEFAULT_SFCN_CHANNELS = (8, 16, 32, 64, 64, 32)
PAPER_SFCN_CHANNELS = (32, 64, 128, 256, 256, 64)


class SFCN(nn.Module):
    def __init__(self, channels: Sequence[int] = DEFAULT_SFCN_CHANNELS, dropout: float = 0.5):
        super().__init__()
        if len(channels) < 2:
            raise FlowletError(f"--cnn-channels needs at least two widths for SFCN, got {list(channels)}")
        layers: list[nn.Module] = []
        in_channels = 1
        for width in channels[:-1]:
            layers += [
                nn.Conv3d(in_channels, width, kernel_size=3, padding=1),
                nn.BatchNorm3d(width),
                # ceil_mode lets the network accept small (downsampled) inputs without shrinking a side to zero.
                nn.MaxPool3d(2, stride=2, ceil_mode=True),
                nn.ReLU(inplace=True),
            ]
            in_channels = width
        layers += [
            nn.Conv3d(in_channels, channels[-1], kernel_size=1),
            nn.BatchNorm3d(channels[-1]),
            nn.ReLU(inplace=True),
        ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Dropout(dropout), nn.Conv3d(channels[-1], 1, kernel_size=1)
        )

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(volumes)).flatten()


class _DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int, bottleneck: int = 4):
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm3d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(in_channels, bottleneck * growth, kernel_size=1, bias=False),
            nn.BatchNorm3d(bottleneck * growth),
            nn.ReLU(inplace=True),
            nn.Conv3d(bottleneck * growth, growth, kernel_size=3, padding=1, bias=False),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([features, self.layers(features)], dim=1)


class DenseNet3D(nn.Module):
    def __init__(self, growth: int = 32, blocks: Sequence[int] = (6, 12, 24, 16), init_features: int = 64):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv3d(1, init_features, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm3d(init_features),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        ]
        channels = init_features
        for index, n_layers in enumerate(blocks):
            for _ in range(n_layers):
                layers.append(_DenseLayer(channels, growth))
                channels += growth
            if index < len(blocks) - 1:
                layers += [
                    nn.BatchNorm3d(channels),
                    nn.ReLU(inplace=True),
                    nn.Conv3d(channels, channels // 2, kernel_size=1, bias=False),
                    nn.AvgPool3d(2, stride=2, ceil_mode=True),
                ]
                channels //= 2
        layers += [nn.BatchNorm3d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool3d(1)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(volumes).flatten(1)).flatten()


@dataclass(frozen=True)
class CNNSettings:
    architecture: str = "sfcn"
    channels: tuple[int, ...] = DEFAULT_SFCN_CHANNELS
    densenet_growth: int = 32
    densenet_blocks: tuple[int, ...] = (6, 12, 24, 16)
    densenet_init_features: int = 64
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 0.01
    weight_decay: float = 1e-4
    device: str = "auto"

    def build(self) -> nn.Module:
        if self.architecture == "sfcn":
            return SFCN(self.channels)
        if self.architecture == "densenet121":
            return DenseNet3D(self.densenet_growth, self.densenet_blocks, self.densenet_init_features)
        raise FlowletError(f"--cnn-arch must be one of {', '.join(CNN_ARCHITECTURES)}, got {self.architecture!r}")


class CNNRegressor:
    """Fit/predict wrapper: trains a fresh network on standardised ages, predicts ages in years."""

    def __init__(self, settings: CNNSettings, seed: int):
        self.settings = settings
        self.seed = seed
        self.device = resolve_device(settings.device)
        self.network: nn.Module | None = None
        self.age_mean = 0.0
        self.age_scale = 1.0

    def fit(self, volumes: np.ndarray, ages: np.ndarray) -> CNNRegressor:
        settings = self.settings
        if settings.epochs < 1 or settings.batch_size < 1:
            raise FlowletError(
                f"--cnn-epochs and --cnn-batch-size must be positive, got {settings.epochs} and {settings.batch_size}"
            )
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        ages = np.asarray(ages, dtype=np.float32)
        self.age_mean = float(ages.mean())
        self.age_scale = float(ages.std()) or 1.0
        inputs = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32)).unsqueeze(1)
        targets = torch.from_numpy((ages - self.age_mean) / self.age_scale)
        network = settings.build().to(self.device)
        optimizer = torch.optim.SGD(
            network.parameters(), lr=settings.learning_rate, momentum=0.9, weight_decay=settings.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=17, T_mult=2)
        loss_function = nn.L1Loss()
        batches_per_epoch = max(1, int(np.ceil(len(inputs) / settings.batch_size)))
        network.train()
        for epoch in tqdm(
            range(settings.epochs), desc=f"{settings.architecture} seed {self.seed}", unit="epoch", leave=False
        ):
            order = torch.randperm(len(inputs), generator=generator)
            for batch in range(batches_per_epoch):
                chosen = order[batch * settings.batch_size : (batch + 1) * settings.batch_size]
                if len(chosen) < 2:
                    # Batch norm cannot normalise a batch of one; the subject is seen again next epoch.
                    continue
                optimizer.zero_grad()
                loss = loss_function(network(inputs[chosen].to(self.device)), targets[chosen].to(self.device))
                loss.backward()
                optimizer.step()
                schedule.step(epoch + (batch + 1) / batches_per_epoch)
        self.network = network
        return self

    @torch.no_grad()
    def predict(self, volumes: np.ndarray) -> np.ndarray:
        if self.network is None:
            raise FlowletError("the CNN must be fitted before it predicts")
        self.network.eval()
        outputs = []
        for start in range(0, len(volumes), self.settings.batch_size):
            chunk = torch.from_numpy(
                np.ascontiguousarray(volumes[start : start + self.settings.batch_size], dtype=np.float32)
            )
            outputs.append(self.network(chunk.unsqueeze(1).to(self.device)).cpu().numpy())
        return np.concatenate(outputs) * self.age_scale + self.age_mean
