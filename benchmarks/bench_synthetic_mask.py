"""Why synthetic volumes fail or pass the QC gate's mask test: brain-mask size and Dice with the template, for a
trained generator's samples and for real images seen at the generator's working resolution, at several
tolerances and with several solvers.

Run in a finished study's folder (it reads results/generator and results/data/split.tsv):

    python benchmarks/bench_synthetic_mask.py --samples 4 --real 4 --threads 2

The QC gate uses the tolerance flowlet.generative.synthetic_qc.BRAIN_TOLERANCE; the others show whether a
difference is in the brain's outline (it persists at higher tolerances) or in a faint haze around it (it
vanishes there).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from flowlet.brainage.tables import read_split
from flowlet.data.masks import fill_and_keep_largest
from flowlet.data.nifti import load_nifti
from flowlet.generative.conditions import normalise_conditions
from flowlet.generative.generate import load_generator, sample_batch
from flowlet.generative.synthetic_qc import BRAIN_TOLERANCE, TemplateQC, generator_view
from flowlet.qc_metrics import dice

TOLERANCES = (BRAIN_TOLERANCE, 0.1, 0.2)
SOLVERS = ((10, "euler"), (20, "euler"), (50, "euler"), (20, "heun"))


def mask_rows(volumes: list[np.ndarray], template: TemplateQC) -> dict[float, tuple[list[int], list[float]]]:
    rows = {}
    for tolerance in TOLERANCES:
        sizes, scores = [], []
        for volume in volumes:
            level = np.median(volume[template.background])
            mask = fill_and_keep_largest(np.abs(volume - level) > tolerance)
            sizes.append(int(mask.sum()))
            scores.append(dice(mask, template.mask))
        rows[tolerance] = (sizes, scores)
    return rows


def report(name: str, rows: dict[float, tuple[list[int], list[float]]]) -> None:
    for tolerance, (sizes, scores) in rows.items():
        print(
            f"{name:>34} tolerance {tolerance:<4}: mask voxels median {int(np.median(sizes))}, "
            f"Dice with template {min(scores):.3f}-{max(scores):.3f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("results/generator/checkpoint_best.pth"))
    parser.add_argument("--split", type=Path, default=Path("results/data/split.tsv"))
    parser.add_argument("--samples", type=int, default=4, help="synthetic volumes per solver, ages spread 25-75")
    parser.add_argument("--real", type=int, default=4, help="real training images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = load_generator(args.checkpoint)
    template = TemplateQC.at(2)
    train = read_split(args.split).query("split == 'train'").head(args.real)
    real = [
        generator_view(load_nifti(path, "real image").get_fdata(dtype=np.float32), generator.downsample)
        for path in train["image"]
    ]
    report(f"real training images (n={len(real)})", mask_rows(real, template))
    ages = np.linspace(25, 75, args.samples).tolist()
    conditions = normalise_conditions({generator.config.condition_vars[0]: ages}, generator.condition_ranges)
    for steps, method in SOLVERS:
        volumes = list(sample_batch(generator, conditions, list(range(1, args.samples + 1)), steps, method))
        report(f"synthetic, {steps} {method} steps (n={len(volumes)})", mask_rows(volumes, template))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
