"""Quality control of synthetic volumes: measured like real preprocessed brains, judged against the real cohort.

Real QC (:mod:`flowlet.preprocess.qc`) scores a preprocessed subject by the Dice of its MNI-space brain mask with
the template brain mask and by the normalised cross-correlation (NCC) of its z-scored image with the template T1
inside the template mask. A synthetic volume has no skull-stripping mask, but real training images are constant
outside their brain, so the generator learns a flat background: its brain is where its output departs from that
background level (by more than :data:`BRAIN_TOLERANCE` on the [-1, 1] scale; largest connected part, holes filled).
NCC is taken as if the volume were z-scored inside that mask and zero outside, the real images' convention.

The reference is the real training cohort measured by the same function after the generator's own data path
(mapping to [-1, 1] and, for a model trained at a coarser working resolution, block averaging and trilinear
upsampling). Without that, resolution alone moves the metrics: on IXI, the Dice with the template of the real
images falls from 0.96 to 0.89 after the 4 mm round trip, about 20 robust standard deviations of the real cohort,
and every synthetic volume would be an outlier. A synthetic volume is an outlier when a metric lies more than
``max_robust_z`` robust standard deviations (1.4826 MAD) from the real median, the rule of `flowlet qc`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from flowlet.data.masks import fill_and_keep_largest
from flowlet.data.nifti import load_nifti
from flowlet.data.tables import read_tsv, resolve_image_path
from flowlet.data.templates import mni_grid, mni_resolution, template_brain_mask, template_t1
from flowlet.errors import FlowletError
from flowlet.qc_metrics import dice, normalised_cross_correlation, outlier_reasons

log = logging.getLogger(__name__)

QC_METRICS = ("dice_template", "ncc_template")
# On the generator's [-1, 1] scale; real images mapped to it keep their registered mask at Dice 0.999 (IXI).
BRAIN_TOLERANCE = 0.05
# The background level is read this far from the template brain, where no brain tissue can be.
BACKGROUND_MARGIN_MM = 10.0
# A median and MAD of fewer real images are too unstable to judge synthetic ones by.
MIN_REFERENCE_IMAGES = 5
# A volume is an outlier beyond this many robust standard deviations of the real cohort, the rule of `flowlet qc`.
MAX_ROBUST_Z = 3.0
SUMMARY_COLUMNS = ("age_bin", "generated", "outliers", "dropped", "kept", "gate", "max_robust_z", "n_reference")


@dataclass(frozen=True)
class TemplateQC:
    """The template images the metrics compare with, on one MNI grid."""

    mask: np.ndarray
    t1: np.ndarray
    background: np.ndarray  # voxels at least BACKGROUND_MARGIN_MM from the template brain

    @classmethod
    def at(cls, resolution_mm: int) -> TemplateQC:
        mask = np.asarray(template_brain_mask(resolution_mm).dataobj) > 0
        t1 = template_t1(resolution_mm).get_fdata(dtype=np.float32)
        margin = max(1, round(BACKGROUND_MARGIN_MM / resolution_mm))
        return cls(mask, t1, ~ndimage.binary_dilation(mask, iterations=margin))


def synthetic_brain_mask(volume: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Voxels departing from the background level (the median over ``background``): largest part, holes filled."""
    level = np.median(volume[background])
    departs = np.abs(volume - level) > BRAIN_TOLERANCE
    return fill_and_keep_largest(departs)


def qc_metrics(volume: np.ndarray, template: TemplateQC) -> dict[str, float]:
    """Dice of the volume's brain mask with the template mask, and NCC with the template T1, of a [-1, 1] volume.

    Real images are z-scored inside their brain and 0 (their brain's mean) outside. NCC is blind to the
    z-scoring's shift and scale, so the volume with its background set to its brain's mean correlates exactly
    as it would after that convention.
    """
    brain = synthetic_brain_mask(volume, template.background)
    if not brain.any():
        # No brain, no contrast to correlate: a missing NCC flags the volume.
        return {"dice_template": dice(brain, template.mask), "ncc_template": float("nan")}
    as_real = np.where(brain, volume, volume[brain].mean())
    return {
        "dice_template": dice(brain, template.mask),
        "ncc_template": normalised_cross_correlation(as_real, template.t1, template.mask),
    }


def generator_view(image: np.ndarray, downsample: int) -> np.ndarray:
    """A real preprocessed image as the generator learns it and returns it: [-1, 1], at its working resolution."""
    # Imported here: the QC gate of every bin imports this module, and torch's import was most of its time.
    import torch

    from flowlet.generative.data import downsample_volume, percentile_to_unit_range, upsample_to_grid

    unit = percentile_to_unit_range(image)
    if downsample == 1:
        return unit
    coarse = torch.from_numpy(downsample_volume(unit, downsample))[None, None]
    return upsample_to_grid(coarse, downsample, unit.shape)[0, 0].numpy()


def seen_as_generated(downsample: int) -> str:
    """How a table's definition names the real images of :func:`generator_view`."""
    if downsample == 1:
        return "real images as preprocessed"
    return f"real images through the generator's working resolution (1/{downsample})"


