"""`flowlet preprocess` on demo phantoms, against their ground truth.

Writes N phantoms with the `flowlet phantoms` API into a temporary folder, runs the
default preprocessing on each, and prints per subject: the Dice of the native brain
mask with the phantom's true mask (intracranial volume above the foramen magnum, the
IXI reference's convention), and the registration's error at the brain boundary: for
every surface voxel of the MNI brain mask, the distance in native mm between where the
saved transform and where the phantom's truth send it, mean and max. Two truths:
``pose``, the linear part of the brain map (rotation, translation, head size, age
shrink), which is what "the recovered pose" means for an affine registration; ``map``,
the full map with the individual nonlinear warp, ventricle enlargement and thinning,
next to ``affine_floor``, the best any affine transform can do against it. Targets:
Dice >= 0.95, mean pose error <= 2 mm.

    python benchmarks/bench_phantom_preprocess.py [--n-subjects 8] [--seed 0] [--threads 1] [--registration-sampling 0.05]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from preprocess_options import preprocess_settings, preprocessed_phantoms
from tables import print_row, summarise

from flowlet.phantoms.scoring import best_affine_map_errors_mm, boundary_errors_mm
from flowlet.preprocess.cli import add_settings_arguments
from flowlet.preprocess.qc import dice

COLUMNS = (
    "subject",
    "age",
    "dice_mask",
    "volume_ratio",
    "pose_mean_mm",
    "pose_max_mm",
    "map_mean_mm",
    "map_max_mm",
    "affine_floor_mean_mm",
    "seconds",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-subjects", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--age-min", type=float, default=20.0)
    parser.add_argument("--age-max", type=float, default=80.0)
    add_settings_arguments(parser)
    parser.add_argument("--output", type=Path, help="optional TSV of the per-subject figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    settings = preprocess_settings(args)
    rows = []
    print("\t".join(COLUMNS), flush=True)
    for phantom in preprocessed_phantoms(
        settings, args.n_subjects, args.seed, age_min=args.age_min, age_max=args.age_max
    ):
        params, result = phantom.params, phantom.result
        truth = np.asanyarray(nib.load(str(phantom.paths["brain_mask"])).dataobj) > 0
        errors = boundary_errors_mm(params, phantom.registration.files, settings.resolution_mm)
        row = {
            "subject": params.participant_id,
            "age": params.age,
            "dice_mask": dice(result.native_mask, truth),
            "volume_ratio": result.native_mask.sum() / truth.sum(),
            "pose_mean_mm": float(errors["pose"].mean()),
            "pose_max_mm": float(errors["pose"].max()),
            "map_mean_mm": float(errors["map"].mean()),
            "map_max_mm": float(errors["map"].max()),
            "affine_floor_mean_mm": float(best_affine_map_errors_mm(params, settings.resolution_mm).mean()),
            "seconds": result.metrics["seconds_total"],
        }
        rows.append(row)
        print_row(row, 3)
    targets = {
        "dice_mask": "every subject >= 0.95",
        "pose_mean_mm": "every subject <= 2 mm",
        "pose_max_mm": "reported",
        "map_mean_mm": "reported",
        "affine_floor_mean_mm": "reported",
    }
    table = summarise(rows, args.output, targets, 3)
    print(f"{len(table)} phantoms (seed {args.seed}, backend {args.skullstrip_backend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
