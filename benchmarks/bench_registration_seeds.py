"""How robust is the affine registration to MNI across its metric-sampling seeds, on an oblique scan?

The youngest IXI scan with an age is stored again under an oblique affine (the head tilted 12 degrees about x
and 8 about z, as `test_reoriented_and_oblique_inputs_give_the_same_mni_output` does) and preprocessed once per
seed and sampling rate; each MNI image is compared with the upright scan's (sampling 0.2, seed 1): the Dice of
the MNI brain masks and the correlation of the intensities inside both. The upright reference uses
--registration-sampling (default 0.2) with seed 1. A correlation far below 0.9 is a
misregistration.

    python benchmarks/bench_registration_seeds.py --threads 2 [--rates 0.05 0.2] [--seeds 1 2 3 4 5 6]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from preprocess_options import IXI_DIR, add_preprocess_arguments, preprocess_settings

from flowlet.data.nifti import tilted_copy
from flowlet.preprocess.pipeline import run_and_write
from flowlet.preprocess.qc import dice


def youngest_scan(ixi: Path) -> tuple[str, Path]:
    participants = pd.read_csv(ixi / "participants.tsv", sep="\t").dropna(subset=["age"])
    subject = participants.sort_values("age")["participant_id"].iloc[0]
    return subject, ixi / subject / "anat" / f"{subject}_T1w.nii.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ixi", type=Path, default=IXI_DIR)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    add_preprocess_arguments(parser)
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
        reference = preprocess(upright, work, seed=1)
        print(f"{subject}: oblique copy against the upright scan (sampling {args.registration_sampling}, seed 1)")
        print("sampling\tseed\tdice_mni_mask\tcorrelation\tseconds_register")
        for rate in args.rates:
            for seed in args.seeds:
                result = preprocess(oblique, work, sampling_rate=rate, seed=seed)
                both = result.mni_mask & reference.mni_mask
                correlation = np.corrcoef(result.mni_image[both], reference.mni_image[both])[0, 1]
                seconds = result.metrics["seconds_register"]
                print(
                    f"{rate}\t{seed}\t{dice(result.mni_mask, reference.mni_mask):.3f}\t{correlation:.3f}\t{seconds:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
