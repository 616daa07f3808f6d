"""Brain masks shared by the stages: clean-up (skull stripping, synthetic-image QC, tissue segmentation) and the
z-scoring inside a mask that real and synthetic images are saved with."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from flowlet.errors import FlowletError


def fill_and_keep_largest(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of ``mask`` with its holes filled (an empty mask stays empty)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask.astype(bool)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def zscore_in_mask(data: np.ndarray, mask: np.ndarray, what: str = "image") -> np.ndarray:
    """(x - mean) / std over the voxels of ``mask``, 0 outside it (float32); FlowletError naming ``what`` when
    the mask is empty or the brain constant."""
    values = data[mask].astype(np.float64)
    if values.size < 2:
        raise FlowletError(f"{what}: the MNI-space brain mask has {values.size} voxels; cannot z-score")
    std = values.std()
    if not std > 0:
        raise FlowletError(f"{what}: the brain has constant intensity inside its mask; cannot z-score")
    out = np.zeros(data.shape, dtype=np.float32)
    out[mask] = ((values - values.mean()) / std).astype(np.float32)
    return out
