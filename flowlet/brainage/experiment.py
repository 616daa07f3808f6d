"""The augmentation experiment: regressors x arms x seeds, all evaluated on the same held-out real test subjects.

Arms: ``real`` (real training subjects only), ``real+synthetic`` (the same plus every
synthetic volume that passed QC) and ``synthetic`` (synthetic only: a diagnostic of
what the generator learned about age); ``real+baseline`` and ``baseline`` are the same two
with the linear baseline generator's volumes, so that every FlowLet number has the
baseline's beside it. Under controlled scarcity (subjects ``withheld`` in the split table),
``oracle`` trains on the real training subjects plus the withheld ones: the accuracy the
synthetic subjects try to win back. The share they win back is the gap closed,
(MAE real - MAE real+synthetic) / (MAE real - MAE oracle).

Age-bias correction: for every fitted model, the linear fit predicted-on-true age is
made on *out-of-sample* predictions of the real training subjects, never on test
subjects. For the ``real`` and ``real+synthetic`` arms these come from K-fold
cross-validation over the real training subjects (the chosen hyper-parameters refitted
on each fold's remaining training data, synthetic volumes always kept in training);
in-sample training predictions would be nearly perfect and give a useless slope.
The ``synthetic`` arm never sees real training subjects, so its plain predictions of
them are already out-of-sample.

Uncertainty: per-subject absolute errors are first averaged over seeds; the bootstrap
then resamples test subjects (within the bin, for per-bin rows) with the same
resamples for every arm and regressor, so the interval of MAE(augmented) - MAE(real)
is paired.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.brainage.cnn import CNNRegressor, CNNSettings
from flowlet.brainage.features import (
    DEFAULT_DOWNSAMPLE,
    DEFAULT_TISSUE_FWHM_MM,
    TissueDensityMaps,
    VoxelFeatures,
    load_voxel_features,
    read_regional_features,
    regional_matrix,
)
from flowlet.brainage.metrics import (
    BiasCorrection,
    Resamples,
    bootstrap_mae,
    bootstrap_mae_difference,
    bootstrap_resamples,
    percentile_interval,
    regression_metrics,
)
from flowlet.brainage.regressors import (
    BASELINE,
    CLASSICAL_REGRESSORS,
    best_unfitted,
    cross_validated_mae,
    cv_splits,
    describe_choice,
    fit_quietly,
    make_search,
)
from flowlet.brainage.tables import SyntheticSet, read_split, read_synthetic
from flowlet.data.bids import SESSION_COLUMNS
from flowlet.data.bins import AgeBins
from flowlet.data.split import WITHHELD
from flowlet.errors import FlowletError

log = logging.getLogger(__name__)

SUBJECT = SESSION_COLUMNS[0]

ARMS = ("real", "real+synthetic", "synthetic", "real+baseline", "baseline", "oracle")
# Where each arm's generated volumes come from (the real arm has none), and which arms also train on real subjects.
ARM_SOURCES = {
    "real+synthetic": "synthetic",
    "synthetic": "synthetic",
    "real+baseline": "baseline",
    "baseline": "baseline",
}
SOURCES = ("synthetic", "baseline")
ARMS_WITH_REAL = ("real", "real+synthetic", "real+baseline", "oracle")
# Arms whose gain over ``real`` is measured against the oracle's.
AUGMENTED_ARMS = ("real+synthetic", "real+baseline")
# The per-bin rows pool the test subjects of every bin reduced by controlled scarcity under this label.
REDUCED = "reduced bins"
REGRESSORS = (*CLASSICAL_REGRESSORS, "cnn")
FEATURE_SETS = ("voxels", "regional", "tissue")
TABLE_FEATURE_SETS = ("regional", "tissue")
# Tissue densities (0-1) that vary less than this across the training subjects carry no age signal, and
# standardising them would blow up their noise.
MIN_DENSITY_SPREAD = 0.02
MIN_TEST_SUBJECTS = 3


@dataclass
class Settings:
    """The experiment's settings; the only home of their defaults (the `flowlet brainage` flags take theirs from
    here, and the workflow schema's agree, which tests/test_config.py checks)."""

    regressors: list[str] = field(default_factory=lambda: ["ridge"])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    bin_edges: list[float] = field(default_factory=lambda: [20, 30, 40, 50, 60, 70, 80, 90])
    downsample: int = DEFAULT_DOWNSAMPLE
    pca_components: list[int] = field(default_factory=lambda: [10, 25, 50])
    tissue_fwhm_mm: float = DEFAULT_TISSUE_FWHM_MM
    cv_folds: int = 5
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    cnn: CNNSettings = field(default_factory=CNNSettings)
    # None: voxels, plus regional and tissue features when a regional-feature table is given.
    feature_sets: list[str] | None = None

    def chosen_feature_sets(self, regional_features_path: Path | None) -> list[str]:
        if self.feature_sets is None:
            return ["voxels", *TABLE_FEATURE_SETS] if regional_features_path is not None else ["voxels"]
        unknown = [name for name in self.feature_sets if name not in FEATURE_SETS]
        if unknown or not self.feature_sets:
            raise FlowletError(
                f"--feature-sets: unknown {unknown or 'empty list'}; choose from {', '.join(FEATURE_SETS)}"
            )
        needing_table = [name for name in self.feature_sets if name in TABLE_FEATURE_SETS]
        if needing_table and regional_features_path is None:
            raise FlowletError(
                f"--feature-sets {' '.join(needing_table)} needs --regional-features TABLE (the regional_features.tsv of `flowlet regional-measures`)"
            )
        return list(dict.fromkeys(self.feature_sets))

    def validate(self) -> None:
        unknown = [name for name in self.regressors if name not in REGRESSORS]
        if unknown or not self.regressors:
            raise FlowletError(f"--regressors: unknown {unknown or 'empty list'}; choose from {', '.join(REGRESSORS)}")
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown or not self.arms:
            raise FlowletError(f"--arms: unknown {unknown or 'empty list'}; choose from {', '.join(ARMS)}")
        if not self.seeds:
            raise FlowletError("--seeds: give at least one seed")


