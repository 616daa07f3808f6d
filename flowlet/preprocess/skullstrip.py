"""Skull stripping backends (deepbet, FSL BET) and detection of already skull-stripped input."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from flowlet.errors import FlowletError

BACKENDS = ("deepbet", "fsl")
SKULLSTRIPPED_MODES = ("auto", "force", "skip")


@dataclass(frozen=True)
class SkullstripSettings:
    backend: str = "deepbet"
    # deepbet resamples the brain's bounding box to this cube; 192 gives the same masks as the
    # package's 256 on IXI (see benchmarks/bench_skullstrip_dice.py) in half the time.
    deepbet_size: int = 192
    threshold: float = 0.5
    # Voxel layers added (positive) or removed (negative) after the backend, 6-connected.
    dilate_voxels: int = 0
    fsl_fractional_intensity: float = 0.5


def fill_and_keep_largest(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask.astype(bool)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def adjust_layers(mask: np.ndarray, layers: int) -> np.ndarray:
    if layers == 0:
        return mask
    structure = ndimage.generate_binary_structure(3, 1)
    if layers > 0:
        return ndimage.binary_dilation(mask, structure, iterations=layers)
    return ndimage.binary_erosion(mask, structure, iterations=-layers)


# --- detection of skull-stripped input -------------------------------------------------------

def looks_skullstripped(data: np.ndarray, affine: np.ndarray, max_brain_ml: float = 2500.0) -> bool:
    """True when the image is already a brain: its nonzero voxels form at most a brain's volume
    (a head with skull, scalp and neck is 3-6 litres) and touch no face of the field of view."""
    nonzero = data > 0
    volume_ml = np.count_nonzero(nonzero) * abs(np.linalg.det(affine[:3, :3])) / 1000.0
    faces = (nonzero[0], nonzero[-1], nonzero[:, 0], nonzero[:, -1], nonzero[:, :, 0], nonzero[:, :, -1])
    border_fraction = sum(face.sum() for face in faces) / sum(face.size for face in faces)
    return volume_ml <= max_brain_ml and border_fraction < 0.01


def stripped_input_mask(data: np.ndarray) -> np.ndarray:
    """The brain mask of an already skull-stripped image: its nonzero voxels, holes filled."""
    return fill_and_keep_largest(data > 0)


# --- deepbet ------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _deepbet_model():
    from deepbet import BrainExtraction

    return BrainExtraction(no_gpu=True)


def deepbet_probability(ras: np.ndarray, size: int) -> np.ndarray:
    """deepbet's brain probability for an image in RAS voxel order, computed in memory.

    This follows ``deepbet.BrainExtraction.run_model`` (bounding-box network at
    128^3, then the brain network on the box resampled to a cube) with two
    changes: the cube's side is configurable (the package uses 256), and the
    probability goes back to the image grid by trilinear interpolation instead
    of nearest neighbour, which on 2 mm images gives each voxel its partial
    coverage rather than one sample of it.
    """
    import torch
    import torch.nn.functional as F
    from deepbet.utils import keep_largest_connected_component, normalize

    model = _deepbet_model()
    image = torch.from_numpy(np.ascontiguousarray(ras, dtype=np.float32))
    small = F.interpolate(image[None, None], (128, 128, 128), mode="nearest-exact")[0, 0]
    low, high = small.quantile(0.005), small.quantile(0.995)
    if not high > low:
        raise FlowletError("deepbet: the image has no intensity contrast to find a brain in")
    with torch.no_grad():
        box_probability = model.bbox_model(normalize(small, low, high)[None, None])[0, 1]
    box_mask = (box_probability > 0.5).float().numpy()
    if not box_mask.any():
        raise FlowletError("deepbet found no brain in the image (empty bounding-box mask)")
    box_mask = torch.from_numpy(keep_largest_connected_component(box_mask))
    box = model.get_bbox_with_margin(box_mask, image.shape, 0.1)
    cube = F.interpolate(image[box][None, None], (size, size, size), mode="nearest-exact")[0, 0]
    with torch.no_grad():
        cube_probability = model.model(normalize(cube, low, high)[None, None])[0, 1]
    probability = torch.zeros_like(image)
    probability[box] = F.interpolate(
        cube_probability[None, None], tuple(image[box].shape), mode="trilinear", align_corners=False
    )[0, 0]
    return probability.numpy()


def deepbet_mask(data: np.ndarray, affine: np.ndarray, settings: SkullstripSettings) -> np.ndarray:
    """deepbet's brain mask: the network sees the image in RAS voxel order, as the package feeds it;
    the mask is thresholded, reduced to its largest component and hole-filled, as the package does."""
    orientation = nib.io_orientation(affine)
    ras = nib.apply_orientation(data, orientation)
    probability = deepbet_probability(ras, int(settings.deepbet_size))
    mask = fill_and_keep_largest(probability > settings.threshold)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), orientation)
    return nib.apply_orientation(mask, back).astype(bool)


# --- FSL BET ------------------------------------------------------------------------------

def require_fsl(tool: str) -> Path:
    """The path of an FSL tool; a FlowletError naming FSLDIR when FSL is not installed."""
    fsldir = os.environ.get("FSLDIR")
    if not fsldir:
        raise FlowletError(f"the fsl backend needs FSL's {tool}, but FSLDIR is not set; install FSL and set FSLDIR, "
                           "or choose another backend")
    executable = Path(fsldir) / "bin" / tool
    if not executable.exists():
        raise FlowletError(f"the fsl backend needs {executable}, which does not exist (FSLDIR={fsldir})")
    return executable


def fsl_bet_mask(data: np.ndarray, affine: np.ndarray, settings: SkullstripSettings) -> np.ndarray:
    require_fsl("bet")
    from fsl.wrappers import bet

    workdir = Path(tempfile.mkdtemp(prefix="flowlet-bet-"))
    try:
        source = workdir / "t1w.nii.gz"
        nib.Nifti1Image(data.astype(np.float32), affine).to_filename(str(source))
        bet(str(source), str(workdir / "brain"), mask=True, f=settings.fsl_fractional_intensity, robust=True)
        return np.asanyarray(nib.load(str(workdir / "brain_mask.nii.gz")).dataobj) > 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_BACKEND_FUNCTIONS = {"deepbet": deepbet_mask, "fsl": fsl_bet_mask}


def brain_mask(data: np.ndarray, affine: np.ndarray, settings: SkullstripSettings) -> np.ndarray:
    """The native-space brain mask from the chosen backend, with the configured dilation."""
    if settings.backend not in _BACKEND_FUNCTIONS:
        raise FlowletError(f"unknown skull-stripping backend '{settings.backend}'; choose one of {', '.join(BACKENDS)}")
    mask = _BACKEND_FUNCTIONS[settings.backend](data, affine, settings)
    return adjust_layers(np.asarray(mask, dtype=bool), settings.dilate_voxels)
