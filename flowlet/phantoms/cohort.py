"""Synthetic whole-head T1w phantoms of a skewed-age cohort, written as a BIDS dataset.

Each phantom is the template head model (``anatomy.py``) pulled through a chain of
coordinate maps, from its native voxel grid back to template millimetres:

    native voxel --affine--> scanner mm --head pose^-1--> subject mm
      --1/scale, individual warp--> template mm (skull, scalp, face, neck sampled here)
      --brain shrink--> --ventricle push--> --cortical thinning--> template mm (brain sampled here)

The brain-only maps implement ageing (``aging.py``); the skull does not shrink, so the
space the brain gives up fills with CSF, as it does in life. Intensities are T1w-like
(white > grey > CSF; fat bright; bone and air dark), then a smooth multiplicative bias
field and Rician noise are applied and the image is stored as int16, like a scanner's.

Ground truth. The brain mask follows the convention of skull-stripping tools and of
the IXI reference (DLMUSE ``dseg > 0``, whose union its README calls "close to the
intracranial mask"): everything inside the dura above the foramen magnum, i.e. grey
and white matter, ventricles, and the CSF in the sulci and around the brain. On IXI
the outermost voxel layer of that reference is CSF-dark (about 0.1 x (white - CSF)
below the ventricles) and the mask ends where dura and bone begin, so parenchyma
alone (grey + white + ventricles) would leave the sulci and the CSF an atrophied
brain gives up outside the mask, which no tool does. Here the mask is the
intracranial volume (at least half of the voxel) cut below the template's lowest
brain slice, so the spinal canal stays out; dura, skull and scalp are outside it.
Volumes in the ground-truth table are partial-volume sums on the native grid:
``brain_volume_ml`` is parenchyma (grey + white), ``brain_mask_volume_ml`` the mask.

Pose. ``scanner_to_brain_template`` is each phantom's true map from scanner mm to the
template mm its brain tissue was sampled at; ``brain_template_to_scanner`` inverts it,
and ``brain_pose_to_scanner`` is its linear part (pose, head size, brain shrink), for
scoring a registration at given template points.
The tissue label map (``_dseg``) holds 1 CSF, 2 grey matter, 3 white matter,
4 ventricles, inside the intracranial volume.

Determinism: subject k draws everything from ``numpy.random.default_rng([seed, k])``,
so it is the same file whatever the cohort size, thread count or machine run order.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from tqdm import tqdm

from flowlet.data.nifti import save_nifti
from flowlet.errors import FlowletError
from flowlet.phantoms import aging
from flowlet.phantoms.anatomy import (
    SPINAL_CANAL_TOP_MM,
    TEMPLATE_TO_NATIVE_SCALE,
    HeadModel,
    build_head_model,
    ellipsoid_distance,
)

log = logging.getLogger(__name__)

# Age mixture: (low, high, weight) per bin, uniform within a bin. Deliberately skewed like
# the public cohorts FlowLet targets: dense 18-40, sparse 40-50, few over 60.
AGE_BINS = (
    (18.0, 30.0, 0.34),
    (30.0, 40.0, 0.24),
    (40.0, 50.0, 0.10),
    (50.0, 60.0, 0.14),
    (60.0, 70.0, 0.10),
    (70.0, 80.0, 0.06),
    (80.0, 90.0, 0.02),
)
AGE_LIMITS = (AGE_BINS[0][0], AGE_BINS[-1][1])

# Men's heads are on average ~13 % larger in volume than women's (intracranial volume),
# i.e. ~4 % linear; individual volume varies by ~7 % (SD) around the sex mean.
SEX_LINEAR_SCALE = {"M": 1.02, "F": 0.98}
INDIVIDUAL_VOLUME_SD = 0.07
HEAD_SHAPE_SD = 0.015  # per-axis linear, on top of the overall size
VENTRICLE_INDIVIDUAL_SD = 0.25  # log-normal; ventricle size varies a lot between people of one age

WARP_MODES = 6
WARP_WAVELENGTH_MM = (70.0, 160.0)
WARP_AMPLITUDE_MM = 0.7  # per mode and axis; total RMS about 1.7 mm, fold-free

# Native acquisition: field of view per anatomical axis, voxel sizes, pose and tilt limits.
FIELD_OF_VIEW_MM = {"LR": 192.0, "AP": 240.0, "SI": 240.0}
FIELD_OF_VIEW_CENTRE_MM = (0.0, -5.0, -5.0)  # scanner mm; the subject's head sits near the origin
VOXEL_SIZE_RANGE_MM = (1.9, 2.2)
MAX_ROTATION_DEG = 15.0
MAX_TRANSLATION_MM = 20.0
MAX_OBLIQUE_DEG = 6.0
AXIS_LETTERS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
ANATOMICAL_AXES = ("LR", "AP", "SI")

# Head tissue thicknesses in native mm.
DURA_CSF_RIM_MM = 1.5
SKULL_THICKNESS_MM = (5.0, 8.0)
SKIN_MM = 1.0
SUBCUTANEOUS_FAT_MM = (4.0, 7.0)

# Template-space analytic structures (mm): eyes, air spaces, cervical spine.
EYE_CENTRES_MM = ((-32.0, 60.0, -30.0), (32.0, 60.0, -30.0))
EYE_RADIUS_MM = 12.0
ORBITAL_FAT_MM = 6.0
AIR_SPACES_MM = (  # nasal cavity, maxillary sinuses, frontal sinus: (centre, radii)
    ((0.0, 66.0, -50.0), (6.0, 20.0, 16.0)),
    ((-25.0, 52.0, -58.0), (11.0, 13.0, 12.0)),
    ((25.0, 52.0, -58.0), (11.0, 13.0, 12.0)),
    ((0.0, 72.0, -6.0), (12.0, 5.0, 8.0)),
)
SPINAL_CORD_RADIUS_MM = 5.0
VERTEBRA_OFFSET_MM, VERTEBRA_RADIUS_MM = 19.0, 10.0  # anterior of the canal axis
PHARYNX_OFFSET_MM, PHARYNX_RADII_MM, PHARYNX_TOP_MM = 36.0, (9.0, 5.0), -60.0

# T1w intensities relative to white matter before gain (typical MPRAGE ratios).
T1_RANGES = {
    "grey": (0.62, 0.72),
    "csf": (0.20, 0.30),
    "fat": (1.05, 1.30),
    "muscle": (0.40, 0.52),
    "skin": (0.55, 0.70),
    "marrow": (0.30, 0.55),
    "bone": (0.04, 0.10),
}
SPINAL_CORD_T1 = 0.85  # mostly white matter
VITREOUS_T1_OF_CSF = 0.8  # fluid with a little protein, a shade darker than CSF
RIM_T1_OF_CSF = 0.9  # dura darkens the CSF between brain and skull
DEEP_SOFT_TISSUE_FAT_SHARE = 0.5  # muscle and fat interleave below the subcutaneous layer
SCANNER_GAIN_RANGE = (600.0, 1100.0)  # stored value of white matter
BIAS_AMPLITUDE_RANGE = (0.08, 0.20)  # peak multiplicative deviation over the head
NOISE_FRACTION_RANGE = (0.015, 0.035)  # Rician sigma relative to white matter


@dataclass(frozen=True)
class SubjectParameters:
    participant_id: str
    age: float
    sex: str
    head_scale: tuple[float, float, float]
    ventricle_individual_factor: float
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    voxel_size_mm: tuple[float, float, float]
    oblique_deg: tuple[float, float, float]
    skull_thickness_mm: float
    fat_thickness_mm: float
    intensities: dict[str, float]
    scanner_gain: float
    bias_amplitude: float
    noise_fraction: float
    warp_wavevectors: np.ndarray  # (modes, 3) in rad/mm
    warp_phases: np.ndarray  # (modes, 3)
    warp_amplitudes: np.ndarray  # (modes, 3) in mm
    texture_wavevectors: np.ndarray
    texture_phases: np.ndarray
    bias_coefficients: np.ndarray  # (10,) quadratic polynomial in scanner coordinates / 100 mm
    noise_seed: int


@dataclass(frozen=True)
class Phantom:
    t1: np.ndarray  # int16, native grid
    brain_mask: np.ndarray  # uint8
    tissue_labels: np.ndarray  # uint8: 1 CSF, 2 GM, 3 WM, 4 ventricles
    affine: np.ndarray
    truth: dict[str, float | str]


def participant_label(index: int) -> str:
    return f"demo{index + 1:03d}"


def sample_age(rng: np.random.Generator, age_min: float, age_max: float) -> float:
    """Draw from the skewed bin mixture restricted to [age_min, age_max]."""
    overlaps = [(max(lo, age_min), min(hi, age_max), w) for lo, hi, w in AGE_BINS]
    weights = np.array([w * max(0.0, hi - lo) / (b[1] - b[0]) for (lo, hi, w), b in zip(overlaps, AGE_BINS)])
    chosen = rng.choice(len(AGE_BINS), p=weights / weights.sum())
    low, high, _ = overlaps[chosen]
    return round(float(rng.uniform(low, high)), 2)


def _wavevectors(rng: np.random.Generator, count: int, wavelength_range: tuple[float, float]) -> np.ndarray:
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * (2 * np.pi / rng.uniform(*wavelength_range, size=(count, 1)))


def check_age_range(age_min: float, age_max: float) -> None:
    if not AGE_LIMITS[0] <= age_min < age_max <= AGE_LIMITS[1]:
        raise FlowletError(
            f"phantoms: age range [{age_min}, {age_max}] must lie within [{AGE_LIMITS[0]}, {AGE_LIMITS[1]}] "
            "(the span of the age mixture and ageing model) with --age-min < --age-max"
        )


def draw_subject(seed: int, index: int, age_min: float, age_max: float) -> SubjectParameters:
    """Every random choice about subject ``index``, from its own generator."""
    check_age_range(age_min, age_max)
    rng = np.random.default_rng([seed, index])
    age = sample_age(rng, age_min, age_max)
    sex = "M" if rng.random() < 0.5 else "F"
    overall = SEX_LINEAR_SCALE[sex] * (1 + INDIVIDUAL_VOLUME_SD * rng.standard_normal()) ** (1 / 3)
    shape = 1 + HEAD_SHAPE_SD * rng.standard_normal(3)
    return SubjectParameters(
        participant_id=f"sub-{participant_label(index)}",
        age=age,
        sex=sex,
        head_scale=tuple(float(v) for v in TEMPLATE_TO_NATIVE_SCALE * overall * shape / np.cbrt(shape.prod())),
        ventricle_individual_factor=float(np.exp(VENTRICLE_INDIVIDUAL_SD * rng.standard_normal())),
        rotation_deg=tuple(float(v) for v in rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 3)),
        translation_mm=tuple(float(v) for v in rng.uniform(-MAX_TRANSLATION_MM, MAX_TRANSLATION_MM, 3)),
        voxel_size_mm=tuple(float(v) for v in np.round(rng.uniform(*VOXEL_SIZE_RANGE_MM, 3), 3)),
        oblique_deg=tuple(float(v) for v in rng.uniform(-MAX_OBLIQUE_DEG, MAX_OBLIQUE_DEG, 3)),
        skull_thickness_mm=float(rng.uniform(*SKULL_THICKNESS_MM)),
        fat_thickness_mm=float(rng.uniform(*SUBCUTANEOUS_FAT_MM)),
        intensities={name: float(rng.uniform(*bounds)) for name, bounds in T1_RANGES.items()},
        scanner_gain=float(rng.uniform(*SCANNER_GAIN_RANGE)),
        bias_amplitude=float(rng.uniform(*BIAS_AMPLITUDE_RANGE)),
        noise_fraction=float(rng.uniform(*NOISE_FRACTION_RANGE)),
        warp_wavevectors=_wavevectors(rng, WARP_MODES, WARP_WAVELENGTH_MM),
        warp_phases=rng.uniform(0, 2 * np.pi, size=(WARP_MODES, 3)),
        warp_amplitudes=WARP_AMPLITUDE_MM * rng.standard_normal(size=(WARP_MODES, 3)),
        texture_wavevectors=_wavevectors(rng, 8, (12.0, 30.0)),
        texture_phases=rng.uniform(0, 2 * np.pi, size=8),
        bias_coefficients=rng.standard_normal(10),
        noise_seed=int(rng.integers(2**63)),
    )


def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def parse_orientation(orientation: str) -> list[tuple[int, float]]:
    """Voxel-axis directions from a three-letter code such as PSR (first axis runs towards posterior)."""
    code = orientation.upper()
    axes = [AXIS_LETTERS.get(letter) for letter in code]
    if len(code) != 3 or None in axes or len({axis for axis, _ in axes}) != 3:
        raise FlowletError(
            f"phantoms: orientation '{orientation}' must name each of the L/R, A/P and S/I axes once, e.g. PSR or LAS"
        )
    return axes


def native_grid(params: SubjectParameters, orientation: str) -> tuple[tuple[int, int, int], np.ndarray]:
    """Voxel grid and (possibly oblique) affine of the subject's scan."""
    axes = parse_orientation(orientation)
    shape = tuple(
        int(round(FIELD_OF_VIEW_MM[ANATOMICAL_AXES[axis]] / size))
        for (axis, _), size in zip(axes, params.voxel_size_mm)
    )
    directions = np.zeros((3, 3))
    for column, ((axis, sign), size) in enumerate(zip(axes, params.voxel_size_mm)):
        directions[axis, column] = sign * size
    linear = _rotation(params.oblique_deg) @ directions
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(FIELD_OF_VIEW_CENTRE_MM) - linear @ ((np.asarray(shape) - 1) / 2)
    return shape, affine


