"""`flowlet synthetic-qc`: judge synthetic volumes by the QC metrics of real preprocessed brains.

``flowlet synthetic-qc reference`` measures the real training images (the split's ``train`` rows) as the
generator sees them; ``flowlet synthetic-qc gate`` merges one age bin's generation manifests, flags volumes whose
metrics lie more than ``--qc-max-robust-z`` robust standard deviations from the real median, writes the bin's
manifest with a ``qc_pass`` column (false for outliers when the gate is on) and a summary (generated, outliers,
dropped, kept).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flowlet.generative.synthetic_qc import MAX_ROBUST_Z

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="{reference,gate}")
    reference = actions.add_parser(
        "reference", help="QC metrics of the real training images, as the generator sees them"
    )
    reference.add_argument(
        "--split",
        type=Path,
        required=True,
        help="split table (image, split): its train rows are the generator's training images",
    )
    reference.add_argument(
        "--downsample",
        type=int,
        default=1,
        help="the generator's working resolution as a factor of the images' (train --downsample)",
    )
    reference.add_argument(
        "--max-images",
        type=int,
        default=500,
        help="measure at most this many training images, spread over the split table",
    )
    reference.add_argument("--output", type=Path, required=True, help="reference table to write (TSV)")

    gate = actions.add_parser("gate", help="merge a bin's manifests and drop its QC outliers")
    gate.add_argument("--manifests", type=Path, nargs="+", required=True, help="manifests written by flowlet generate")
    gate.add_argument("--reference", type=Path, required=True, help="table from flowlet synthetic-qc reference")
    gate.add_argument(
        "--output",
        type=Path,
        required=True,
        help="merged manifest to write, with qc_outlier, qc_reasons and qc_pass columns",
    )
    gate.add_argument(
        "--summary", type=Path, required=True, help="one-row TSV to write: age_bin, generated, outliers, dropped, kept"
    )
    gate.add_argument("--age-bin", default="all", help="age bin label for the summary and the log")
    gate.add_argument(
        "--qc-gate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mark QC outliers qc_pass false, so the brain-age stage leaves them out (off: flag only)",
    )
    gate.add_argument(
        "--qc-max-robust-z",
        type=float,
        default=MAX_ROBUST_Z,
        help="a volume is an outlier when a metric is more than this many robust SDs from the real median",
    )


def run(args: argparse.Namespace) -> int:
    from flowlet.generative.synthetic_qc import evenly_spaced, gate_manifests, reference_metrics

    if args.action == "gate":
        gate_manifests(
            args.manifests, args.reference, args.output, args.summary, args.age_bin, args.qc_max_robust_z, args.qc_gate
        )
        return 0

    from flowlet.errors import FlowletError
    from flowlet.generative.data import read_training_table

    if args.downsample < 1:
        raise FlowletError(f"--downsample must be at least 1, got {args.downsample}")
    records = read_training_table(args.split, [])
    images = evenly_spaced([record.image for record in records], args.max_images)
    table = reference_metrics(images, args.downsample)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output, sep="\t", index=False, float_format="%.6g")
    log.info(
        "synthetic QC reference: %d of %d real training images, working resolution 1/%d; median Dice %.3f, "
        "median NCC %.3f",
        len(table),
        len(records),
        args.downsample,
        table["dice_template"].median(),
        table["ncc_template"].median(),
    )
    return 0
