"""Grey / white / CSF segmentation of MNI-space, brain-extracted, z-scored images with ANTs Atropos.

Atropos is initialised with the template's tissue priors (CSF, grey, white in that order), which fixes the
label order and makes it converge in a few iterations. The priors are cropped to the brain's bounding box
and written once, uncompressed, to a private temporary folder: ``ants.atropos`` would write them gzipped
for every call (and leave its outputs in the system temp folder), which costs more than the segmentation
itself at 2 mm. The ANTs library is therefore called the way ``ants.atropos`` calls it, with our files.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from flowlet.data.masks import fill_and_keep_largest
from flowlet.data.templates import template_brain_mask, template_tissue_priors
from flowlet.errors import FlowletError
from flowlet.lazy_ants import import_ants
from flowlet.regions.atlas import TISSUES

# Preprocessed images are exactly 0 outside the brain; synthetic ones may carry tiny background noise.
BACKGROUND_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Segmentation:
    """Hard labels (0 outside, 1 CSF, 2 grey, 3 white) and per-tissue posteriors, both on the full grid."""

    labels: np.ndarray  # uint8
    posteriors: np.ndarray  # float32, shape (3, *grid), in TISSUES order
    brain: np.ndarray  # bool


def brain_mask_of(
    image: np.ndarray, tolerance: float = BACKGROUND_TOLERANCE, fallback: np.ndarray | None = None
) -> np.ndarray:
    """The brain as the largest connected non-background component of an image, with holes filled.

    A brain never reaches the edge of the MNI grid; when the foreground does, the background is not clean
    (for example unmasked generator output) and the foreground is limited to ``fallback`` (a brain mask).
    """
    foreground = np.abs(image) > tolerance
    if fallback is not None and _touches_border(foreground):
        foreground &= fallback
    return fill_and_keep_largest(foreground)


def _touches_border(mask: np.ndarray) -> bool:
    return any(mask.take(index, axis=axis).any() for axis in range(mask.ndim) for index in (0, -1))


class TissueSegmenter:
    """Segments images on one MNI grid; create once and reuse (it owns a temporary folder; call close())."""

    def __init__(
        self, resolution_mm: int = 2, iterations: int = 3, mrf_smoothing: float = 0.0, prior_weight: float = 0.1
    ):
        if iterations < 1:
            raise FlowletError(f"Atropos needs at least one iteration, got {iterations}")
        if not 0 <= prior_weight <= 1:
            raise FlowletError(f"the Atropos prior weight must lie in [0, 1], got {prior_weight}")
        if mrf_smoothing < 0:
            raise FlowletError(f"the Atropos MRF smoothing must be >= 0, got {mrf_smoothing}")
        self.iterations = iterations
        self.mrf_smoothing = mrf_smoothing
        self.prior_weight = prior_weight
        priors = template_tissue_priors(resolution_mm)
        # The template brain with a 6 mm margin: where a subject's affinely registered brain can reach.
        self._brain_limit = ndimage.binary_dilation(template_brain_mask(resolution_mm).get_fdata() > 0, iterations=3)
        self._priors = np.stack([np.asarray(priors[name].get_fdata(), dtype=np.float32) for name in TISSUES])
        self._folder = Path(tempfile.mkdtemp(prefix="flowlet-atropos-"))
        self._written_box: tuple[slice, ...] | None = None

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> TissueSegmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_priors(self, box: tuple[slice, ...]) -> None:
        ants = import_ants()

        if box == self._written_box:
            return
        for index, prior in enumerate(self._priors, start=1):
            ants.image_write(
                ants.from_numpy(np.ascontiguousarray(prior[box])), str(self._folder / f"prior{index:02d}.nii")
            )
        self._written_box = box

    def segment(self, image: np.ndarray, brain: np.ndarray | None = None, what: str = "image") -> Segmentation:
        ants = import_ants()
        from ants.internal import get_lib_fn, get_pointer_string, process_arguments

        if image.shape != self._priors.shape[1:]:
            raise FlowletError(
                f"{what}: shape {image.shape} does not match the tissue priors' grid {self._priors.shape[1:]}"
            )
        brain = brain_mask_of(image, fallback=self._brain_limit) if brain is None else brain
        if brain.sum() < 1000:
            raise FlowletError(
                f"{what}: only {int(brain.sum())} brain voxels; is it brain-extracted and on the MNI grid?"
            )
        corners = np.argwhere(brain)
        # A one-voxel rim of background around the brain; Atropos works on this box only.
        low = np.maximum(corners.min(axis=0) - 1, 0)
        high = np.minimum(corners.max(axis=0) + 2, image.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        self._write_priors(box)
        cropped = ants.from_numpy(np.ascontiguousarray(image[box], dtype=np.float32))
        mask = ants.from_numpy(np.ascontiguousarray(brain[box]).astype(np.uint32))
        labels = cropped.clone("unsigned int")
        posterior_pattern = str(self._folder / "posterior%02d.nii")
        arguments = {
            "d": 3,
            "a": cropped,
            "m-MULTINAME-0": f"[{self.mrf_smoothing},1x1x1]",
            "o": f"[{get_pointer_string(labels)},{posterior_pattern}]",
            "c": f"[{self.iterations},0]",
            "i": f"PriorProbabilityImages[{len(TISSUES)},{self._folder / 'prior%02d.nii'},{self.prior_weight}]",
            "x": mask,
            # A constant seed: with Atropos's default random one, ~0.1% of the labels change from run to run.
            "r": 0,
        }
        status = get_lib_fn("Atropos")(process_arguments(arguments))
        if status != 0:
            raise FlowletError(f"{what}: ANTs Atropos failed with status {status}")
        full_labels = np.zeros(image.shape, dtype=np.uint8)
        full_labels[box] = labels.numpy().astype(np.uint8)
        posteriors = np.zeros((len(TISSUES), *image.shape), dtype=np.float32)
        for index in range(len(TISSUES)):
            posteriors[index][box] = ants.image_read(posterior_pattern % (index + 1)).numpy()
        full_labels[~brain] = 0
        posteriors[:, ~brain] = 0
        return Segmentation(labels=full_labels, posteriors=posteriors, brain=brain)
