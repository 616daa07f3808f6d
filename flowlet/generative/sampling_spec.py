"""What training tells sampling: one small record saved with the weights, read by one function.

A network's output only means something together with how it was trained: at which working resolution
(``downsample``) and for which full-resolution grid, whether it predicts the velocity or the clean data
(``prediction``), and in which units the wavelet bands were: raw Haar bands as in the reference, every subband
standardised over the training set (``band_mean`` / ``band_std``), or every coefficient standardised by its own
mean and spread over the training set (``standardise_per`` "voxel": ``voxel_mean`` / ``voxel_std``, one value per
band and voxel). Training writes the record into the checkpoint's config (key ``sampling``, so config.json
carries it too) and the per-voxel maps, too large for a config, into the checkpoint beside the weights (key
``sampling_tensors``); :func:`sampling_spec` reads them back, and a checkpoint without a record (the
reference's, or ours from before the record existed) is sampled as the reference does: velocity on raw bands.

Per-voxel units matter where the training brains agree: outside every brain, and where they all have the same
tissue, a coefficient's spread is small, so an error of the network there is scaled down by it when the bands
are turned back into an image. With subband units the same error is scaled by the subband's spread over the
whole volume, and a short run leaves a haze around the brain that real images never have.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from flowlet.errors import FlowletError

log = logging.getLogger(__name__)

SPEC_KEY = "sampling"
TENSORS_KEY = "sampling_tensors"
PREDICTIONS = ("velocity", "data", "preconditioned")
TENSOR_FIELDS = ("voxel_mean", "voxel_std")
STANDARDISE_PER = ("subband", "voxel")
# Data prediction turns into a velocity through 1 / (1 - t); this floor keeps it finite as t -> 1.
MIN_REMAINING_TIME = 0.05


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    downsample: int = 1
    full_resolution_size: tuple[int, ...] | None = None
    prediction: str = "velocity"
    band_mean: tuple[float, ...] | None = None
    band_std: tuple[float, ...] | None = None
    standardise_per: str = "subband"
    # (8C, ...) on the model's wavelet grid; saved beside the weights, not in the config (see the module doc).
    voxel_mean: torch.Tensor | None = dataclasses.field(default=None, compare=False, repr=False)
    voxel_std: torch.Tensor | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise FlowletError(f"prediction must be one of {list(PREDICTIONS)}, got {self.prediction!r}")
        if self.standardise_per not in STANDARDISE_PER:
            raise FlowletError(f"standardise_per must be one of {list(STANDARDISE_PER)}, got {self.standardise_per!r}")
        if (self.voxel_mean is None) != (self.voxel_std is None):
            raise FlowletError("per-voxel band statistics need both voxel_mean and voxel_std")
        if self.voxel_std is not None and (
            self.voxel_std.shape != self.voxel_mean.shape or not bool((self.voxel_std > 0).all())
        ):
            raise FlowletError("voxel_std must be positive and shaped like voxel_mean")
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
        if self.standardise_per == "voxel":
            if self.voxel_mean is None:
                raise FlowletError(
                    f"this generator was trained on per-voxel standardised bands, but its maps (checkpoint key "
                    f"'{TENSORS_KEY}') were not loaded: sample from the checkpoint, not from config.json alone"
                )
            return self.voxel_mean.to(like)[None], self.voxel_std.to(like)[None]
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
        return (clean_data(output, x_t, t, self.prediction) - x_t) / remaining

    def to_dict(self) -> dict[str, Any]:
        """The config record (without the per-voxel maps: :meth:`tensors`)."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            if field.name not in TENSOR_FIELDS
            for value in [getattr(self, field.name)]
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the checkpoint stores under :data:`TENSORS_KEY`; empty unless standardised per voxel."""
        if self.voxel_mean is None:
            return {}
        return {"voxel_mean": self.voxel_mean.cpu(), "voxel_std": self.voxel_std.cpu()}

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], where: str, tensors: Mapping[str, torch.Tensor] | None = None
    ) -> SamplingSpec:
        """``tensors``: the checkpoint's :data:`TENSORS_KEY` entry; None when only a config is at hand."""
        unknown = sorted(set(values) - {field.name for field in dataclasses.fields(cls)} - set(TENSOR_FIELDS))
        if unknown:
            raise FlowletError(f"{where}: unknown keys {unknown} in the '{SPEC_KEY}' record")

        def numbers(key: str) -> tuple | None:
            value = values.get(key)
            return None if value is None else tuple(value)

        maps = {}
        if values.get("standardise_per") == "voxel" and tensors is not None:
            missing = [name for name in TENSOR_FIELDS if name not in tensors]
            if missing:
                raise FlowletError(
                    f"{where}: trained on per-voxel standardised bands, but the checkpoint lacks {missing} "
                    f"under '{TENSORS_KEY}'"
                )
            maps = {name: tensors[name].float() for name in TENSOR_FIELDS}

        try:
            return cls(
                downsample=int(values.get("downsample", 1)),
                full_resolution_size=numbers("full_resolution_size"),
                prediction=str(values.get("prediction", "velocity")),
                band_mean=numbers("band_mean"),
                band_std=numbers("band_std"),
                standardise_per=str(values.get("standardise_per", "subband")),
                **maps,
            )
        except (TypeError, ValueError) as error:
            raise FlowletError(f"{where}: malformed '{SPEC_KEY}' record: {error}") from None


