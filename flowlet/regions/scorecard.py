"""The generator scorecard: is each generator's synthetic cohort usable, judged against real-vs-real floors.

One row per generator (FlowLet, the linear baseline) and criterion, each value beside its real reference:

- QC pass rate of every generated volume (the synthetic QC gate's verdicts), beside the share of real test images
  (seen through the generator's data path) that pass the same gate: its robust-z limits reject some real brains too.
- Fréchet distance and MMD of voxel features of the kept volumes to the real training images, at the real test
  set's sample size (mean over random subsets), beside real test vs real training (the floor). Real images are
  seen through the generator's own data path (mapped to [-1, 1], down- and upsampled by its working resolution)
  so that resolution is not counted as unrealism. Features: z-scored in the template brain mask, block-averaged
  to 8 mm inside it, PCA of the real training images.
- MS-SSIM within the kept volumes beside within the real test images (same data path): diversity.
- Memorisation: each volume's highest shift-tolerant correlation with any real training image; flagged above the
  chosen percentile of real images' own highest similarities (test images to the training images, training images
  to other subjects'; the definition gives how many volumes as varied as real ones would flag by chance); the
  median beside the real test images' median.
- Age fidelity: the real-only brain-age model's MAE and Pearson r against the requested age, beside its MAE and r
  on the real test images seen through the same data path, against their true age (the model was trained on sharp
  images, so at a coarser working resolution it reads real and synthetic brains alike with a bias; the sharp real
  test images' figures are given in the definition).
- Age slopes of ventricle CSF and total grey-matter volume (ml per year, from the regional measures), generated
  beside real (training and test), with 95% intervals.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from flowlet.data.masks import zscore_in_mask
from flowlet.data.nifti import load_nifti, save_nifti
from flowlet.data.tables import read_tsv, synthetic_qc_passed
from flowlet.data.templates import template_brain_mask
from flowlet.errors import FlowletError
from flowlet.generative.synthetic_qc import (
    MAX_ROBUST_Z,
    flag_outliers,
    generator_view,
    read_reference,
    reference_metrics,
    seen_as_generated,
)
from flowlet.regions import realism
from flowlet.regions.measures import (
    BASELINE,
    REAL_GROUPS,
    SYNTHETIC,
    ImageEntry,
    images_resolution,
    read_manifests,
    read_split,
)
from flowlet.regions.memorisation import memorisation_reference, nearest_training_similarity
from flowlet.regions.options import AnalysisOptions
from flowlet.regions.trajectories import ols_slope

log = logging.getLogger(__name__)

GENERATORS = {SYNTHETIC: "FlowLet", BASELINE: "linear baseline"}
FEATURE_BLOCK_MM = 8
FEATURE_COMPONENTS = 10
SLOPES = (
    ("ventricle CSF volume slope (ml/year)", "ventricles", "csf_ml"),
    ("total grey-matter volume slope (ml/year)", "brain", "grey_ml"),
)
COLUMNS = (
    "generator",
    "criterion",
    "value",
    "ci_low",
    "ci_high",
    "real_reference",
    "real_ci_low",
    "real_ci_high",
    "n",
    "n_real",
    "definition",
)


@dataclass(frozen=True)
class ScorecardOptions:
    downsample: int = 1
    qc_reference: Path | None = None  # the QC gate's real reference; without it the QC row has no real floor
    qc_max_robust_z: float = MAX_ROBUST_Z
    # The regional analysis's settings, so that both judge memorisation and diversity alike.
    msssim_pairs: int = AnalysisOptions.msssim_pairs
    memorisation_max_shift: int = AnalysisOptions.memorisation_max_shift
    memorisation_percentile: float = AnalysisOptions.memorisation_percentile
    seed: int = AnalysisOptions.seed


def voxel_features(volumes: Sequence[np.ndarray], resolution_mm: int) -> np.ndarray:
    """Each (mask-z-scored) volume on the ``resolution_mm`` grid block-averaged to FEATURE_BLOCK_MM, as one row."""
    block = FEATURE_BLOCK_MM // resolution_mm
    rows = []
    for volume in volumes:
        trimmed = volume[
            : volume.shape[0] // block * block, : volume.shape[1] // block * block, : volume.shape[2] // block * block
        ]
        coarse = trimmed.reshape(trimmed.shape[0] // block, block, trimmed.shape[1] // block, block, -1, block)
        rows.append(coarse.mean(axis=(1, 3, 5)).ravel())
    return np.asarray(rows)


def pca_projection(training: np.ndarray, components: int = FEATURE_COMPONENTS):
    """Projection onto the leading principal components of ``training`` (rows are images)."""
    centre = training.mean(axis=0)
    _, _, axes = np.linalg.svd(training - centre, full_matrices=False)
    axes = axes[: max(1, min(components, len(training) - 1))]
    return lambda features: (features - centre) @ axes.T


def _load(entries: Sequence[ImageEntry], downsample: int | None, mask: np.ndarray) -> list[np.ndarray]:
    """Volumes z-scored in the template brain mask (0 outside), the convention generated volumes are saved in;
    real ones first pass through the generator's data path (``downsample`` None: generated, already on it)."""
    volumes = []
    for entry in entries:
        data = np.asarray(load_nifti(entry.path, f"{entry.group} image").dataobj, dtype=np.float32)
        volumes.append(zscore_in_mask(generator_view(data, downsample) if downsample else data, mask))
    return volumes


