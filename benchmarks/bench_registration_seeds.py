"""How robust is the affine registration to MNI across its metric-sampling seeds, on an oblique scan?

The youngest IXI scan with an age is stored again under an oblique affine (the head tilted 12 degrees about x
and 8 about z, as `test_reoriented_and_oblique_inputs_give_the_same_mni_output` does) and preprocessed once per
seed and sampling schedule (COARSE:FINE, the metric's sampling rate on the coarse levels and on the finest);
each MNI image is compared with the upright scan's under the same schedule (seed 1): the Dice of the MNI brain
masks and the correlation of the intensities inside both. A correlation far below 0.9 is a misregistration.

    python benchmarks/bench_registration_seeds.py --threads 2 [--schedules 0.05:0.05 0.2:0.2 0.2:0.05]
        [--seeds 1 2 3 4 5 6]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from preprocess_options import IXI_DIR, preprocess_settings

from flowlet.data.nifti import tilted_copy
from flowlet.preprocess.cli import add_settings_arguments
from flowlet.preprocess.pipeline import run_and_write
from flowlet.preprocess.qc import dice


def youngest_scan(ixi: Path) -> tuple[str, Path]:
    participants = pd.read_csv(ixi / "participants.tsv", sep="\t").dropna(subset=["age"])
    subject = participants.sort_values("age")["participant_id"].iloc[0]
    return subject, ixi / subject / "anat" / f"{subject}_T1w.nii.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ixi", type=Path, default=IXI_DIR)
    parser.add_argument("--schedules", nargs="+", default=["0.05:0.05", "0.2:0.2", "0.2:0.05"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    add_settings_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    subject, upright = youngest_scan(args.ixi)

    def preprocess(path: Path, folder: Path, **registration):
        return run_and_write(
            path,
            subject,
            preprocess_settings(args, **registration),
            brain_mask_path=folder / "mask.nii.gz",
            output_path=folder / "mni.nii.gz",
        )

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        oblique = work / "oblique.nii.gz"
        tilted_copy(nib.load(str(upright))).to_filename(str(oblique))
        print(f"{subject}: the oblique copy against the upright scan, each schedule (coarse:fine) with seed 1")
        print("schedule\tseed\tdice_mni_mask\tcorrelation\tseconds_register")
        for schedule in args.schedules:
            coarse, fine = (float(rate) for rate in schedule.split(":"))
            rates = {"sampling_rate": coarse, "fine_sampling_rate": fine}
            reference = preprocess(upright, work, seed=1, **rates)
            for seed in args.seeds:
                result = preprocess(oblique, work, seed=seed, **rates)
                both = result.mni_mask & reference.mni_mask
                correlation = np.corrcoef(result.mni_image[both], reference.mni_image[both])[0, 1]
                mask_dice = dice(result.mni_mask, reference.mni_mask)
                seconds = result.metrics["seconds_register"]
                print(f"{schedule}\t{seed}\t{mask_dice:.3f}\t{correlation:.3f}\t{seconds:.2f}", flush=True)


if __name__ == "__main__":
    main()
