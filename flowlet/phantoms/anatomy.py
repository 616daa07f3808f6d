"""The shared head model every phantom is warped from, built once from the MNI152 template.

Everything here lives in template space (MNI millimetres, RAS). A phantom samples
these fields through its own chain of coordinate maps (see ``cohort.py``), so the
expensive work — distance transforms, smoothing, the ventricle and cortex
displacement fields and their calibration — happens once per process.

Brain (1 mm, cropped MNI grid):
- ``t1``: the template T1 inside the template mask, the template's CSF intensity
  outside it, so a shrunken brain leaves CSF behind, not a hole.
- ``grey``, ``white``: nilearn's tissue priors; ``ventricles``: the lateral and third
  ventricles, found as dark, CSF-rich components near the centre of the brain.
- ``ventricle_push``: the gradient of the smoothed ventricle mask. Pulling samples
  along it (q + a * push, in a few Euler steps) enlarges the ventricles into the
  periventricular tissue. Being a gradient field, each step's Jacobian I + a/steps *
  Hessian is symmetric and stays positive definite up to the calibrated maximum, so
  the warp never folds; the calibration table maps amplitude to volume factor.
- ``cortex_pull``: for cortical thinning, the inward normal of the pial surface
  weighted by (1 - depth / ribbon depth), so moving samples outward along it
  compresses the cortical ribbon while its grey/white border stays put.

Head (2 mm, extended grid reaching the neck and face):
- ``icv_distance``: signed distance (mm, positive outside) to the intracranial
  surface (template brain mask, which includes sulcal CSF, plus the spinal canal).
- ``head_distance``: signed distance to the skin: a smooth union of the cranium
  (a fixed margin outside the intracranial surface), a face and a neck.
Small structures (eyes, sinuses, spinal cord, vertebrae) are analytic shapes in
template millimetres, evaluated per phantom.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from flowlet.data.templates import mni_grid, template_brain_mask, template_t1, template_tissue_priors
from flowlet.errors import FlowletError

log = logging.getLogger(__name__)

# The ICBM152 template is larger than an average adult head (template brain mask
# ~1880 ml vs a typical intracranial volume of ~1450 ml); this linear factor
# brings grey + white matter of a young adult to ~1230 ml before sex and
# individual scaling.
TEMPLATE_TO_NATIVE_SCALE = 0.90

VENTRICLE_SEARCH_BOX_MM = ((-25.0, 25.0), (-40.0, 10.0), (-10.0, 30.0))  # component centroids, MNI x, y, z
VENTRICLE_MIN_COMPONENT_MM3 = 200.0
VENTRICLE_MAX_EXTENT_MM = 100.0  # excludes the interhemispheric fissure, which is long and also dark
VENTRICLE_PUSH_SMOOTHING_MM = 5.0
VENTRICLE_MAX_COMPRESSION = 0.5  # largest shrink of any tissue element in one push step
VENTRICLE_PUSH_STEPS = 5

CORTEX_RIBBON_DEPTH_MM = 4.0  # depth below the pial surface at which thinning no longer moves tissue
CORTEX_OUTSIDE_TAPER_MM = (2.0, 5.0)  # the pull stays full just outside the brain, then fades

HEAD_GRID_BOUNDS_MM = ((-130.0, 130.0), (-160.0, 140.0), (-200.0, 120.0))
HEAD_GRID_SPACING_MM = 2.0
CRANIUM_MARGIN_MM = 14.5  # intracranial surface to skin in template mm (CSF rim + skull + scalp)
FACE_CENTRE_MM, FACE_RADII_MM = (0.0, 30.0, -48.0), (64.0, 62.0, 56.0)
NOSE_CENTRE_MM, NOSE_RADII_MM = (0.0, 92.0, -52.0), (11.0, 16.0, 22.0)
NECK_CENTRE_MM, NECK_RADII_MM, NECK_TOP_MM = (0.0, -22.0), (56.0, 60.0), -10.0
SMOOTH_UNION_MM = 12.0

SPINAL_CANAL_RADIUS_MM = 8.0
SPINAL_CANAL_TOP_MM = -60.0  # the canal joins the brainstem here; the template grid ends at z = -72


@dataclass(frozen=True)
class GridField:
    """A field on a regular grid with an affine from voxel indices to template millimetres."""

    data: np.ndarray  # (X, Y, Z) or (C, X, Y, Z), float32
    affine: np.ndarray
    outside: float = 0.0

    def voxel_coordinates(self, points_mm: np.ndarray) -> np.ndarray:
        inverse = np.linalg.inv(self.affine).astype(np.float32)
        return inverse[:3, :3] @ points_mm + inverse[:3, 3:]

    def sample(self, points_mm: np.ndarray) -> np.ndarray:
        """Trilinear samples at (3, N) template-mm points; ``outside`` beyond the grid."""
        coordinates = self.voxel_coordinates(points_mm)
        if self.data.ndim == 3:
            return ndi.map_coordinates(self.data, coordinates, order=1, cval=self.outside, prefilter=False)
        return np.stack(
            [ndi.map_coordinates(c, coordinates, order=1, cval=self.outside, prefilter=False) for c in self.data]
        )


@dataclass(frozen=True)
class HeadModel:
    t1: GridField
    grey: GridField
    white: GridField
    ventricles: GridField
    ventricle_push: GridField
    cortex_pull: GridField
    icv_distance: GridField
    head_distance: GridField
    brain_centre_mm: np.ndarray
    brain_bottom_mm: float  # template z of the lowest slice holding brain (the template's field of view ends there)
    spinal_canal_centre_mm: np.ndarray  # (x, y) of the canal axis
    tissue_intensity: dict[str, float]  # template T1 medians of csf, grey, white
    template_volumes_ml: dict[str, float]  # grey, white, ventricles, icv in template space
    ventricle_push_table: tuple[np.ndarray, np.ndarray]  # (push amplitudes, ventricle volume factors)
    parenchyma_ml_lost_per_thinning_mm: float

    def push_ventricles(self, points_mm: np.ndarray, amplitude: float) -> np.ndarray:
        """Where tissue at ``points_mm`` came from after enlarging the ventricles by ``amplitude``."""
        return _integrate_push(self.ventricle_push, points_mm, amplitude)

    def thin_cortex(self, points_mm: np.ndarray, thinning_mm: float) -> np.ndarray:
        """Where tissue at ``points_mm`` came from after thinning the cortex by ``thinning_mm``."""
        return points_mm - np.float32(thinning_mm) * self.cortex_pull.sample(points_mm)

    def push_amplitude_for(self, ventricle_factor: float) -> float:
        """The push amplitude that multiplies the template's ventricle volume by ``ventricle_factor``."""
        amplitudes, factors = self.ventricle_push_table
        return float(np.interp(ventricle_factor, factors, amplitudes))


