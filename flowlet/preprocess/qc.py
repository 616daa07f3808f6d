"""Quality control: per-subject metrics and picture, and the study-wide table with outlier flags."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from flowlet.errors import FlowletError
from flowlet.qc_metrics import dice, normalised_cross_correlation, outlier_reasons, robust_z

__all__ = [
    "QC_COLUMNS",
    "OUTLIER_METRICS",
    "aggregate_qc",
    "dice",
    "normalised_cross_correlation",
    "robust_z",
    "save_failure_png",
    "save_qc_png",
    "write_qc_row",
]

QC_COLUMNS = (
    "subject",
    "mask_volume_ml",
    "native_volume_factor",
    "dice_template",
    "ncc_template",
    "seconds_n4",
    "seconds_skullstrip",
    "seconds_register",
    "seconds_total",
    "skullstrip_backend",
    "registration",
)
# Metrics whose robust z-score flags a subject: each is a sign of a failed mask or registration.
OUTLIER_METRICS = ("mask_volume_ml", "dice_template", "ncc_template")


def aggregate_qc(
    tables: list[pd.DataFrame], threshold: float = 3.0, failed: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Concatenate per-subject QC rows and flag outliers (|robust z| > threshold on any metric), flagged first.

    ``failed`` (columns subject, reason) adds subjects whose preprocessing failed, flagged with their reason.
    """
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(QC_COLUMNS))
    missing = [c for c in QC_COLUMNS if c not in table.columns]
    if missing:
        raise FlowletError(f"QC tables lack the columns {', '.join(missing)}")
    table["status"] = table["status"].fillna("ok") if "status" in table.columns else "ok"
    succeeded = (table["status"] == "ok").to_numpy()
    reasons: list[list[str]] = [
        [] if ok else [f"preprocessing {status}"] for ok, status in zip(succeeded, table["status"])
    ]
    # Subjects that failed have no metrics; the cohort's spread is that of the ones that succeeded.
    if succeeded.any():
        for index, found in zip(
            np.flatnonzero(succeeded), outlier_reasons(table[succeeded], OUTLIER_METRICS, threshold)
        ):
            reasons[index] += found
    table["outlier"] = [bool(r) for r in reasons]
    table["outlier_reasons"] = ["; ".join(r) for r in reasons]
    if failed is not None and len(failed):
        failed_rows = pd.DataFrame(
            {
                "subject": failed["subject"],
                "status": "failed: " + failed["reason"].astype(str),
                "outlier": True,
                "outlier_reasons": "preprocessing failed: " + failed["reason"].astype(str),
            }
        )
        table = pd.concat([failed_rows, table], ignore_index=True)
    table = table.sort_values(["outlier", "subject"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return table


def _ras(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.apply_orientation(data, nib.io_orientation(affine))


def _views(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Sagittal, coronal and axial slices of a RAS-ordered volume, transposed for display (superior/anterior up)."""
    i, j, k = centre
    return [volume[i, :, :].T, volume[:, j, :].T, volume[:, :, k].T]


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    coordinates = np.argwhere(mask)
    if len(coordinates) == 0:
        return tuple(s // 2 for s in mask.shape)
    return tuple(int(c) for c in np.round(coordinates.mean(axis=0)))


def save_qc_png(
    path: str | Path,
    subject: str,
    native: np.ndarray,
    native_affine: np.ndarray,
    native_mask: np.ndarray,
    mni_brain: np.ndarray,
    mni_affine: np.ndarray,
    template_mask: np.ndarray,
    metrics: dict,
) -> None:
    """Two rows of three views: the brain mask's contour over the bias-corrected native image, and the
    registered brain with the template brain mask's contour. Pixel aspect follows the voxel size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (
            "native + brain mask",
            _ras(native, native_affine),
            _ras(native_mask.astype(np.uint8), native_affine),
            np.abs(nib.affines.voxel_sizes(native_affine)),
            "red",
        ),
        (
            "MNI + template mask",
            _ras(mni_brain, mni_affine),
            _ras(template_mask.astype(np.uint8), mni_affine),
            np.abs(nib.affines.voxel_sizes(mni_affine)),
            "cyan",
        ),
    ]
    grey_on_black = matplotlib.colormaps["gray"].with_extremes(bad="black")
    figure, axes = plt.subplots(2, 3, figsize=(11, 7.5), facecolor="black")
    voxel_axes = [(1, 2), (0, 2), (0, 1)]
    for row, (label, image, mask, zooms, colour) in enumerate(rows):
        low, high = np.percentile(image[mask > 0], [1, 99]) if mask.any() else (image.min(), image.max())
        for col, (picture, outline) in enumerate(zip(_views(image, _centre(mask)), _views(mask, _centre(mask)))):
            ax = axes[row, col]
            horizontal, vertical = voxel_axes[col]
            # Zero is background (z-scored brains are 0 outside the brain); it is drawn black, not mid-grey.
            ax.imshow(
                np.ma.masked_equal(picture, 0),
                cmap=grey_on_black,
                origin="lower",
                vmin=low,
                vmax=high,
                aspect=zooms[vertical] / zooms[horizontal],
                interpolation="nearest",
            )
            if outline.any():
                ax.contour(outline, levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_axis_off()
        axes[row, 0].set_title(label, color="white", loc="left", fontsize=10)
    summary = (
        f"{subject}   mask {metrics['mask_volume_ml']:.0f} ml   Dice(template) {metrics['dice_template']:.3f}   "
        f"NCC {metrics['ncc_template']:.3f}   {metrics['skullstrip_backend']} / {metrics['registration']}   "
        f"{metrics['seconds_total']:.1f} s"
    )
    figure.suptitle(summary, color="white", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(str(path), dpi=80, facecolor="black")
    plt.close(figure)


def write_qc_row(path: str | Path, metrics: dict, status: str = "ok") -> None:
    row = {key: metrics.get(key, np.nan) for key in QC_COLUMNS}
    row["status"] = status
    pd.DataFrame([row]).to_csv(path, sep="\t", index=False, float_format="%.6g")


def save_failure_png(path: str | Path, subject: str, reason: str) -> None:
    """The QC picture of a subject that could not be preprocessed: the reason, where the images would be."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(9, 2), facecolor="black")
    figure.text(
        0.02, 0.5, f"{subject}: preprocessing failed\n{reason}", color="tomato", fontsize=10, va="center", wrap=True
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(str(path), dpi=80, facecolor="black")
    plt.close(figure)