def evenly_spaced(items: Sequence, max_items: int) -> list:
    """At most ``max_items`` of ``items``, spread over the whole sequence (deterministic, keeps the order)."""
    if max_items < 1:
        raise FlowletError(f"--max-images must be at least 1, got {max_items}")
    if len(items) <= max_items:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, max_items).round().astype(int)]


def reference_metrics(images: Sequence[Path], downsample: int) -> pd.DataFrame:
    """QC metrics of real preprocessed images seen through the generator's data path: columns image + QC_METRICS.

    The images' MNI grid (the first image's) is the grid the generator samples on.
    """
    if not images:
        raise FlowletError("no real images to build the synthetic QC reference from")
    resolution_mm = mni_resolution(load_nifti(images[0], "real reference image").shape, f"real image {images[0]}")
    template = TemplateQC.at(resolution_mm)
    shape = mni_grid(resolution_mm)[0]
    rows = []
    for path in tqdm(images, desc="real reference", unit="image"):
        image = load_nifti(path, "real reference image")
        if tuple(image.shape) != tuple(shape):
            raise FlowletError(
                f"real reference image {path} has shape {list(image.shape)}, not the {resolution_mm} mm "
                f"MNI grid {list(shape)} the generator samples on"
            )
        volume = generator_view(image.get_fdata(dtype=np.float32), downsample)
        rows.append({"image": str(path), **qc_metrics(volume, template)})
    return pd.DataFrame(rows, columns=["image", *QC_METRICS])


def read_reference(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    table = read_tsv(path, "synthetic QC reference (made by flowlet synthetic-qc reference)", required=QC_METRICS)
    usable = table[list(QC_METRICS)].apply(pd.to_numeric, errors="coerce").dropna()
    if len(usable) < MIN_REFERENCE_IMAGES:
        raise FlowletError(
            f"synthetic QC reference {path} has {len(usable)} real image(s) with every metric; at least "
            f"{MIN_REFERENCE_IMAGES} are needed for a median and MAD to judge synthetic volumes by"
        )
    return usable


def flag_outliers(table: pd.DataFrame, reference: pd.DataFrame, max_robust_z: float) -> pd.DataFrame:
    """``table`` with ``qc_outlier`` and ``qc_reasons``: a metric missing or beyond ``max_robust_z`` from the reference."""
    reasons = outlier_reasons(table, QC_METRICS, max_robust_z, reference)
    return table.assign(qc_outlier=[bool(r) for r in reasons], qc_reasons=["; ".join(r) for r in reasons])


def merge_manifests(paths: Sequence[str | Path], output: str | Path) -> pd.DataFrame:
    """The rows of several generation manifests, in order, image paths made relative to ``output``'s folder."""
    frames = []
    for path in map(Path, paths):
        table = read_tsv(path, "synthetic manifest", dtype=str, keep_default_na=False)
        missing = [column for column in ("image", *QC_METRICS) if column not in table.columns]
        if missing:
            raise FlowletError(f"synthetic manifest {path} lacks the columns {missing} (written by flowlet generate?)")
        table["image"] = [
            os.path.relpath(resolve_image_path(image, path), Path(output).parent) for image in table["image"]
        ]
        frames.append(table)
    if not frames:
        raise FlowletError("no synthetic manifest to merge")
    return pd.concat(frames, ignore_index=True)


def gate_manifests(
    manifests: Sequence[str | Path],
    reference_path: str | Path,
    output: str | Path,
    summary_path: str | Path,
    age_bin: str,
    max_robust_z: float = MAX_ROBUST_Z,
    gate: bool = True,
) -> dict[str, object]:
    """Merge one bin's manifests, flag QC outliers against the real reference, and write the manifest (with
    ``qc_pass``, false for outliers when ``gate``, else true) and a one-row summary; returns the summary."""
    if not max_robust_z > 0:
        raise FlowletError(f"--qc-max-robust-z must be positive, got {max_robust_z}")
    reference = read_reference(reference_path)
    table = flag_outliers(merge_manifests(manifests, output), reference, max_robust_z)
    passed = ~table["qc_outlier"] if gate else pd.Series(True, index=table.index)
    table["qc_pass"] = np.where(passed, "true", "false")
    table["qc_outlier"] = np.where(table["qc_outlier"], "true", "false")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, sep="\t", index=False)
    outliers = int((table["qc_outlier"] == "true").sum())
    dropped = int((~passed).sum())
    summary = {
        "age_bin": age_bin,
        "generated": len(table),
        "outliers": outliers,
        "dropped": dropped,
        "kept": len(table) - dropped,
        "gate": "on" if gate else "off",
        "max_robust_z": max_robust_z,
        "n_reference": len(reference),
    }
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([summary], columns=list(SUMMARY_COLUMNS)).to_csv(summary_path, sep="\t", index=False)
    log.info(
        "bin %s: %d synthetic volume(s) generated, %d QC outlier(s) (|robust z| > %g against %d real training "
        "images), %d dropped by the gate (%s)",
        age_bin,
        len(table),
        outliers,
        max_robust_z,
        len(reference),
        dropped,
        summary["gate"],
    )
    return summary
