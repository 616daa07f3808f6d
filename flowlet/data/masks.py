"""Binary-mask clean-up shared by skull stripping, synthetic-image QC and tissue segmentation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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
