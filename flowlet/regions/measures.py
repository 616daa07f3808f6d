"""Reading the real and synthetic image lists, segmenting every image, and its per-region measures."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from flowlet.data.nifti import load_nifti
from flowlet.data.tables import resolve_image_path
from flowlet.data.templates import MNI_GRIDS
from flowlet.errors import FlowletError
from flowlet.regions.atlas import TISSUE_LABEL, TISSUES, Atlas, Region
from flowlet.regions.tissue import TissueSegmenter

log = logging.getLogger(__name__)

REAL_GROUPS = ("train", "test")
SYNTHETIC = "synthetic"
SPLIT_COLUMNS = ("participant_id", "age", "sex", "age_bin", "split", "image")
MANIFEST_COLUMNS = ("image", "age")
NATIVE_VOLUME_COLUMN = "native_volume_factor"


@dataclass
class ImageEntry:
    """One image to analyse: who it is, which group it belongs to, its age (true or requested) and where it is."""

    image_id: str
    group: str  # train | test | synthetic
    age: float
    sex: str
    age_bin: str
    path: Path
    # Native ml per MNI ml (1 / |det| of the native-to-MNI affine), when the split table has it: affine
    # normalisation removes head size and global atrophy, so only native volumes show whole-brain shrinkage.
    native_volume_factor: float = float("nan")


@dataclass
class MeasuredImage:
    entry: ImageEntry
    intensities: np.ndarray  # float32 on the grid
    labels: np.ndarray  # uint8 tissue labels (0 outside, then TISSUES order from 1)


def _read_table(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    if not path.exists():
        raise FlowletError(f"{what}: {path} does not exist")
    table = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "sex": str, "age_bin": str, "image": str})
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise FlowletError(f"{what}: {path} lacks the column(s) {', '.join(missing)}")
    return table


def _checked_ages(table: pd.DataFrame, path: Path, what: str) -> pd.DataFrame:
    ages = pd.to_numeric(table["age"], errors="coerce")
    if ages.isna().any():
        names = table["participant_id"] if "participant_id" in table.columns else table["image"]
        raise FlowletError(f"{what}: {path} has missing or non-numeric ages for {', '.join(map(str, names[ages.isna()][:10]))}")
    return table.assign(age=ages.astype(float))


def read_split(path: str | Path) -> list[ImageEntry]:
    """Training and test images of the split table; excluded rows are skipped (and counted in the log)."""
    path = Path(path)
    table = _read_table(path, SPLIT_COLUMNS, "split table")
    kept = _checked_ages(table[table["split"].isin(REAL_GROUPS)], path, "split table")
    if len(kept) < len(table):
        log.info("split table %s: %d row(s) neither train nor test are left out", path, len(table) - len(kept))
    if not (kept["split"] == "train").any():
        raise FlowletError(f"split table: {path} has no training subjects")
    factors = np.full(len(kept), np.nan)
    if NATIVE_VOLUME_COLUMN in kept.columns:
        factors = pd.to_numeric(kept[NATIVE_VOLUME_COLUMN], errors="coerce").to_numpy(float)
        bad = ~(factors > 0)
        if bad.any():
            raise FlowletError(f"split table: {path} has a missing or non-positive {NATIVE_VOLUME_COLUMN} for {', '.join(kept['participant_id'][bad][:10])}")
    return [
        ImageEntry(row.participant_id, row.split, float(row.age), str(row.sex), str(row.age_bin), resolve_image_path(row.image, path), float(factor))
        for row, factor in zip(kept.itertuples(index=False), factors)
    ]


def read_manifests(paths: list[str | Path]) -> list[ImageEntry]:
    """Synthetic images of one or more generation manifests (an empty manifest is allowed)."""
    entries: list[ImageEntry] = []
    seen: set[str] = set()
    for manifest in map(Path, paths):
        table = _checked_ages(_read_table(manifest, MANIFEST_COLUMNS, "synthetic manifest"), manifest, "synthetic manifest")
        # A manifest of a bin that needed no synthetic subjects has no metadata columns.
        table = table.assign(**{column: table.get(column, pd.Series("", index=table.index)) for column in ("sex", "age_bin")})
        for row in table.itertuples(index=False):
            path = resolve_image_path(row.image, manifest)
            image_id = str(path)
            if image_id in seen:
                raise FlowletError(f"synthetic manifest: {manifest} lists {path} again (already in an earlier manifest or row)")
            seen.add(image_id)
            entries.append(ImageEntry(image_id, SYNTHETIC, float(row.age), str(row.sex), str(row.age_bin), path))
    return entries


def grid_resolution(shape: tuple[int, ...], affine: np.ndarray, what: str) -> int:
    for resolution, (grid_shape, grid_affine) in MNI_GRIDS.items():
        if tuple(shape) == grid_shape and np.allclose(affine, grid_affine, atol=1e-3):
            return resolution
    raise FlowletError(
        f"{what}: shape {tuple(shape)} with this affine is not FSL's MNI grid (2 mm 91x109x91 or 1 mm 182x218x182); "
        "regional analysis needs preprocessed (MNI-registered) images"
    )


def check_headers(entries: list[ImageEntry], resolution_mm: int) -> None:
    """Fail before any segmentation if an image is missing or off the grid (reads headers only)."""
    import nibabel as nib

    for entry in entries:
        what = f"{entry.group} image {entry.image_id}"
        if not entry.path.exists():
            raise FlowletError(f"{what}: {entry.path} does not exist")
        try:
            header = nib.load(str(entry.path))
        except Exception as error:  # nibabel raises many types for unreadable files
            raise FlowletError(f"{what}: {entry.path} is not a readable NIfTI file ({type(error).__name__}: {error})") from error
        shape = header.shape[:3] if len(header.shape) == 4 and header.shape[3] == 1 else header.shape
        found = grid_resolution(shape, header.affine, f"{what} ({entry.path})")
        if found != resolution_mm:
            raise FlowletError(f"{what} ({entry.path}) is on the {found} mm grid; the regional analysis runs on the {resolution_mm} mm grid")


def load_image(entry: ImageEntry, resolution_mm: int) -> np.ndarray:
    what = f"{entry.group} image {entry.image_id}"
    image = load_nifti(entry.path, what=what)
    data = np.asarray(image.get_fdata(), dtype=np.float32)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    found = grid_resolution(data.shape, image.affine, f"{what} ({entry.path})")
    if found != resolution_mm:
        raise FlowletError(f"{what} ({entry.path}) is on the {found} mm grid, but the others are on the {resolution_mm} mm grid")
    if not np.isfinite(data).all():
        raise FlowletError(f"{what} ({entry.path}) contains NaN or infinite values")
    return data


def tissue_codes(tissue: str) -> tuple[int, ...]:
    """Segmentation labels that make up a region's tissue ("grey", or "grey+white" for the whole brain)."""
    return tuple(TISSUE_LABEL[name] for name in tissue.split("+"))


