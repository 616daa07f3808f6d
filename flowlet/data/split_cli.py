"""`flowlet split`: real training and held-out test subjects, stratified by age bin."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from flowlet.data.split import stratified_split

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--participants", required=True, type=Path, help="table written by 'flowlet participants'")
    parser.add_argument("--qc", type=Path, help="aggregate QC table from 'flowlet qc'; failed subjects are excluded")
    parser.add_argument("--image-pattern", required=True, help="path of each subject's preprocessed MNI image, with {participant_id}")
    parser.add_argument("--bin-edges", nargs="+", type=float, required=True, help="age bin edges in years")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="share of each age bin held out for testing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--output", required=True, type=Path, help="split table to write (TSV)")


def failed_subjects(qc_table: Path | None) -> dict[str, str]:
    if qc_table is None:
        return {}
    qc = pd.read_csv(qc_table, sep="\t", dtype={"subject": str})
    if "status" not in qc.columns:
        return {}
    failed = qc[qc["status"].astype(str) != "ok"]
    return dict(zip(failed["subject"], "preprocessing failed: " + failed["status"].astype(str)))


def run(args: argparse.Namespace) -> int:
    participants = pd.read_csv(args.participants, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"sex": str})
    participants["sex"] = participants["sex"].fillna("")
    table = stratified_split(participants, args.bin_edges, args.test_fraction, args.seed, failed_subjects(args.qc))
    table["image"] = [args.image_pattern.format(participant_id=pid) for pid in table["participant_id"]]
    for reason, group in table[table["split"] == "excluded"].groupby("reason"):
        log.warning("excluded (%s): %s", reason, ", ".join(group["participant_id"]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    columns = ["participant_id", "age", "sex", "age_bin", "split", "reason", "image"]
    table[columns].to_csv(args.output, sep="\t", index=False, na_rep="n/a")
    summary = table.groupby(["age_bin", "split"]).size().unstack(fill_value=0)
    log.info("split per age bin:\n%s", summary.to_string())
    return 0
