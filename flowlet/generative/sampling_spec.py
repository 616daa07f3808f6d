"""What training tells sampling: one small record saved with the weights, read by one function.

A network's output only means something together with how it was trained: at which working resolution
(``downsample``) and for which full-resolution grid, whether it predicts the velocity or the clean data
(``prediction``), and in which units the wavelet bands were (``band_mean`` / ``band_std``: every subband
standardised over the training set, or raw Haar bands as in the reference). Training writes this record into
the checkpoint's config (key ``sampling``, so config.json carries it too); :func:`sampling_spec` reads it back,
and a checkpoint without one (the reference's, or ours from before the record existed) is sampled as the
reference does: velocity on raw bands.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from flowlet.errors import FlowletError

log = logging.getLogger(__name__)

SPEC_KEY = "sampling"
PREDICTIONS = ("velocity", "data")
# Data prediction turns into a velocity through 1 / (1 - t); this floor keeps it finite as t -> 1.
MIN_REMAINING_TIME = 0.05


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    downsample: int = 1
    full_resolution_size: tuple[int, ...] | None = None
    prediction: str = "velocity"
    band_mean: tuple[float, ...] | None = None
    band_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise FlowletError(f"prediction must be one of {list(PREDICTIONS)}, got {self.prediction!r}")
        if (self.band_mean is None) != (self.band_std is None):
            raise FlowletError("band statistics need both band_mean and band_std")
        if self.band_std is not None and (len(self.band_std) != len(self.band_mean) or min(self.band_std) <= 0):
            raise FlowletError(f"band_std must be positive and as long as band_mean, got {list(self.band_std)}")
        if self.downsample < 1:
            raise FlowletError(f"downsample must be at least 1, got {self.downsample}")

    @property
    def standardised(self) -> bool:
        return self.band_mean is not None

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (like.dim() - 2)
        mean = torch.tensor(self.band_mean, dtype=like.dtype, device=like.device).reshape(shape)
        std = torch.tensor(self.band_std, dtype=like.dtype, device=like.device).reshape(shape)
        return mean, std

    def to_model_units(self, bands: torch.Tensor) -> torch.Tensor:
        """Haar bands (N, 8C, ...) -> the units the network was trained in."""
        if not self.standardised:
            return bands
        mean, std = self._statistics(bands)
        return (bands - mean) / std

    def from_model_units(self, bands: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_model_units`."""
        if not self.standardised:
            return bands
        mean, std = self._statistics(bands)
        return bands * std + mean

    def velocity(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The straight-path velocity the network's output stands for."""
        if self.prediction == "velocity":
            return output
        remaining = (1 - t.to(x_t.dtype)).clamp_min(MIN_REMAINING_TIME).reshape(-1, *([1] * (x_t.dim() - 1)))
        return (output - x_t) / remaining

    def to_dict(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str) -> SamplingSpec:
        unknown = sorted(set(values) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise FlowletError(f"{where}: unknown keys {unknown} in the '{SPEC_KEY}' record")

        def numbers(key: str) -> tuple | None:
            value = values.get(key)
            return None if value is None else tuple(value)

        try:
            return cls(
                downsample=int(values.get("downsample", 1)),
                full_resolution_size=numbers("full_resolution_size"),
                prediction=str(values.get("prediction", "velocity")),
                band_mean=numbers("band_mean"),
                band_std=numbers("band_std"),
            )
        except (TypeError, ValueError) as error:
            raise FlowletError(f"{where}: malformed '{SPEC_KEY}' record: {error}") from None


def sampling_spec(extra: Mapping[str, Any], where: str = "generator config") -> SamplingSpec:
    """The record in a config's extra keys; a config without one samples as the reference does (one log line)."""
    if SPEC_KEY in extra:
        return SamplingSpec.from_dict(extra[SPEC_KEY], where)
    log.info(
        "%s records no prediction target or band statistics: sampling as the reference does "
        "(velocity prediction on raw Haar bands)",
        where,
    )
    # Our checkpoints from before the record kept the working resolution as two loose keys.
    size = extra.get("full_resolution_size")
    return SamplingSpec(int(extra.get("downsample", 1)), tuple(size) if size is not None else None)


def band_statistics(bands: Sequence[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation over every voxel of every (8C, ...) band volume, in float64."""
    channels = bands[0].shape[0]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for volume in bands:
        flat = volume.reshape(channels, -1).double()
        total += flat.sum(dim=1)
        squares += (flat**2).sum(dim=1)
        count += flat.shape[1]
    mean = total / count
    std = (squares / count - mean**2).clamp_min(0).sqrt()
    if not bool((std > 0).all()):
        raise FlowletError("a wavelet band is constant over the training set; cannot standardise it")
    return tuple(mean.tolist()), tuple(std.tolist())