@dataclass
class Cohort:
    """Everyone the experiment uses, with bins assigned; ``test_sets`` maps a test-set name to its subjects."""

    train: pd.DataFrame
    test_sets: dict[str, pd.DataFrame]
    generated: dict[str, SyntheticSet]  # by source: synthetic (FlowLet), baseline
    bins: AgeBins
    notes: list[str]
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    withheld: pd.DataFrame = field(default_factory=pd.DataFrame)  # controlled scarcity: the oracle's extra subjects

    @property
    def reduced_bins(self) -> list[str]:
        if self.withheld.empty:
            return []
        return [label for label in self.bins.labels if (self.withheld["age_bin"] == label).any()]


def _with_bins(table: pd.DataFrame, bins: AgeBins, what: str, id_column: str = "participant_id") -> pd.DataFrame:
    return table.assign(age_bin=bins.assign(table["age"].to_numpy(), table[id_column].tolist(), what=what))


def load_cohort(
    split_path: Path,
    synthetic_paths: list[Path],
    settings: Settings,
    external_split_path: Path | None = None,
    baseline_paths: list[Path] | None = None,
) -> Cohort:
    bins = AgeBins.from_edges(settings.bin_edges)
    split = _with_bins(read_split(split_path), bins, f"split table {split_path}")
    train = split[split["split"] == "train"].reset_index(drop=True)
    test = split[split["split"] == "test"].reset_index(drop=True)
    withheld = split[split["split"] == WITHHELD].reset_index(drop=True)
    notes: list[str] = []
    if len(test) < MIN_TEST_SUBJECTS:
        raise FlowletError(
            f"split table {split_path}: {len(test)} test subject(s); at least {MIN_TEST_SUBJECTS} are needed to evaluate"
        )
    real_arms = [arm for arm in settings.arms if arm in ARMS_WITH_REAL]
    if real_arms and len(train) < 2 * settings.cv_folds:
        raise FlowletError(
            f"split table {split_path}: {len(train)} real training subject(s) are too few for arms {', '.join(real_arms)} "
            f"with {settings.cv_folds}-fold cross-validation (need at least {2 * settings.cv_folds})"
        )
    test_sets = {"internal": test}
    if external_split_path is not None:
        external = read_split(external_split_path, what="external test table")
        test_sets["external"] = _with_bins(external, bins, f"external test table {external_split_path}").reset_index(
            drop=True
        )
        notes.append(f"external test set {external_split_path}: all {len(external)} subjects used for evaluation only")
    arms = list(settings.arms)
    if "oracle" in arms and withheld.empty:
        notes.append(
            "arm oracle skipped: no real training subjects are withheld (controlled scarcity, split.scarcity_*, is off)"
        )
        arms.remove("oracle")
    given = {"synthetic": list(synthetic_paths), "baseline": list(baseline_paths or [])}
    generated = {}
    for source in SOURCES:
        source_arms = [arm for arm in arms if ARM_SOURCES.get(arm) == source]
        if not source_arms:
            continue
        if source == "baseline" and not given[source]:
            notes.append(f"arms {', '.join(source_arms)} skipped: no baseline generator manifests were given")
            arms = [arm for arm in arms if arm not in source_arms]
            continue
        volumes = read_synthetic(given[source])
        notes += volumes.notes
        # The plan may give no under-represented bin, or QC may drop every volume: the study then reports the
        # other arms with a note rather than failing.
        if volumes.table.empty:
            listed = ", ".join(map(str, given[source])) or "none given"
            notes.append(
                f"arms {', '.join(source_arms)} skipped: the {source} manifests ({listed}) list no volume that passed QC"
            )
            arms = [arm for arm in arms if arm not in source_arms]
            continue
        volumes.table = _with_bins(volumes.table, bins, f"{source} manifests", id_column="image")
        alone = source  # the arm trained on generated volumes only has the source's name
        if alone in arms and len(volumes.table) < 2 * settings.cv_folds:
            notes.append(
                f"arm {alone} skipped: {len(volumes.table)} {source} volume(s) are too few for "
                f"{settings.cv_folds}-fold cross-validation (need at least {2 * settings.cv_folds})"
            )
            arms.remove(alone)
        generated[source] = volumes
    if not arms:
        raise FlowletError(f"no arm of {', '.join(settings.arms)} can be trained: {'; '.join(notes)}")
    for label in bins.labels:
        if not (test["age_bin"] == label).any():
            notes.append(f"age bin {label}: no real test subjects, so no per-bin metrics for it")
    return Cohort(
        train=train, test_sets=test_sets, generated=generated, bins=bins, notes=notes, arms=arms, withheld=withheld
    )


