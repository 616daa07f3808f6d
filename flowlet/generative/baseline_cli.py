"""`flowlet fit-baseline`: fit the linear baseline generator (per-voxel age lines plus residual PCA).

The fitted model is sampled with ``flowlet generate --backend linear --checkpoint-path MODEL.npz``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "table", type=Path, help="TSV with columns image and age; with a split column, only its train rows are used"
    )
    parser.add_argument(
        "--downsample",
        type=int,
        default=1,
        help="fit at 1/N resolution, as the generator it is compared with trains (train --downsample)",
    )
    parser.add_argument("--output", type=Path, required=True, help="model file to write (.npz)")


def run(args: argparse.Namespace) -> int:
    from flowlet.errors import FlowletError
    from flowlet.generative.linear_baseline import LinearBaseline

    if args.downsample < 1:
        raise FlowletError(f"--downsample must be at least 1, got {args.downsample}")
    LinearBaseline.fit_table(args.table, args.downsample).save(args.output)
    log.info("wrote %s", args.output)
    return 0
