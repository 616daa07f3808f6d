"""`flowlet regional-measures`: tissue volumes per atlas region of every real and synthetic image, measured once.

Every real image of the split table (rows not ``excluded``) and every image of the synthetic manifests is
segmented into CSF, grey and white matter (ANTs Atropos, template priors) and measured in every region of
the atlas, unless a per-image table of `flowlet measure-images` (``--measured``) already has it: the
workflow segments per subject and per age bin in parallel jobs and this command merges them. Outputs, all
in ``--output-dir``:

- ``regional_measures.tsv``: the long table, one row per image and region (what `flowlet regions` reads);
- ``regional_features.tsv``: one row per image, the brain-age regional features (``flowlet brainage
  --regional-features``), see :func:`flowlet.regions.measures.regional_features`;
- ``segmentations/``: the tissue labels (0 outside, 1 CSF, 2 grey, 3 white) of the images segmented here;
  the table's ``segmentation`` column points to every image's labels, relative to the table.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from flowlet.errors import FlowletError

log = logging.getLogger(__name__)

MEASURES_TABLE = "regional_measures.tsv"
FEATURES_TABLE = "regional_features.tsv"


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split",
        required=True,
        type=Path,
        help="split table (participant_id, age, sex, age_bin, split, image[, native_volume_factor])",
    )
    parser.add_argument(
        "--synthetic",
        nargs="*",
        default=[],
        type=Path,
        help="synthetic manifest TSV(s) (image, age[, sex, age_bin]); none is allowed",
    )
    parser.add_argument(
        "--baseline-synthetic",
        nargs="*",
        default=[],
        type=Path,
        help="the linear baseline generator's manifests, measured as group baseline",
    )
    parser.add_argument(
        "--external-split",
        type=Path,
        default=None,
        help="a second dataset's split table (flowlet split --evaluation-only): its subjects are "
        "measured as group external, for the brain-age external test set",
    )
    parser.add_argument(
        "--output-dir",
        required=True,
        type=Path,
        help=f"folder for {MEASURES_TABLE} (one row per image and region), {FEATURES_TABLE} (one row per image: CSF, grey and white "
        "volume of every region as fractions of the image's brain-mask volume, for `flowlet brainage --regional-features`) and segmentations/",
    )
    parser.add_argument(
        "--measured",
        nargs="*",
        default=[],
        help="per-image tables of `flowlet measure-images` (the workflow's per-subject and per-bin jobs); a path "
        "with {participant_id} is filled in for every real subject and read where it exists. Images found in "
        "them are not segmented again; the others are segmented here",
    )
    add_segmentation_arguments(parser)


def add_segmentation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for ANTs")
    parser.add_argument("--atropos-iterations", type=int, default=5, help="Atropos EM iterations per image")
    parser.add_argument(
        "--atropos-mrf",
        type=float,
        default=0.1,
        help="Atropos MRF smoothing weight (0 = none, fastest; 0.1 separates CSF from grey matter far better at 2 mm)",
    )
    parser.add_argument(
        "--atropos-prior-weight",
        type=float,
        default=0.1,
        help="weight of the template tissue priors in Atropos (0: initialisation only, 1: strong); low, because affinely aligned subjects differ from the template",
    )


def check_segmentation_arguments(args: argparse.Namespace) -> None:
    if args.threads < 1:
        raise FlowletError(f"--threads must be at least 1, got {args.threads}")
    if args.atropos_iterations < 1 or args.atropos_mrf < 0 or not 0 <= args.atropos_prior_weight <= 1:
        raise FlowletError(
            f"Atropos settings out of range: --atropos-iterations {args.atropos_iterations} (>= 1), "
            f"--atropos-mrf {args.atropos_mrf} (>= 0), --atropos-prior-weight {args.atropos_prior_weight} (0-1)"
        )
    # ITK reads its thread count when the library loads, so it is set before ants is first imported.
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)


def segmenter_from_args(args: argparse.Namespace, resolution_mm: int):
    from flowlet.regions.tissue import TissueSegmenter

    return TissueSegmenter(resolution_mm, args.atropos_iterations, args.atropos_mrf, args.atropos_prior_weight)


def measured_tables(items: list[str], entries) -> list[Path]:
    """``--measured``: plain paths as given (each must exist), paths with {participant_id} filled in for every real
    subject and kept where they exist."""
    tables: list[Path] = []
    participants = [entry.participant_id for entry in entries if entry.participant_id]
    for item in items:
        if "{participant_id}" not in item:
            if not Path(item).is_file():
                raise FlowletError(f"--measured: {item} does not exist")
            tables.append(Path(item))
            continue
        filled = (Path(item.replace("{participant_id}", participant)) for participant in participants)
        tables.extend(path for path in filled if path.is_file())
    return tables


def run(args: argparse.Namespace) -> int:
    check_segmentation_arguments(args)
    from flowlet.regions.atlas import load_atlas
    from flowlet.regions.measures import (
        BASELINE,
        MEASURED_REAL_GROUPS,
        images_resolution,
        measure_images,
        read_external,
        read_manifests,
        read_measured,
        read_split,
        regional_features,
    )

    entries = read_split(args.split, MEASURED_REAL_GROUPS) + read_manifests(list(args.synthetic))
    entries += read_manifests(list(args.baseline_synthetic), group=BASELINE)
    if args.external_split:
        entries += read_external(args.external_split)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    # The study's grid (preprocess.resolution): 2 mm or 1 mm, as the images are.
    resolution = images_resolution([entry.described for entry in entries])
    measured = read_measured(measured_tables(args.measured, entries), output)
    with segmenter_from_args(args, resolution) as segmenter:
        measures = measure_images(entries, load_atlas(resolution), segmenter, resolution, output, measured)
    measures.to_csv(output / MEASURES_TABLE, sep="\t", index=False, na_rep="NaN", float_format="%.6g")
    regional_features(measures).to_csv(output / FEATURES_TABLE, sep="\t", index=False, float_format="%.6g")
    groups = measures.drop_duplicates("image_id")["group"].value_counts().to_dict()
    log.info("measured %d regions in %s images; wrote %s", measures["region"].nunique(), groups, output)
    return 0
