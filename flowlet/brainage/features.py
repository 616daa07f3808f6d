"""Brain-age inputs from MNI-space images: masked, block-downsampled voxel intensities, and regional-volume tables.

Every image must lie on FSL's MNI152 2 mm (or 1 mm) grid. Each volume is
block-averaged by the downsampling factor, and then re-standardised (zero mean, unit
standard deviation) inside the template brain mask, so that real and synthetic
volumes share one intensity scale even where their own brain masks differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from flowlet.data.nifti import load_nifti
from flowlet.data.tables import read_tsv
from flowlet.data.templates import MNI_GRIDS, template_brain_mask
from flowlet.errors import FlowletError

log = logging.getLogger(__name__)


def block_downsample(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor``-sized blocks; the volume is zero-padded up to a multiple of the factor."""
    if factor < 1:
        raise FlowletError(f"--downsample must be a positive integer, got {factor}")
    if factor == 1:
        return np.asarray(volume, dtype=np.float32)
    padded_shape = [int(np.ceil(size / factor)) * factor for size in volume.shape]
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[tuple(slice(0, size) for size in volume.shape)] = volume
    blocks = padded.reshape(padded_shape[0] // factor, factor, padded_shape[1] // factor, factor, padded_shape[2] // factor, factor)
    return blocks.mean(axis=(1, 3, 5))


def grid_resolution(image_shape: tuple[int, ...], affine: np.ndarray, path: Path, what: str) -> int:
    """The MNI grid (1 or 2 mm) an image lies on; a FlowletError when it lies on neither."""
    for resolution, (shape, grid_affine) in MNI_GRIDS.items():
        if tuple(image_shape[:3]) == shape and np.allclose(affine, grid_affine, atol=1e-3):
            return resolution
    raise FlowletError(
        f"{what}: {path} has shape {tuple(image_shape)} and is not on an MNI152 grid "
        f"(2 mm: {MNI_GRIDS[2][0]}, 1 mm: {MNI_GRIDS[1][0]}, FSL affine); run it through `flowlet preprocess`"
    )


@dataclass
class VoxelFeatures:
    """Downsampled volumes (for the CNN) and their masked voxel vectors (for the classical regressors), one row per image."""

    images: list[str]
    volumes: np.ndarray  # (n, x, y, z) float32, zero outside the mask
    mask: np.ndarray  # (x, y, z) bool, downsampled template brain mask
    resolution_mm: int
    downsample: int

    @property
    def matrix(self) -> np.ndarray:
        return self.volumes[:, self.mask]

    def rows(self, images: list[str]) -> np.ndarray:
        index = {image: i for i, image in enumerate(self.images)}
        return np.array([index[image] for image in images], dtype=int)


def downsampled_mask(resolution_mm: int, factor: int) -> np.ndarray:
    mask = np.asarray(template_brain_mask(resolution_mm).get_fdata(), dtype=np.float32)
    return block_downsample(mask, factor) >= 0.5


def load_voxel_features(images: list[str], downsample: int = 2, what: str = "brain-age input") -> VoxelFeatures:
    """Load, downsample and standardise every image once (they must all share one MNI grid)."""
    if not images:
        raise FlowletError(f"{what}: no images to load")
    resolution = None
    mask = None
    volumes = None
    for i, image_path in enumerate(tqdm(images, desc="loading volumes", unit="image", leave=False)):
        image = load_nifti(image_path, what=what)
        image_resolution = grid_resolution(image.shape, image.affine, Path(image_path), what)
        if resolution is None:
            resolution = image_resolution
            mask = downsampled_mask(resolution, downsample)
            volumes = np.zeros((len(images), *mask.shape), dtype=np.float32)
        elif image_resolution != resolution:
            raise FlowletError(f"{what}: {image_path} is on the {image_resolution} mm grid, the others on the {resolution} mm grid")
        data = np.asarray(image.get_fdata(dtype=np.float32))
        if data.ndim != 3:
            raise FlowletError(f"{what}: {image_path} has {data.ndim} dimensions; a 3D volume is needed")
        if not np.isfinite(data).all():
            raise FlowletError(f"{what}: {image_path} contains NaN or infinite voxels")
        small = block_downsample(data, downsample)
        inside = small[mask]
        spread = inside.std()
        if spread == 0:
            raise FlowletError(f"{what}: {image_path} is constant inside the brain mask")
        volumes[i][mask] = (inside - inside.mean()) / spread
    return VoxelFeatures(images=list(images), volumes=volumes, mask=mask, resolution_mm=resolution, downsample=downsample)


def read_regional_features(path: str | Path) -> pd.DataFrame:
    """A regional-feature table keyed by ``participant_id`` and/or ``image``; every other numeric column is a feature.

    `flowlet regional-measures` writes one (``regional_features.tsv``); any table of the same shape works,
    for example volumes from another segmentation tool.
    """
    what = "regional features"
    table = read_tsv(path, what, dtype={"participant_id": str, "image": str})
    keys = [column for column in ("participant_id", "image") if column in table.columns]
    if not keys:
        raise FlowletError(f"{what} {path} needs a participant_id or image column to match subjects")
    features = [column for column in table.columns if column not in keys and pd.api.types.is_numeric_dtype(table[column])]
    if not features:
        raise FlowletError(f"{what} {path} has no numeric region columns")
    if table[features].isna().any().any():
        bad = table[features].columns[table[features].isna().any()].tolist()
        raise FlowletError(f"{what} {path} has missing values in {', '.join(bad[:10])}")
    return table[keys + features]


def _path_key(value: str) -> str:
    return str(Path(value).resolve())


def regional_matrix(table: pd.DataFrame, subjects: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Feature values for each subject row and which rows matched.

    A subject matches by participant_id, else by its image's path, else by its image's file name when exactly
    one row of the table has that name (generators reuse file names in every age bin's folder).
    """
    features = [column for column in table.columns if column not in ("participant_id", "image")]
    values = table[features].to_numpy(dtype=float)
    by_id: dict[str, int] = {}
    by_path: dict[str, int] = {}
    by_name: dict[str, list[int]] = {}
    if "participant_id" in table.columns:
        by_id = {name: i for i, name in enumerate(table["participant_id"]) if isinstance(name, str) and name}
    if "image" in table.columns:
        for i, image in enumerate(table["image"]):
            if isinstance(image, str) and image:
                by_path[_path_key(image)] = i
                by_name.setdefault(Path(image).name, []).append(i)
    matrix = np.full((len(subjects), len(features)), np.nan)
    found = np.zeros(len(subjects), dtype=bool)
    for i, (participant, image) in enumerate(zip(subjects["participant_id"].astype(str), subjects["image"].astype(str))):
        row = by_id.get(participant, by_path.get(_path_key(image)))
        if row is None and len(by_name.get(Path(image).name, [])) == 1:
            row = by_name[Path(image).name][0]
        if row is not None:
            matrix[i] = values[row]
            found[i] = True
    return matrix, found
