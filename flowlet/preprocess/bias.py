"""N4 bias-field correction through antspyx."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flowlet.lazy_ants import import_ants
from flowlet.preprocess.antsio import to_ants


@dataclass(frozen=True)
class N4Settings:
    shrink_factor: int = 4
    iterations: tuple[int, ...] = (50, 50, 50, 50)
    tolerance: float = 1e-7
    # B-spline mesh distance in mm (ANTs' --bspline-fitting [200]); it sets the field's smoothness.
    spline_distance_mm: float = 200.0


# Scans with voxels finer than this are fitted on a copy resampled to about this spacing, then shrunk by the
# shrink factor like a 2 mm scan (so every scan's field is fitted on about the same grid, 8 mm by default), and
# the smooth field is interpolated back: a 200 mm B-spline field needs no finer fit, and a 1 mm scan's N4
# took a minute at full resolution.
FIT_SPACING_MM = 2.0


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


def coarse_factor(affine: np.ndarray) -> int:
    """By how much a scan's grid can be coarsened for fitting a smooth field: about FIT_SPACING_MM voxels."""
    voxel_mm = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return max(1, int(FIT_SPACING_MM / voxel_mm.min()))


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """The mean of every ``factor``^3 block (a partial block at the far edges is dropped)."""
    shape = [size // factor for size in data.shape]
    blocks = data[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    return blocks.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


def block_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """The affine of :func:`block_mean`'s grid: voxels ``factor`` times larger, centred on their blocks."""
    coarse = np.array(affine, dtype=float)
    coarse[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2) + affine[:3, 3]
    coarse[:3, :3] = affine[:3, :3] * factor
    return coarse


def _fill_holes(mask: np.ndarray, slice_axis: int | None = None) -> np.ndarray:
    """``mask`` with the background components that touch no edge filled: in 3D, or within each slice across
    ``slice_axis``. What ``ndimage.binary_fill_holes`` does, by one labelling instead of repeated dilations."""
    if slice_axis is None:
        structure, edge_axes = None, range(3)
    else:
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[tuple(1 if a == slice_axis else slice(None) for a in range(3))] = True
        edge_axes = [a for a in range(3) if a != slice_axis]
    labels, _ = ndimage.label(~mask, structure)
    touching = np.unique(np.concatenate([labels.take(i, axis=a).ravel() for a in edge_axes for i in (0, -1)]))
    return mask | ~np.isin(labels, touching)


def _slice_enclosed(mask: np.ndarray) -> np.ndarray:
    """What ``mask`` encloses in some 2D slice along any axis."""
    enclosed = np.zeros_like(mask)
    for axis in range(3):
        enclosed |= _fill_holes(mask, slice_axis=axis)
    return enclosed


@dataclass(frozen=True, eq=False)
class N4Region:
    """Where N4 fits its field (``fit``) and what the field divides (``outline``: the head, or a given mask, with
    all it encloses in 3D or in a slice, such as the dark band of CSF and skull between brain and scalp; it holds
    the fit region). The air beyond the outline keeps its raw scale: the field there is an extrapolation, and
    dividing by it brightens the air's noise and ghosts."""

    fit: np.ndarray
    outline: np.ndarray

    @classmethod
    def around(cls, mask: np.ndarray, step: int = 1) -> N4Region:
        """A given fit region (a user's N4 mask) and its outline, found on every step-th voxel."""
        coarse = mask[::step, ::step, ::step]
        return cls(mask, _repeat_to(_fill_holes(coarse | _slice_enclosed(coarse)), step, mask.shape) | mask)


def head_region(data: np.ndarray, step: int = 1) -> N4Region:
    """The head as N4's region. Its fit region: voxels above Otsu's threshold, largest component, with the voxels
    above the threshold that it encloses in a slice, holes filled; N4 fits its field there, ignoring the air.

    Where the field of view cuts the head (at the neck), the dark band of CSF and skull joins the air below it:
    the brain inside is then its own component, which 3D hole filling does not reach (on some demo phantoms the
    head mask held none of the brain). Dark voxels enclosed only in slices (sinuses, skull) stay out of the fit,
    but inside the outline.

    With ``step`` > 1 it is found on every step-th voxel and expanded back (a field 200 mm smooth needs no finer
    boundary, and the morphology on a full 1 mm grid takes a second)."""
    coarse = data[::step, ::step, ::step]
    positive = coarse[coarse > 0]
    bright = coarse > otsu_threshold(positive)
    labels, count = ndimage.label(bright)
    mask = bright
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    mask = ndimage.binary_closing(mask, iterations=2)
    enclosed = _slice_enclosed(mask)
    fit = _fill_holes(mask | (bright & enclosed))
    outline = _fill_holes(mask | enclosed)
    return N4Region(_repeat_to(fit, step, data.shape), _repeat_to(outline, step, data.shape))


def _repeat_to(mask: np.ndarray, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """A mask found on every step-th voxel, on the full grid of ``shape``."""
    for axis in range(3):
        mask = np.repeat(mask, step, axis=axis)
    return mask[: shape[0], : shape[1], : shape[2]]


def n4_correct(data: np.ndarray, affine: np.ndarray, settings: N4Settings, region: N4Region | None) -> np.ndarray:
    """The bias-corrected image (same grid).

    Magnitude MR images have no meaningful negative values (they come from
    interpolation or offsets), and N4 works on log intensities, so negatives are
    clipped to 0 and the fit is restricted to positive voxels inside the
    region's fit mask (the whole positive image when None). The field divides
    the region's outline (the whole image when None).
    """
    ants = import_ants()

    clipped = np.clip(data, 0, None).astype(np.float32)
    fit_region = clipped > 0 if region is None else (region.fit & (clipped > 0))
    image = to_ants(clipped, affine)
    options = {
        "shrink_factor": int(settings.shrink_factor),
        "convergence": {"iters": [int(i) for i in settings.iterations], "tol": float(settings.tolerance)},
        "spline_param": float(settings.spline_distance_mm),
    }
    factor = coarse_factor(affine)
    if factor == 1:
        mask = to_ants(fit_region.astype(np.float32), affine)
        field = ants.n4_bias_field_correction(image, mask=mask, return_bias_field=True, **options).numpy()
    else:
        coarse_affine = block_affine(affine, factor)
        coarse = to_ants(block_mean(clipped, factor).astype(np.float32), coarse_affine)
        coarse_region = block_mean(fit_region.astype(np.float32), factor) >= 0.5
        field = ants.n4_bias_field_correction(
            coarse, mask=to_ants(coarse_region.astype(np.float32), coarse_affine), return_bias_field=True, **options
        )
        field = ants.resample_image_to_target(field, image, interp_type="linear").numpy()
    # The field, not ANTs' corrected image: that one is divided by the field only inside the fit region, which
    # would leave brain voxels outside it (dark sulcal CSF) at their raw scale.
    outline = np.ones(clipped.shape, dtype=bool) if region is None else region.outline
    corrected = np.divide(clipped, field, out=clipped.copy(), where=outline & (field > 0))
    return np.clip(corrected, 0, None).astype(np.float32)
