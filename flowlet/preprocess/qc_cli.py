"""`flowlet qc`: concatenate per-subject QC rows and flag outliers by robust z-score, flagged subjects first."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from flowlet.data.tables import read_tsv
from flowlet.errors import FlowletError
from flowlet.preprocess.qc import aggregate_qc

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--inputs", type=Path, nargs="*", default=[], help="per-subject QC tables (flowlet preprocess --qc-tsv)"
    )
    parser.add_argument(
        "--input-pattern",
        help="instead of --inputs: the per-subject QC table's path with {participant_id}, filled in for every "
        "subject of --participants (a cohort of thousands does not fit on one command line)",
    )
    parser.add_argument(
        "--participants", type=Path, help="participant table (flowlet participants), with --input-pattern"
    )
    parser.add_argument("--output", type=Path, required=True, help="output: aggregate QC table")
    parser.add_argument(
        "--failed-list",
        type=Path,
        help="TSV of subjects whose preprocessing failed (columns subject, reason); listed first",
    )
    parser.add_argument(
        "--outlier-threshold",
        type=float,
        default=3.0,
        help="robust z-score (median/MAD) above which a metric is flagged",
    )


def _read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise FlowletError(f"QC table {path} is not readable ({type(error).__name__}: {error})") from error


def input_tables(args: argparse.Namespace) -> list[Path]:
    if args.input_pattern is None:
        return list(args.inputs)
    if args.inputs or args.participants is None or "{participant_id}" not in args.input_pattern:
        raise FlowletError("--input-pattern needs --participants, a {participant_id} in the pattern, and no --inputs")
    participants = read_tsv(args.participants, "participant table", required=("participant_id",), dtype=str)
    return [Path(args.input_pattern.replace("{participant_id}", pid)) for pid in participants["participant_id"]]


def run(args: argparse.Namespace) -> int:
    failed = _read(args.failed_list) if args.failed_list else None
    if failed is not None and not {"subject", "reason"} <= set(failed.columns):
        raise FlowletError(f"failed list {args.failed_list} needs the columns subject and reason")
    table = aggregate_qc([_read(path) for path in input_tables(args)], args.outlier_threshold, failed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output, sep="\t", index=False, float_format="%.6g")
    log.info("QC: %d subjects, %d flagged", len(table), int(table["outlier"].sum()))
    return 0
