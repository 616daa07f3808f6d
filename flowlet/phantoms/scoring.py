"""Scoring preprocessing against a phantom's ground truth: where a registration puts the template's brain boundary."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from flowlet.data.templates import template_brain_mask
from flowlet.phantoms.anatomy import build_head_model
from flowlet.phantoms.cohort import SubjectParameters, brain_pose_to_scanner, brain_template_to_scanner
from flowlet.preprocess.register import mni_points_to_native


def template_boundary_points(resolution_mm: int = 2) -> np.ndarray:
    """(N, 3) MNI mm of the template brain mask's surface voxels (inside, touching the outside)."""
    image = template_brain_mask(resolution_mm)
    mask = image.get_fdata() > 0
    surface = np.argwhere(mask & ~ndi.binary_erosion(mask))
    return surface @ image.affine[:3, :3].T + image.affine[:3, 3]


def boundary_errors_mm(params: SubjectParameters, transform, resolution_mm: int = 2) -> dict[str, np.ndarray]:
    """Distances (native mm) at each template brain-boundary point between where the saved transform
    sends it and where the phantom's truth does: ``pose``, the linear part of the brain map (what a
    rigid or affine registration recovers), and ``map``, the full map with the individual warp, ventricle
    enlargement and cortical thinning (what only a nonlinear registration can follow)."""
    model = build_head_model()
    points = template_boundary_points(resolution_mm)
    estimated = mni_points_to_native(points, transform)
    template = points.T.astype(np.float32)
    truths = {
        "pose": brain_pose_to_scanner(model, params, template),
        "map": brain_template_to_scanner(model, params, template),
    }
    return {name: np.linalg.norm(estimated - truth.T, axis=1) for name, truth in truths.items()}


def best_affine_map_errors_mm(params: SubjectParameters, resolution_mm: int = 2) -> np.ndarray:
    """The floor of ``boundary_errors_mm(...)["map"]`` for any affine transform: the residuals of the
    least-squares affine fit of the full true map at the template brain-boundary points."""
    points = template_boundary_points(resolution_mm)
    true = brain_template_to_scanner(build_head_model(), params, points.T.astype(np.float32)).T
    design = np.c_[points, np.ones(len(points))]
    coefficients, *_ = np.linalg.lstsq(design, true, rcond=None)
    return np.linalg.norm(design @ coefficients - true, axis=1)
