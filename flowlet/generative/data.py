"""Training data for the generator: preprocessed MNI-space volumes listed in a TSV, cached in memory.

Each volume goes through the reference loader transform: clip to its own 0.5-99.5 percentiles (over the
whole volume) and map linearly to [-1, 1]. Training adds the documented augmentation (rotation up to 5
degrees per axis with p 0.4, intensity scaling up to 20 % with p 0.2, Gaussian noise of std 0.02 with
p 0.2), drawn from a generator the caller seeds per sample so that runs are reproducible and resumable.
Volumes are then replicate-padded to the model input size.

``downsample`` > 1 trains at a coarser working resolution (2: the 2 mm grid becomes 4 mm) by block
averaging; :func:`upsample_to_grid` is its counterpart at generation time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from flowlet.data.nifti import load_nifti
from flowlet.data.tables import read_tsv, resolve_image_path
from flowlet.errors import FlowletError
from flowlet.generative.conditions import ConditionRange, normalise_conditions
from flowlet.generative.requests import CONDITION_COLUMNS
from flowlet.generative.wavelets import pad_to_size

# Sex is coded 0 = female, 1 = male.
SEX_CODES = {"0": 0.0, "1": 1.0, "f": 0.0, "m": 1.0, "female": 0.0, "male": 1.0}
CLIP_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class TrainingRecord:
    """One row of the training table: the image path and its raw condition values (age in years, sex 0/1)."""

    image: Path
    conditions: dict[str, float]


def _parse_sex(value: object, where: str) -> float:
    key = str(value).strip().lower()
    if key.endswith(".0"):
        key = key[:-2]
    if key not in SEX_CODES:
        raise FlowletError(f"{where}: sex must be 0/1 or M/F, got {value!r}")
    return SEX_CODES[key]


def read_training_table(path: str | Path, condition_vars: Sequence[str]) -> list[TrainingRecord]:
    """Rows of a TSV with columns ``image``, ``age``, [``sex``]; with a ``split`` column, only its ``train`` rows.

    Relative image paths are taken from the working directory where they exist there, else from the TSV's folder.
    """
    path = Path(path)
    table = read_tsv(path, "training table", dtype=str, keep_default_na=False)
    unknown = [name for name in condition_vars if name not in CONDITION_COLUMNS]
    if unknown:
        raise FlowletError(f"unknown condition variables {unknown}; supported: {list(CONDITION_COLUMNS)}")
    needed = ["image"] + [CONDITION_COLUMNS[name] for name in condition_vars]
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise FlowletError(f"training table {path} lacks columns {missing} (has {list(table.columns)})")
    if "split" in table.columns:
        # The workflow's split table: the generator learns from the real training subjects only.
        table = table[table["split"] == "train"]
    if table.empty:
        raise FlowletError(f"training table {path} has no training rows")
    records = []
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        where = f"{path} line {row_number}"
        image = resolve_image_path(row.image.strip(), path)
        values: dict[str, float] = {}
        for name in condition_vars:
            raw = getattr(row, CONDITION_COLUMNS[name])
            if name == "Sex":
                values[name] = _parse_sex(raw, where)
                continue
            try:
                values[name] = float(raw)
            except ValueError:
                raise FlowletError(f"{where}: {CONDITION_COLUMNS[name]} must be a number, got {raw!r}") from None
            if not math.isfinite(values[name]):
                raise FlowletError(f"{where}: {CONDITION_COLUMNS[name]} is not finite ({raw!r})")
        records.append(TrainingRecord(image, values))
    return records


def condition_ranges_from_records(records: Sequence[TrainingRecord]) -> dict[str, ConditionRange]:
    """Min and max of each condition over the records (the ``condition_ranges.json`` of a training run)."""
    ranges = {}
    for name in records[0].conditions:
        values = [record.conditions[name] for record in records]
        low, high = min(values), max(values)
        if not high > low:
            raise FlowletError(
                f"all training rows have {name} = {low}, so min-max normalisation is undefined; "
                "pass --condition-ranges with an explicit range"
            )
        ranges[name] = ConditionRange(low, high)
    return ranges


def percentile_to_unit_range(volume: np.ndarray, percentiles: tuple[float, float] = CLIP_PERCENTILES) -> np.ndarray:
    """Clip to the volume's own percentiles (whole volume, background included) and map linearly to [-1, 1]."""
    low, high = np.percentile(volume, percentiles)
    if not high > low:
        raise FlowletError(f"volume is constant between its {percentiles} percentiles ({low}); nothing to learn from")
    clipped = np.clip(volume, low, high)
    return ((clipped - low) / (high - low) * 2.0 - 1.0).astype(np.float32)


