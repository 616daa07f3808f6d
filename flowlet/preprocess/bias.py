"""N4 bias-field correction through antspyx."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flowlet.preprocess.antsio import to_ants


@dataclass(frozen=True)
class N4Settings:
    shrink_factor: int = 4
    iterations: tuple[int, ...] = (50, 50, 50, 50)
    tolerance: float = 1e-7
    # B-spline mesh distance in mm (ANTs' --bspline-fitting [200]); it sets the field's smoothness.
    spline_distance_mm: float = 200.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample: the cut maximising the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    cumulative_mass = np.cumsum(counts * centres)
    mean_low = cumulative_mass / np.maximum(weight_low, 1)
    mean_high = (cumulative_mass[-1] - cumulative_mass) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """The head: voxels above Otsu's threshold, largest component, holes filled. N4 ignores the air around it."""
    positive = data[data > 0]
    mask = data > otsu_threshold(positive)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))


def n4_correct(data: np.ndarray, affine: np.ndarray, settings: N4Settings, mask: np.ndarray | None) -> np.ndarray:
    """The bias-corrected image (same grid).

    Magnitude MR images have no meaningful negative values (they come from
    interpolation or offsets), and N4 works on log intensities, so negatives are
    clipped to 0 and the fit is restricted to positive voxels inside ``mask``
    (the whole positive image when None). The field is applied everywhere.
    """
    import ants

    clipped = np.clip(data, 0, None).astype(np.float32)
    fit_region = clipped > 0 if mask is None else (mask & (clipped > 0))
    corrected = ants.n4_bias_field_correction(
        to_ants(clipped, affine),
        mask=to_ants(fit_region.astype(np.float32), affine),
        shrink_factor=int(settings.shrink_factor),
        convergence={"iters": [int(i) for i in settings.iterations], "tol": float(settings.tolerance)},
        spline_param=float(settings.spline_distance_mm),
    )
    return np.clip(corrected.numpy(), 0, None).astype(np.float32)