@dataclass
class FeatureSet:
    """One way of describing subjects: a row of features per subject group (None where unavailable)."""

    name: str
    train: np.ndarray
    generated: dict[str, np.ndarray | None]  # by source, as Cohort.generated
    tests: dict[str, np.ndarray]
    volumetric: bool
    withheld: np.ndarray | None = None  # Cohort.withheld's rows, for the oracle arm


def voxel_feature_set(cohort: Cohort, settings: Settings) -> tuple[FeatureSet, VoxelFeatures]:
    generated = {source: volumes.table["image"].tolist() for source, volumes in cohort.generated.items()}
    withheld = cohort.withheld["image"].tolist() if not cohort.withheld.empty else []
    groups = [cohort.train["image"].tolist(), withheld, *generated.values()]
    groups += [table["image"].tolist() for table in cohort.test_sets.values()]
    unique = list(dict.fromkeys(image for group in groups for image in group))
    voxels = load_voxel_features(unique, downsample=settings.downsample)
    volumes = voxels.volumes

    def rows(images: list[str]) -> np.ndarray:
        return volumes[voxels.rows(images)]

    feature_set = FeatureSet(
        name="voxels",
        train=rows(groups[0]),
        generated={source: rows(images) if images else None for source, images in generated.items()},
        tests={name: rows(table["image"].tolist()) for name, table in cohort.test_sets.items()},
        volumetric=True,
        withheld=rows(withheld) if withheld else None,
    )
    return feature_set, voxels