def clean_data(output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
    """The clean bands x1 a data-predicting network's output stands for.

    ``preconditioned`` (EDM's preconditioning, Karras et al. 2022, for the straight path x_t = t x1 + (1 - t) x0
    with unit-variance bands and noise): x1_hat = c_skip x_t + c_out F, c_skip = t / (t^2 + (1 - t)^2) being the
    best linear guess of x1 from x_t and c_out = (1 - t) / sqrt(t^2 + (1 - t)^2) the spread of what it misses.
    Near t = 1 the network then only corrects x_t; asked to predict x1 outright (``data``), a short run stays far
    worse there than x_t itself, and its error is the noisy texture of the samples.
    """
    if prediction == "data":
        return output
    t = t.to(output.dtype).reshape(-1, *([1] * (output.dim() - 1)))
    norm = t**2 + (1 - t) ** 2
    return t / norm * x_t + (1 - t) / norm.sqrt() * output


def sampling_spec(
    extra: Mapping[str, Any], where: str = "generator config", checkpoint: Mapping[str, Any] | None = None
) -> SamplingSpec:
    """The record in a config's extra keys, with the per-voxel maps of ``checkpoint`` (the loaded payload) when
    given; a config without a record samples as the reference does (one log line)."""
    if SPEC_KEY in extra:
        return SamplingSpec.from_dict(
            extra[SPEC_KEY], where, None if checkpoint is None else checkpoint.get(TENSORS_KEY, {})
        )
    log.info(
        "%s records no prediction target or band statistics: sampling as the reference does "
        "(velocity prediction on raw Haar bands)",
        where,
    )
    # Our checkpoints from before the record kept the working resolution as two loose keys.
    size = extra.get("full_resolution_size")
    return SamplingSpec(int(extra.get("downsample", 1)), tuple(size) if size is not None else None)


def band_standardisation(
    bands: Iterable[torch.Tensor], per: str = "subband", voxel_std_floor: float = 0.2
) -> dict[str, Any]:
    """The :class:`SamplingSpec` fields that standardise the training set's (8C, ...) band volumes ``bands``.

    Every subband's mean and standard deviation over all its voxels, in float64; with ``per`` "voxel" also each
    coefficient's own, its spread floored at ``voxel_std_floor`` times its subband's (outside every brain the
    spread is 0, and augmentation moves tissue there: an unfloored division would turn that into huge values).
    """
    total = squares = None
    count = 0
    for volume in bands:
        volume = volume.double()
        if total is None:
            total, squares = torch.zeros_like(volume), torch.zeros_like(volume)
        total += volume
        squares += volume**2
        count += 1
    if not count:
        raise FlowletError("no training volumes to standardise the wavelet bands by")
    channels = total.shape[0]
    per_band = count * total[0].numel()
    band_mean = total.reshape(channels, -1).sum(dim=1) / per_band
    band_std = (squares.reshape(channels, -1).sum(dim=1) / per_band - band_mean**2).clamp_min(0).sqrt()
    if not bool((band_std > 0).all()):
        raise FlowletError("a wavelet band is constant over the training set; cannot standardise it")
    fields: dict[str, Any] = {"band_mean": tuple(band_mean.tolist()), "band_std": tuple(band_std.tolist())}
    if per == "voxel":
        mean = total / count
        std = (squares / count - mean**2).clamp_min(0).sqrt()
        floor = voxel_std_floor * band_std.reshape(-1, *([1] * (mean.dim() - 1)))
        fields.update(standardise_per="voxel", voxel_mean=mean.float(), voxel_std=torch.maximum(std, floor).float())
    return fields
