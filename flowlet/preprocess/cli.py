"""`flowlet preprocess`: N4, skull stripping, MNI registration and z-scoring of one T1w image."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from flowlet.preprocess.bias import N4Settings
from flowlet.preprocess.pipeline import PreprocessSettings, run_and_write
from flowlet.preprocess.register import BACKENDS as REGISTRATION_BACKENDS
from flowlet.preprocess.register import METHODS, RegistrationSettings
from flowlet.preprocess.skullstrip import BACKENDS as SKULLSTRIP_BACKENDS
from flowlet.preprocess.skullstrip import SKULLSTRIPPED_MODES, TEMPLATE_REGISTRATIONS, SkullstripSettings


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("t1w", type=Path, help="T1w NIfTI image (any orientation; 3D or 4D with one volume)")
    parser.add_argument(
        "--brain-mask", type=Path, required=True, help="output: native-space brain mask (uint8, input grid)"
    )
    parser.add_argument("--output", type=Path, required=True, help="output: z-scored brain on the FSL MNI grid")
    parser.add_argument(
        "--transform", help="output: native-to-MNI transform, a .mat path or a file prefix (SyN adds warps)"
    )
    parser.add_argument(
        "--qc-png", type=Path, help="output: QC picture (mask on native image; MNI brain with template mask)"
    )
    parser.add_argument("--qc-tsv", type=Path, help="output: one-row QC metrics table")
    parser.add_argument("--bias-corrected-output", type=Path, help="output: N4-corrected native image")
    parser.add_argument("--subject", help="subject label for messages and QC (default: from the file name, sub-XXX)")
    parser.add_argument(
        "--on-error",
        choices=("stop", "skip"),
        default="stop",
        help="stop: fail with the reason; skip: record the reason in the QC outputs, leave the image "
        "outputs empty and exit 0 so the study goes on without this subject",
    )
    add_settings_arguments(parser)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of PreprocessSettings (read back by ``settings_from_args``); the benchmarks share them."""
    defaults = PreprocessSettings()
    n4, strip, reg = defaults.n4, defaults.skullstrip, defaults.registration
    parser.add_argument(
        "--resolution",
        type=int,
        choices=(1, 2),
        default=defaults.resolution_mm,
        help="MNI grid: 2 mm (91x109x91) or 1 mm (182x218x182)",
    )
    parser.add_argument("--threads", type=int, default=defaults.threads, help="ITK and torch threads")
    group = parser.add_argument_group("N4 bias-field correction")
    group.add_argument(
        "--n4-shrink-factor",
        type=int,
        default=n4.shrink_factor,
        help="N4 image shrink factor (scans of 1 mm or finer: applied to a copy averaged to about 2 mm)",
    )
    group.add_argument(
        "--n4-iterations",
        type=int,
        nargs="+",
        default=list(n4.iterations),
        help="N4 iterations per fitting level (one number per level)",
    )
    group.add_argument("--n4-tolerance", type=float, default=n4.tolerance, help="N4 convergence threshold")
    group.add_argument(
        "--n4-spline-distance",
        type=float,
        default=n4.spline_distance_mm,
        help="N4 B-spline mesh distance in mm (larger = smoother field)",
    )
    group.add_argument(
        "--n4-mask",
        default=defaults.n4_mask,
        help="where N4 fits the field: 'foreground' (Otsu head mask), 'none' or a mask file on the T1w grid",
    )
    group = parser.add_argument_group("skull stripping")
    group.add_argument(
        "--skullstrip-backend",
        choices=SKULLSTRIP_BACKENDS,
        default=strip.backend,
        help="deepbet (CNN, CPU), fsl (BET, needs FSLDIR) or template (registration to the MNI "
        "template, no learned model)",
    )
    group.add_argument(
        "--skullstripped",
        choices=SKULLSTRIPPED_MODES,
        default=defaults.skullstripped,
        help="auto: detect stripped input and pass it through; force: always treat the input as "
        "stripped; skip: never detect, always run the backend",
    )
    group.add_argument("--mask-threshold", type=float, default=strip.threshold, help="deepbet probability threshold")
    group.add_argument(
        "--deepbet-size",
        type=int,
        default=strip.deepbet_size,
        help="deepbet's working cube side in voxels (the package uses 256; 192 is as accurate, faster)",
    )
    group.add_argument(
        "--mask-dilate",
        type=int,
        default=strip.dilate_voxels,
        help="voxel layers added (negative: removed) to the backend's mask",
    )
    group.add_argument(
        "--template-registration",
        choices=TEMPLATE_REGISTRATIONS,
        default=strip.template_registration,
        help="template backend: linear registration of the head only (affine) or followed by SyN",
    )
    group.add_argument(
        "--template-margin",
        type=float,
        default=strip.template_margin_mm,
        help="template backend: mm by which the template's brain mask is grown towards the dura",
    )
    group.add_argument(
        "--bet-fractional-intensity",
        type=float,
        default=strip.fsl_fractional_intensity,
        help="FSL BET -f (fsl backend)",
    )
    group.add_argument(
        "--min-brain-ml", type=float, default=defaults.min_brain_ml, help="a smaller brain mask is an error"
    )
    group.add_argument(
        "--max-brain-ml",
        type=float,
        default=defaults.max_brain_ml,
        help="a larger brain mask is an error (also the stripped-input detection's limit)",
    )
    group = parser.add_argument_group("registration to MNI152")
    group.add_argument("--registration", choices=METHODS, default=reg.method, help="transform model")
    group.add_argument(
        "--registration-backend",
        choices=REGISTRATION_BACKENDS,
        default=reg.backend,
        help="ants (antspyx) or fsl (FLIRT, needs FSLDIR; rigid/affine)",
    )
    group.add_argument(
        "--registration-iterations",
        type=int,
        nargs="+",
        default=list(reg.iterations),
        help="linear-stage iterations per level",
    )
    group.add_argument(
        "--registration-shrink-factors",
        type=int,
        nargs="+",
        default=list(reg.shrink_factors),
        help="linear-stage shrink factor per level",
    )
    group.add_argument(
        "--registration-smoothing-sigmas",
        type=float,
        nargs="+",
        default=list(reg.smoothing_sigmas),
        help="linear-stage smoothing (voxels) per level",
    )
    group.add_argument(
        "--registration-sampling",
        type=float,
        default=reg.sampling_rate,
        help="fraction of the template's voxels at which the linear stage's metric is sampled (0, 1]",
    )
    group.add_argument(
        "--registration-fine-sampling",
        type=float,
        default=reg.fine_sampling_rate,
        help="the same fraction at the finest level of a rigid or affine registration, the only level of a one-level "
        "schedule (0, 1]",
    )
    group.add_argument(
        "--syn-iterations", type=int, nargs="+", default=list(reg.syn_iterations), help="SyN iterations per level"
    )
    group.add_argument(
        "--registration-seed",
        type=int,
        default=reg.seed,
        help="nonzero seed of ANTs' metric sampling (with --threads 1 the transform is reproducible)",
    )
    group.add_argument(
        "--interpolation",
        choices=("linear", "bspline"),
        default=defaults.interpolation,
        help="interpolation of the T1w onto the MNI grid",
    )


