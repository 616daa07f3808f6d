"""`flowlet scorecard`: one table that says whether each generator's synthetic brains are usable.

See :mod:`flowlet.regions.scorecard` for every criterion and its real reference.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flowlet.regions.scorecard import ScorecardOptions

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split", required=True, type=Path, help="split table (its train and test images are the real references)"
    )
    parser.add_argument("--synthetic", nargs="*", default=[], type=Path, help="FlowLet's QC-gated manifests")
    parser.add_argument(
        "--baseline-synthetic", nargs="*", default=[], type=Path, help="the linear baseline's QC-gated manifests"
    )
    parser.add_argument(
        "--measures", type=Path, help="regional_measures.tsv (for the ventricle and grey-matter slopes)"
    )
    parser.add_argument(
        "--brainage-model", type=Path, help="model_real.joblib of `flowlet brainage` (for age fidelity)"
    )
    parser.add_argument(
        "--downsample",
        type=int,
        default=ScorecardOptions.downsample,
        help="the generators' working resolution factor; real images are seen through it",
    )
    parser.add_argument(
        "--qc-reference",
        type=Path,
        help="the synthetic QC gate's real reference (flowlet synthetic-qc reference): real test images are judged "
        "by it for the QC pass rate's real floor",
    )
    parser.add_argument(
        "--qc-max-robust-z",
        type=float,
        default=ScorecardOptions.qc_max_robust_z,
        help="the gate's limit (as given to flowlet synthetic-qc gate)",
    )
    parser.add_argument("--output", required=True, type=Path, help="scorecard TSV to write")


def run(args: argparse.Namespace) -> int:
    from flowlet.errors import FlowletError
    from flowlet.regions.measures import BASELINE, SYNTHETIC
    from flowlet.regions.scorecard import scorecard

    if args.downsample < 1:
        raise FlowletError(f"--downsample must be at least 1, got {args.downsample}")
    manifests = {
        group: paths for group, paths in ((SYNTHETIC, args.synthetic), (BASELINE, args.baseline_synthetic)) if paths
    }
    if not manifests:
        raise FlowletError("give --synthetic and/or --baseline-synthetic manifests to score")
    options = ScorecardOptions(
        downsample=args.downsample, qc_reference=args.qc_reference, qc_max_robust_z=args.qc_max_robust_z
    )
    table = scorecard(args.split, manifests, args.measures, args.brainage_model, options)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output, sep="\t", index=False, na_rep="NaN", float_format="%.6g")
    log.info("wrote %s (%d rows)", args.output, len(table))
    return 0
