"""In-memory conversion between nibabel images (RAS world) and ANTs images (LPS world), no temporary files."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from flowlet.lazy_ants import import_ants

# ITK's world is LPS; NIfTI's is RAS: the two differ by flipping x and y.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_ants(data: np.ndarray, affine: np.ndarray):
    """An ANTs image with ``data`` on the grid ``affine`` describes (any orientation, oblique allowed)."""
    ants = import_ants()

    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(float(v) for v in lps[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=direction,
    )


def ants_affine(image) -> np.ndarray:
    """The RAS voxel-to-world affine of an ANTs image."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.direction) * np.asarray(image.spacing)[None, :]
    lps[:3, 3] = image.origin
    return _RAS_TO_LPS @ lps


def from_ants(image) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.asarray(image.numpy(), dtype=np.float32), ants_affine(image))
