"""`flowlet brainage-pool`: the brain-age results of K repeated splits (split.folds) pooled into one study."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flowlet.brainage.cli import add_evaluation_arguments
from flowlet.brainage.experiment import Settings
from flowlet.brainage.outputs import write_evaluation
from flowlet.brainage.pool import pool_folds, pooled_plan
from flowlet.data.bins import AgeBins
from flowlet.data.tables import read_tsv

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(parser)
    parser.add_argument(
        "--folds",
        required=True,
        type=Path,
        nargs="+",
        help="each fold's `flowlet brainage` output folder (predictions.tsv, models.tsv, bin_counts.tsv), in fold order",
    )
    parser.add_argument(
        "--plans", type=Path, nargs="*", default=[], help="each fold's synthetic plan: the bins the verdict answers for"
    )
    parser.add_argument("--output-dir", required=True, type=Path, help="folder for the pooled tables and figures")


def run(args: argparse.Namespace) -> int:
    settings = Settings(bin_edges=list(args.bin_edges), bootstrap=args.bootstrap, bootstrap_seed=args.bootstrap_seed)
    evaluation = pool_folds(list(args.folds), settings)
    plans = [
        read_tsv(path, "synthetic plan", ("age_bin", "n_synthetic"), dtype={"age_bin": str}) for path in args.plans
    ]
    write_evaluation(
        evaluation,
        args.output_dir,
        AgeBins.from_edges(settings.bin_edges).labels,
        pooled_plan(plans) if plans else None,
        args.verdict_model,
        args.verdict_correction,
        model_note=f", {len(args.folds)} folds pooled",
    )
    log.info("pooled %d folds into %s", len(args.folds), args.output_dir)
    return 0
