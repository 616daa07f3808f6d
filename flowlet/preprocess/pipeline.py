"""The preprocessing chain for one T1w image, with atomic outputs.

Order: input checks -> N4 (on the head) -> skull stripping (on the N4 image) ->
registration of the brain to the MNI152 brain template -> resampling onto the
FSL MNI grid -> z-scoring inside the MNI-space brain mask.

The MNI-space brain mask is the subject's own native mask carried along the
saved transform (linear interpolation, kept where coverage >= 0.5), not the
template's: it keeps this subject's brain extent, so z-scores and later regional
statistics use this subject's brain and no template voxels outside it. The MNI
image is the whole bias-corrected head resampled and then masked, so boundary
voxels keep their own intensity instead of being blended with a zeroed skull.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from flowlet.data.masks import zscore_in_mask
from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1
from flowlet.errors import FlowletError
from flowlet.preprocess import checks, qc
from flowlet.preprocess.bias import N4Region, N4Settings, coarse_factor, head_region, n4_correct
from flowlet.preprocess.register import (
    Registration,
    RegistrationSettings,
    TransformFiles,
    apply_to_mni,
    register_to_mni,
)
from flowlet.preprocess.skullstrip import (
    SKULLSTRIPPED_MODES,
    SkullstripSettings,
    brain_mask,
    looks_skullstripped,
    stripped_input_mask,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessSettings:
    resolution_mm: int = 2
    n4: N4Settings = field(default_factory=N4Settings)
    # "foreground" (Otsu head mask), "none" (all positive voxels) or a path to a mask on the image's grid.
    n4_mask: str = "foreground"
    skullstrip: SkullstripSettings = field(default_factory=SkullstripSettings)
    # auto: detect stripped input and pass it through; force: treat the input as stripped (its nonzero
    # voxels are the mask); skip: skip the detection and always run the backend.
    skullstripped: str = "auto"
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)
    interpolation: str = "linear"
    min_brain_ml: float = checks.DEFAULT_MIN_MASK_ML
    max_brain_ml: float = checks.DEFAULT_MAX_MASK_ML
    threads: int = 1


@dataclass
class PreprocessResult:
    subject: str
    native_mask: np.ndarray
    native_affine: np.ndarray
    bias_corrected: np.ndarray
    mni_image: np.ndarray
    mni_mask: np.ndarray
    mni_affine: np.ndarray
    metrics: dict


def set_threads(threads: int) -> None:
    """ITK (antspyx) and torch thread counts for this process; ITK reads the variable when it starts a filter."""
    threads = max(1, int(threads))
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


class _AtomicOutputs:
    """Outputs are written to hidden temporary names beside their targets and renamed only when all succeeded."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def path(self, target: str | Path) -> Path:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        # The temporary keeps the target's extensions so nibabel still compresses .nii.gz.
        temporary = target.with_name(f".partial-{os.getpid()}-{target.name}")
        self._pending.append((temporary, target))
        return temporary

    def commit(self) -> None:
        for temporary, target in self._pending:
            os.replace(temporary, target)
        self._pending.clear()

    def discard(self) -> None:
        for temporary, _ in self._pending:
            temporary.unlink(missing_ok=True)
        self._pending.clear()


def _n4_region(settings: PreprocessSettings, data: np.ndarray, affine: np.ndarray, subject: str) -> N4Region | None:
    if settings.n4_mask == "foreground":
        return head_region(data, step=coarse_factor(affine))
    if settings.n4_mask == "none":
        return None
    mask = checks.load_mask_on_grid(settings.n4_mask, data.shape, affine, what=f"{subject} N4 mask")
    return N4Region.around(mask, step=coarse_factor(affine))


def _native_brain_mask(settings: PreprocessSettings, corrected: np.ndarray, raw: np.ndarray, affine: np.ndarray):
    """The native brain mask and the name of what produced it."""
    if settings.skullstripped not in SKULLSTRIPPED_MODES:
        raise FlowletError(
            f"--skullstripped must be one of {', '.join(SKULLSTRIPPED_MODES)}, got '{settings.skullstripped}'"
        )
    if settings.skullstripped == "force" or (
        settings.skullstripped == "auto" and looks_skullstripped(raw, affine, settings.max_brain_ml)
    ):
        return stripped_input_mask(raw), "input"
    return brain_mask(corrected, affine, settings.skullstrip), settings.skullstrip.backend


