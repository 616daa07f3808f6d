"""`flowlet measure-images`: segment and measure some images on their own, for `flowlet regional-measures`.

The workflow runs it once per real subject and once per synthetic manifest (one age bin of one generator),
so a cluster segments them in parallel and a study that gains subjects segments only the new ones. It
writes ``--output-dir``/``measured.tsv`` (one row per image and region, keyed by the image's path; what
the image alone tells, without its group or age) and each image's tissue labels under ``segmentations/``.
`flowlet regional-measures --measured` merges these tables with the split and the manifests.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from flowlet.errors import FlowletError
from flowlet.regions.measures_cli import (
    add_segmentation_arguments,
    check_segmentation_arguments,
    segmenter_from_args,
)

log = logging.getLogger(__name__)

MEASURED_TABLE = "measured.tsv"


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", nargs="*", default=[], type=Path, help="preprocessed (MNI-registered) images")
    parser.add_argument(
        "--manifests",
        nargs="*",
        default=[],
        type=Path,
        help="synthetic manifest TSV(s) (image, age[, qc_pass]): their images that passed the QC gate",
    )
    parser.add_argument(
        "--output-dir", required=True, type=Path, help=f"folder for {MEASURED_TABLE} and segmentations/"
    )
    add_segmentation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_segmentation_arguments(args)
    from flowlet.regions.atlas import load_atlas
    from flowlet.regions.measures import (
        IMAGE_MEASURE_COLUMNS,
        SEGMENTATION_FOLDER,
        check_headers,
        images_resolution,
        read_manifests,
        segment_images,
    )

    if not args.images and not args.manifests:
        raise FlowletError("measure-images needs --images or --manifests")
    images = [(path, "image") for path in args.images]
    images += [entry.described for entry in read_manifests(list(args.manifests))]
    resolution = images_resolution(images)
    check_headers(images, resolution)
    output = Path(args.output_dir)
    # Made even when a bin planned no synthetic subjects: the workflow declares it as an output.
    (output / SEGMENTATION_FOLDER).mkdir(parents=True, exist_ok=True)
    if images:
        with segmenter_from_args(args, resolution) as segmenter:
            measured = segment_images(images, load_atlas(resolution), segmenter, resolution, output)
    else:
        # A bin whose volumes all failed the QC gate: nothing to segment, so no template priors to load.
        measured = pd.DataFrame(columns=[*IMAGE_MEASURE_COLUMNS])
    measured.to_csv(output / MEASURED_TABLE, sep="\t", index=False, na_rep="NaN", float_format="%.6g")
    log.info("measured %d image(s); wrote %s", len(images), output / MEASURED_TABLE)
    return 0