def table_feature_set(cohort: Cohort, name: str, path: Path, matrix_of) -> FeatureSet:
    """Features looked up per subject in a table (``matrix_of(subjects) -> (matrix, found)``)."""

    def matched(subjects: pd.DataFrame, what: str, required: bool) -> np.ndarray | None:
        matrix, found = matrix_of(subjects)
        if found.all():
            return matrix
        missing = subjects.loc[~found, "participant_id"].tolist()
        if required:
            raise FlowletError(
                f"{name} features {path}: no row for {len(missing)} {what} subject(s): {', '.join(map(str, missing[:10]))}"
            )
        cohort.notes.append(
            f"{name} features {path}: {len(missing)} {what} volume(s) have no row; arms with {what} data skipped for {name} features"
        )
        return None

    return FeatureSet(
        name=name,
        train=matched(cohort.train, "real training", True),
        generated={
            source: matched(volumes.table, source, False) if not volumes.table.empty else None
            for source, volumes in cohort.generated.items()
        },
        tests={
            test_name: matched(subjects, f"{test_name} test", True) for test_name, subjects in cohort.test_sets.items()
        },
        volumetric=False,
        withheld=matched(cohort.withheld, WITHHELD, True) if not cohort.withheld.empty else None,
    )


def regional_feature_set(cohort: Cohort, path: Path) -> FeatureSet:
    table = read_regional_features(path)
    return table_feature_set(cohort, "regional", path, lambda subjects: regional_matrix(table, subjects))


def tissue_feature_set(cohort: Cohort, path: Path, settings: Settings) -> FeatureSet:
    """Smoothed CSF and grey-matter densities (VBM-style), keeping the voxels that vary across training subjects."""
    maps = TissueDensityMaps(path, settings.tissue_fwhm_mm, settings.downsample)
    features = table_feature_set(cohort, "tissue", path, maps.matrix)
    varying = features.train.std(axis=0) > MIN_DENSITY_SPREAD
    if not varying.any():
        raise FlowletError(
            f"tissue features {path}: no voxel's density varies across the training subjects (all spreads <= {MIN_DENSITY_SPREAD})"
        )
    features.train = features.train[:, varying]
    features.generated = {
        source: matrix[:, varying] if matrix is not None else None for source, matrix in features.generated.items()
    }
    features.tests = {name: matrix[:, varying] for name, matrix in features.tests.items()}
    if features.withheld is not None:
        features.withheld = features.withheld[:, varying]
    return features


def _flatten(features: np.ndarray, volumetric: bool, mask: np.ndarray | None) -> np.ndarray:
    return features[:, mask] if volumetric else features


@dataclass
class FittedModel:
    feature_set: str
    regressor: str
    arm: str
    seed: int
    n_train_real: int
    n_train_synthetic: int
    estimator: object
    correction: BiasCorrection
    choice: str
    cv_mae: float
    predictions: dict[str, np.ndarray]


def _new_estimator(regressor: str, groups: np.ndarray, n_features: int, settings: Settings, seed: int):
    if regressor == "cnn":
        return CNNRegressor(settings.cnn, seed)
    return make_search(regressor, len(groups), n_features, settings.pca_components, settings.cv_folds, seed, groups)


def _refit_copy(estimator, settings: Settings, seed: int):
    if isinstance(estimator, CNNRegressor):
        return CNNRegressor(settings.cnn, seed)
    return best_unfitted(estimator)


