"""Reading the real and synthetic image lists, segmenting every image, its per-region measures, and reading them back."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from flowlet.data.bids import SESSION_COLUMNS
from flowlet.data.nifti import load_nifti, save_nifti
from flowlet.data.split import WITHHELD
from flowlet.data.split_cli import NATIVE_VOLUME_COLUMN
from flowlet.data.tables import read_tsv, resolve_image_path, synthetic_qc_passed
from flowlet.data.templates import MNI_GRIDS
from flowlet.errors import FlowletError
from flowlet.regions.atlas import TISSUE_LABEL, TISSUES, Atlas, Region
from flowlet.regions.tissue import Segmentation, TissueSegmenter

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
# The linear baseline generator's images: measured like the others, analysed only beside FlowLet's (scorecard).
BASELINE = "baseline"
# A second dataset's subjects, measured for the brain-age external test set only.
EXTERNAL = "external"
REAL_GROUPS = ("train", "test")
# Controlled scarcity's withheld training subjects are measured too (the brain-age oracle arm uses their
# regional features) but stay out of every regional analysis, whose reference is the study's training set.
MEASURED_REAL_GROUPS = (*REAL_GROUPS, WITHHELD)
SPLIT_COLUMNS = ("participant_id", "age", "sex", "age_bin", "split", "image")
MANIFEST_COLUMNS = ("image", "age")
TABLE_TYPES = {"participant_id": str, "sex": str, "age_bin": str, "image": str, SESSION_COLUMNS[0]: str}
SEGMENTATION_FOLDER = "segmentations"
# A per-image job's table (`flowlet measure-regions`): what the image alone tells, keyed by its path.
IMAGE_MEASURE_COLUMNS = (
    "region",
    "region_tissue",
    "volume_ml",
    "tissue_fraction",
    *(f"{name}_ml" for name in TISSUES),
    "mean_intensity",
    "brain_mask_ml",
    "image",
    "segmentation",
)
# The study's long table (`flowlet regional-measures`): who each image is, then what it measured.
TABLE_COLUMNS = (
    "image_id",
    "group",
    "age",
    "sex",
    "age_bin",
    *IMAGE_MEASURE_COLUMNS[:3],
    "native_volume_ml",
    *IMAGE_MEASURE_COLUMNS[3:],
)
# What `flowlet regions` needs from the long measures table.
MEASURE_COLUMNS = (
    "image_id",
    "group",
    "age",
    "region",
    "volume_ml",
    "native_volume_ml",
    "tissue_fraction",
    "csf_ml",
    "grey_ml",
    "white_ml",
    "mean_intensity",
    "segmentation",
)


@dataclass
class ImageEntry:
    """One image to analyse: who it is, which group it belongs to, its age (true or requested) and where it is."""

    image_id: str
    group: str  # train | test | synthetic | baseline
    age: float
    sex: str
    age_bin: str
    path: Path
    # Native ml per MNI ml (1 / |det| of the native-to-MNI affine), when the split table has it: affine
    # normalisation removes head size and global atrophy, so only native volumes show whole-brain shrinkage.
    native_volume_factor: float = float("nan")
    # Real subjects' id in their own dataset (image_id may carry a cohort prefix); empty for synthetic images.
    participant_id: str = ""
    # The person scanned: a longitudinal split table's subject column; empty: image_id (one scan per person).
    subject: str = ""

    def __post_init__(self) -> None:
        self.subject = self.subject or self.image_id

    @property
    def what(self) -> str:
        return f"{self.group} image {self.image_id}"

    @property
    def described(self) -> tuple[Path, str]:
        return self.path, self.what


@dataclass
class MeasuredImage:
    entry: ImageEntry
    intensities: np.ndarray  # float32 on the grid
    labels: np.ndarray  # uint8 tissue labels (0 outside, then TISSUES order from 1)


def _checked_ages(table: pd.DataFrame, path: Path, what: str) -> pd.DataFrame:
    ages = pd.to_numeric(table["age"], errors="coerce")
    if ages.isna().any():
        names = table["participant_id"] if "participant_id" in table.columns else table["image"]
        raise FlowletError(
            f"{what}: {path} has missing or non-numeric ages for {', '.join(map(str, names[ages.isna()][:10]))}"
        )
    return table.assign(age=ages.astype(float))


def read_split(path: str | Path, groups: Sequence[str] = REAL_GROUPS) -> list[ImageEntry]:
    """The images of the split table in ``groups`` (default training and test); the other rows are counted in the log."""
    path = Path(path)
    table = read_tsv(path, "split table", required=SPLIT_COLUMNS, dtype=TABLE_TYPES)
    kept = _checked_ages(table[table["split"].isin(groups)], path, "split table")
    if len(kept) < len(table):
        log.info("split table %s: %d row(s) not in %s left out", path, len(table) - len(kept), ", ".join(groups))
    if "train" in groups and not (kept["split"] == "train").any():
        raise FlowletError(f"split table: {path} has no training subjects")
    factors = np.full(len(kept), np.nan)
    if NATIVE_VOLUME_COLUMN in kept.columns:
        factors = pd.to_numeric(kept[NATIVE_VOLUME_COLUMN], errors="coerce").to_numpy(float)
        bad = ~(factors > 0)
        if bad.any():
            raise FlowletError(
                f"split table: {path} has a missing or non-positive {NATIVE_VOLUME_COLUMN} for {', '.join(kept['participant_id'][bad][:10])}"
            )
    subject = SESSION_COLUMNS[0]
    subjects = kept[subject] if subject in kept.columns else [""] * len(kept)
    return [
        ImageEntry(
            row.participant_id,
            row.split,
            float(row.age),
            str(row.sex),
            str(row.age_bin),
            resolve_image_path(row.image, path),
            float(factor),
            row.participant_id,
            subject,
        )
        for row, factor, subject in zip(kept.itertuples(index=False), factors, subjects)
    ]


def read_external(path: str | Path) -> list[ImageEntry]:
    """The external dataset's subjects (evaluation only) as group ``external``; their ids are prefixed, since
    another dataset may reuse the study's subject names."""
    return [
        replace(entry, image_id=f"{EXTERNAL}/{entry.image_id}", group=EXTERNAL) for entry in read_split(path, ("test",))
    ]


