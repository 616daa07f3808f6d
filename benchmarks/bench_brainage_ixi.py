"""Brain-age benchmark on the IXI sample: held-out MAE of the real-only regressors against the predict-the-mean baseline.

Each raw IXI head is roughly brought to the 2 mm MNI grid, in seconds per subject on a
CPU: the reference DLMUSE label map shipped with the sample stands in for skull
stripping (labels > 0 = brain), the brain is registered affinely to the skull-stripped
MNI template with ANTs after N4 bias correction inside that mask, resampled, masked with the template brain mask and
z-scored inside it. (The workflow's own `flowlet preprocess` does N4, deep skull
stripping and registration; this is a quick stand-in for the benchmark.) The results
are cached in --cache-dir. Subjects are split deterministically: sorted by age, every
fourth one is a test subject. Then `flowlet brainage` runs the real-only arm.

    python benchmarks/bench_brainage_ixi.py --cache-dir /tmp/ixi_mni --output-dir /tmp/ixi_brainage

Prints the MAE with its bootstrap interval per regressor, the baseline, wall times
and peak memory.
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
from preprocess_options import IXI_DIR
from tqdm import tqdm

from flowlet.brainage.experiment import Settings, run_experiment
from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1


def to_mni(raw_path: Path, brain_labels_path: Path, output_path: Path) -> None:
    import ants

    shape, affine = mni_grid(2)
    fixed = ants.from_nibabel_nifti(template_t1(2))
    moving = ants.image_read(str(raw_path))
    labels = ants.image_read(str(brain_labels_path))
    brain_mask = ants.threshold_image(labels, 0.5, 1e9)
    brain = ants.n4_bias_field_correction(moving, mask=brain_mask, shrink_factor=2) * brain_mask
    registration = ants.registration(fixed, brain, type_of_transform="AffineFast", aff_metric="mattes", random_seed=1)
    warped = ants.apply_transforms(fixed, brain, registration["fwdtransforms"], interpolator="linear").numpy()
    mask = template_brain_mask(2).get_fdata() > 0
    inside = warped[mask]
    volume = np.zeros(shape, dtype=np.float32)
    volume[mask] = (inside - inside.mean()) / inside.std()
    save_nifti(volume, affine, output_path)


def preprocess(ixi_dir: Path, cache_dir: Path, limit: int | None) -> pd.DataFrame:
    participants = pd.read_csv(ixi_dir / "participants.tsv", sep="\t", dtype={"participant_id": str})
    participants = participants.dropna(subset=["age"]).sort_values("age").reset_index(drop=True)
    if limit:
        participants = participants.iloc[np.linspace(0, len(participants) - 1, limit).round().astype(int)].reset_index(
            drop=True
        )
    images = []
    for participant in tqdm(participants["participant_id"], desc="to MNI", unit="subject"):
        output = cache_dir / f"{participant}_space-MNI152_T1w.nii.gz"
        if not output.exists():
            to_mni(
                ixi_dir / participant / "anat" / f"{participant}_T1w.nii.gz",
                ixi_dir / "derivatives" / "dlmuse" / participant / "anat" / f"{participant}_dseg.nii.gz",
                output,
            )
        images.append(str(output))
    participants["image"] = images
    participants["split"] = ["test" if i % 4 == 2 else "train" for i in range(len(participants))]
    return participants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ixi-dir", type=Path, default=IXI_DIR)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument(
        "--limit", type=int, default=None, help="use only this many subjects (spread over the age range)"
    )
    parser.add_argument("--regressors", nargs="+", default=["ridge", "svr", "gpr"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--downsample", type=int, default=2)
    parser.add_argument("--pca-components", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--regional-features", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    table = preprocess(args.ixi_dir, args.cache_dir, args.limit)
    split_path = args.output_dir / "split.tsv"
    table[["participant_id", "age", "sex", "split", "image"]].to_csv(split_path, sep="\t", index=False)
    preprocess_seconds = time.perf_counter() - start

    start = time.perf_counter()
    settings = Settings(
        regressors=args.regressors,
        arms=["real"],
        seeds=args.seeds,
        downsample=args.downsample,
        pca_components=args.pca_components,
    )
    results = run_experiment(split_path, [], settings, regional_features_path=args.regional_features)
    experiment_seconds = time.perf_counter() - start
    results.evaluation.metrics.to_csv(args.output_dir / "metrics.tsv", sep="\t", index=False, float_format="%.4f")
    results.evaluation.models.to_csv(args.output_dir / "models.tsv", sep="\t", index=False, float_format="%.4f")

    overall = results.evaluation.metrics[
        (results.evaluation.metrics["age_bin"] == "all") & (results.evaluation.metrics["test_set"] == "internal")
    ]
    n_train = int((table["split"] == "train").sum())
    print(f"IXI: {len(table)} subjects, {n_train} train / {len(table) - n_train} test; downsample {args.downsample}")
    print(f"{'features':<9} {'regressor':<14} {'correction':<10} {'MAE':>6}  95% CI          r")
    for row in overall.sort_values(["correction", "mae"]).itertuples(index=False):
        print(
            f"{row.feature_set:<9} {row.regressor:<14} {row.correction:<10} {row.mae:6.2f}  [{row.mae_ci_low:5.2f}, {row.mae_ci_high:5.2f}]  {row.r:5.2f}"
        )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"preprocessing {preprocess_seconds:.0f} s (cached after the first run), experiment {experiment_seconds:.0f} s, peak RSS {peak_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
