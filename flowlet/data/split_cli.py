"""`flowlet split`: real training and held-out test subjects, stratified by age bin."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from flowlet.data.bids import SESSION_COLUMNS
from flowlet.data.split import (
    WITHHELD,
    evaluation_only,
    fold_split,
    scarcity_bins,
    split_by_subject,
    stratified_split,
    withhold_training_subjects,
)
from flowlet.data.tables import read_tsv

log = logging.getLogger(__name__)

NATIVE_VOLUME_COLUMN = "native_volume_factor"


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--participants", required=True, type=Path, help="table written by 'flowlet participants'")
    parser.add_argument("--qc", type=Path, help="aggregate QC table from 'flowlet qc'; failed subjects are excluded")
    parser.add_argument(
        "--image-pattern", required=True, help="path of each subject's preprocessed MNI image, with {participant_id}"
    )
    parser.add_argument("--bin-edges", nargs="+", type=float, required=True, help="age bin edges in years")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="share of each age bin held out for testing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument(
        "--folds",
        type=int,
        default=1,
        help="repeated splits: K stratified test folds, so that every subject is tested once (1: one split by "
        "--test-fraction)",
    )
    parser.add_argument("--fold", type=int, default=1, help="which of the --folds folds to write (1..K)")
    parser.add_argument(
        "--evaluation-only",
        action="store_true",
        help="a second dataset used only for evaluation: every usable subject is a test subject",
    )
    parser.add_argument(
        "--scarcity-bins",
        nargs="*",
        default=[],
        help="controlled scarcity: age bins whose real "
        "training subjects are reduced to --scarcity-keep (the rest train only the oracle arm)",
    )
    parser.add_argument(
        "--scarcity-best-covered",
        type=int,
        default=0,
        help="controlled scarcity in the N bins with the most real training subjects (when no "
        "--scarcity-bins are named; 0: off)",
    )
    parser.add_argument(
        "--scarcity-keep",
        type=float,
        default=2,
        help="real training subjects each reduced bin keeps: a count (>= 1) or a share (below 1)",
    )
    parser.add_argument("--output", required=True, type=Path, help="split table to write (TSV)")


def failed_subjects(qc: pd.DataFrame) -> dict[str, str]:
    if "status" not in qc.columns:
        return {}
    failed = qc[qc["status"].astype(str) != "ok"]
    return dict(zip(failed["subject"], "preprocessing failed: " + failed["status"].astype(str)))


def native_volume_factors(qc: pd.DataFrame) -> dict[str, float]:
    """Per subject, native over MNI brain volume, so that regional volumes measured in MNI space can be
    reported in native millilitres (brain volume itself shrinks with age, which the MNI grid normalises away)."""
    if NATIVE_VOLUME_COLUMN not in qc.columns:
        return {}
    return dict(zip(qc["subject"], pd.to_numeric(qc[NATIVE_VOLUME_COLUMN], errors="coerce")))


def run(args: argparse.Namespace) -> int:
    participants = pd.read_csv(
        args.participants,
        sep="\t",
        na_values=["n/a"],
        keep_default_na=False,
        dtype={"sex": str, **dict.fromkeys(SESSION_COLUMNS, str)},
    )
    participants["sex"] = participants["sex"].fillna("")
    qc = read_tsv(args.qc, "QC table", dtype={"subject": str}) if args.qc else pd.DataFrame(columns=["subject"])

    def split_subjects(subjects: pd.DataFrame, failed: dict[str, str]) -> pd.DataFrame:
        if args.folds > 1:
            table = fold_split(subjects, args.bin_edges, args.folds, args.fold, args.seed, failed)
        else:
            table = stratified_split(subjects, args.bin_edges, args.test_fraction, args.seed, failed)
        reduced = scarcity_bins(table, args.bin_edges, args.scarcity_bins, args.scarcity_best_covered)
        return withhold_training_subjects(table, reduced, args.scarcity_keep, args.seed)

    if args.evaluation_only:
        table = evaluation_only(participants, args.bin_edges, failed_subjects(qc))
    elif SESSION_COLUMNS[0] in participants.columns:
        table = split_by_subject(participants, args.bin_edges, failed_subjects(qc), split_subjects)
    else:
        table = split_subjects(participants, failed_subjects(qc))
    table["image"] = [args.image_pattern.format(participant_id=pid) for pid in table["participant_id"]]
    factors = native_volume_factors(qc)
    for reason, group in table[table["split"] == WITHHELD].groupby("reason"):
        log.info("%s: %s", reason, ", ".join(group["participant_id"]))
    for reason, group in table[table["split"] == "excluded"].groupby("reason"):
        log.warning("excluded (%s): %s", reason, ", ".join(group["participant_id"]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    columns = ["participant_id", "age", "sex", "age_bin", "split", "reason", "image"]
    if SESSION_COLUMNS[0] in table.columns:
        columns[1:1] = SESSION_COLUMNS
    if factors:
        table[NATIVE_VOLUME_COLUMN] = table["participant_id"].map(factors)
        columns.append(NATIVE_VOLUME_COLUMN)
    table[columns].to_csv(args.output, sep="\t", index=False, na_rep="n/a")
    summary = table.groupby(["age_bin", "split"]).size().unstack(fill_value=0)
    log.info("split per age bin:\n%s", summary.to_string())
    return 0