def regional_rows(entry: ImageEntry, intensities: np.ndarray, labels: np.ndarray, posteriors: np.ndarray, atlas: Atlas) -> list[dict]:
    """Per region: tissue volumes (ml, from the posteriors, so partial voluming counts), own-tissue fraction and mean intensity."""
    voxel_ml = abs(np.linalg.det(atlas.affine[:3, :3])) / 1000.0
    flat_posteriors = posteriors.reshape(len(TISSUES), -1)
    flat_labels = labels.ravel()
    flat_intensities = intensities.ravel()
    rows = []
    for region in atlas.regions:
        tissue_ml = flat_posteriors[:, region.voxels].sum(axis=1) * voxel_ml
        own = sum(tissue_ml[code - 1] for code in tissue_codes(region.tissue))
        inside = flat_labels[region.voxels] > 0
        total = float(tissue_ml.sum())
        rows.append(
            {
                "image_id": entry.image_id,
                "group": entry.group,
                "age": entry.age,
                "sex": entry.sex,
                "age_bin": entry.age_bin,
                "region": region.name,
                "region_tissue": region.tissue,
                "volume_ml": float(own),
                "native_volume_ml": float(own) * entry.native_volume_factor,
                # Scale-free: affine normalisation to MNI removes head size and uniform atrophy from volumes, but
                # not the share of a region its own tissue fills (for "brain", the brain parenchymal fraction).
                "tissue_fraction": float(own) / total if total > 0 else float("nan"),
                **{f"{name}_ml": float(value) for name, value in zip(TISSUES, tissue_ml)},
                "mean_intensity": float(flat_intensities[region.voxels][inside].mean()) if inside.any() else float("nan"),
            }
        )
    return rows


def measure_images(
    entries: list[ImageEntry], atlas: Atlas, segmenter: TissueSegmenter, resolution_mm: int
) -> tuple[list[MeasuredImage], pd.DataFrame]:
    """Segment every image and measure every region; keeps intensities and labels for the paired analysis."""
    check_headers(entries, resolution_mm)
    measured, rows = [], []
    for entry in tqdm(entries, desc="segmenting", unit="image", disable=None):
        intensities = load_image(entry, resolution_mm)
        segmentation = segmenter.segment(intensities, what=f"{entry.group} image {entry.image_id} ({entry.path})")
        rows.extend(regional_rows(entry, intensities, segmentation.labels, segmentation.posteriors, atlas))
        measured.append(MeasuredImage(entry, intensities, segmentation.labels))
    return measured, pd.DataFrame(rows)


def region_mask(labels: np.ndarray, region: Region) -> np.ndarray:
    """The subject's own mask of a region, as a boolean over the region's voxels: atlas region ∩ its tissue."""
    return np.isin(labels.ravel()[region.voxels], tissue_codes(region.tissue))


def wide_volumes(measures: pd.DataFrame, entries: list[ImageEntry]) -> pd.DataFrame:
    """One row per image, one column per region's own-tissue volume (ml): the brain-age regional features."""
    wide = measures.pivot_table(index="image_id", columns="region", values="volume_ml", sort=False)
    wide.columns.name = None
    lookup = {entry.image_id: entry for entry in entries}
    wide.insert(0, "participant_id", [lookup[i].image_id if lookup[i].group != SYNTHETIC else "" for i in wide.index])
    wide.insert(1, "image", [str(lookup[i].path) for i in wide.index])
    wide.insert(2, "group", [lookup[i].group for i in wide.index])
    return wide.reset_index(drop=True)
