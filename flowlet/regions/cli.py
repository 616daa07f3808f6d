"""`flowlet regions`: regional anatomy, age trajectories, age fidelity, realism and memorisation of synthetic brains."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from flowlet.errors import FlowletError
from flowlet.regions.options import AnalysisOptions

log = logging.getLogger(__name__)
DEFAULTS = AnalysisOptions()


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split", required=True, type=Path, help="split table (participant_id, age, sex, age_bin, split, image)"
    )
    parser.add_argument(
        "--synthetic",
        nargs="*",
        default=[],
        type=Path,
        help="synthetic manifest TSV(s) (image, age, sex, age_bin); none is allowed",
    )
    parser.add_argument(
        "--measures",
        required=True,
        type=Path,
        help="regional_measures.tsv of `flowlet regional-measures` on the same split and manifests (its segmentations/ beside it)",
    )
    parser.add_argument(
        "--output-dir", required=True, type=Path, help="folder for the tables, figures and captions.json"
    )
    parser.add_argument(
        "--brainage-model",
        type=Path,
        default=DEFAULTS.brainage_model,
        help="real-only brain-age model from `flowlet brainage`, for age fidelity",
    )
    parser.add_argument(
        "--brainage-corrected",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.brainage_corrected,
        help="apply the brain-age model's training-fitted age-bias correction to its predictions",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument(
        "--bins", type=int, default=DEFAULTS.bins, help="intensity-histogram bins of the paired analysis"
    )
    parser.add_argument(
        "--confidence", type=float, default=DEFAULTS.confidence, help="confidence level of the slope intervals"
    )
    parser.add_argument(
        "--feature-components",
        type=int,
        default=DEFAULTS.feature_components,
        help="PCA components of the regional features for Fréchet distance and MMD",
    )
    parser.add_argument(
        "--msssim-pairs",
        type=int,
        default=DEFAULTS.msssim_pairs,
        help="largest number of image pairs per MS-SSIM set (random sample above it)",
    )
    parser.add_argument(
        "--msssim-scales", type=int, default=DEFAULTS.msssim_scales, help="MS-SSIM scales (1-5; 4 fits the 2 mm grid)"
    )
    parser.add_argument(
        "--memorisation-max-shift",
        type=int,
        default=DEFAULTS.memorisation_max_shift,
        help="largest shift (voxels per axis) tried when matching images",
    )
    parser.add_argument(
        "--memorisation-percentile",
        type=float,
        default=DEFAULTS.memorisation_percentile,
        help="percentile of the real images' similarities (test to training, training to other subjects') above which a synthetic image is flagged",
    )
    parser.add_argument(
        "--downsample",
        type=int,
        default=DEFAULTS.downsample,
        help="the generator's working resolution factor (train_generator.downsample): real images pass through it "
        "before the memorisation check and MS-SSIM, so that blur is not taken for copying",
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the MS-SSIM pair sampling")


def _check(args: argparse.Namespace) -> None:
    if args.threads < 1:
        raise FlowletError(f"--threads must be at least 1, got {args.threads}")
    if not 0 < args.confidence < 1:
        raise FlowletError(f"--confidence must lie between 0 and 1, got {args.confidence}")
    if not 0 < args.memorisation_percentile <= 100:
        raise FlowletError(f"--memorisation-percentile must lie in (0, 100], got {args.memorisation_percentile}")
    if args.msssim_pairs < 1:
        raise FlowletError(f"--msssim-pairs must be at least 1, got {args.msssim_pairs}")
    if args.bins < 2:
        raise FlowletError(f"--bins must be at least 2, got {args.bins}")
    if not 1 <= args.msssim_scales <= 5:
        raise FlowletError(f"--msssim-scales must be between 1 and 5, got {args.msssim_scales}")
    if args.memorisation_max_shift < 0:
        raise FlowletError(f"--memorisation-max-shift must be >= 0 voxels, got {args.memorisation_max_shift}")
    if args.downsample < 1:
        raise FlowletError(f"--downsample must be at least 1, got {args.downsample}")
    if args.feature_components < 1:
        raise FlowletError(f"--feature-components must be at least 1, got {args.feature_components}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    import torch

    torch.set_num_threads(args.threads)
    from flowlet.regions.analysis import run_analysis

    options = AnalysisOptions(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(AnalysisOptions)}
    )
    outputs = run_analysis(args.split, list(args.synthetic), args.measures, args.output_dir, options)
    log.info("regional analysis written to %s: %s", args.output_dir, json.dumps(sorted(outputs)))
    return 0