def _out_of_sample_training_predictions(
    estimator,
    train_real: np.ndarray,
    ages_real: np.ndarray,
    synthetic: np.ndarray | None,
    ages_synthetic: np.ndarray | None,
    groups_real: np.ndarray,
    arm: str,
    settings: Settings,
    seed: int,
) -> np.ndarray:
    if arm not in ARMS_WITH_REAL:
        return estimator.predict(train_real)
    predictions = np.zeros(len(ages_real))
    for fold_train, fold_held in cv_splits(len(ages_real), settings.cv_folds, seed, groups_real):
        features = train_real[fold_train]
        ages = ages_real[fold_train]
        if synthetic is not None:
            features = np.concatenate([features, synthetic])
            ages = np.concatenate([ages, ages_synthetic])
        model = fit_quietly(_refit_copy(estimator, settings, seed), features, ages)
        predictions[fold_held] = model.predict(train_real[fold_held])
    return predictions


def _subjects(scans: pd.DataFrame) -> np.ndarray:
    """Each scan's subject: the subject column of a longitudinal study, else the scan itself."""
    return scans[SUBJECT if SUBJECT in scans else "participant_id"].astype(str).to_numpy()


def fit_one(
    features: FeatureSet,
    mask: np.ndarray | None,
    cohort: Cohort,
    regressor: str,
    arm: str,
    seed: int,
    settings: Settings,
) -> FittedModel:
    uses_volumes = regressor == "cnn"
    flat = (lambda array: array) if uses_volumes else (lambda array: _flatten(array, features.volumetric, mask))
    train_real = flat(features.train)
    ages_real = cohort.train["age"].to_numpy(dtype=float)
    groups_real = _subjects(cohort.train)
    if arm == "oracle":
        train_real = np.concatenate([train_real, flat(features.withheld)])
        ages_real = np.concatenate([ages_real, cohort.withheld["age"].to_numpy(dtype=float)])
        groups_real = np.concatenate([groups_real, _subjects(cohort.withheld)])
    source = ARM_SOURCES.get(arm)
    synthetic = flat(features.generated[source]) if source is not None else None
    ages_synthetic = cohort.generated[source].table["age"].to_numpy(dtype=float) if source is not None else None
    # Each synthetic volume is its own "subject" for the cross-validation folds.
    groups_synthetic = (
        np.array([f"synthetic-{index}" for index in range(len(ages_synthetic))]) if source is not None else None
    )
    if source is None:
        train, ages, groups, n_real, n_synthetic = train_real, ages_real, groups_real, len(ages_real), 0
    elif arm in ARMS_WITH_REAL:
        train = np.concatenate([train_real, synthetic])
        ages = np.concatenate([ages_real, ages_synthetic])
        groups = np.concatenate([groups_real, groups_synthetic])
        n_real, n_synthetic = len(ages_real), len(ages_synthetic)
    else:
        train, ages, groups, n_real, n_synthetic = synthetic, ages_synthetic, groups_synthetic, 0, len(ages_synthetic)
    n_features = int(np.prod(train.shape[1:]))
    estimator = fit_quietly(_new_estimator(regressor, groups, n_features, settings, seed), train, ages)
    training_predictions = _out_of_sample_training_predictions(
        estimator, train_real, ages_real, synthetic, ages_synthetic, groups_real, arm, settings, seed
    )
    correction = BiasCorrection.fit(ages_real, training_predictions)
    cv_mae = cross_validated_mae(estimator)
    if cv_mae is None:
        cv_mae = float(np.mean(np.abs(training_predictions - ages_real)))
    return FittedModel(
        feature_set=features.name,
        regressor=regressor,
        arm=arm,
        seed=seed,
        n_train_real=n_real,
        n_train_synthetic=n_synthetic,
        estimator=estimator,
        correction=correction,
        choice=describe_choice(estimator) if regressor != "cnn" else settings.cnn.architecture,
        cv_mae=cv_mae,
        predictions={name: estimator.predict(flat(test)) for name, test in features.tests.items()},
    )


