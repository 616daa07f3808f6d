"""How robust is the affine registration to MNI across its metric-sampling seeds, on an oblique scan?

The youngest IXI scan with an age is stored again under an oblique affine (the head tilted 12 degrees about x
and 8 about z, as `test_reoriented_and_oblique_inputs_give_the_same_mni_output` does) and preprocessed once per
seed and sampling rate; each MNI image is compared with the upright scan's (sampling 0.2, seed 1): the Dice of
the MNI brain masks and the correlation of the intensities inside both. A correlation far below 0.9 is a
misregistration.

    python benchmarks/bench_registration_seeds.py [--rates 0.05 0.2] [--seeds 1 2 3 4 5 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from flowlet.preprocess.pipeline import PreprocessSettings, run_and_write
from flowlet.preprocess.qc import dice
from flowlet.preprocess.register import RegistrationSettings

IXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi"


def youngest_scan(ixi: Path) -> tuple[str, Path]:
    participants = pd.read_csv(ixi / "participants.tsv", sep="\t").dropna(subset=["age"])
    subject = participants.sort_values("age")["participant_id"].iloc[0]
    return subject, ixi / subject / "anat" / f"{subject}_T1w.nii.gz"


def write_oblique(path: Path, output: Path) -> None:
    image = nib.load(str(path))
    tilt = nib.eulerangles.euler2mat(z=np.deg2rad(8), x=np.deg2rad(12))
    centre = image.affine @ np.r_[(np.array(image.shape) - 1) / 2, 1]
    rotation = np.eye(4)
    rotation[:3, :3] = tilt
    rotation[:3, 3] = centre[:3] - tilt @ centre[:3]
    nib.Nifti1Image(np.asarray(image.dataobj), rotation @ image.affine).to_filename(str(output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ixi", type=Path, default=IXI)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    subject, upright = youngest_scan(args.ixi)

    def preprocess(path: Path, rate: float, seed: int, folder: Path):
        settings = PreprocessSettings(
            threads=args.threads, registration=RegistrationSettings(sampling_rate=rate, seed=seed)
        )
        return run_and_write(
            path, subject, settings, brain_mask_path=folder / "mask.nii.gz", output_path=folder / "mni.nii.gz"
        )

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        oblique = work / "oblique.nii.gz"
        write_oblique(upright, oblique)
        reference = preprocess(upright, 0.2, 1, work)
        print(f"{subject}: oblique copy against the upright scan (sampling 0.2, seed 1)")
        print("sampling\tseed\tdice_mni_mask\tcorrelation\tseconds_register")
        for rate in args.rates:
            for seed in args.seeds:
                result = preprocess(oblique, rate, seed, work)
                both = result.mni_mask & reference.mni_mask
                correlation = np.corrcoef(result.mni_image[both], reference.mni_image[both])[0, 1]
                seconds = result.metrics["seconds_register"]
                print(
                    f"{rate}\t{seed}\t{dice(result.mni_mask, reference.mni_mask):.3f}\t{correlation:.3f}\t{seconds:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
