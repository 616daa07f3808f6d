"""Brain-mask accuracy of `flowlet preprocess` on the IXI sample, against DLMUSE (mask = dseg > 0).

For each subject with an age: the default pipeline's native brain mask vs the
reference (Dice), and the reference mask carried into MNI space with the
pipeline's transform vs the template brain mask (Dice). Prints per-subject rows
and a summary (min, median) next to the targets (0.97 / 0.98 and 0.93 / 0.95).

    python benchmarks/bench_skullstrip_dice.py --ixi ../shared/data/ixi [--every 3] [--limit 6]
        [--threads 1] [--backend deepbet|fsl|template] [--registration-sampling 0.05]

With --study DIR it preprocesses nothing and scores the masks and transforms a finished study saved
(DIR/results/preprocess/<subject>/anat/), e.g. after
`snakemake --cores 2 --config data='{"bids_dir": "../shared/data/ixi"}'`: the whole cohort in a minute.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from preprocess_options import IXI_DIR, preprocess_settings
from tables import print_row, summarise
from tqdm import tqdm

from flowlet.data.templates import template_brain_mask
from flowlet.errors import FlowletError
from flowlet.preprocess import apply_to_mni
from flowlet.preprocess.cli import add_settings_arguments
from flowlet.preprocess.pipeline import PreprocessSettings, preprocess_subject
from flowlet.preprocess.qc import dice


def carried_reference_dice(reference: nib.Nifti1Image, transform, resolution_mm: int) -> float:
    carried = apply_to_mni(reference, transform, "linear", resolution_mm).get_fdata() >= 0.5
    return dice(carried, template_brain_mask(resolution_mm).get_fdata() > 0)


def fresh_scores(t1w: Path, subject: str, reference: nib.Nifti1Image, settings: PreprocessSettings) -> dict:
    result, registration = preprocess_subject(t1w, subject, settings)
    try:
        carried = carried_reference_dice(reference, registration.files, settings.resolution_mm)
    finally:
        registration.cleanup()
    truth = reference.get_fdata() > 0
    return {
        "dice_mask": dice(result.native_mask, truth),
        "volume_ratio": result.native_mask.sum() / truth.sum(),
        "dice_mni_reference": carried,
        "dice_mni_mask": result.metrics["dice_template"],
        "seconds_total": result.metrics["seconds_total"],
    }


def saved_scores(study: Path, subject: str, reference: nib.Nifti1Image, resolution_mm: int) -> dict:
    folder = study / "results" / "preprocess" / subject / "anat"
    mask_path = folder / f"{subject}_desc-brain_mask.nii.gz"
    transforms = sorted(folder.glob(f"{subject}_from-T1w_to-MNI*_xfm.mat"))
    if not mask_path.exists() or not transforms:
        raise FlowletError(f"{folder} lacks the saved brain mask or transform")
    mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0
    truth = reference.get_fdata() > 0
    return {
        "dice_mask": dice(mask, truth),
        "volume_ratio": mask.sum() / truth.sum(),
        "dice_mni_reference": carried_reference_dice(reference, transforms[0], resolution_mm),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ixi", type=Path, default=IXI_DIR)
    parser.add_argument("--every", type=int, default=1, help="take every n-th subject in age order (1 = all)")
    add_settings_arguments(parser)
    parser.add_argument("--limit", type=int, help="only the first n subjects in age order (oldest first)")
    parser.add_argument("--output", type=Path, help="optional TSV of the per-subject figures")
    parser.add_argument("--study", type=Path, help="score a finished study's saved masks and transforms instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    participants = pd.read_csv(args.ixi / "participants.tsv", sep="\t").dropna(subset=["age"])
    participants = participants.sort_values("age", ascending=False).iloc[:: args.every].iloc[: args.limit]
    settings = preprocess_settings(args)
    rows = []
    for subject, age in tqdm(
        zip(participants["participant_id"], participants["age"]), total=len(participants), file=sys.stderr
    ):
        t1w = args.ixi / subject / "anat" / f"{subject}_T1w.nii.gz"
        reference_image = nib.load(
            str(args.ixi / "derivatives" / "dlmuse" / subject / "anat" / f"{subject}_dseg.nii.gz")
        )
        reference = np.asarray(reference_image.dataobj) > 0
        reference_on_native = nib.Nifti1Image(reference.astype(np.float32), reference_image.affine)
        try:
            row = (
                saved_scores(args.study, subject, reference_on_native, settings.resolution_mm)
                if args.study
                else fresh_scores(t1w, subject, reference_on_native, settings)
            )
        except FlowletError as error:
            print(f"{subject}: FAILED {error}", flush=True)
            rows.append({"subject": subject, "age": age, "dice_mask": np.nan, "dice_mni_reference": np.nan})
            continue
        row = {"subject": subject, "age": age, **row}
        rows.append(row)
        print_row(row, 4)
    targets = {"dice_mask": "min >= 0.97, median >= 0.98", "dice_mni_reference": "min >= 0.93, median >= 0.95"}
    table = summarise(rows, args.output, targets, 4)
    print(f"{len(table)} subjects ({args.skullstrip_backend}), failures: {int(table['dice_mask'].isna().sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
