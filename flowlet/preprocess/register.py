"""Registration of the brain to the MNI152 template, the saved transform, and carrying images along it.

A transform is saved as ANTs files: the affine (or rigid) part as an ITK ``.mat``
and, for SyN, a forward and an inverse displacement field. ``--transform`` names
either the ``.mat`` path (warps go beside it as ``<stem>_warp.nii.gz`` and
``<stem>_invwarp.nii.gz``) or a prefix (``<prefix>affine.mat``, ``<prefix>warp.nii.gz``,
``<prefix>invwarp.nii.gz``). `apply_to_mni` and `apply_to_native` read either form.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from flowlet.data.nifti import load_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1
from flowlet.errors import FlowletError
from flowlet.lazy_ants import import_ants
from flowlet.preprocess.antsio import to_ants

METHODS = ("rigid", "affine", "syn")
BACKENDS = ("ants", "fsl")
_ANTS_TYPE = {"rigid": "Rigid", "affine": "Affine", "syn": "SyN"}
INTERPOLATIONS = {
    "linear": "linear",
    "nearest": "nearestNeighbor",
    "label": "genericLabel",
    "bspline": "bSpline",
}


@dataclass(frozen=True)
class RegistrationSettings:
    method: str = "affine"
    backend: str = "ants"
    # Multi-resolution schedule of the linear stage (2 mm input: 8, 4, 2 mm levels).
    iterations: tuple[int, ...] = (100, 50, 10)
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    syn_iterations: tuple[int, ...] = (40, 20, 0)
    # Fraction of the template's voxels at which the linear stage's metric is sampled (on a regular grid,
    # jittered): its cost is per sampled point. With 0.05 on every level, the coarse levels, which find the pose
    # from a few thousand points, misregistered an oblique IXI scan for 1 to 3 of 6 seeds, and after the N4 fixes
    # still landed less consistently than with 0.2 (README), so they keep ANTs' 0.2.
    sampling_rate: float = 0.2
    # The finest level's rate (rigid and affine): it only refines the pose, and there the same fraction costs the
    # most points. 0.05 there: never failed on those seeds, the same pose errors on the phantoms, IXI masks'
    # Dice 0.001 lower, registration 40% faster (README). Equal rates make one ANTs stage; a one-level schedule
    # has only the finest level.
    fine_sampling_rate: float = 0.05
    # ANTs samples metric points at random and seeds from the clock unless given a seed (any nonzero int);
    # a fixed seed and one ITK thread make the transform bit-identical from run to run.
    seed: int = 1


@dataclass(frozen=True)
class TransformFiles:
    affine: Path
    warp: Path
    inverse_warp: Path

    @classmethod
    def from_spec(cls, spec: str | Path) -> TransformFiles:
        spec = str(spec)
        if spec.endswith(".mat"):
            stem = spec[: -len(".mat")]
            return cls(Path(spec), Path(f"{stem}_warp.nii.gz"), Path(f"{stem}_invwarp.nii.gz"))
        return cls(Path(f"{spec}affine.mat"), Path(f"{spec}warp.nii.gz"), Path(f"{spec}invwarp.nii.gz"))

    def check(self) -> None:
        if not self.affine.exists():
            raise FlowletError(f"transform: {self.affine} does not exist")

    @property
    def has_warp(self) -> bool:
        return self.warp.exists() and self.inverse_warp.exists()

    def to_mni_list(self) -> tuple[list[str], list[bool]]:
        self.check()
        if self.has_warp:
            return [str(self.warp), str(self.affine)], [False, False]
        return [str(self.affine)], [False]

    def to_native_list(self) -> tuple[list[str], list[bool]]:
        self.check()
        if self.has_warp:
            return [str(self.affine), str(self.inverse_warp)], [True, False]
        return [str(self.affine)], [True]


@dataclass
class Registration:
    """A computed registration whose files live in a temporary folder until the caller copies them."""

    workdir: Path
    files: TransformFiles

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _template_brain(resolution_mm: int):
    template = template_t1(resolution_mm)
    mask = template_brain_mask(resolution_mm).get_fdata(dtype=np.float32)
    return to_ants(template.get_fdata(dtype=np.float32) * mask, template.affine)


# A rigid or affine transform does not depend on the grid it was found on, and one found on the 2 mm template
# is as accurate: a 1 mm study registers there and resamples onto its own grid (five times faster).
LINEAR_RESOLUTION_MM = 2


def _moving_image(brain: np.ndarray, affine: np.ndarray, method: str):
    """The brain as ANTs reads it; for a linear registration, a scan finer than the 2 mm template is first
    resampled to it (the template's grid is what the metric samples, so the finer detail only costs time)."""
    ants = import_ants()

    image = to_ants(brain, affine)
    spacing = np.asarray(image.spacing, dtype=float)
    # Scans near 2 mm (the demo's 1.9-2.2 mm phantoms, 2 mm IXI) are registered as they are.
    if method == "syn" or spacing.min() > LINEAR_RESOLUTION_MM / 2:
        return image
    coarse = tuple(np.maximum(spacing, LINEAR_RESOLUTION_MM))
    return ants.resample_image(image, coarse, use_voxels=False, interp_type=0)


def register_to_mni(
    brain: np.ndarray, affine: np.ndarray, settings: RegistrationSettings, resolution_mm: int = 2
) -> Registration:
    """Register a skull-stripped brain (background 0) to the skull-stripped MNI152 template."""
    if settings.method not in METHODS:
        raise FlowletError(f"unknown registration '{settings.method}'; choose one of {', '.join(METHODS)}")
    if settings.backend == "fsl":
        return _register_flirt(brain, affine, settings, resolution_mm)
    if settings.backend != "ants":
        raise FlowletError(f"unknown registration backend '{settings.backend}'; choose one of {', '.join(BACKENDS)}")
    for rate in (settings.sampling_rate, settings.fine_sampling_rate):
        if not 0 < rate <= 1:
            raise FlowletError(f"the registration sampling rate must lie in (0, 1], got {rate}")
    levels = len(settings.iterations)
    if not levels == len(settings.shrink_factors) == len(settings.smoothing_sigmas):
        raise FlowletError(
            f"the registration has {levels} levels of iterations but {len(settings.shrink_factors)} shrink factors "
            f"and {len(settings.smoothing_sigmas)} smoothing sigmas; give one of each per level"
        )
    if settings.seed == 0:
        raise FlowletError("the registration seed must be a nonzero integer (ANTs reads 0 as 'seed from the clock')")
    workdir = Path(tempfile.mkdtemp(prefix="flowlet-reg-"))
    try:
        if settings.method == "syn":
            _register_syn(brain, affine, settings, resolution_mm, workdir)
        else:
            _register_linear(brain, affine, settings, workdir)
    except Exception:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Registration(workdir, TransformFiles.from_spec(workdir / "out_"))


def _register_syn(
    brain: np.ndarray, affine: np.ndarray, settings: RegistrationSettings, resolution_mm: int, workdir: Path
) -> None:
    """Affine then SyN through ``ants.registration``; the affine and both warps are moved to ``out_``'s names."""
    ants = import_ants()

    # antspyx passes --random-seed to antsRegistration only from its module-level setting; set it for this call.
    previous_seed = ants.config._random_seed
    ants.config._random_seed = settings.seed
    try:
        result = ants.registration(
            fixed=_template_brain(resolution_mm),
            moving=_moving_image(brain, affine, settings.method),
            type_of_transform=_ANTS_TYPE[settings.method],
            outprefix=str(workdir / "reg_"),
            aff_iterations=tuple(int(i) for i in settings.iterations),
            aff_shrink_factors=tuple(int(s) for s in settings.shrink_factors),
            aff_smoothing_sigmas=tuple(float(s) for s in settings.smoothing_sigmas),
            reg_iterations=tuple(int(i) for i in settings.syn_iterations),
            aff_random_sampling_rate=float(settings.sampling_rate),
        )
    finally:
        ants.config._random_seed = previous_seed
    files = TransformFiles.from_spec(workdir / "out_")
    shutil.move(next(Path(p) for p in result["fwdtransforms"] if p.endswith(".mat")), files.affine)
    warps = [Path(p) for p in result["fwdtransforms"] if p.endswith("Warp.nii.gz")]
    inverse_warps = [Path(p) for p in result["invtransforms"] if p.endswith("InverseWarp.nii.gz")]
    if warps and inverse_warps:
        shutil.move(warps[0], files.warp)
        shutil.move(inverse_warps[0], files.inverse_warp)


def _register_linear(brain: np.ndarray, affine: np.ndarray, settings: RegistrationSettings, workdir: Path) -> None:
    """A rigid or affine antsRegistration as ``ants.registration`` runs it (Mattes MI, centre-of-mass start,
    gradient step 0.25), with one stage per run of levels that share a sampling rate, so the finest level can
    sample fewer points; the stages' transforms are collapsed into one ``out_affine.mat``. No warped images are
    written (nothing reads them)."""
    import_ants()  # the lean antspyx import must come before ants.internal
    from ants.internal import get_lib_fn, get_pointer_string, process_arguments

    fixed = _template_brain(LINEAR_RESOLUTION_MM)
    moving = _moving_image(brain, affine, settings.method).clone("float")
    images = f"{get_pointer_string(fixed)},{get_pointer_string(moving)}"
    rates = [settings.sampling_rate] * (len(settings.iterations) - 1) + [settings.fine_sampling_rate]
    arguments = ["--dimensionality", "3", "-r", f"[{images},1]"]
    schedule = zip(rates, settings.iterations, settings.shrink_factors, settings.smoothing_sigmas)
    for rate, stage in itertools.groupby(schedule, key=lambda level: level[0]):
        _, iterations, shrink_factors, sigmas = zip(*stage)
        arguments += [
            "--metric",
            f"mattes[{images},1,32,regular,{rate}]",
            "--transform",
            f"{_ANTS_TYPE[settings.method]}[0.25]",
            "--convergence",
            "x".join(str(int(i)) for i in iterations),
            "--smoothing-sigmas",
            "x".join(str(float(s)) for s in sigmas),
            "--shrink-factors",
            "x".join(str(int(f)) for f in shrink_factors),
        ]
    arguments += ["-u", "0", "-z", "1", "--output", str(workdir / "reg_"), "-x", "[NA,NA]"]
    arguments += ["--random-seed", str(settings.seed), "--float", "1", "--write-composite-transform", "0"]
    status = get_lib_fn("antsRegistration")(process_arguments(arguments))
    if status != 0:
        raise FlowletError(f"ANTs registration to MNI152 failed with status {status}")
    shutil.move(workdir / "reg_0GenericAffine.mat", TransformFiles.from_spec(workdir / "out_").affine)


def _register_flirt(brain: np.ndarray, affine: np.ndarray, settings: RegistrationSettings, resolution_mm: int):
    """FSL FLIRT, saved as the equivalent ANTs affine so every later stage reads one format."""
    from flowlet.preprocess.skullstrip import require_fsl

    require_fsl("flirt")
    if settings.method == "syn":
        raise FlowletError(
            "the fsl registration backend is linear only (rigid or affine); use --registration-backend ants for syn"
        )
    ants = import_ants()
    from fsl.data.image import Image
    from fsl.transform.flirt import fromFlirt, readFlirt
    from fsl.wrappers import flirt

    workdir = Path(tempfile.mkdtemp(prefix="flowlet-flirt-"))
    moving_path, fixed_path, matrix_path = workdir / "brain.nii.gz", workdir / "template.nii.gz", workdir / "flirt.mat"
    nib.Nifti1Image(brain.astype(np.float32), affine).to_filename(str(moving_path))
    template = template_t1(resolution_mm)
    mask = template_brain_mask(resolution_mm).get_fdata(dtype=np.float32)
    nib.Nifti1Image(template.get_fdata(dtype=np.float32) * mask, template.affine).to_filename(str(fixed_path))
    flirt(str(moving_path), str(fixed_path), omat=str(matrix_path), dof=6 if settings.method == "rigid" else 12)
    native_to_mni = fromFlirt(
        readFlirt(str(matrix_path)), Image(str(moving_path)), Image(str(fixed_path)), "world", "world"
    )
    # ANTs transforms map fixed (MNI) points to moving (native) points, in LPS coordinates.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    mni_to_native_lps = flip @ np.linalg.inv(native_to_mni) @ flip
    transform = ants.create_ants_transform(
        transform_type="AffineTransform",
        dimension=3,
        matrix=mni_to_native_lps[:3, :3],
        translation=mni_to_native_lps[:3, 3],
        center=np.zeros(3),
    )
    files = TransformFiles.from_spec(workdir / "out_")
    ants.write_transform(transform, str(files.affine))
    return Registration(workdir, files)


def _as_image(image_or_path, what: str) -> nib.Nifti1Image:
    if isinstance(image_or_path, nib.spatialimages.SpatialImage):
        return image_or_path
    return load_nifti(image_or_path, what=what)


def _apply(moving_image: nib.Nifti1Image, fixed, transforms: list[str], invert: list[bool], interpolation: str):
    ants = import_ants()

    if interpolation not in INTERPOLATIONS:
        raise FlowletError(f"unknown interpolation '{interpolation}'; choose one of {', '.join(INTERPOLATIONS)}")
    data = np.asanyarray(moving_image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise FlowletError(f"only 3D images can be carried between spaces; got shape {data.shape}")
    moved = ants.apply_transforms(
        fixed=fixed,
        moving=to_ants(np.asarray(data, dtype=np.float32), moving_image.affine),
        transformlist=transforms,
        whichtoinvert=invert,
        interpolator=INTERPOLATIONS[interpolation],
    )
    return moved.numpy()


def apply_to_mni(image_or_path, transform, interpolation: str = "linear", resolution: int = 2) -> nib.Nifti1Image:
    """Carry a native-space image of the subject (T1w, mask, label map) onto the FSL MNI grid.

    ``transform``: the saved transform's spec (``.mat`` path or prefix) or TransformFiles.
    Label maps: interpolation "label" (or "nearest"); masks: "linear" and threshold at 0.5.
    """
    files = transform if isinstance(transform, TransformFiles) else TransformFiles.from_spec(transform)
    shape, grid_affine = mni_grid(resolution)
    fixed = to_ants(np.zeros(shape, dtype=np.float32), grid_affine)
    transforms, invert = files.to_mni_list()
    moved = _apply(_as_image(image_or_path, "image to carry to MNI"), fixed, transforms, invert, interpolation)
    return nib.Nifti1Image(moved.astype(np.float32), grid_affine)


def apply_to_native(image_or_path, transform, reference, interpolation: str = "linear") -> nib.Nifti1Image:
    """Carry an MNI-space image back onto the subject's native grid, given by ``reference`` (its T1w or mask)."""
    files = transform if isinstance(transform, TransformFiles) else TransformFiles.from_spec(transform)
    reference_image = _as_image(reference, "native reference image")
    fixed = to_ants(np.zeros(reference_image.shape[:3], dtype=np.float32), reference_image.affine)
    transforms, invert = files.to_native_list()
    moved = _apply(_as_image(image_or_path, "image to carry to native space"), fixed, transforms, invert, interpolation)
    return nib.Nifti1Image(moved.astype(np.float32), reference_image.affine)


def mni_points_to_native(points_mm: np.ndarray, transform) -> np.ndarray:
    """Where the saved transform sends (N, 3) MNI points (mm, RAS as in NIfTI affines) in the subject's scanner mm.

    The transform that resamples a native image onto the MNI grid maps each MNI point to the native
    point it reads from, which is the point's own image; ANTs works in LPS, hence the sign flips.
    """
    ants = import_ants()
    import pandas as pd

    files = transform if isinstance(transform, TransformFiles) else TransformFiles.from_spec(transform)
    points = np.asarray(points_mm, dtype=float)
    if points.ndim != 2 or points.shape[1] != 3:
        raise FlowletError(f"points to carry to native space must be an (N, 3) array; got shape {points.shape}")
    flip = np.array([-1.0, -1.0, 1.0])
    transforms, invert = files.to_mni_list()
    moved = ants.apply_transforms_to_points(
        3, pd.DataFrame(points * flip, columns=["x", "y", "z"]), transforms, whichtoinvert=invert
    )
    return moved[["x", "y", "z"]].to_numpy() * flip
