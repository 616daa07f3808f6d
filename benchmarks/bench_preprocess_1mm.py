"""Speed, memory and mask accuracy of `flowlet preprocess` on 1 mm scans, with --threads 2 and --resolution 1.

Two 1 mm inputs with a known brain mask, each preprocessed in its own process (as the workflow runs it):

- ``whole_head``: a demo phantom rendered at 1 mm isotropic on its oblique native grid (192 x 240 x 240,
  about the 11.5 million voxels of a 256 x 256 x 176 scan), skull, fat, bias field and noise included;
- ``stripped_mni``: the DeepBrainNet-like case, an already skull-stripped 1 mm scan aligned to MNI (the
  phantom's brain in template space: the MNI template inside its brain mask, with a smooth bias field).

Prints per case the per-step seconds from the QC row, the process wall time, its peak resident memory and
the Dice of the native brain mask with the truth. Targets: at most 20 s and 2 GB per scan, Dice >= 0.95.

    python benchmarks/bench_preprocess_1mm.py [--threads 2] [--seed 0] [-- further flowlet preprocess flags]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from bench_preprocess import STEPS, run_one

from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1
from flowlet.phantoms.cohort import build_head_model, draw_subject, synthesize
from flowlet.preprocess.qc import dice

TARGET_SECONDS = 20.0
TARGET_MIB = 2048.0
TARGET_DICE = 0.95


def whole_head(folder: Path, seed: int) -> tuple[Path, Path]:
    params = dataclasses.replace(draw_subject(seed, 0, 20.0, 80.0), voxel_size_mm=(1.0, 1.0, 1.0))
    phantom = synthesize(build_head_model(), params, "PSR")
    image = save_nifti(phantom.t1, phantom.affine, folder / "whole_head_T1w.nii.gz", dtype=np.int16)
    truth = save_nifti(phantom.brain_mask, phantom.affine, folder / "whole_head_mask.nii.gz", dtype=np.uint8)
    return image, truth


def stripped_mni(folder: Path, seed: int) -> tuple[Path, Path]:
    shape, affine = mni_grid(1)
    mask = template_brain_mask(1).get_fdata() > 0
    coordinates = np.indices(shape, dtype=np.float32) / np.asarray(shape, dtype=np.float32).reshape(3, 1, 1, 1)
    tilt = np.random.default_rng(seed).uniform(-0.15, 0.15, 3).astype(np.float32)
    bias = np.exp(np.tensordot(tilt, coordinates - 0.5, axes=1))
    t1 = template_t1(1).get_fdata(dtype=np.float32) * bias * mask
    image = save_nifti(1000 * t1 / t1.max(), affine, folder / "stripped_mni_T1w.nii.gz", dtype=np.int16)
    truth = save_nifti(mask.astype(np.uint8), affine, folder / "stripped_mni_mask.nii.gz", dtype=np.uint8)
    return image, truth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="further `flowlet preprocess` flags, after --")
    args = parser.parse_args()
    extra = ["--resolution", "1", *[flag for flag in args.extra if flag != "--"]]

    met = True
    with tempfile.TemporaryDirectory(prefix="flowlet-bench-1mm-") as workdir:
        folder = Path(workdir)
        for name, make in (("whole_head", whole_head), ("stripped_mni", stripped_mni)):
            # Made in a spawned process: Linux carries a parent's peak memory over into the children it starts,
            # so rendering the phantom here would inflate every measured peak below.
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                image, truth = pool.apply(make, (folder, args.seed))
            shape = nib.load(str(image)).shape
            run_dir = folder / name
            run_dir.mkdir()
            qc_row, wall, peak_mib = run_one(image, run_dir, args.threads, extra)
            mask = np.asanyarray(nib.load(str(run_dir / "mask.nii.gz")).dataobj) > 0
            overlap = dice(mask, np.asanyarray(nib.load(str(truth)).dataobj) > 0)
            steps = "  ".join(f"{step.removeprefix('seconds_')} {qc_row[step]:.1f} s" for step in STEPS)
            print(f"{name} {'x'.join(map(str, shape))}: {steps}  process {wall:.1f} s  peak {peak_mib:.0f} MiB  "
                  f"mask Dice {overlap:.3f}")  # fmt: skip
            met &= wall <= TARGET_SECONDS and peak_mib <= TARGET_MIB and overlap >= TARGET_DICE
    print(
        f"targets (<= {TARGET_SECONDS:g} s, <= {TARGET_MIB:g} MiB, Dice >= {TARGET_DICE}): {'met' if met else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