def _row(
    generator: str,
    criterion: str,
    value: float,
    reference: float,
    n: int,
    n_real: int,
    definition: str,
    interval=(np.nan, np.nan),
    real_interval=(np.nan, np.nan),
) -> dict:
    return dict(
        zip(COLUMNS, (generator, criterion, value, *interval, reference, *real_interval, n, n_real, definition))
    )


def _qc_counts(manifests: Sequence[Path]) -> tuple[int, int]:
    generated = passed = 0
    for manifest in manifests:
        table = read_tsv(manifest, "synthetic manifest", dtype=str, keep_default_na=False)
        verdict = (
            (table["qc_outlier"].str.lower() != "true")
            if "qc_outlier" in table
            else synthetic_qc_passed(table, manifest)
        )
        generated += len(table)
        passed += int(verdict.sum())
    return generated, passed


def scorecard(
    split: Path,
    manifests: dict[str, Sequence[Path]],
    measures_path: Path | None,
    brainage_model: Path | None,
    options: ScorecardOptions,
) -> pd.DataFrame:
    """The scorecard table (see the module docstring); ``manifests`` maps synthetic/baseline to gated manifests."""
    real = read_split(split)
    train = [e for e in real if e.group == "train"]
    test = [e for e in real if e.group == "test"]
    # The study's grid (preprocess.resolution), as the real images are; generated volumes share it.
    resolution = images_resolution([e.described for e in real])
    mask = np.asarray(template_brain_mask(resolution).dataobj) > 0
    train_volumes, test_volumes = _load(train, options.downsample, mask), _load(test, options.downsample, mask)
    train_voxels = voxel_features(train_volumes, resolution)
    project = pca_projection(train_voxels)
    train_features, test_features = project(train_voxels), project(voxel_features(test_volumes, resolution))
    window = realism.intensity_window(train_volumes, [mask] * len(train_volumes))
    test_pairs = realism.sample_pairs(len(test), None, options.msssim_pairs, options.seed + 1)
    msssim_real = realism.mean_ms_ssim([(test_volumes[i], test_volumes[j]) for i, j in test_pairs], window)
    memorisation = memorisation_reference(
        test_volumes,
        train_volumes,
        [e.subject for e in train],
        mask,
        options.memorisation_max_shift,
        options.memorisation_percentile,
    )
    measures = read_tsv(measures_path, "regional measures") if measures_path is not None else None
    sharp_predicted = _predict(brainage_model, test)
    test_predicted = _predict_seen(brainage_model, test, test_volumes)
    real_qc_pass, n_real_qc = _real_qc_pass_rate(test, options)

    rows = []
    for group, paths in manifests.items():
        name = GENERATORS[group]
        generated, passed = _qc_counts(paths)
        rows.append(
            _row(
                name,
                "QC pass rate",
                passed / generated if generated else np.nan,
                real_qc_pass,
                generated,
                n_real_qc,
                "share of generated volumes within the QC gate's robust-z limits of real training brains; "
                "reference: the share of real test images (same data path) within them",
            )
        )
        entries = read_manifests(list(paths), group=group)
        if len(entries) < 2:
            rows.append(
                _row(
                    name,
                    "note",
                    np.nan,
                    np.nan,
                    len(entries),
                    0,
                    "fewer than two volumes passed QC: no distribution to score",
                )
            )
            continue
        volumes = _load(entries, None, mask)
        features = project(voxel_features(volumes, resolution))
        n = min(len(entries), len(test))
        for criterion, function in (
            ("Fréchet distance", realism.frechet_distance),
            ("MMD^2 (RBF, median bandwidth)", realism.mmd_rbf),
        ):
            value = realism.equal_n_distance(function, features, train_features, n, seed=options.seed)
            floor = realism.equal_n_distance(function, test_features, train_features, n, seed=options.seed)
            rows.append(
                _row(
                    name,
                    criterion,
                    value,
                    floor,
                    n,
                    n,
                    f"kept volumes vs real training images, and the floor real test vs training, both at n = {n} "
                    f"(means over random subsets of the larger set); {seen_as_generated(options.downsample)}; "
                    f"voxel features, {FEATURE_COMPONENTS} PCs",
                )
            )
        pairs = realism.sample_pairs(len(volumes), None, options.msssim_pairs, options.seed)
        rows.append(
            _row(
                name,
                "MS-SSIM within set",
                realism.mean_ms_ssim([(volumes[i], volumes[j]) for i, j in pairs], window),
                msssim_real,
                len(pairs),
                len(test_pairs),
                "mean over random pairs of kept volumes; reference: pairs of real test images (same data path)",
            )
        )
        best, _ = nearest_training_similarity(volumes, train_volumes, mask, options.memorisation_max_shift)
        flagged = int(memorisation.flags(best).sum())
        rows.append(
            _row(
                name,
                "memorised (flagged count)",
                float(flagged),
                0.0,
                len(best),
                len(memorisation.similarities),
                f"highest correlation with a training image above {memorisation.threshold:.4f}, "
                f"{memorisation.describe()}; {memorisation.judge(flagged, len(best))}",
            )
        )
        rows.append(
            _row(
                name,
                "median highest training similarity",
                float(np.median(best)),
                float(np.median(memorisation.test)),
                len(best),
                len(memorisation.test),
                "median over volumes of the highest shift-tolerant correlation with "
                "any real training image; reference: the same for real test images",
            )
        )
        predicted = _predict(brainage_model, entries)
        if predicted is not None:
            requested = np.array([e.age for e in entries])
            true_test = np.array([e.age for e in test])
            definition = (
                "real-only brain-age model on kept volumes vs requested age; reference: on the real test images "
                f"vs true age ({seen_as_generated(options.downsample)}; on the sharp real test images: MAE "
                f"{np.abs(sharp_predicted - true_test).mean():.2f}, r {_pearson(true_test, sharp_predicted):.2f})"
            )
            rows.append(
                _row(
                    name,
                    "age fidelity MAE (years)",
                    float(np.abs(predicted - requested).mean()),
                    float(np.abs(test_predicted - true_test).mean()),
                    len(entries),
                    len(test),
                    definition,
                )
            )
            rows.append(
                _row(
                    name,
                    "age fidelity r",
                    _pearson(requested, predicted),
                    _pearson(true_test, test_predicted),
                    len(entries),
                    len(test),
                    definition,
                )
            )
        if measures is not None:
            rows += _slope_rows(name, measures, {entry.image_id for entry in entries})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _real_qc_pass_rate(test: Sequence[ImageEntry], options: ScorecardOptions) -> tuple[float, int]:
    if options.qc_reference is None or not test:
        return np.nan, 0
    metrics = reference_metrics([entry.path for entry in test], options.downsample)
    verdicts = flag_outliers(metrics, read_reference(options.qc_reference), options.qc_max_robust_z)
    return float((~verdicts["qc_outlier"]).mean()), len(verdicts)