def preprocess_subject(
    t1w_path: str | Path, subject: str, settings: PreprocessSettings
) -> tuple[PreprocessResult, Registration]:
    """Run the chain on one image. Returns the result and the Registration (the caller saves or cleans it up)."""
    start = time.perf_counter()
    set_threads(settings.threads)
    raw, affine = checks.load_t1w(t1w_path, subject)

    step = time.perf_counter()
    corrected = n4_correct(raw, affine, settings.n4, _n4_region(settings, raw, affine, subject))
    seconds_n4 = time.perf_counter() - step

    step = time.perf_counter()
    native_mask, mask_source = _native_brain_mask(settings, corrected, raw, affine)
    seconds_skullstrip = time.perf_counter() - step
    volume_ml = checks.check_mask_volume(native_mask, affine, subject, settings.min_brain_ml, settings.max_brain_ml)

    step = time.perf_counter()
    registration = register_to_mni(corrected * native_mask, affine, settings.registration, settings.resolution_mm)
    seconds_register = time.perf_counter() - step
    try:
        native_image = nib.Nifti1Image(corrected, affine)
        mni_head = apply_to_mni(native_image, registration.files, settings.interpolation, settings.resolution_mm)
        mni_mask = (
            apply_to_mni(
                nib.Nifti1Image(native_mask.astype(np.float32), affine),
                registration.files,
                "linear",
                settings.resolution_mm,
            ).get_fdata(dtype=np.float32)
            >= 0.5
        )
        if not mni_mask.any():
            raise FlowletError(f"{subject}: the brain mask falls outside the MNI grid after registration")
        mni_image = zscore_in_mask(mni_head.get_fdata(dtype=np.float32), mni_mask, subject)
    except Exception:
        registration.cleanup()
        raise

    template_mask = template_brain_mask(settings.resolution_mm).get_fdata() > 0
    mni_affine = mni_grid(settings.resolution_mm)[1]
    metrics = {
        "subject": subject,
        "mask_volume_ml": volume_ml,
        # Native over MNI volume of the same brain: turns volumes measured in MNI space back into native ml,
        # whatever the registration backend or method.
        "native_volume_factor": volume_ml / checks.mask_volume_ml(mni_mask, mni_affine),
        "dice_template": qc.dice(mni_mask, template_mask),
        "ncc_template": qc.normalised_cross_correlation(
            mni_image, template_t1(settings.resolution_mm).get_fdata(dtype=np.float32), template_mask
        ),
        "seconds_n4": seconds_n4,
        "seconds_skullstrip": seconds_skullstrip,
        "seconds_register": seconds_register,
        "seconds_total": time.perf_counter() - start,
        "skullstrip_backend": mask_source,
        "registration": f"{settings.registration.backend}-{settings.registration.method}",
    }
    log.info(
        "%s: mask %.0f ml, Dice with template %.3f, %.1f s",
        subject,
        volume_ml,
        metrics["dice_template"],
        metrics["seconds_total"],
    )
    result = PreprocessResult(
        subject=subject,
        native_mask=native_mask,
        native_affine=affine,
        bias_corrected=corrected,
        mni_image=mni_image,
        mni_mask=mni_mask,
        mni_affine=mni_affine,
        metrics=metrics,
    )
    return result, registration


def run_and_write(
    t1w_path: str | Path,
    subject: str,
    settings: PreprocessSettings,
    brain_mask_path: str | Path,
    output_path: str | Path,
    transform: str | Path | None = None,
    qc_png: str | Path | None = None,
    qc_tsv: str | Path | None = None,
    bias_corrected_path: str | Path | None = None,
) -> PreprocessResult:
    """Preprocess and write every requested output, all or nothing."""
    result, registration = preprocess_subject(t1w_path, subject, settings)
    outputs = _AtomicOutputs()
    try:
        # The mask is written on the input's exact grid (its affine as loaded), as uint8.
        save_nifti(result.native_mask, result.native_affine, outputs.path(brain_mask_path), dtype=np.uint8)
        save_nifti(result.mni_image, result.mni_affine, outputs.path(output_path))
        if bias_corrected_path is not None:
            save_nifti(result.bias_corrected, result.native_affine, outputs.path(bias_corrected_path))
        if transform is not None:
            _save_transform(registration, transform, outputs)
        if qc_tsv is not None:
            qc.write_qc_row(outputs.path(qc_tsv), result.metrics)
        if qc_png is not None:
            qc.save_qc_png(
                outputs.path(qc_png),
                subject,
                result.bias_corrected,
                result.native_affine,
                result.native_mask,
                result.mni_image,
                result.mni_affine,
                template_brain_mask(settings.resolution_mm).get_fdata() > 0,
                result.metrics,
            )
        outputs.commit()
    except BaseException:
        outputs.discard()
        raise
    finally:
        registration.cleanup()
    return result


def _save_transform(registration: Registration, transform: str | Path, outputs: _AtomicOutputs) -> None:
    target = TransformFiles.from_spec(transform)
    shutil.copyfile(registration.files.affine, outputs.path(target.affine))
    if registration.files.has_warp:
        shutil.copyfile(registration.files.warp, outputs.path(target.warp))
        shutil.copyfile(registration.files.inverse_warp, outputs.path(target.inverse_warp))
