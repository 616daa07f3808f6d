"""Side-by-side training recipes for the generator on a study's real training split, judged on its samples.

For each recipe: train from scratch on the split's ``train`` rows (``flowlet train`` in-process, fixed steps),
sample ``--samples`` volumes at ages spread over the training range (EMA weights), and print one row: steps,
minutes of training, final training loss, the share of samples that pass the synthetic QC gate (robust z <= 3
against the real training images seen through the same working resolution), and a Fréchet distance and MMD
of voxel features against the real training images, beside the same for the real test images (the floor), at
equal sample size (synthetic subsets of the test set's size, averaged). Last, how well the network predicts
the clean bands of 6 training volumes near the clean end (t = 0.9, in the network's units) beside the error of
x_t / t, which needs no network: a network worse than that leaves a noisy texture in its samples.

Voxel features (fast, no segmentation): images in the generator's data path ([-1, 1], down- and upsampled like
the samples), z-scored in the template brain mask, block-averaged to 8 mm inside it and reduced by a PCA of the
real training images. The study's own realism table uses regional tissue features instead (``flowlet regions``).

    python benchmarks/bench_generator_recipes.py --split results/data/split.tsv --recipes reference cpu --steps 600
    python benchmarks/bench_generator_recipes.py --split results/data/split.tsv --checkpoints A/checkpoint_best.pth
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowlet.data.masks import zscore_in_mask  # noqa: E402
from flowlet.data.nifti import load_nifti  # noqa: E402
from flowlet.data.templates import template_brain_mask  # noqa: E402
from flowlet.generative.checkpoint import read_checkpoint  # noqa: E402
from flowlet.generative.conditions import normalise_conditions  # noqa: E402
from flowlet.generative.data import load_volumes, read_training_table  # noqa: E402
from flowlet.generative.generate import generate, load_generator, requests_from_table  # noqa: E402
from flowlet.generative.sampling_spec import clean_data  # noqa: E402
from flowlet.generative.synthetic_qc import flag_outliers, generator_view, read_reference, reference_metrics  # noqa: E402
from flowlet.generative.train import train  # noqa: E402
from flowlet.generative.training_options import TrainingOptions  # noqa: E402
from flowlet.generative.unet import preset_config, preset_training  # noqa: E402
from flowlet.generative.wavelets import dwt3d, pad_to_size  # noqa: E402
from flowlet.regions.realism import equal_n_distance, frechet_distance, mmd_rbf  # noqa: E402
from flowlet.regions.scorecard import pca_projection, voxel_features  # noqa: E402

# What each recipe changes from the reference's training options (TrainingOptions defaults).
SHORT_RUN = dict(output_init="random", adam_beta2=0.99, grad_clip_norm=0.5, warmup_steps=50, ema_decay=0.995)
STANDARDISED = dict(lr=1e-3, min_lr=1e-3, standardise_bands=True, time_sampling="logit_normal", **SHORT_RUN)
DATA_LOSS = dict(STANDARDISED, prediction="data", loss_space="data")
RECIPES = {
    "reference": dict(lr=2e-3, min_lr=2e-3, time_sampling="stratified", **SHORT_RUN),
    "standardised": STANDARDISED,
    "data-velocity-loss": dict(STANDARDISED, prediction="data"),
    "data-data-loss": DATA_LOSS,
    "data-data-loss-voxel": dict(DATA_LOSS, standardise_per="voxel"),
    "preconditioned-voxel": dict(DATA_LOSS, prediction="preconditioned", standardise_per="voxel"),
    "preconditioned-voxel-velocity-loss": dict(
        STANDARDISED, prediction="preconditioned", standardise_per="voxel", loss_space="velocity"
    ),
    "data-data-loss-flip": dict(DATA_LOSS, flip_probability=0.5),
}
# The preset's training settings (--preset), changed only in these keys.
PRESET_RECIPES = {
    "cpu": {},
    # The cpu preset before its learning rate decayed and its EMA lengthened (the README's earlier rows).
    "cpu-constant-lr": dict(min_lr=1e-3, ema_decay=0.995),
    "cpu-subband": dict(standardise_per="subband"),
    "cpu-voxel": dict(standardise_per="voxel"),
    "cpu-voxel-floor-0.5": dict(standardise_per="voxel", voxel_std_floor=0.5),
    # Flips without the reference's rotations, intensity scaling and noise, which a generator can give back.
    "cpu-flips-only": dict(augment=False),
    "cpu-min-snr": dict(loss_space="min_snr"),
    "cpu-preconditioned": dict(prediction="preconditioned"),
    # EDM weighs the error of F alike at every t; the velocity loss does nearly that on the straight path.
    "cpu-preconditioned-velocity-loss": dict(prediction="preconditioned", loss_space="velocity"),
    "cpu-preconditioned-voxel": dict(prediction="preconditioned", standardise_per="voxel"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, required=True, help="a study's results/data/split.tsv")
    parser.add_argument("--recipes", nargs="+", default=[*RECIPES, "cpu"], choices=[*RECIPES, *PRESET_RECIPES])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--preset", default="cpu", help="architecture of every recipe")
    parser.add_argument("--downsample", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--flow-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep each recipe's run and samples under this folder")
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        type=Path,
        default=[],
        help="judge these trained checkpoints the same way instead of training recipes (the steps column is "
        "the checkpoint's, minutes are left empty)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_records = read_training_table(args.split, ["Age"])
    import pandas as pd

    split = pd.read_csv(args.split, sep="\t", dtype=str, keep_default_na=False)
    test_images = [Path(p) for p in split.loc[split["split"] == "test", "image"]]
    resolution = 2  # the 2 mm study grid every recipe here was measured on
    mask = np.asarray(template_brain_mask(resolution).dataobj) > 0
    print(
        f"{len(train_records)} training and {len(test_images)} test images; {args.steps} steps per recipe", flush=True
    )

    def real_view(path: Path) -> np.ndarray:
        volume = generator_view(np.asarray(load_nifti(path, "real image").dataobj, dtype=np.float32), args.downsample)
        return zscore_in_mask(volume, mask)

    train_views = [real_view(record.image) for record in train_records]
    test_views = [real_view(path) for path in test_images]
    projection = pca_projection(voxel_features(train_views, resolution))
    train_features, test_features = (projection(voxel_features(v, resolution)) for v in (train_views, test_views))
    floor = {"frechet": frechet_distance(test_features, train_features), "mmd": mmd_rbf(test_features, train_features)}
    print(f"real test vs train (n = {len(test_images)}): Fréchet {floor['frechet']:.2f}, MMD {floor['mmd']:.4f}")

    work = Path(tempfile.mkdtemp(prefix="recipes-"))
    reference_path = work / "qc_reference.tsv"
    reference_metrics([record.image for record in train_records], args.downsample).to_csv(
        reference_path, sep="\t", index=False
    )
    reference = read_reference(reference_path)
    ages = [float(r.conditions["Age"]) for r in train_records]
    table = work / "ages.tsv"
    table.write_text(
        "age\tfile\n"
        + "".join(
            f"{age:.2f}\tsample_{i}.nii.gz\n" for i, age in enumerate(np.linspace(min(ages), max(ages), args.samples))
        )
    )

    header = (
        "recipe",
        "steps",
        "minutes",
        "loss",
        "qc_pass",
        "frechet",
        "frechet_floor",
        "mmd",
        "mmd_floor",
        "error_t0.9",
        "x_t_error_t0.9",
    )
    print("\t".join(header), flush=True)

    def judge(name: str, generator, samples_dir: Path, steps: int, minutes: str, loss: str) -> None:
        requests = requests_from_table(table, 1234, generator.config)
        manifest = generate(generator, requests, samples_dir, args.flow_steps, batch_size=4, intensity="unit")
        measured = pd.read_csv(manifest, sep="\t")
        passed = 1.0 - flag_outliers(measured, reference, 3.0)["qc_outlier"].mean()
        samples = [
            zscore_in_mask(np.asarray(load_nifti(samples_dir / f, "sample").dataobj), mask) for f in measured["image"]
        ]
        synthetic = projection(voxel_features(samples, resolution))
        frechet = equal_n_distance(frechet_distance, synthetic, train_features, len(test_images), seed=0)
        mmd = equal_n_distance(mmd_rbf, synthetic, train_features, len(test_images), seed=0)
        row = (
            name,
            steps,
            minutes,
            loss,
            f"{passed:.2f}",
            f"{frechet:.2f}",
            f"{floor['frechet']:.2f}",
            f"{mmd:.4f}",
            f"{floor['mmd']:.4f}",
            *(f"{error:.4f}" for error in clean_end_errors(generator, train_records[:6], 0.9)),
        )
        print("\t".join(map(str, row)), flush=True)

    if args.checkpoints:
        for index, path in enumerate(args.checkpoints):
            step = read_checkpoint(path).get("step", "")
            judge(str(path), load_generator(path), work / f"checkpoint-{index}", step, "", "")
    else:
        for name in args.recipes:
            run_dir = work / name
            settings = (
                {**preset_training(args.preset), **PRESET_RECIPES[name]} if name in PRESET_RECIPES else RECIPES[name]
            )
            settings = {**settings, "steps": args.steps, "batch_size": args.batch_size, "downsample": args.downsample}
            options = TrainingOptions(
                table=args.split,
                output_dir=run_dir / "run",
                val_split=0.0,
                val_every=10**6,
                checkpoint_every=10**6,
                log_every=25,
                device="cpu",
                **settings,
            )
            started = time.perf_counter()
            train(options, preset_config(args.preset), threads=args.threads)
            minutes = (time.perf_counter() - started) / 60
            losses = pd.read_csv(run_dir / "run" / "loss.tsv", sep="\t")
            generator = load_generator(run_dir / "run" / "checkpoint_last.pth")
            loss = f"{losses['train_loss'].iloc[-4:].mean():.4f}"
            judge(name, generator, run_dir / "samples", args.steps, f"{minutes:.1f}", loss)
            if args.keep is not None:
                shutil.copytree(run_dir, args.keep / name, dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)


@torch.no_grad()
def clean_end_errors(generator, records, t: float) -> tuple[float, float]:
    """Mean squared error, in the network's units, of its clean-band prediction at time ``t`` and of x_t / t."""
    volumes, _ = load_volumes(records, generator.downsample, None)
    size = generator.config.model_input_size
    x1 = generator.spec.to_model_units(
        torch.stack([dwt3d(pad_to_size(torch.from_numpy(volume)[None], size)[None])[0] for volume in volumes])
    )
    noise = torch.randn(x1.shape, generator=torch.Generator().manual_seed(0))
    x_t = t * x1 + (1 - t) * noise
    times = torch.full((len(records),), t)
    conditions = normalise_conditions(
        {name: [record.conditions[name] for record in records] for name in generator.config.condition_vars},
        generator.condition_ranges,
    )
    output = generator.model(x_t, times, conditions)
    if generator.spec.prediction == "velocity":
        predicted = x_t + (1 - t) * output
    else:
        predicted = clean_data(output, x_t, times, generator.spec.prediction)
    return float(((predicted - x1) ** 2).mean()), float(((x_t / t - x1) ** 2).mean())


if __name__ == "__main__":
    main()