def settings_from_args(args: argparse.Namespace) -> PreprocessSettings:
    return PreprocessSettings(
        resolution_mm=args.resolution,
        n4=N4Settings(
            shrink_factor=args.n4_shrink_factor,
            iterations=tuple(args.n4_iterations),
            tolerance=args.n4_tolerance,
            spline_distance_mm=args.n4_spline_distance,
        ),
        n4_mask=args.n4_mask,
        skullstrip=SkullstripSettings(
            backend=args.skullstrip_backend,
            deepbet_size=args.deepbet_size,
            threshold=args.mask_threshold,
            dilate_voxels=args.mask_dilate,
            fsl_fractional_intensity=args.bet_fractional_intensity,
            template_registration=args.template_registration,
            template_margin_mm=args.template_margin,
        ),
        skullstripped=args.skullstripped,
        registration=RegistrationSettings(
            method=args.registration,
            backend=args.registration_backend,
            iterations=tuple(args.registration_iterations),
            shrink_factors=tuple(args.registration_shrink_factors),
            smoothing_sigmas=tuple(args.registration_smoothing_sigmas),
            syn_iterations=tuple(args.syn_iterations),
            sampling_rate=args.registration_sampling,
            fine_sampling_rate=args.registration_fine_sampling,
            seed=args.registration_seed,
        ),
        interpolation=args.interpolation,
        min_brain_ml=args.min_brain_ml,
        max_brain_ml=args.max_brain_ml,
        threads=args.threads,
    )


def subject_from_path(path: Path) -> str:
    match = re.search(r"sub-[A-Za-z0-9]+", path.name)
    return match.group(0) if match else path.name.split(".")[0]


def run(args: argparse.Namespace) -> int:
    from flowlet.errors import FlowletError

    settings = settings_from_args(args)
    lengths = {
        len(settings.registration.iterations),
        len(settings.registration.shrink_factors),
        len(settings.registration.smoothing_sigmas),
    }
    if len(lengths) != 1:
        raise FlowletError(
            "--registration-iterations, --registration-shrink-factors and "
            "--registration-smoothing-sigmas need one value per level each"
        )
    subject = args.subject or subject_from_path(args.t1w)
    try:
        run_and_write(
            args.t1w,
            subject,
            settings,
            brain_mask_path=args.brain_mask,
            output_path=args.output,
            transform=args.transform,
            qc_png=args.qc_png,
            qc_tsv=args.qc_tsv,
            bias_corrected_path=args.bias_corrected_output,
        )
    except FlowletError as error:
        if args.on_error == "stop":
            raise
        record_skipped_subject(args, subject, str(error))
    return 0


def record_skipped_subject(args: argparse.Namespace, subject: str, reason: str) -> None:
    """Under on_error=skip: the QC row and picture say why; the image outputs exist but are empty.

    Snakemake needs every declared output to exist; downstream stages read the QC status and leave the
    subject out, and an empty file fails loudly anywhere that would read it regardless.
    """
    import logging

    from flowlet.preprocess import qc

    logging.getLogger(__name__).warning("%s skipped: %s", subject, reason)
    for path in (args.brain_mask, args.output, args.transform, args.bias_corrected_output):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(b"")
    if args.qc_tsv:
        Path(args.qc_tsv).parent.mkdir(parents=True, exist_ok=True)
        qc.write_qc_row(args.qc_tsv, {"subject": subject}, status=f"failed: {reason}")
    if args.qc_png:
        qc.save_failure_png(args.qc_png, subject, reason)
