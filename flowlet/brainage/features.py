"""Brain-age inputs from MNI-space images: masked, block-downsampled voxel intensities, regional-volume tables,
and smoothed grey-matter and CSF density maps (voxel-based morphometry's features) from tissue segmentations.

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
from scipy import ndimage
from tqdm import tqdm

from flowlet.data.nifti import load_nifti
from flowlet.data.tables import read_tsv
from flowlet.data.templates import MNI_GRIDS, template_brain_mask
from flowlet.errors import FlowletError

log = logging.getLogger(__name__)

# Block-averaging factor of voxel and tissue features: 2 mm images become 4 mm features.
DEFAULT_DOWNSAMPLE = 2


def feature_downsample(configured: int | None, generator_downsample: int) -> int:
    """The features' block-averaging factor: the configured one, else the coarser of the default and the
    generator's working resolution, so that real and synthetic images give features at one resolution (a
    generator at 8 mm makes volumes with nothing finer; sharper real features would tell them apart by blur)."""
    return configured if configured is not None else max(DEFAULT_DOWNSAMPLE, generator_downsample)


def block_downsample(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor``-sized blocks; the volume is zero-padded up to a multiple of the factor."""
    if factor < 1:
        raise FlowletError(f"--downsample must be a positive integer, got {factor}")
    if factor == 1:
        return np.asarray(volume, dtype=np.float32)
    padded_shape = [int(np.ceil(size / factor)) * factor for size in volume.shape]
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[tuple(slice(0, size) for size in volume.shape)] = volume
    blocks = padded.reshape(
        padded_shape[0] // factor, factor, padded_shape[1] // factor, factor, padded_shape[2] // factor, factor
    )
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


def load_voxel_features(
    images: list[str], downsample: int = DEFAULT_DOWNSAMPLE, what: str = "brain-age input"
) -> VoxelFeatures:
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
            raise FlowletError(
                f"{what}: {image_path} is on the {image_resolution} mm grid, the others on the {resolution} mm grid"
            )
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
    return VoxelFeatures(
        images=list(images), volumes=volumes, mask=mask, resolution_mm=resolution, downsample=downsample
    )


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
    features = [
        column for column in table.columns if column not in keys and pd.api.types.is_numeric_dtype(table[column])
    ]
    if not features:
        raise FlowletError(f"{what} {path} has no numeric region columns")
    if table[features].isna().any().any():
        bad = table[features].columns[table[features].isna().any()].tolist()
        raise FlowletError(f"{what} {path} has missing values in {', '.join(bad[:10])}")
    return table[keys + features]


def _path_key(value: str) -> str:
    return str(Path(value).resolve())


def match_rows(table: pd.DataFrame, subjects: pd.DataFrame) -> np.ndarray:
    """For each subject row, the index of its row in ``table`` (-1 where none).

    A subject matches by participant_id, else by its image's path, else by its image's file name when exactly
    one row of the table has that name (generators reuse file names in every age bin's folder).
    """
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
    rows = np.full(len(subjects), -1, dtype=int)
    for i, (participant, image) in enumerate(
        zip(subjects["participant_id"].astype(str), subjects["image"].astype(str))
    ):
        row = by_id.get(participant, by_path.get(_path_key(image)))
        if row is None and len(by_name.get(Path(image).name, [])) == 1:
            row = by_name[Path(image).name][0]
        if row is not None:
            rows[i] = row
    return rows


def regional_matrix(table: pd.DataFrame, subjects: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Feature values for each subject row (NaN where unmatched) and which rows matched (see ``match_rows``)."""
    features = [column for column in table.columns if column not in ("participant_id", "image")]
    rows = match_rows(table, subjects)
    found = rows >= 0
    matrix = np.full((len(subjects), len(features)), np.nan)
    matrix[found] = table[features].to_numpy(dtype=float)[rows[found]]
    return matrix, found


# Label codes of `flowlet regional-measures` segmentations (0 outside, 1 CSF, 2 grey, 3 white).
DENSITY_TISSUES = {"csf": 1, "grey": 2}
DEFAULT_TISSUE_FWHM_MM = 12.0


class TissueDensityMaps:
    """Smoothed CSF and grey-matter density maps, block-downsampled inside the template brain mask.

    The table is a ``flowlet regional-measures`` feature table (``regional_features.tsv``), whose ``segmentation``
    column names each image's tissue labels relative to the table's folder. A label map is turned into a density
    per tissue (1 where the voxel is that tissue), smoothed with a Gaussian of ``fwhm_mm``, block-averaged by
    ``downsample``; each map is read once, however many subject groups ask for it.
    """

    def __init__(
        self, path: str | Path, fwhm_mm: float = DEFAULT_TISSUE_FWHM_MM, downsample: int = DEFAULT_DOWNSAMPLE
    ) -> None:
        if fwhm_mm < 0:
            raise FlowletError(f"--tissue-fwhm must be >= 0 mm, got {fwhm_mm}")
        self.path = Path(path)
        self.table = read_tsv(
            path,
            "tissue maps",
            required=("segmentation",),
            dtype={"participant_id": str, "image": str, "segmentation": str},
        )
        if not {"participant_id", "image"} & set(self.table.columns):
            raise FlowletError(f"tissue maps {path} need a participant_id or image column to match subjects")
        self.fwhm_mm = fwhm_mm
        self.downsample = downsample
        self._rows: dict[int, np.ndarray] = {}
        self._mask: np.ndarray | None = None
        self._resolution: int | None = None

    def matrix(self, subjects: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """One row of densities per subject (NaN where the table has no row for it) and which subjects matched."""
        rows = match_rows(self.table, subjects)
        found = rows >= 0
        for row in tqdm(
            sorted(set(rows[found]) - set(self._rows)), desc="tissue density maps", unit="image", leave=False
        ):
            self._rows[row] = self._densities(row)
        width = len(next(iter(self._rows.values()))) if self._rows else 0
        matrix = np.full((len(subjects), width), np.nan, dtype=np.float32)
        for i, row in enumerate(rows):
            if row >= 0:
                matrix[i] = self._rows[row]
        return matrix, found

    def _densities(self, row: int) -> np.ndarray:
        path = self.path.parent / str(self.table["segmentation"].iloc[row])
        image = load_nifti(path, what="tissue labels")
        resolution = grid_resolution(image.shape, image.affine, path, "tissue labels")
        if self._resolution is None:
            self._resolution, self._mask = resolution, downsampled_mask(resolution, self.downsample)
        elif resolution != self._resolution:
            raise FlowletError(
                f"tissue labels {path} are on the {resolution} mm grid, the others on the {self._resolution} mm grid"
            )
        labels = np.asarray(image.dataobj)
        sigma_voxels = self.fwhm_mm / (2 * np.sqrt(2 * np.log(2))) / resolution
        maps = [
            block_downsample(
                ndimage.gaussian_filter((labels == code).astype(np.float32), sigma_voxels), self.downsample
            )[self._mask]
            for code in DENSITY_TISSUES.values()
        ]
        return np.concatenate(maps)
