"""`flowlet participants`: validate a BIDS dataset and write the participant table the workflow runs on."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flowlet.data.bids import ColumnNames, ages_missing_note, check_image_header, participant_table

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bids-dir", required=True, type=Path, help="BIDS root holding participants.tsv and sub-*/anat/*_T1w.nii.gz"
    )
    parser.add_argument("--age-column", default="age", help="participants.tsv column holding age in years")
    parser.add_argument("--sex-column", default="sex", help="participants.tsv column holding sex (M/F)")
    parser.add_argument(
        "--session-age-column",
        default="age",
        help="sub-<label>_sessions.tsv column holding the age at each session (longitudinal datasets)",
    )
    parser.add_argument("--exclude-subjects", nargs="*", default=[], help="participant IDs to leave out")
    parser.add_argument("--output", required=True, type=Path, help="participant table to write (TSV)")


def run(args: argparse.Namespace) -> int:
    table = participant_table(
        args.bids_dir,
        ColumnNames(args.age_column, args.sex_column, session_age=args.session_age_column),
        args.exclude_subjects,
    )
    for pid, image in zip(table["participant_id"], table["image"]):
        check_image_header(image, pid)
    note = ages_missing_note(table)
    if note:
        log.warning("%s", note)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output, sep="\t", index=False, na_rep="n/a")
    scans = f" in {len(table)} scans" if "session" in table.columns else ""
    subjects = table["subject"].nunique() if "subject" in table.columns else len(table)
    log.info(
        "%d participants%s (%d with age) written to %s", subjects, scans, int(table["age"].notna().sum()), args.output
    )
    return 0