def read_manifests(paths: list[str | Path], group: str = SYNTHETIC) -> list[ImageEntry]:
    """Generated images of one or more generation manifests (an empty manifest is allowed), as ``group``."""
    entries: list[ImageEntry] = []
    seen: set[str] = set()
    for manifest in map(Path, paths):
        table = read_tsv(manifest, "synthetic manifest", required=MANIFEST_COLUMNS, dtype=TABLE_TYPES)
        # Volumes the QC gate dropped are not part of the synthetic cohort (brain age leaves them out too).
        table = _checked_ages(table[synthetic_qc_passed(table, manifest)], manifest, "synthetic manifest")
        # A manifest of a bin that needed no synthetic subjects has no metadata columns.
        table = table.assign(
            **{column: table.get(column, pd.Series("", index=table.index)) for column in ("sex", "age_bin")}
        )
        for row in table.itertuples(index=False):
            path = resolve_image_path(row.image, manifest)
            image_id = str(path)
            if image_id in seen:
                raise FlowletError(
                    f"synthetic manifest: {manifest} lists {path} again (already in an earlier manifest or row)"
                )
            seen.add(image_id)
            entries.append(ImageEntry(image_id, group, float(row.age), str(row.sex), str(row.age_bin), path))
    return entries


def grid_resolution(shape: tuple[int, ...], affine: np.ndarray, what: str) -> int:
    for resolution, (grid_shape, grid_affine) in MNI_GRIDS.items():
        if tuple(shape) == grid_shape and np.allclose(affine, grid_affine, atol=1e-3):
            return resolution
    raise FlowletError(
        f"{what}: shape {tuple(shape)} with this affine is not FSL's MNI grid (2 mm 91x109x91 or 1 mm 182x218x182); "
        "regional analysis needs preprocessed (MNI-registered) images"
    )