def _predict_seen(
    model: Path | None, entries: Sequence[ImageEntry], volumes: Sequence[np.ndarray]
) -> np.ndarray | None:
    """The model's predictions for real images as the generator sees them (``volumes``, saved as generated volumes
    are), so that the fidelity reference, like every other, shares the synthetic volumes' resolution."""
    if model is None or not entries:
        return None
    affine = load_nifti(entries[0].path, "real test image").affine
    with tempfile.TemporaryDirectory(prefix="flowlet-scorecard-") as folder:
        seen = [
            dataclasses.replace(entry, path=save_nifti(volume, affine, Path(folder) / f"{index}.nii.gz"))
            for index, (entry, volume) in enumerate(zip(entries, volumes))
        ]
        return _predict(model, seen)


def _predict(model: Path | None, entries: Sequence[ImageEntry]) -> np.ndarray | None:
    if model is None or not entries:
        return None
    from flowlet.regions.fidelity import predict_ages

    return predict_ages(model, list(entries), corrected=False)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.pearsonr(a, b)[0]) if len(a) >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0 else np.nan


def _slope_rows(name: str, measures: pd.DataFrame, image_ids: set[str]) -> list[dict]:
    rows = []
    for criterion, region, column in SLOPES:
        table = measures[measures["region"] == region]
        real = table["group"].isin(REAL_GROUPS)
        scored = table["image_id"].isin(image_ids)
        if not scored.any():
            raise FlowletError(
                f"regional measures lack the scored {name} volumes: run flowlet regional-measures on them"
            )
        real_fit = ols_slope(table.loc[real, "age"], table.loc[real, column])
        fit = ols_slope(table.loc[scored, "age"], table.loc[scored, column])
        rows.append(
            _row(
                name,
                criterion,
                fit["slope"],
                real_fit["slope"],
                fit["n"],
                real_fit["n"],
                f"OLS slope of {column} in region {region} on (requested) age, 95% t interval; reference: real "
                "training and test images",
                (fit["ci_low"], fit["ci_high"]),
                (real_fit["ci_low"], real_fit["ci_high"]),
            )
        )
    return rows