@dataclass
class Evaluation:
    """One brain-age evaluation (one split, or K folds pooled), ready to write."""

    metrics: pd.DataFrame
    predictions: pd.DataFrame
    models: pd.DataFrame
    counts: dict[str, dict[str, int]]  # per bin: real training, withheld and QC-passed synthetic subjects
    notes: list[str]


@dataclass
class Results:
    """An experiment's evaluation, and what the command saves besides it."""

    evaluation: Evaluation
    best_real_model: FittedModel | None
    voxels: VoxelFeatures | None


def _prediction_rows(model: FittedModel, cohort: Cohort, notes: list[str]) -> pd.DataFrame:
    frames = []
    for test_set, predicted in model.predictions.items():
        subjects = cohort.test_sets[test_set]
        if model.correction.usable:
            corrected = model.correction.apply(predicted)
        else:
            corrected = predicted
        frames.append(
            pd.DataFrame(
                {
                    "feature_set": model.feature_set,
                    "regressor": model.regressor,
                    "arm": model.arm,
                    "seed": model.seed,
                    "test_set": test_set,
                    "participant_id": subjects["participant_id"].to_numpy(),
                    **({SUBJECT: subjects[SUBJECT].to_numpy()} if SUBJECT in subjects else {}),
                    "age": subjects["age"].to_numpy(dtype=float),
                    "age_bin": subjects["age_bin"].to_numpy(),
                    "predicted": predicted,
                    "corrected": corrected,
                }
            )
        )
    if not model.correction.usable:
        reason = (
            "the baseline predicts a constant"
            if model.regressor == BASELINE
            else f"training slope {model.correction.slope:.3f}"
        )
        notes.append(
            f"{model.feature_set}/{model.regressor}/{model.arm}/seed {model.seed}: age-bias correction not applied ({reason}); "
            "corrected = raw"
        )
    return pd.concat(frames, ignore_index=True)


