"""The MNI152 template, brain mask and tissue priors on FSL's MNI grids, from nilearn's bundled files (no download).

nilearn ships the ICBM152 2009a nonlinear symmetric template at 1 mm on its own
197 x 233 x 189 grid. The FlowLet models work on FSL's grids (2 mm: 91 x 109 x 91,
1 mm: 182 x 218 x 182), so everything here is resampled onto those.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

import nibabel as nib
import numpy as np

from flowlet.data.cache import cached_array
from flowlet.errors import FlowletError

TEMPLATE_NAME = "MNI152NLin2009aSym"

# FSL's MNI152 grids: radiological voxel order (x flipped), origin at the AC.
MNI_GRIDS: dict[int, tuple[tuple[int, int, int], np.ndarray]] = {
    2: ((91, 109, 91), np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])),
    1: ((182, 218, 182), np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])),
}


def mni_grid(resolution_mm: int = 2) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of FSL's MNI152 grid at 1 or 2 mm."""
    if resolution_mm not in MNI_GRIDS:
        raise FlowletError(f"MNI resolution must be 1 or 2 mm, got {resolution_mm}")
    shape, affine = MNI_GRIDS[resolution_mm]
    return shape, affine.copy()


def on_study_grid(factor_on_2mm_grid: int, resolution_mm: int) -> int:
    """A block-averaging factor stated on the 2 mm grid (4: 8 mm blocks) as the factor of the ``resolution_mm`` grid
    that gives the same blocks, so a config setting means the same millimetres whatever preprocess.resolution is."""
    mni_grid(resolution_mm)  # rejects a grid other than 1 or 2 mm, naming both
    return factor_on_2mm_grid * 2 // resolution_mm


def mni_resolution(shape: Sequence[int], what: str = "volume") -> int:
    """The resolution (mm) of the MNI grid with this shape; FlowletError naming the grids otherwise."""
    for resolution, (grid_shape, _) in MNI_GRIDS.items():
        if tuple(int(s) for s in shape) == tuple(grid_shape):
            return resolution
    grids = ", ".join(f"{list(grid)} at {res} mm" for res, (grid, _) in MNI_GRIDS.items())
    raise FlowletError(f"{what} has shape {list(shape)}, which is not an MNI grid ({grids})")


# Bump when what the functions below derive from nilearn's files changes (cached arrays carry it).
DERIVATION = 1


def _on_grid(name: str, resolution_mm: int, derive) -> np.ndarray:
    """``derive()`` (an array on FSL's grid), through the per-user cache of derived arrays."""
    shape = mni_grid(resolution_mm)[0]
    return cached_array(f"{name}_res-{resolution_mm}mm", "nilearn", DERIVATION, derive, shape)


def _resample_to_grid(image: nib.Nifti1Image, resolution_mm: int, interpolation: str) -> np.ndarray:
    from nilearn.image import resample_img

    shape, affine = mni_grid(resolution_mm)
    as_float = nib.Nifti1Image(np.asarray(image.get_fdata(), dtype=np.float32), image.affine)
    with warnings.catch_warnings():
        # The binary mask is resampled continuously on purpose: the result is its
        # fractional coverage per voxel, thresholded at one half by the caller.
        warnings.filterwarnings("ignore", message="Resampling binary images")
        resampled = resample_img(
            as_float,
            target_affine=affine,
            target_shape=shape,
            interpolation=interpolation,
            force_resample=True,
            copy_header=False,
        )
    return np.asarray(resampled.get_fdata(), dtype=np.float32)


def _resampled(loader_name: str, resolution_mm: int) -> np.ndarray:
    """One of nilearn's bundled 1 mm MNI152 images (``nilearn.datasets.<loader_name>``) on FSL's grid."""
    import nilearn.datasets

    return _resample_to_grid(getattr(nilearn.datasets, loader_name)(resolution=1), resolution_mm, "linear")


@lru_cache(maxsize=4)
def template_t1(resolution_mm: int = 2) -> nib.Nifti1Image:
    """The skull-stripped MNI152 T1 template (intensities as nilearn ships them) on FSL's grid."""
    data = _on_grid("t1", resolution_mm, lambda: np.clip(_resampled("load_mni152_template", resolution_mm), 0, None))
    return nib.Nifti1Image(data, mni_grid(resolution_mm)[1])


@lru_cache(maxsize=4)
def template_brain_mask(resolution_mm: int = 2) -> nib.Nifti1Image:
    """Binary brain mask of the template on FSL's grid (grey + white matter + CSF inside the brain)."""

    def derive() -> np.ndarray:
        return (_resampled("load_mni152_brain_mask", resolution_mm) >= 0.5).astype(np.uint8)

    return nib.Nifti1Image(_on_grid("brain-mask", resolution_mm, derive), mni_grid(resolution_mm)[1])


@lru_cache(maxsize=4)
def template_tissue_priors(resolution_mm: int = 2) -> dict[str, nib.Nifti1Image]:
    """Grey- and white-matter probability maps of the template, and CSF as the rest of the brain mask."""

    def probability(loader_name: str) -> np.ndarray:
        return np.clip(_resampled(loader_name, resolution_mm), 0, 1)

    affine = mni_grid(resolution_mm)[1]
    grey = _on_grid("grey", resolution_mm, lambda: probability("load_mni152_gm_template"))
    white = _on_grid("white", resolution_mm, lambda: probability("load_mni152_wm_template"))
    mask = template_brain_mask(resolution_mm).get_fdata() > 0
    csf = np.where(mask, np.clip(1.0 - grey - white, 0, 1), 0.0).astype(np.float32)
    return {
        "grey": nib.Nifti1Image(grey, affine),
        "white": nib.Nifti1Image(white, affine),
        "csf": nib.Nifti1Image(csf, affine),
    }