def _integrate_push(push: GridField, points_mm: np.ndarray, amplitude: float) -> np.ndarray:
    # Small Euler steps of the stationary push field: each step is fold-free on its own,
    # so their composition reaches large enlargements without tearing tissue.
    step = np.float32(amplitude / VENTRICLE_PUSH_STEPS)
    points = points_mm.copy()
    first = push.sample(points)
    # The push vanishes a few smoothing widths from the ventricles; skip those points.
    moving = np.flatnonzero(np.abs(first).max(axis=0) > 0)
    points[:, moving] += step * first[:, moving]
    active = points[:, moving]
    for _ in range(VENTRICLE_PUSH_STEPS - 1):
        active += step * push.sample(active)
    points[:, moving] = active
    return points


def _world_coordinates(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    indices = np.indices(shape, dtype=np.float32).reshape(3, -1)
    return (affine[:3, :3].astype(np.float32) @ indices + affine[:3, 3:].astype(np.float32)).reshape((3, *shape))


def _crop_to(box: tuple[slice, ...], affine: np.ndarray) -> np.ndarray:
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box], dtype=float) + affine[:3, 3]
    return shifted


def _signed_distance(inside: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Signed Euclidean distance in mm to the boundary of ``inside``: positive outside, negative inside."""
    outside_distance = ndi.distance_transform_edt(~inside, sampling=spacing_mm)
    inside_distance = ndi.distance_transform_edt(inside, sampling=spacing_mm)
    return (outside_distance - inside_distance).astype(np.float32)


def _find_ventricles(t1: np.ndarray, csf: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Lateral and third ventricles: dark, CSF-rich components deep in the brain near its centre."""
    deep = ndi.binary_erosion(brain, iterations=8)
    labels, count = ndi.label(deep & (csf > 0.5) & (t1 < 0.45))
    keep = np.zeros(count + 1, dtype=bool)
    for index, region in enumerate(ndi.find_objects(labels), start=1):
        component = labels[region] == index
        voxels = np.argwhere(component) + np.array([s.start for s in region])
        points = affine[:3, :3] @ voxels.T + affine[:3, 3:]
        centroid = points.mean(axis=1)
        extent = points.max(axis=1) - points.min(axis=1)
        inside_box = all(low <= c <= high for c, (low, high) in zip(centroid, VENTRICLE_SEARCH_BOX_MM))
        if inside_box and component.sum() >= VENTRICLE_MIN_COMPONENT_MM3 and extent.max() < VENTRICLE_MAX_EXTENT_MM:
            keep[index] = True
    if not keep.any():
        raise FlowletError("phantom head model: found no ventricles in the MNI152 template (unexpected template)")
    core = keep[labels]
    # The partial-volume shell around the dark core is ventricle too; the CSF prior weighs it.
    return np.where(ndi.binary_dilation(core, iterations=1), csf, 0.0).astype(np.float32)


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.minimum(a, b) - h * h * k / 4.0


def ellipsoid_distance(points: np.ndarray, centre, radii) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid (exact for spheres)."""
    centre = np.asarray(centre, dtype=np.float32).reshape(-1, *([1] * (points.ndim - 1)))
    radii = np.asarray(radii, dtype=np.float32).reshape(-1, *([1] * (points.ndim - 1)))
    normalised = np.sqrt((((points - centre) / radii) ** 2).sum(axis=0))
    return (normalised - 1.0) * float(radii.min())


def _apply_matrix(matrix: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``matrix @ v`` for every vector of a (3, ...) field (tensordot is slow on large fields)."""
    out = np.zeros_like(vectors, dtype=np.float32)
    for i in range(3):
        for j in range(3):
            if matrix[i, j] != 0:
                out[i] += np.float32(matrix[i, j]) * vectors[j]
    return out


def _calibrate_ventricle_push(
    ventricles: GridField, push: GridField, box: tuple[slice, ...], amplitude_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Ventricle volume factor as a function of push amplitude, measured on the template."""
    # A 2 mm lattice is accurate to about a percent here and eight times cheaper than 1 mm.
    stride = 2
    lattice = ventricles.data[box][::stride, ::stride, ::stride].shape
    affine = _crop_to(box, ventricles.affine) @ np.diag([stride, stride, stride, 1.0])
    points = _world_coordinates(lattice, affine).reshape(3, -1)
    volume = float(ventricles.sample(points).sum())
    amplitudes = np.linspace(*amplitude_range, 12, dtype=np.float32)
    factors = [float(ventricles.sample(_integrate_push(push, points, a)).sum()) / volume for a in amplitudes]
    return amplitudes, np.asarray(factors)


@lru_cache(maxsize=1)
def build_head_model() -> HeadModel:
    """Derive every shared field from the 1 mm MNI152 template (about 15-30 s, once per process)."""
    log.info("building the phantom head model from the 1 mm MNI152 template")
    _, affine = mni_grid(1)
    mask_full = template_brain_mask(1).get_fdata(dtype=np.float32) > 0
    # The brain fields only need the template mask's bounding box, plus room for the
    # shrink warp to sample a little beyond it.
    box = _bounding_box(mask_full, margin=8, shape=mask_full.shape)
    brain_affine = _crop_to(box, affine)
    mask = mask_full[box].copy()
    t1 = template_t1(1).get_fdata(dtype=np.float32)[box].copy()
    priors = template_tissue_priors(1)
    grey, white, csf = (priors[name].get_fdata(dtype=np.float32)[box].copy() for name in ("grey", "white", "csf"))
    tissue_intensity = {
        name: float(np.median(t1[prior > 0.9])) for name, prior in (("csf", csf), ("grey", grey), ("white", white))
    }
    ventricles = _find_ventricles(t1, csf, mask, brain_affine)
    t1_filled = np.where(mask, t1, tissue_intensity["csf"]).astype(np.float32)

    # Ventricle push. The grid axes are flipped in x relative to mm (FSL's radiological
    # grid), so gradients are taken in voxel space and mapped to mm with the affine.
    core = (ventricles > 0.5).astype(np.float32)
    smoothed = ndi.gaussian_filter(core, VENTRICLE_PUSH_SMOOTHING_MM)
    voxel_gradient = np.stack(np.gradient(smoothed))
    push = _apply_matrix(brain_affine[:3, :3], voxel_gradient)
    ventricle_box = _bounding_box(core > 0, margin=int(3 * VENTRICLE_PUSH_SMOOTHING_MM), shape=core.shape)
    # Per step, 1 + a * curvature must stay above 1 - VENTRICLE_MAX_COMPRESSION. Shrinking
    # (negative a) is only needed down to about half the template's ventricles.
    largest_amplitude = VENTRICLE_MAX_COMPRESSION / -_lowest_curvature(smoothed[ventricle_box]) * VENTRICLE_PUSH_STEPS
    amplitude_range = (-0.3 * largest_amplitude, largest_amplitude)

    # Cortical thinning pull: inward pial normal, full at the surface, zero at ribbon depth.
    parenchyma = ndi.binary_fill_holes((grey + white >= 0.5) | (ventricles > 0.5))
    depth = -_signed_distance(parenchyma, 1.0)  # positive inside the brain
    normal_voxel = np.stack(np.gradient(ndi.gaussian_filter(depth, 1.0)))
    normal = _apply_matrix(brain_affine[:3, :3], normal_voxel)
    normal /= np.maximum(np.sqrt((normal**2).sum(axis=0)), 1e-3)
    inside_weight = np.clip(1.0 - depth / CORTEX_RIBBON_DEPTH_MM, 0.0, 1.0)
    full, gone = CORTEX_OUTSIDE_TAPER_MM
    outside_weight = np.clip((depth + gone) / (gone - full), 0.0, 1.0)
    weight = np.where(depth >= 0, inside_weight, outside_weight)
    cortex_pull = (normal * weight).astype(np.float32)

    ventricle_field = GridField(ventricles, brain_affine)
    push_field = GridField(push, brain_affine)
    push_table = _calibrate_ventricle_push(ventricle_field, push_field, ventricle_box, amplitude_range)
    cortex_pull_field = GridField(cortex_pull, brain_affine)
    thinning_loss = _thinning_loss_per_mm(GridField(grey + white, brain_affine), cortex_pull_field)

    canal_centre = _brainstem_base_centre(mask, brain_affine)
    head_grid_affine, icv_distance, head_distance = _head_fields(mask_full, affine, canal_centre)

    coordinates = np.argwhere(parenchyma)
    brain_centre = (brain_affine[:3, :3] @ coordinates.mean(axis=0) + brain_affine[:3, 3]).astype(np.float32)
    model = HeadModel(
        t1=GridField(t1_filled, brain_affine, outside=tissue_intensity["csf"]),
        grey=GridField(grey, brain_affine),
        white=GridField(white, brain_affine),
        ventricles=ventricle_field,
        ventricle_push=push_field,
        cortex_pull=cortex_pull_field,
        icv_distance=GridField(icv_distance, head_grid_affine, outside=100.0),
        head_distance=GridField(head_distance, head_grid_affine, outside=100.0),
        brain_centre_mm=brain_centre,
        brain_bottom_mm=_lowest_brain_z_mm(mask, brain_affine),
        spinal_canal_centre_mm=canal_centre,
        tissue_intensity=tissue_intensity,
        template_volumes_ml={
            "grey": float(grey.sum()) / 1000,
            "white": float(white.sum()) / 1000,
            "ventricles": float(ventricles.sum()) / 1000,
            "icv": float(mask.sum()) / 1000,
        },
        ventricle_push_table=push_table,
        parenchyma_ml_lost_per_thinning_mm=thinning_loss,
    )
    log.info(
        "head model: template grey %.0f ml, white %.0f ml, ventricles %.1f ml; push amplitude up to %.0f "
        "(ventricles x%.2f); thinning costs %.0f ml/mm",
        *(model.template_volumes_ml[k] for k in ("grey", "white", "ventricles")),
        push_table[0][-1],
        push_table[1][-1],
        thinning_loss,
    )
    return model


def _bounding_box(inside: np.ndarray, margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    occupied = np.argwhere(inside)
    lower = np.maximum(occupied.min(axis=0) - margin, 0)
    upper = np.minimum(occupied.max(axis=0) + margin + 1, shape)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper))


def _lowest_curvature(smoothed: np.ndarray) -> float:
    """Smallest Hessian eigenvalue of the smoothed ventricle mask (per mm squared; negative)."""
    gradient = np.gradient(smoothed)
    hessian = np.empty((*smoothed.shape, 3, 3), dtype=np.float32)
    for i in range(3):
        second = np.gradient(gradient[i])
        for j in range(3):
            hessian[..., i, j] = second[j]
    hessian = 0.5 * (hessian + np.swapaxes(hessian, -1, -2))
    return float(np.linalg.eigvalsh(hessian[smoothed > 1e-3]).min())


def _thinning_loss_per_mm(parenchyma: GridField, cortex_pull: GridField) -> float:
    """Parenchyma (ml) that 1 mm of cortical thinning removes from the template, measured on a 2 mm lattice."""
    stride = 2
    lattice = parenchyma.data[::stride, ::stride, ::stride].shape
    affine = parenchyma.affine @ np.diag([stride, stride, stride, 1.0])
    points = _world_coordinates(lattice, affine).reshape(3, -1)
    before = parenchyma.sample(points).sum()
    after = parenchyma.sample(points - cortex_pull.sample(points)).sum()
    return float(before - after) * stride**3 / 1000


def _lowest_brain_z_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    lowest = int(np.argwhere(mask.any(axis=(0, 1)))[:, 0].min())
    return float(affine[2, 2] * lowest + affine[2, 3])


def _brainstem_base_centre(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(x, y) in mm of the brainstem where the template's field of view ends (its lowest slice with brain)."""
    lowest = int(np.argwhere(mask.any(axis=(0, 1)))[:, 0].min())
    section = np.argwhere(mask[:, :, lowest]).mean(axis=0)
    centre = affine[:3, :3] @ np.array([section[0], section[1], lowest]) + affine[:3, 3]
    return centre[:2].astype(np.float32)


def _head_fields(mask_1mm: np.ndarray, mni_affine: np.ndarray, canal_centre: np.ndarray):
    """Intracranial and skin signed distances on the extended 2 mm head grid."""
    (x0, x1), (y0, y1), (z0, z1) = HEAD_GRID_BOUNDS_MM
    spacing = HEAD_GRID_SPACING_MM
    shape = tuple(int(round((hi - lo) / spacing)) + 1 for lo, hi in HEAD_GRID_BOUNDS_MM)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = (x0, y0, z0)
    world = _world_coordinates(shape, affine)

    # Fractional coverage of the template mask on the coarse grid, from the 1 mm mask.
    coverage = ndi.gaussian_filter(mask_1mm.astype(np.float32), 0.8)
    mni_voxel = np.linalg.inv(mni_affine).astype(np.float32)
    coordinates = mni_voxel[:3, :3] @ world.reshape(3, -1) + mni_voxel[:3, 3:]
    intracranial = ndi.map_coordinates(coverage, coordinates, order=1, cval=0.0, prefilter=False).reshape(shape) >= 0.5
    radial = np.sqrt((world[0] - canal_centre[0]) ** 2 + (world[1] - canal_centre[1]) ** 2)
    intracranial |= (radial <= SPINAL_CANAL_RADIUS_MM) & (world[2] <= SPINAL_CANAL_TOP_MM)
    icv_distance = ndi.gaussian_filter(_signed_distance(intracranial, spacing), 1.0)

    cranium = icv_distance - CRANIUM_MARGIN_MM
    face = ellipsoid_distance(world, FACE_CENTRE_MM, FACE_RADII_MM)
    nose = ellipsoid_distance(world, NOSE_CENTRE_MM, NOSE_RADII_MM)
    neck_radial = np.sqrt(
        ((world[0] - NECK_CENTRE_MM[0]) / NECK_RADII_MM[0]) ** 2
        + ((world[1] - NECK_CENTRE_MM[1]) / NECK_RADII_MM[1]) ** 2
    )
    neck = np.maximum((neck_radial - 1.0) * min(NECK_RADII_MM), world[2] - NECK_TOP_MM)
    skin = _smooth_min(_smooth_min(_smooth_min(cranium, face, SMOOTH_UNION_MM), neck, SMOOTH_UNION_MM), nose, 6.0)
    head_distance = ndi.gaussian_filter(skin, 1.0).astype(np.float32)
    return affine, icv_distance.astype(np.float32), head_distance