def summarise(
    predictions: pd.DataFrame,
    models: pd.DataFrame,
    test_sets: dict[str, pd.DataFrame],
    labels: list[str],
    reduced_bins: list[str],
    settings: Settings,
) -> pd.DataFrame:
    """metrics.tsv: one row per feature set, regressor, arm, test set, age bin (and ``all``) and correction.

    ``test_sets`` maps a test set's name to its subjects (participant_id, age, age_bin[, subject]); a prediction
    row's ``seed`` is one replicate of a subject's prediction, and errors are averaged over replicates first."""
    rows = []
    keys = ["feature_set", "regressor", "test_set"]
    for (feature_set, regressor, test_set), group in predictions.groupby(keys, sort=False):
        subjects = test_sets[test_set]
        order = {participant: i for i, participant in enumerate(subjects["participant_id"])}
        for correction in ("raw", "corrected"):
            column = "predicted" if correction == "raw" else "corrected"
            errors: dict[str, np.ndarray] = {}
            predicted: dict[str, np.ndarray] = {}
            for arm, arm_rows in group.groupby("arm", sort=False):
                table = arm_rows.pivot(index="seed", columns="participant_id", values=column)
                table = table[sorted(table.columns, key=order.__getitem__)]
                predicted[arm] = table.to_numpy()
                errors[arm] = np.abs(predicted[arm] - subjects["age"].to_numpy()[None, :]).mean(axis=0)
            reduced = [REDUCED] if reduced_bins else []
            for age_bin in ["all", *labels, *reduced]:
                if age_bin == "all":
                    chosen = np.ones(len(subjects), bool)
                else:
                    chosen = subjects["age_bin"].isin(reduced_bins if age_bin == REDUCED else [age_bin]).to_numpy()
                if not chosen.any():
                    continue
                true_ages = subjects["age"].to_numpy(dtype=float)[chosen]
                resamples = bootstrap_resamples(
                    int(chosen.sum()),
                    settings.bootstrap,
                    seed=[settings.bootstrap_seed, zlib.crc32(f"{test_set}/{age_bin}".encode())],
                    # A longitudinal study's scans: whole subjects are resampled.
                    subjects=subjects[SUBJECT].to_numpy()[chosen] if SUBJECT in subjects else None,
                )
                for arm in predicted:
                    per_seed = [
                        regression_metrics(true_ages, seed_predictions[chosen]) for seed_predictions in predicted[arm]
                    ]
                    model_rows = models[
                        (models["feature_set"] == feature_set)
                        & (models["regressor"] == regressor)
                        & (models["arm"] == arm)
                    ]
                    mae_low, mae_high = bootstrap_mae(errors[arm][chosen], resamples)
                    row = {
                        "feature_set": feature_set,
                        "regressor": regressor,
                        "arm": arm,
                        "test_set": test_set,
                        "age_bin": age_bin,
                        "correction": correction,
                        "n_test": int(chosen.sum()),
                        "mae": float(errors[arm][chosen].mean()),
                        "mae_ci_low": mae_low,
                        "mae_ci_high": mae_high,
                        "mae_seed_sd": float(np.std([m["mae"] for m in per_seed])),
                        "rmse": float(np.mean([m["rmse"] for m in per_seed])),
                        "r": float(np.mean([m["r"] for m in per_seed])),
                        "r2": float(np.mean([m["r2"] for m in per_seed])),
                        "mean_error": float((predicted[arm][:, chosen] - true_ages[None, :]).mean()),
                        "delta_mae_vs_real": np.nan,
                        "delta_ci_low": np.nan,
                        "delta_ci_high": np.nan,
                        "gap_closed": np.nan,
                        "gap_ci_low": np.nan,
                        "gap_ci_high": np.nan,
                        "n_train_real": int(model_rows["n_train_real"].iloc[0]),
                        "n_train_synthetic": int(model_rows["n_train_synthetic"].iloc[0]),
                        "n_seeds": int(predicted[arm].shape[0]),
                        "notes": "",
                    }
                    if arm != "real" and "real" in errors:
                        row["delta_mae_vs_real"] = float(errors[arm][chosen].mean() - errors["real"][chosen].mean())
                        row["delta_ci_low"], row["delta_ci_high"] = bootstrap_mae_difference(
                            errors[arm][chosen], errors["real"][chosen], resamples
                        )
                    row_notes = []
                    # The oracle differs from real only in the reduced bins, so only there (and overall) is
                    # there a gap to close.
                    has_gap = age_bin in (*reduced_bins, REDUCED, "all")
                    if arm in AUGMENTED_ARMS and {"real", "oracle"} <= set(errors) and has_gap:
                        gap = gap_closed(
                            errors["real"][chosen], errors[arm][chosen], errors["oracle"][chosen], resamples
                        )
                        if gap is None:
                            row_notes.append(
                                "gap closed not estimable: the oracle's gain over real has an interval that includes 0"
                            )
                        else:
                            row["gap_closed"], row["gap_ci_low"], row["gap_ci_high"] = gap
                    if int(chosen.sum()) < MIN_TEST_SUBJECTS:
                        row_notes.append(f"only {int(chosen.sum())} test subject(s): interval is rough")
                    if np.isnan(row["r"]):
                        row_notes.append("r undefined (constant predictions or ages)")
                    if correction == "corrected" and not model_rows["correction_applied"].all():
                        row_notes.append("correction not applied for some seeds (see notes.txt)")
                    row["notes"] = "; ".join(row_notes)
                    rows.append(row)
    return pd.DataFrame(rows)


def gap_closed(
    errors_real: np.ndarray, errors_augmented: np.ndarray, errors_oracle: np.ndarray, resamples: Resamples
) -> tuple[float, float, float] | None:
    """Share of the oracle's gain over real that an augmented arm wins back, with a paired bootstrap interval;
    None when the oracle's gain itself is not distinguishable from 0 (its interval includes 0)."""
    won = errors_real - errors_augmented
    possible = errors_real - errors_oracle
    possible_low, possible_high = percentile_interval(resamples.means(possible))
    if possible_low <= 0 <= possible_high:
        return None
    low, high = percentile_interval(resamples.means(won) / resamples.means(possible))
    return float(won.mean() / possible.mean()), low, high


