"""`flowlet phantoms`: write the demo cohort of synthetic whole-head T1w phantoms as a BIDS dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowlet.phantoms.cohort import CohortSettings, write_cohort


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", type=Path, required=True, help="BIDS root to write (created if missing)")
    parser.add_argument("--n-subjects", type=int, default=40, help="number of phantoms (default 40)")
    parser.add_argument(
        "--seed", type=int, default=0, help="cohort seed; subject k depends only on (seed, k) (default 0)"
    )
    parser.add_argument("--age-min", type=float, default=20.0, help="youngest age, years, at least 18 (default 20)")
    parser.add_argument("--age-max", type=float, default=80.0, help="oldest age, years, at most 90 (default 80)")
    parser.add_argument(
        "--orientation",
        default="PSR",
        help="voxel axis order of the written scans as three letters, e.g. PSR (IXI's) or LAS (default PSR)",
    )
    parser.add_argument(
        "--tissue-labels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write ground-truth tissue label maps (derivatives/phantoms/.../_dseg) (default on)",
    )
    parser.add_argument("--threads", type=int, default=1, help="worker processes (default 1)")


def run(args: argparse.Namespace) -> int:
    settings = CohortSettings(
        output_dir=args.output_dir,
        n_subjects=args.n_subjects,
        seed=args.seed,
        age_min=args.age_min,
        age_max=args.age_max,
        orientation=args.orientation,
        tissue_labels=args.tissue_labels,
    )
    write_cohort(settings, threads=args.threads)
    return 0