def header_grid(path: Path, what: str) -> int:
    """The MNI grid (1 or 2 mm) an image is on, from its header alone; a missing or unreadable file is an error."""
    import nibabel as nib

    if not path.exists():
        raise FlowletError(f"{what}: {path} does not exist")
    try:
        header = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for unreadable files
        raise FlowletError(f"{what}: {path} is not a readable NIfTI file ({type(error).__name__}: {error})") from error
    shape = header.shape[:3] if len(header.shape) == 4 and header.shape[3] == 1 else header.shape
    return grid_resolution(shape, header.affine, f"{what} ({path})")


def images_resolution(images: Sequence[tuple[Path, str]], default: int = 2) -> int:
    """The MNI grid of the first (path, description) image, which every other must share (:func:`check_headers`);
    ``default`` when there are none."""
    return header_grid(*images[0]) if images else default


def check_headers(images: Sequence[tuple[Path, str]], resolution_mm: int) -> None:
    """Fail before any segmentation if one of the (path, description) images is missing, unreadable or off the
    grid (reads headers only)."""
    for path, what in images:
        found = header_grid(path, what)
        if found != resolution_mm:
            raise FlowletError(
                f"{what} ({path}) is on the {found} mm grid, the first image on the {resolution_mm} mm grid; one study uses one grid"
            )


def load_image(path: Path, what: str, resolution_mm: int) -> np.ndarray:
    image = load_nifti(path, what=what)
    data = np.asarray(image.get_fdata(), dtype=np.float32)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    found = grid_resolution(data.shape, image.affine, f"{what} ({path})")
    if found != resolution_mm:
        raise FlowletError(
            f"{what} ({path}) is on the {found} mm grid, but the others are on the {resolution_mm} mm grid"
        )
    if not np.isfinite(data).all():
        raise FlowletError(f"{what} ({path}) contains NaN or infinite values")
    return data


def tissue_codes(tissue: str) -> tuple[int, ...]:
    """Segmentation labels that make up a region's tissue ("grey", or "grey+white" for the whole brain)."""
    return tuple(TISSUE_LABEL[name] for name in tissue.split("+"))


def segmentation_file(path: Path, index: int) -> str:
    """Where an image's tissue labels are saved, relative to its measures table: numbered, because generators
    reuse file names across age bins."""
    return f"{SEGMENTATION_FOLDER}/{index:05d}_{path.name.split('.')[0]}_dseg.nii.gz"


def image_rows(intensities: np.ndarray, segmentation: Segmentation, atlas: Atlas) -> list[dict]:
    """Per region: tissue volumes (ml, from the posteriors, so partial voluming counts), own-tissue fraction and
    mean intensity; what the image alone tells, without who it is."""
    voxel_ml = abs(np.linalg.det(atlas.affine[:3, :3])) / 1000.0
    flat_posteriors = segmentation.posteriors.reshape(len(TISSUES), -1)
    flat_labels = segmentation.labels.ravel()
    flat_intensities = intensities.ravel()
    brain_mask_ml = float(segmentation.brain.sum() * voxel_ml)
    rows = []
    for region in atlas.regions:
        tissue_ml = flat_posteriors[:, region.voxels].sum(axis=1) * voxel_ml
        own = sum(tissue_ml[code - 1] for code in tissue_codes(region.tissue))
        inside = flat_labels[region.voxels] > 0
        total = float(tissue_ml.sum())
        rows.append(
            {
                "region": region.name,
                "region_tissue": region.tissue,
                "volume_ml": float(own),
                # Scale-free: affine normalisation to MNI removes head size and uniform atrophy from volumes, but
                # not the share of a region its own tissue fills (for "brain", the brain parenchymal fraction).
                "tissue_fraction": float(own) / total if total > 0 else float("nan"),
                **{f"{name}_ml": float(value) for name, value in zip(TISSUES, tissue_ml)},
                "mean_intensity": float(flat_intensities[region.voxels][inside].mean())
                if inside.any()
                else float("nan"),
                "brain_mask_ml": brain_mask_ml,
            }
        )
    return rows


