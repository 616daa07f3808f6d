"""Input validation: every way a T1w image or a brain mask can be unusable becomes a FlowletError naming the subject."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from flowlet.data.nifti import load_nifti
from flowlet.errors import FlowletError

# A brain (intracranial) volume outside this range means the mask is wrong, not the brain unusual:
# adult intracranial volumes span roughly 1000-2000 ml, and even a small child's is above 900 ml.
DEFAULT_MIN_MASK_ML = 600.0
DEFAULT_MAX_MASK_ML = 2500.0
# Below this many voxels per axis an image is a slice or a stack of a few slices, not a 3D head.
_MIN_VOXELS_PER_AXIS = 8
# Grids whose corners agree to this fraction of a voxel are the same grid written with different rounding.
_SAME_GRID_VOXEL_FRACTION = 0.1


def load_t1w(path: str | Path, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """Load and validate a T1w image: returns (3D float32 data, affine).

    Accepts any orientation, oblique affines, anisotropic voxels and 4D files with
    a single volume; rejects several volumes, 2D images, sheared affines, NaN/Inf
    voxels and images without signal.
    """
    image = load_nifti(path, what=f"{subject} T1w")
    return validate_t1w(image, subject)


def validate_t1w(image: nib.Nifti1Image, subject: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.asanyarray(image.dataobj)
    shape = data.shape
    if data.ndim == 4 and shape[3] == 1:
        data = data[..., 0]
    elif data.ndim == 4:
        raise FlowletError(
            f"{subject}: the T1w image has {shape[3]} volumes (shape {shape}); expected a single 3D volume"
        )
    elif data.ndim > 4:
        raise FlowletError(f"{subject}: the T1w image has {data.ndim} dimensions (shape {shape}); expected a 3D volume")
    if data.ndim < 3 or min(data.shape) < _MIN_VOXELS_PER_AXIS:
        raise FlowletError(f"{subject}: the T1w image is 2D or too thin (shape {shape}); expected a 3D volume")
    data = np.asarray(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        raise FlowletError(f"{subject}: the T1w image has {int(bad.sum())} NaN or Inf voxels")
    if not np.any(data > 0):
        raise FlowletError(f"{subject}: the T1w image has no positive voxels (all zero or all negative)")
    affine = np.asarray(image.affine, dtype=np.float64)
    check_affine(affine, subject)
    return data, affine


def check_affine(affine: np.ndarray, subject: str) -> None:
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if not np.all(np.isfinite(affine)) or np.any(spacing <= 0):
        raise FlowletError(f"{subject}: the T1w image's affine is degenerate (voxel sizes {spacing})")
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise FlowletError(f"{subject}: the T1w image's affine has shear, which ITK-based tools cannot represent")


def load_mask_on_grid(path: str | Path, shape: tuple[int, ...], affine: np.ndarray, what: str) -> np.ndarray:
    """A binary mask that must lie on the image's grid; header rounding differences are tolerated.

    Masks written by other tools often carry affines that differ from the image's
    in the last digits (float32 qform/sform round trips); they are the same grid,
    so the image's geometry is used. A different grid is an error.
    """
    mask_image = load_nifti(path, what=what)
    data = np.asanyarray(mask_image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if tuple(data.shape) != tuple(shape):
        raise FlowletError(f"{what}: {path} has shape {data.shape}, but the image has {tuple(shape)}")
    corners = np.array([[0, 0, 0, 1], [shape[0] - 1, shape[1] - 1, shape[2] - 1, 1]], dtype=float).T
    offset_mm = np.abs(mask_image.affine @ corners - affine @ corners).max()
    if offset_mm > _SAME_GRID_VOXEL_FRACTION * np.linalg.norm(affine[:3, :3], axis=0).min():
        raise FlowletError(f"{what}: {path} is not on the image's grid (corners differ by {offset_mm:.2f} mm)")
    return np.asarray(data) > 0


def check_mask_volume(
    mask: np.ndarray,
    affine: np.ndarray,
    subject: str,
    min_ml: float = DEFAULT_MIN_MASK_ML,
    max_ml: float = DEFAULT_MAX_MASK_ML,
) -> float:
    """The mask's volume in ml; a FlowletError when it is empty or outside [min_ml, max_ml]."""
    volume_ml = mask_volume_ml(mask, affine)
    if volume_ml == 0:
        raise FlowletError(f"{subject}: the brain mask is empty; skull stripping found no brain")
    if volume_ml < min_ml:
        raise FlowletError(f"{subject}: the brain mask is implausibly small ({volume_ml:.0f} ml < {min_ml:.0f} ml)")
    if volume_ml > max_ml:
        raise FlowletError(f"{subject}: the brain mask is implausibly large ({volume_ml:.0f} ml > {max_ml:.0f} ml)")
    return volume_ml


def mask_volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    return float(np.count_nonzero(mask) * abs(np.linalg.det(affine[:3, :3])) / 1000.0)