def run_experiment(
    split_path: Path,
    synthetic_paths: list[Path],
    settings: Settings,
    external_split_path: Path | None = None,
    regional_features_path: Path | None = None,
    baseline_paths: list[Path] | None = None,
) -> Results:
    settings.validate()
    cohort = load_cohort(split_path, synthetic_paths, settings, external_split_path, baseline_paths)
    notes = cohort.notes
    chosen = settings.chosen_feature_sets(regional_features_path)
    if regional_features_path is not None and not set(TABLE_FEATURE_SETS) & set(chosen):
        notes.append(f"regional features {regional_features_path} not used: --feature-sets is {' '.join(chosen)}")
    feature_sets, voxels = [], None
    if "voxels" in chosen:
        voxel_set, voxels = voxel_feature_set(cohort, settings)
        feature_sets.append(voxel_set)
    if "regional" in chosen:
        feature_sets.append(regional_feature_set(cohort, regional_features_path))
    if "tissue" in chosen:
        feature_sets.append(tissue_feature_set(cohort, regional_features_path, settings))
    fitted: list[FittedModel] = []
    prediction_frames = []
    for features in feature_sets:
        regressors = [name for name in settings.regressors if features.volumetric or name != "cnn"] + [BASELINE]
        if not features.volumetric and "cnn" in settings.regressors:
            notes.append("the CNN runs on voxel volumes only, not on regional features")
        for regressor in regressors:
            for arm in cohort.arms:
                if arm in ARM_SOURCES and features.generated.get(ARM_SOURCES[arm]) is None:
                    continue
                for seed in settings.seeds if regressor != BASELINE else settings.seeds[:1]:
                    log.info("fitting %s/%s on arm %s, seed %d", features.name, regressor, arm, seed)
                    model = fit_one(features, voxels.mask if voxels else None, cohort, regressor, arm, seed, settings)
                    fitted.append(model)
                    prediction_frames.append(_prediction_rows(model, cohort, notes))
    predictions = pd.concat(prediction_frames, ignore_index=True)
    models = pd.DataFrame(
        [
            {
                "feature_set": model.feature_set,
                "regressor": model.regressor,
                "arm": model.arm,
                "seed": model.seed,
                "n_train_real": model.n_train_real,
                "n_train_synthetic": model.n_train_synthetic,
                "choice": model.choice,
                "cv_mae": model.cv_mae,
                "correction_slope": model.correction.slope,
                "correction_intercept": model.correction.intercept,
                "correction_applied": model.correction.usable,
            }
            for model in fitted
        ]
    )
    metrics = summarise(predictions, models, cohort.test_sets, cohort.bins.labels, cohort.reduced_bins, settings)
    candidates = [
        model
        for model in fitted
        if model.arm == "real" and model.feature_set == "voxels" and model.regressor in CLASSICAL_REGRESSORS
    ]
    best = min(candidates, key=lambda model: model.cv_mae) if candidates else None
    if best is None:
        notes.append("no classical voxel regressor was trained on the real arm, so model_real.joblib is not written")
    return Results(Evaluation(metrics, predictions, models, bin_counts(cohort), notes), best, voxels)


def bin_counts(cohort: Cohort) -> dict[str, dict[str, int]]:
    synthetic = cohort.generated.get("synthetic")
    groups = {
        "train": cohort.train,
        "withheld": cohort.withheld,
        "synthetic": synthetic.table if synthetic is not None else pd.DataFrame(),
    }
    return {
        label: {
            name: int((table["age_bin"] == label).sum()) if not table.empty else 0 for name, table in groups.items()
        }
        for label in cohort.bins.labels
    }
