"""`flowlet plan`: how many synthetic subjects each age bin gets, and their conditioning ages and sexes."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.brainage.tables import read_split
from flowlet.data.bins import AgeBins
from flowlet.generative.plan import AGE_SAMPLING_MODES, TARGET_MODES, make_plan

log = logging.getLogger(__name__)

DEFAULT_BIN_EDGES = [20, 30, 40, 50, 60, 70, 80, 90]


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split", required=True, type=Path, help="split table (participant_id, age, sex, split, image)"
    )
    parser.add_argument("--bin-edges", type=float, nargs="+", default=DEFAULT_BIN_EDGES, help="age bin edges in years")
    parser.add_argument(
        "--underrepresented-fraction",
        type=float,
        default=0.5,
        help="a bin is under-represented when its real training count is below this fraction of the largest bin's",
    )
    parser.add_argument(
        "--target",
        choices=TARGET_MODES,
        default="largest",
        help="synthetic count per under-represented bin: up to the largest bin's count, a fixed number, or a ratio of the real count",
    )
    parser.add_argument(
        "--target-count", type=int, default=None, help="synthetic subjects per under-represented bin (--target fixed)"
    )
    parser.add_argument(
        "--target-ratio",
        type=float,
        default=None,
        help="synthetic / real count per under-represented bin (--target ratio)",
    )
    parser.add_argument(
        "--max-per-bin", type=int, default=None, help="cap on synthetic subjects per bin (default: no cap)"
    )
    parser.add_argument(
        "--age-sampling",
        choices=AGE_SAMPLING_MODES,
        default="uniform",
        help="conditioning ages uniform in the bin, or from a kernel density of the real training ages restricted to the bin",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the age and sex draws")
    parser.add_argument("--output", required=True, type=Path, help="plan table to write (TSV)")
    parser.add_argument(
        "--ages-dir", required=True, type=Path, help="folder for the per-bin tables bin-<label>_ages.tsv"
    )
    parser.add_argument(
        "--evaluation-count",
        type=int,
        default=0,
        help="also write bin-evaluation_ages.tsv: this many ages evenly spread over the real training "
        "ages, the cohort the generator scorecard judges each generator on (0: none)",
    )


EVALUATION = "evaluation"


def evaluation_ages(split: pd.DataFrame, count: int) -> pd.DataFrame:
    """``count`` ages evenly spread over the real training subjects' ages, for judging a generator across all ages
    (the plan's bins may cover only a few years)."""
    train = split[split["split"] == "train"]
    ages = np.linspace(train["age"].min(), train["age"].max(), count)
    return pd.DataFrame(
        {
            "age": ages.round(2),
            "sex": "",
            "age_bin": EVALUATION,
            "file": [f"evaluation_{index:04d}.nii.gz" for index in range(count)],
        }
    )


def ages_file(ages_dir: Path, label: str) -> Path:
    return ages_dir / f"bin-{label}_ages.tsv"


def run(args: argparse.Namespace) -> int:
    split = read_split(args.split)
    bins = AgeBins.from_edges(args.bin_edges)
    plan, ages_per_bin = make_plan(
        split,
        bins,
        underrepresented_fraction=args.underrepresented_fraction,
        target=args.target,
        target_count=args.target_count,
        target_ratio=args.target_ratio,
        max_per_bin=args.max_per_bin,
        age_sampling=args.age_sampling,
        seed=args.seed,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plan.to_csv(args.output, sep="\t", index=False)
    args.ages_dir.mkdir(parents=True, exist_ok=True)
    for label, ages in ages_per_bin.items():
        ages.to_csv(ages_file(args.ages_dir, label), sep="\t", index=False)
    for row in plan.itertuples(index=False):
        state = (
            "reduced (controlled scarcity)"
            if row.reduced
            else "under-represented"
            if row.underrepresented
            else "not under-represented"
        )
        log.info(
            "bin %s: %d train / %d test / %d withheld real, %s, %d synthetic",
            row.age_bin,
            row.n_train_real,
            row.n_test_real,
            row.n_withheld,
            state,
            row.n_synthetic,
        )
    if args.evaluation_count > 0:
        evaluation_ages(split, args.evaluation_count).to_csv(
            ages_file(args.ages_dir, EVALUATION), sep="\t", index=False
        )
    log.info("wrote %s and %d age tables in %s", args.output, len(ages_per_bin), args.ages_dir)
    return 0
