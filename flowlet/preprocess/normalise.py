"""Intensity normalisation of the registered brain."""

from __future__ import annotations

import numpy as np

from flowlet.errors import FlowletError


def zscore_in_mask(data: np.ndarray, mask: np.ndarray, subject: str = "image") -> np.ndarray:
    """(x - mean) / std over the voxels of ``mask``; 0 outside it."""
    values = data[mask].astype(np.float64)
    if values.size < 2:
        raise FlowletError(f"{subject}: the MNI-space brain mask has {values.size} voxels; cannot z-score")
    std = values.std()
    if not std > 0:
        raise FlowletError(f"{subject}: the registered brain has constant intensity; cannot z-score")
    out = np.zeros(data.shape, dtype=np.float32)
    out[mask] = ((values - values.mean()) / std).astype(np.float32)
    return out