def segment_images(
    images: Sequence[tuple[Path, str]], atlas: Atlas, segmenter: TissueSegmenter, resolution_mm: int, output_dir: Path
) -> pd.DataFrame:
    """Segment each (path, description) image, save its tissue labels under ``output_dir`` and measure every
    region: one row per image and region, keyed by ``image`` (the path) with ``segmentation`` relative to
    ``output_dir``."""
    frames = []
    for index, (path, what) in enumerate(tqdm(images, desc="segmenting", unit="image", disable=None)):
        intensities = load_image(path, what, resolution_mm)
        segmentation = segmenter.segment(intensities, what=f"{what} ({path})")
        name = segmentation_file(path, index)
        save_nifti(segmentation.labels, atlas.affine, Path(output_dir) / name, dtype=np.uint8)
        rows = pd.DataFrame(image_rows(intensities, segmentation, atlas))
        frames.append(rows.assign(image=str(path), segmentation=name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*IMAGE_MEASURE_COLUMNS])


def read_measured(tables: Sequence[str | Path], relative_to: Path) -> dict[Path, pd.DataFrame]:
    """Per-image measures written earlier by `flowlet measure-regions`, by resolved image path, with their
    segmentation paths made relative to ``relative_to`` (the folder of the merged table)."""
    measured: dict[Path, pd.DataFrame] = {}
    for table_path in map(Path, tables):
        table = read_tsv(
            table_path, "measured images", required=IMAGE_MEASURE_COLUMNS, dtype={"region": str, "image": str}
        )
        table["segmentation"] = [
            os.path.relpath(table_path.parent / name, relative_to) for name in table["segmentation"]
        ]
        for image, rows in table.groupby("image", sort=False):
            measured[resolve_image_path(image, table_path).resolve()] = rows
    return measured


