"""NIfTI reading and writing with errors that name the file and the reason."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from flowlet.errors import FlowletError


def load_nifti(path: str | Path, what: str = "image") -> nib.Nifti1Image:
    """Load a NIfTI file fully into memory, turning every way it can be unreadable into a FlowletError.

    ``what`` names the file's role in messages (for example "sub-01 T1w").
    """
    path = Path(path)
    if not path.exists():
        raise FlowletError(f"{what}: {path} does not exist")
    try:
        image = nib.load(str(path))
        # Force the read now: nibabel is lazy, and a truncated gzip only fails on access.
        data = np.asanyarray(image.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError) as error:
        raise FlowletError(f"{what}: {path} is not a readable NIfTI file ({type(error).__name__}: {error})") from error
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise FlowletError(f"{what}: {path} is a {type(image).__name__}, not NIfTI")
    return nib.Nifti1Image(data, image.affine, image.header)


def save_nifti(data: np.ndarray, affine: np.ndarray, path: str | Path, dtype=np.float32) -> Path:
    """Write ``data`` with ``affine`` as NIfTI, creating parent folders; sform and qform both set."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    image.set_sform(affine, code=4 if _is_mni_affine(affine) else 1)
    image.set_qform(affine, code=4 if _is_mni_affine(affine) else 1)
    image.to_filename(str(path))
    return path


def tilted_copy(image: nib.Nifti1Image, x_degrees: float = 12.0, z_degrees: float = 8.0) -> nib.Nifti1Image:
    """The same voxels under an affine tilted about x and z around the image centre, as a scanner's oblique
    acquisition of the same head would store them: a check that preprocessing does not depend on orientation."""
    tilt = nib.eulerangles.euler2mat(z=np.deg2rad(z_degrees), x=np.deg2rad(x_degrees))
    centre = image.affine @ np.r_[(np.array(image.shape[:3]) - 1) / 2, 1]
    rotation = np.eye(4)
    rotation[:3, :3] = tilt
    rotation[:3, 3] = centre[:3] - tilt @ centre[:3]
    return nib.Nifti1Image(np.asarray(image.dataobj), rotation @ image.affine)


def _is_mni_affine(affine: np.ndarray) -> bool:
    from flowlet.data.templates import MNI_GRIDS

    return any(np.allclose(affine, grid_affine) for _, grid_affine in MNI_GRIDS.values())