def _sum_of_waves(points: np.ndarray, wavevectors: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """sum_m sin(k_m . x + phase_m) at (3, N) points."""
    out = np.zeros(points.shape[1], dtype=np.float32)
    for wavevector, phase in zip(wavevectors.astype(np.float32), phases):
        out += np.sin(wavevector @ points + np.float32(phase))
    return out


def _individual_warp(params: SubjectParameters, points: np.ndarray) -> np.ndarray:
    displacement = np.zeros_like(points)
    for wavevector, phase, amplitude in zip(params.warp_wavevectors, params.warp_phases, params.warp_amplitudes):
        argument = wavevector.astype(np.float32) @ points
        for axis in range(3):
            displacement[axis] += np.float32(amplitude[axis]) * np.sin(argument + np.float32(phase[axis]))
    return displacement


def _ramp(x: np.ndarray, width: float = 1.0) -> np.ndarray:
    """Partial-volume step: 0 for x < -width/2, 1 for x > width/2, linear in between."""
    return np.clip(x / width + 0.5, 0.0, 1.0)


def _atrophy(model: HeadModel, params: SubjectParameters) -> dict[str, float]:
    """Brain shrink factor, ventricle push amplitude and thinning for this subject's age.

    Published curves give the parenchyma and ventricle volumes to reach; thinning and
    ventricular growth each remove parenchyma, and a uniform shrink of the brain about
    its centre removes the rest. Two fixed-point rounds settle the coupling (the shrink
    also shrinks the ventricles).
    """
    volumes = model.template_volumes_ml
    parenchyma = volumes["grey"] + volumes["white"]
    target_fraction = aging.brain_volume_fraction(params.age)
    ventricle_target = aging.ventricle_volume_factor(params.age) * params.ventricle_individual_factor
    thinning = aging.cortical_thinning_mm(params.age) / float(np.mean(params.head_scale))
    thinning_loss = thinning * model.parenchyma_ml_lost_per_thinning_mm
    _, factors = model.ventricle_push_table
    shrink = 1.0
    for _ in range(2):
        push_factor = float(np.clip(ventricle_target / shrink**3, factors[0], factors[-1]))
        ventricle_loss = (push_factor - 1.0) * volumes["ventricles"]
        remaining = parenchyma - ventricle_loss - thinning_loss
        shrink = float(min(1.0, (target_fraction * parenchyma / remaining) ** (1 / 3)))
    return {
        "brain_shrink": shrink,
        "ventricle_push": model.push_amplitude_for(push_factor),
        "thinning_mm": thinning,
        "target_brain_fraction": target_fraction,
        "target_ventricle_factor": ventricle_target,
    }


def synthesize(model: HeadModel, params: SubjectParameters, orientation: str = "PSR") -> Phantom:
    """One whole-head T1w phantom, its brain mask, tissue labels and ground truth."""
    shape, affine = native_grid(params, orientation)
    voxel_volume = float(np.prod(params.voxel_size_mm))
    indices = np.indices(shape, dtype=np.float32).reshape(3, -1)
    scanner = affine[:3, :3].astype(np.float32) @ indices + affine[:3, 3:].astype(np.float32)
    template = scanner_to_head_template(params, scanner)
    mean_scale = float(np.mean(params.head_scale))

    icv_depth = -model.icv_distance.sample(template) * mean_scale  # native mm, positive inside
    skin_depth = -model.head_distance.sample(template) * mean_scale
    atrophy = _atrophy(model, params)

    brain_voxels = np.flatnonzero(icv_depth > -3.0)
    points = head_to_brain_template(model, atrophy, template[:, brain_voxels])

    n = indices.shape[1]
    fractions = {}
    for name, field in (("grey", model.grey), ("white", model.white), ("ventricles", model.ventricles)):
        full = np.zeros(n, dtype=np.float32)
        full[brain_voxels] = field.sample(points)
        fractions[name] = full
    template_t1 = np.full(n, model.tissue_intensity["csf"], dtype=np.float32)
    template_t1[brain_voxels] = model.t1.sample(points)

    image = _compose_intensities(model, params, template, template_t1, icv_depth, skin_depth)
    image = _apply_bias_and_noise(params, image, scanner, skin_depth)
    t1 = np.clip(np.rint(image * params.scanner_gain), 0, np.iinfo(np.int16).max).astype(np.int16)

    intracranial = _ramp(icv_depth)
    grey, white, ventricles = (fractions[name] * intracranial for name in ("grey", "white", "ventricles"))
    above_foramen = _ramp((template[2] - np.float32(model.brain_bottom_mm)) * mean_scale)
    mask = _brain_mask((intracranial * above_foramen).reshape(shape) >= 0.5)
    other_csf = np.clip(intracranial - grey - white - ventricles, 0.0, None)
    stacked = np.stack([other_csf, grey, white, ventricles])
    labels = np.where(intracranial >= 0.5, np.argmax(stacked, axis=0) + 1, 0).astype(np.uint8)

    voxel_ml = voxel_volume / 1000.0
    truth = {
        "participant_id": params.participant_id,
        "age": params.age,
        "sex": params.sex,
        "brain_volume_ml": float((grey + white).sum()) * voxel_ml,
        "gm_volume_ml": float(grey.sum()) * voxel_ml,
        "wm_volume_ml": float(white.sum()) * voxel_ml,
        "ventricle_volume_ml": float(ventricles.sum()) * voxel_ml,
        "brain_mask_volume_ml": float(mask.sum()) * voxel_ml,
        "icv_ml": float(intracranial.sum()) * voxel_ml,
        "target_brain_fraction": atrophy["target_brain_fraction"],
        "target_ventricle_factor": atrophy["target_ventricle_factor"],
        "cortical_thinning_mm": aging.cortical_thinning_mm(params.age),
        "head_scale": mean_scale / TEMPLATE_TO_NATIVE_SCALE,
        **{f"rotation_{a}_deg": v for a, v in zip("xyz", params.rotation_deg)},
        **{f"translation_{a}_mm": v for a, v in zip("xyz", params.translation_mm)},
        **{f"oblique_{a}_deg": v for a, v in zip("xyz", params.oblique_deg)},
        **{f"voxel_size_{i}_mm": v for i, v in enumerate(params.voxel_size_mm)},
        "bias_amplitude": params.bias_amplitude,
        "noise_fraction": params.noise_fraction,
    }
    return Phantom(
        t1=t1.reshape(shape),
        brain_mask=mask.astype(np.uint8),
        tissue_labels=labels.reshape(shape),
        affine=affine,
        truth=truth,
    )


def scanner_to_head_template(params: SubjectParameters, scanner_mm: np.ndarray) -> np.ndarray:
    """Template mm of (3, N) scanner points for the head: pose, head size and shape, individual warp."""
    rotation = _rotation(params.rotation_deg).astype(np.float32)
    translation = np.asarray(params.translation_mm, dtype=np.float32)[:, None]
    subject = rotation.T @ (np.asarray(scanner_mm, dtype=np.float32) - translation)
    head_scale = np.asarray(params.head_scale, dtype=np.float32)[:, None]
    return subject / head_scale - _individual_warp(params, subject)


def head_to_brain_template(model: HeadModel, atrophy: dict[str, float], head_mm: np.ndarray) -> np.ndarray:
    """Where in the template the brain tissue at head-template points came from (the ageing maps)."""
    centre = model.brain_centre_mm[:, None]
    points = centre + (head_mm - centre) / np.float32(atrophy["brain_shrink"])
    points = model.push_ventricles(points, atrophy["ventricle_push"])
    return model.thin_cortex(points, atrophy["thinning_mm"])


def scanner_to_brain_template(model: HeadModel, params: SubjectParameters, scanner_mm: np.ndarray) -> np.ndarray:
    """The phantom's true map of its brain: scanner mm -> template mm the brain tissue there was sampled at."""
    return head_to_brain_template(model, _atrophy(model, params), scanner_to_head_template(params, scanner_mm))


def brain_pose_to_scanner(model: HeadModel, params: SubjectParameters, template_mm: np.ndarray) -> np.ndarray:
    """Scanner mm of (3, N) template points under the linear part of the brain map: head pose
    (rotation, translation), head size and shape, and the age-related shrink of the brain about its
    centre. This is all a rigid or affine registration of the brain can recover; the individual warp,
    ventricle enlargement and cortical thinning are anatomy, not pose."""
    target = np.asarray(template_mm, dtype=np.float32)
    rotation = _rotation(params.rotation_deg).astype(np.float32)
    translation = np.asarray(params.translation_mm, dtype=np.float32)[:, None]
    head_scale = np.asarray(params.head_scale, dtype=np.float32)[:, None]
    shrink = np.float32(_atrophy(model, params)["brain_shrink"])
    centre = model.brain_centre_mm[:, None]
    return rotation @ ((centre + (target - centre) * shrink) * head_scale) + translation


def brain_template_to_scanner(
    model: HeadModel, params: SubjectParameters, template_mm: np.ndarray, tolerance_mm: float = 0.01
) -> np.ndarray:
    """Scanner mm of (3, N) template points under the phantom's full true brain map (its inverse).

    Newton-like iterations from the linear part (``brain_pose_to_scanner``), which also serves
    as the Jacobian: the rest (individual warp, ventricle push, thinning) is smooth and small,
    so the iteration contracts quickly; points it cannot place are an error, not a guess.
    """
    target = np.asarray(template_mm, dtype=np.float32)
    rotation = _rotation(params.rotation_deg).astype(np.float32)
    head_scale = np.asarray(params.head_scale, dtype=np.float32)[:, None]
    shrink = np.float32(_atrophy(model, params)["brain_shrink"])
    scanner = brain_pose_to_scanner(model, params, target)
    for _ in range(100):
        residual = target - scanner_to_brain_template(model, params, scanner)
        if np.abs(residual).max() < tolerance_mm:
            return scanner
        scanner = scanner + rotation @ (residual * head_scale * shrink)
    raise FlowletError(
        f"phantoms: the brain map of {params.participant_id} could not be inverted to {tolerance_mm} mm "
        f"(largest residual {np.abs(residual).max():.3g} mm)"
    )


def _brain_mask(candidate: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(candidate)
    if count == 0:
        return candidate
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndi.binary_fill_holes(labels == largest)


def _compose_intensities(
    model: HeadModel,
    params: SubjectParameters,
    template: np.ndarray,
    template_t1: np.ndarray,
    icv_depth: np.ndarray,
    skin_depth: np.ndarray,
) -> np.ndarray:
    """T1w intensity (white matter = 1) of every voxel, brain to air, with ~1 mm partial-volume edges."""
    level = params.intensities
    anchors = model.tissue_intensity
    # Re-map the template's own contrast onto this subject's tissue intensities.
    brain = np.interp(
        template_t1,
        [0.0, anchors["csf"], anchors["grey"], anchors["white"], 1.0],
        [0.0, level["csf"], level["grey"], 1.0, 1.0 + (1.0 - anchors["white"])],
    ).astype(np.float32)

    x, y, z = template
    canal_x, canal_y = model.spinal_canal_centre_mm
    canal_radius = np.sqrt((x - canal_x) ** 2 + (y - canal_y) ** 2)
    below_brain = z < SPINAL_CANAL_TOP_MM - 12.0
    cord = _ramp(SPINAL_CORD_RADIUS_MM - canal_radius) * below_brain
    brain = brain * (1 - cord) + SPINAL_CORD_T1 * cord
    del canal_radius

    # Outside the intracranial surface, by depth in native mm: CSF rim, skull with marrow, soft tissue.
    scale = float(np.mean(params.head_scale))
    outside = -icv_depth
    skull_start = DURA_CSF_RIM_MM
    skull_end = skull_start + params.skull_thickness_mm
    skull_position = np.clip((outside - skull_start) / params.skull_thickness_mm, 0.0, 1.0)
    marrow_share = np.clip(2.0 * np.sin(np.pi * skull_position) - 1.0, 0.0, 1.0)  # diploe between two tables
    skull = level["bone"] + (level["marrow"] - level["bone"]) * marrow_share

    fatness = 1 / (1 + np.exp(-2.0 * _sum_of_waves(template, params.texture_wavevectors, params.texture_phases)))
    deep_soft = level["muscle"] + (level["fat"] - level["muscle"]) * DEEP_SOFT_TISSUE_FAT_SHARE * fatness
    fat_layer = _ramp(skin_depth - SKIN_MM) * _ramp(SKIN_MM + params.fat_thickness_mm - skin_depth)
    soft = np.where(skin_depth < SKIN_MM, level["skin"], deep_soft)
    soft = soft * (1 - fat_layer) + level["fat"] * fat_layer

    for centre in EYE_CENTRES_MM:
        eye = -ellipsoid_distance(template, centre, (EYE_RADIUS_MM,) * 3) * scale
        orbit_fat = _ramp(eye + ORBITAL_FAT_MM) * _ramp(-eye)
        soft = soft * (1 - orbit_fat) + level["fat"] * orbit_fat
        vitreous = _ramp(eye)
        soft = soft * (1 - vitreous) + VITREOUS_T1_OF_CSF * level["csf"] * vitreous
    vertebra = _ramp(VERTEBRA_RADIUS_MM - np.sqrt((x - canal_x) ** 2 + (y - canal_y - VERTEBRA_OFFSET_MM) ** 2))
    vertebra = vertebra * (z < SPINAL_CANAL_TOP_MM - 15.0)
    soft = soft * (1 - vertebra) + level["marrow"] * vertebra
    air = np.zeros_like(soft)
    for centre, radii in AIR_SPACES_MM:
        air = np.maximum(air, _ramp(-ellipsoid_distance(template, centre, radii) * scale))
    pharynx_radii = PHARYNX_RADII_MM
    pharynx = _ramp(
        (1 - np.sqrt((x / pharynx_radii[0]) ** 2 + ((y - canal_y - PHARYNX_OFFSET_MM) / pharynx_radii[1]) ** 2))
        * min(pharynx_radii)
    ) * (z < PHARYNX_TOP_MM)
    air = np.maximum(air, pharynx)
    soft = soft * (1 - air)

    in_rim = _ramp(outside)  # 1 outside the intracranial surface
    in_skull = _ramp(outside - skull_start) * _ramp(skull_end - outside)
    beyond_skull = _ramp(outside - skull_end)
    head = _ramp(skin_depth)
    value = brain * (1 - in_rim)
    value += RIM_T1_OF_CSF * level["csf"] * in_rim * (1 - in_skull - beyond_skull)
    value += skull * in_skull + soft * beyond_skull
    return (value * np.where(outside > 0, head, 1.0)).astype(np.float32)


def _apply_bias_and_noise(
    params: SubjectParameters, image: np.ndarray, scanner: np.ndarray, skin_depth: np.ndarray
) -> np.ndarray:
    """Smooth multiplicative coil bias (quadratic log-field), then Rician noise from the subject's stream."""
    x, y, z = scanner / np.float32(100.0)
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z, np.ones_like(x))
    log_field = sum(np.float32(c) * t for c, t in zip(params.bias_coefficients, terms))
    head = skin_depth > 0
    log_field -= np.float32(np.median(log_field[head]))
    log_field *= np.float32(np.log1p(params.bias_amplitude) / max(np.abs(log_field[head]).max(), 1e-6))
    signal = image * np.exp(log_field)
    rng = np.random.default_rng(params.noise_seed)
    sigma = np.float32(params.noise_fraction)
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


PARTICIPANT_COLUMNS = {
    "age": {"Description": "age at scan", "Units": "year"},
    "sex": {"Description": "sex; heads of men are on average slightly larger", "Levels": {"M": "male", "F": "female"}},
}
GROUND_TRUTH_DESCRIPTIONS = {
    "brain_volume_ml": "parenchyma, grey + white matter (partial-volume sum)",
    "gm_volume_ml": "grey matter (cortex, deep grey, cerebellar cortex)",
    "wm_volume_ml": "white matter",
    "ventricle_volume_ml": "lateral and third ventricles",
    "brain_mask_volume_ml": "ground-truth brain mask: intracranial volume above the foramen magnum (brain, ventricles, CSF)",
    "icv_ml": "intracranial volume",
    "target_brain_fraction": "parenchyma relative to the same brain before 35, from the ageing model",
    "target_ventricle_factor": "ventricle volume relative to a young adult, ageing model x individual factor",
    "cortical_thinning_mm": "cortical thinning applied, in native mm",
    "head_scale": "linear head size relative to the cohort mean (sex and individual)",
    **{f"rotation_{a}_deg": f"head pose in the scanner: rotation about {a}, degrees (applied x, y, z)" for a in "xyz"},
    **{f"translation_{a}_mm": f"head pose in the scanner: translation along {a}, mm" for a in "xyz"},
    **{f"oblique_{a}_deg": f"tilt of the acquisition grid about {a}, degrees" for a in "xyz"},
    **{f"voxel_size_{i}_mm": f"voxel size along image axis {i}, mm" for i in range(3)},
    "bias_amplitude": "peak multiplicative deviation of the bias field over the head",
    "noise_fraction": "Rician noise sigma relative to white matter",
}


TISSUE_LABELS = {
    1: ("cerebrospinal fluid outside the ventricles", "CSF"),
    2: ("grey matter", "GM"),
    3: ("white matter", "WM"),
    4: ("lateral and third ventricles", "VEN"),
}


def subject_paths(output_dir: Path, participant_id: str) -> dict[str, Path]:
    derivative = output_dir / "derivatives" / "phantoms" / participant_id / "anat"
    return {
        "t1": output_dir / participant_id / "anat" / f"{participant_id}_T1w.nii.gz",
        "brain_mask": derivative / f"{participant_id}_desc-brain_mask.nii.gz",
        "tissue_labels": derivative / f"{participant_id}_dseg.nii.gz",
    }


@dataclass(frozen=True)
class CohortSettings:
    output_dir: Path
    n_subjects: int = 40
    seed: int = 0
    age_min: float = 20.0
    age_max: float = 80.0
    orientation: str = "PSR"
    tissue_labels: bool = True


def _make_subject(settings: CohortSettings, index: int) -> dict[str, float | str]:
    params = draw_subject(settings.seed, index, settings.age_min, settings.age_max)
    phantom = synthesize(build_head_model(), params, settings.orientation)
    paths = subject_paths(settings.output_dir, params.participant_id)
    save_nifti(phantom.t1, phantom.affine, paths["t1"], dtype=np.int16)
    save_nifti(phantom.brain_mask, phantom.affine, paths["brain_mask"], dtype=np.uint8)
    if settings.tissue_labels:
        save_nifti(phantom.tissue_labels, phantom.affine, paths["tissue_labels"], dtype=np.uint8)
    return phantom.truth


def _check_output_dir(settings: CohortSettings, planned: set[str]) -> None:
    if settings.output_dir.exists() and not settings.output_dir.is_dir():
        raise FlowletError(f"phantoms: --output-dir {settings.output_dir} exists and is not a directory")
    stale = sorted(p.name for p in settings.output_dir.glob("sub-*") if p.name not in planned)
    if stale:
        raise FlowletError(
            f"phantoms: {settings.output_dir} already holds subjects this cohort would not write "
            f"({', '.join(stale[:5])}{'...' if len(stale) > 5 else ''}); remove them or choose an empty --output-dir"
        )


def _format(column: str, value: float | str) -> str:
    if column == "age":
        return f"{value:.2f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_cohort(settings: CohortSettings, threads: int = 1) -> list[dict[str, float | str]]:
    """Generate the cohort and write the BIDS dataset; returns the ground-truth rows."""
    if not 1 <= settings.n_subjects <= 999:
        raise FlowletError(f"phantoms: --n-subjects must be between 1 and 999, got {settings.n_subjects}")
    if threads < 1:
        raise FlowletError(f"phantoms: --threads must be at least 1, got {threads}")
    parse_orientation(settings.orientation)
    check_age_range(settings.age_min, settings.age_max)
    planned = {f"sub-{participant_label(i)}" for i in range(settings.n_subjects)}
    _check_output_dir(settings, planned)
    settings.output_dir.mkdir(parents=True, exist_ok=True)

    build_head_model()  # once, before any worker forks, so workers share it
    indices = range(settings.n_subjects)
    progress = dict(total=settings.n_subjects, desc="phantoms", unit="subject")
    if threads == 1:
        rows = [_make_subject(settings, i) for i in tqdm(indices, **progress)]
    else:
        with multiprocessing.get_context("fork").Pool(min(threads, settings.n_subjects)) as pool:
            rows = list(tqdm(pool.imap(partial(_make_subject, settings), indices), **progress))

    _write_tables(settings, rows)
    log.info("wrote %d phantoms to %s", len(rows), settings.output_dir)
    return rows


def _write_tables(settings: CohortSettings, rows: list[dict[str, float | str]]) -> None:
    root = settings.output_dir
    with open(root / "participants.tsv", "w") as table:
        table.write("participant_id\tage\tsex\n")
        for row in rows:
            table.write(f"{row['participant_id']}\t{row['age']:.2f}\t{row['sex']}\n")
    _write_json(root / "participants.json", PARTICIPANT_COLUMNS)
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "FlowLet demo cohort: synthetic whole-head T1w phantoms",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "GeneratedBy": [{"Name": "flowlet phantoms", "Description": _generation_note(settings)}],
        },
    )
    derivatives = root / "derivatives" / "phantoms"
    derivatives.mkdir(parents=True, exist_ok=True)
    _write_json(
        derivatives / "dataset_description.json",
        {
            "Name": "FlowLet phantom ground truth",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "flowlet phantoms", "Description": _generation_note(settings)}],
        },
    )
    columns = list(rows[0])
    with open(derivatives / "ground_truth.tsv", "w") as table:
        table.write("\t".join(columns) + "\n")
        for row in rows:
            table.write("\t".join(_format(c, row[c]) for c in columns) + "\n")
    descriptions = {column: {"Description": text} for column, text in GROUND_TRUTH_DESCRIPTIONS.items()}
    _write_json(derivatives / "ground_truth.json", descriptions)
    if settings.tissue_labels:
        with open(derivatives / "dseg.tsv", "w") as table:
            table.write("index\tname\tabbreviation\n")
            for index, (name, abbreviation) in TISSUE_LABELS.items():
                table.write(f"{index}\t{name}\t{abbreviation}\n")


def _generation_note(settings: CohortSettings) -> str:
    return (
        f"seed {settings.seed}, {settings.n_subjects} subjects, ages {settings.age_min}-{settings.age_max}, "
        f"orientation {settings.orientation.upper()}; MNI152 2009a template anatomy aged with published rates"
    )


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")