def measure_images(
    entries: list[ImageEntry],
    atlas: Atlas,
    segmenter: TissueSegmenter,
    resolution_mm: int,
    output_dir: Path,
    measured: dict[Path, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """The long table of every entry: its measures from ``measured`` (earlier per-image jobs) where there,
    else segmented here with the labels saved under ``output_dir``; then who each image is."""
    check_headers([entry.described for entry in entries], resolution_mm)
    measured = dict(measured or {})
    missing = [entry for entry in entries if entry.path.resolve() not in measured]
    log.info(
        "%d of %d image(s) measured earlier; segmenting %d", len(entries) - len(missing), len(entries), len(missing)
    )
    fresh = segment_images([entry.described for entry in missing], atlas, segmenter, resolution_mm, output_dir)
    for image, rows in fresh.groupby("image", sort=False):
        measured[Path(image).resolve()] = rows
    frames = [
        measured[entry.path.resolve()].assign(
            image_id=entry.image_id,
            group=entry.group,
            age=entry.age,
            sex=entry.sex,
            age_bin=entry.age_bin,
            native_volume_ml=lambda rows, factor=entry.native_volume_factor: rows["volume_ml"] * factor,
            image=str(entry.path),
        )
        for entry in entries
    ]
    if not frames:
        return pd.DataFrame(columns=[*TABLE_COLUMNS])
    return pd.concat(frames, ignore_index=True)[[*TABLE_COLUMNS]]


def read_measures(path: str | Path, entries: list[ImageEntry]) -> pd.DataFrame:
    """The rows of a `flowlet regional-measures` table that belong to ``entries``; every entry must have them."""
    path = Path(path)
    what = "regional measures"
    table = read_tsv(
        path,
        what,
        required=MEASURE_COLUMNS,
        dtype={
            "image_id": str,
            "group": str,
            "sex": str,
            "age_bin": str,
            "region": str,
            "image": str,
            "segmentation": str,
        },
    )
    groups = table.drop_duplicates("image_id").set_index("image_id")["group"]
    missing = [entry.image_id for entry in entries if entry.image_id not in groups.index]
    if missing:
        raise FlowletError(
            f"{what} {path} has no rows for {len(missing)} image(s) of the split table and manifests: {', '.join(missing[:10])}; "
            "rerun `flowlet regional-measures` on the same split and manifests"
        )
    moved = [entry.image_id for entry in entries if groups[entry.image_id] != entry.group]
    if moved:
        raise FlowletError(
            f"{what} {path} was measured with another split: {', '.join(moved[:10])} changed group; rerun `flowlet regional-measures`"
        )
    return table[table["image_id"].isin({entry.image_id for entry in entries})].reset_index(drop=True)


def load_measured(
    entries: list[ImageEntry], measures: pd.DataFrame, measures_path: str | Path, resolution_mm: int
) -> list[MeasuredImage]:
    """Each image's intensities with the tissue labels `flowlet regional-measures` saved beside its table."""
    check_headers([entry.described for entry in entries], resolution_mm)
    segmentations = measures.drop_duplicates("image_id").set_index("image_id")["segmentation"]
    folder = Path(measures_path).parent
    measured = []
    for entry in tqdm(entries, desc="loading", unit="image", disable=None):
        intensities = load_image(*entry.described, resolution_mm)
        labels = np.asarray(
            load_nifti(folder / segmentations[entry.image_id], what=f"tissue labels of {entry.image_id}").dataobj
        )
        if labels.shape != intensities.shape:
            raise FlowletError(
                f"tissue labels {folder / segmentations[entry.image_id]} have shape {labels.shape}, the image {entry.path} {intensities.shape}"
            )
        measured.append(MeasuredImage(entry, intensities, labels.astype(np.uint8)))
    return measured


def region_mask(labels: np.ndarray, region: Region) -> np.ndarray:
    """The subject's own mask of a region, as a boolean over the region's voxels: atlas region ∩ its tissue."""
    return np.isin(labels.ravel()[region.voxels], tissue_codes(region.tissue))


def regional_features(measures: pd.DataFrame) -> pd.DataFrame:
    """One row per image: its CSF, grey and white matter volume in every region, as fractions of its brain mask.

    The brain-age regional features (``flowlet brainage --regional-features``). Affine registration to MNI
    already scales every brain to about the template's size; dividing by the image's own brain-mask volume
    (tissue and the CSF inside the mask, the intracranial volume of a skull-stripped image) removes what
    is left of head size, the way regional volumes are divided by intracranial volume. Columns are
    ``participant_id`` (empty for synthetic images), ``image``, ``group``, ``segmentation`` (the tissue labels,
    relative to the table's folder: ``flowlet brainage --feature-sets tissue`` reads them) and ``<region>_<tissue>``.
    """
    tissues = [f"{name}_ml" for name in TISSUES]
    fractions = (
        measures[tissues]
        .div(measures["brain_mask_ml"], axis=0)
        .assign(image_id=measures["image_id"], region=measures["region"])
    )
    wide = fractions.pivot_table(index="image_id", columns="region", values=tissues, sort=False)
    regions = list(dict.fromkeys(measures["region"]))
    wide = wide.reindex(columns=[(tissue, region) for region in regions for tissue in tissues])
    wide.columns = [f"{region}_{tissue.removesuffix('_ml')}" for tissue, region in wide.columns]
    images = measures.drop_duplicates("image_id").set_index("image_id").loc[wide.index]
    keys = pd.DataFrame(
        {
            "participant_id": np.where(images["group"].isin(MEASURED_REAL_GROUPS), images.index, ""),
            "image": images["image"].to_numpy(),
            "group": images["group"].to_numpy(),
            "segmentation": images["segmentation"].to_numpy(),
        }
    )
    return pd.concat([keys, wide.reset_index(drop=True)], axis=1)
