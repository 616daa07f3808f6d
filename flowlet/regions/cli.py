"""`flowlet regions`: regional anatomy, age trajectories, age fidelity, realism and memorisation of synthetic brains."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from flowlet.errors import FlowletError

log = logging.getLogger(__name__)


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
        default=None,
        help="real-only brain-age model from `flowlet brainage`, for age fidelity",
    )
    parser.add_argument(
        "--brainage-corrected",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="apply the brain-age model's training-fitted age-bias correction to its predictions",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--bins", type=int, default=256, help="intensity-histogram bins of the paired analysis")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level of the slope intervals")
    parser.add_argument(
        "--feature-components",
        type=int,
        default=10,
        help="PCA components of the regional features for Fréchet distance and MMD",
    )
    parser.add_argument(
        "--msssim-pairs",
        type=int,
        default=30,
        help="largest number of image pairs per MS-SSIM set (random sample above it)",
    )
    parser.add_argument("--msssim-scales", type=int, default=4, help="MS-SSIM scales (1-5; 4 fits the 2 mm grid)")
    parser.add_argument(
        "--memorisation-max-shift",
        type=int,
        default=1,
        help="largest shift (voxels per axis) tried when matching images",
    )
    parser.add_argument(
        "--memorisation-percentile",
        type=float,
        default=99.0,
        help="percentile of the real images' similarities (test to training, training to other subjects') above which a synthetic image is flagged",
    )
    parser.add_argument(
        "--downsample",
        type=int,
        default=1,
        help="the generator's working resolution factor (train_generator.downsample): real images pass through it "
        "before the memorisation check and MS-SSIM, so that blur is not taken for copying",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the MS-SSIM pair sampling")


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
    from flowlet.regions.analysis import AnalysisOptions, run_analysis

    options = AnalysisOptions(
        bins=args.bins,
        confidence=args.confidence,
        feature_components=args.feature_components,
        msssim_pairs=args.msssim_pairs,
        msssim_scales=args.msssim_scales,
        memorisation_max_shift=args.memorisation_max_shift,
        memorisation_percentile=args.memorisation_percentile,
        seed=args.seed,
        brainage_model=args.brainage_model,
        brainage_corrected=args.brainage_corrected,
        downsample=args.downsample,
    )
    outputs = run_analysis(args.split, list(args.synthetic), args.measures, args.output_dir, options)
    log.info("regional analysis written to %s: %s", args.output_dir, json.dumps(sorted(outputs)))
    return 0