def working_shape(shape: Sequence[int], downsample: int) -> tuple[int, int, int]:
    """Grid size after :func:`downsample_volume`: each axis divided by ``downsample``, rounded up."""
    return tuple(math.ceil(int(size) / downsample) for size in shape)


def downsample_volume(volume: np.ndarray, downsample: int) -> np.ndarray:
    """Block-average by ``downsample`` per axis, replicate-padding the end of each axis to a whole block first."""
    if downsample == 1:
        return volume
    target = working_shape(volume.shape, downsample)
    pads = [(0, t * downsample - s) for t, s in zip(target, volume.shape)]
    padded = np.pad(volume, pads, mode="edge")
    blocks = padded.reshape(target[0], downsample, target[1], downsample, target[2], downsample)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def upsample_to_grid(volumes: torch.Tensor, downsample: int, size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`downsample_volume` for (N, C, d, h, w): trilinear upsampling, then drop the end padding.

    With ``align_corners=False`` each coarse voxel sits at the centre of the block it averaged, so the
    result is aligned with the original grid.
    """
    if downsample == 1:
        return volumes[..., : size[0], : size[1], : size[2]]
    upsampled = F.interpolate(volumes, scale_factor=downsample, mode="trilinear", align_corners=False)
    return upsampled[..., : size[0], : size[1], : size[2]]


def smallest_model_input_size(shape: Sequence[int], multiple: int) -> tuple[int, int, int]:
    """Smallest grid covering ``shape`` whose sides are multiples of ``multiple`` (what the U-Net accepts)."""
    return tuple(multiple * math.ceil(int(size) / multiple) for size in shape)


@dataclass(frozen=True)
class Augmentation:
    """The reference's training augmentation; each part fires independently with its probability."""

    max_rotation_degrees: float = 5.0
    rotation_probability: float = 0.4
    max_intensity_scaling: float = 0.2
    intensity_probability: float = 0.2
    noise_std: float = 0.02
    noise_probability: float = 0.2
    # Left-right mirroring (axis 0). Not in the reference; drawn after its draws so that the reference's part of
    # the stream is unchanged.
    flip_probability: float = 0.0
    # A smooth random deformation (not in the reference): the displacement's SD in working-grid voxels, drawn on
    # control points every ``elastic_spacing`` voxels. Drawn last, and only when on, so other streams keep theirs.
    elastic_std: float = 0.0
    elastic_spacing: float = 4.0

    def __call__(self, volume: np.ndarray, rng: np.random.Generator, mirrored: np.ndarray | None = None) -> np.ndarray:
        """``mirrored``: the volume mirrored before downsampling (exact about the midline); else mirrored here."""
        # Every draw is made whether or not it is used, so one sample's randomness never shifts another's.
        rotate, scale, add_noise = rng.random(3) < (
            self.rotation_probability,
            self.intensity_probability,
            self.noise_probability,
        )
        angles = np.deg2rad(rng.uniform(-self.max_rotation_degrees, self.max_rotation_degrees, size=3))
        factor = rng.uniform(1.0 - self.max_intensity_scaling, 1.0 + self.max_intensity_scaling)
        noise_seed = int(rng.integers(2**63))
        flip = self.flip_probability > 0 and rng.random() < self.flip_probability
        deformation_seed = int(rng.integers(2**63)) if self.elastic_std > 0 else None
        if flip:
            volume = mirrored if mirrored is not None else np.ascontiguousarray(volume[::-1])
        if deformation_seed is not None:
            volume = deform_volume(volume, self.elastic_std, self.elastic_spacing, deformation_seed)
        if rotate:
            volume = rotate_volume(volume, angles)
        if scale:
            volume = volume * np.float32(factor)
        if add_noise:
            noise = np.random.default_rng(noise_seed).standard_normal(volume.shape, dtype=np.float32)
            volume = volume + np.float32(self.noise_std) * noise
        return volume


def training_augmentation(reference: bool, flip_probability: float, elastic_std: float = 0.0) -> Augmentation | None:
    """What training draws per volume: the reference's rotation/intensity/noise when ``reference``, and left-right
    flips with ``flip_probability`` and smooth deformations of SD ``elastic_std`` working voxels either way; None
    when none of them.

    A generator learns the augmented distribution, not an invariance (augmentations leak into the samples,
    Karras et al. 2020): rotated, rescaled and noisy training volumes can come back as such samples.
    A mirrored brain is still a plausible brain, so flips add data without teaching anything real brains lack.
    """
    if reference:
        return Augmentation(flip_probability=flip_probability, elastic_std=elastic_std)
    if flip_probability == 0 and elastic_std == 0:
        return None
    # The reference's draws are still made, so the flips fall on the same volumes with or without it.
    return Augmentation(
        rotation_probability=0.0,
        intensity_probability=0.0,
        noise_probability=0.0,
        flip_probability=flip_probability,
        elastic_std=elastic_std,
    )


def deform_volume(volume: np.ndarray, std: float, spacing: float, seed: int) -> np.ndarray:
    """Warp the brain's interior by a smooth random displacement: Gaussian displacements of SD ``std`` voxels on
    control points every ``spacing`` voxels, interpolated by cubic splines (a shape another brain could have, not a
    blur).

    The outline stays where registration put it: the displacement fades from full strength three voxels inside the
    brain to none on its edge (the brain is what differs from the background, the median of the first and last
    slices). Moving the outline too made samples whose masks fit the template worse than any real brain's.
    """
    rng = np.random.default_rng(seed)
    control = tuple(max(2, math.ceil((size - 1) / spacing) + 1) for size in volume.shape)
    displacement = [
        ndimage.zoom(rng.normal(0.0, std, control), [s / c for s, c in zip(volume.shape, control)], order=3)
        for _ in range(3)
    ]
    background = np.median(np.concatenate([volume[0].ravel(), volume[-1].ravel()]))
    depth = ndimage.distance_transform_edt(np.abs(volume - background) > 1e-3)
    weight = np.clip((depth - 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
    coordinates = np.indices(volume.shape, dtype=np.float32) + np.stack(displacement).astype(np.float32) * weight
    return ndimage.map_coordinates(volume, coordinates, order=3, mode="nearest").astype(np.float32)


def rotate_volume(volume: np.ndarray, angles_rad: Sequence[float]) -> np.ndarray:
    """Rotate about the volume centre by the given angles around the three axes (linear interpolation)."""
    rotation = np.eye(3)
    for axis, angle in enumerate(angles_rad):
        cos, sin = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[i, i], step[i, j], step[j, i], step[j, j] = cos, -sin, sin, cos
        rotation = step @ rotation
    centre = (np.asarray(volume.shape) - 1) / 2.0
    # affine_transform maps output coordinates to input ones: x_in = R^T (x_out - c) + c.
    inverse = rotation.T
    offset = centre - inverse @ centre
    return ndimage.affine_transform(volume, inverse, offset=offset, order=1, mode="nearest").astype(np.float32)


class VolumeDataset(torch.utils.data.Dataset):
    """Volumes in [-1, 1] at the working resolution, padded to the model input size, with normalised conditions.

    Items are indexed by ``(volume_index, augmentation_seed)``; a seed of ``None`` (or a plain int index)
    returns the volume without augmentation, which is what validation uses.
    """

    def __init__(
        self,
        records: Sequence[TrainingRecord],
        volumes: Sequence[np.ndarray],
        condition_ranges: Mapping[str, ConditionRange],
        model_input_size: Sequence[int],
        augmentation: Augmentation | None = None,
        mirrored: Sequence[np.ndarray] | None = None,
    ) -> None:
        """``volumes`` (and ``mirrored``, for flip augmentation): the records' working-grid volumes from
        :func:`load_volumes`."""
        if not records:
            raise FlowletError("VolumeDataset needs at least one record")
        self.records = list(records)
        self.model_input_size = tuple(int(s) for s in model_input_size)
        self.augmentation = augmentation
        self.volumes = list(volumes)
        self.mirrored = list(mirrored) if mirrored is not None else None
        if len(self.volumes) != len(self.records):
            raise FlowletError(f"VolumeDataset got {len(self.volumes)} volumes for {len(self.records)} records")
        shapes = {volume.shape for volume in self.volumes}
        if len(shapes) != 1:
            raise FlowletError(f"volumes differ in shape after loading: {sorted(shapes)}")
        if any(s > m for s, m in zip(self.volumes[0].shape, self.model_input_size)):
            raise FlowletError(
                f"working grid {self.volumes[0].shape} is larger than the model input size {self.model_input_size}"
            )
        names = list(self.records[0].conditions)
        self.conditions = (
            normalise_conditions(
                {name: [record.conditions[name] for record in self.records] for name in names}, condition_ranges
            )
            if names
            else {}
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int | None]) -> dict[str, object]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        volume = self.volumes[index]
        if self.augmentation is not None and seed is not None:
            mirrored = self.mirrored[index] if self.mirrored is not None else None
            volume = self.augmentation(volume, np.random.default_rng(seed), mirrored)
        image = pad_to_size(torch.from_numpy(np.ascontiguousarray(volume))[None], self.model_input_size)
        return {
            "image": image,
            "conditions": {name: values[index] for name, values in self.conditions.items()},
            "index": index,
        }


def load_volumes(
    records: Sequence[TrainingRecord], downsample: int, mirrored: list[np.ndarray] | None = None
) -> tuple[list[np.ndarray], tuple[int, int, int]]:
    """Read, intensity-map and downsample every record once (the in-memory cache of a training run).

    Returns the working-grid volumes and the images' original shape. With a ``mirrored`` list, also appends
    each volume mirrored left-right at full resolution and then downsampled: on the 2 mm MNI grid (91 voxels,
    x = 0 at voxel 45) that mirror is exact, whereas mirroring after block averaging would shift by a voxel.
    """
    volumes = []
    reference_shape = None
    for record in tqdm(records, desc="loading volumes", leave=False):
        image = load_nifti(record.image, what="training image")
        data = np.asarray(image.dataobj, dtype=np.float32)
        if data.ndim != 3:
            raise FlowletError(f"training image {record.image} has shape {data.shape}; expected a 3D volume")
        if reference_shape is None:
            reference_shape = data.shape
        elif data.shape != reference_shape:
            raise FlowletError(
                f"training image {record.image} has shape {data.shape}, but {records[0].image} has {reference_shape}; "
                "all images must be on the same (MNI) grid"
            )
        unit = percentile_to_unit_range(data)
        volumes.append(downsample_volume(unit, downsample))
        if mirrored is not None:
            mirrored.append(downsample_volume(np.ascontiguousarray(unit[::-1]), downsample))
    return volumes, tuple(int(s) for s in reference_shape)


def collate(items: Sequence[dict[str, object]]) -> dict[str, object]:
    """Stack images (N, 1, D, H, W) and conditions ({name: (N, 1)}) of dataset items."""
    names = items[0]["conditions"].keys()
    return {
        "image": torch.stack([item["image"] for item in items]),
        "conditions": {name: torch.stack([item["conditions"][name] for item in items]) for name in names},
        "index": torch.tensor([item["index"] for item in items]),
    }
