"""`flowlet brainage`: train brain-age regressors with and without synthetic subjects and evaluate them on real test subjects."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flowlet.brainage.cnn import CNN_ARCHITECTURES, CNNSettings
from flowlet.brainage.experiment import ARMS, FEATURE_SETS, REGRESSORS, Settings, run_experiment
from flowlet.brainage.outputs import write_evaluation
from flowlet.brainage.predict import save_model
from flowlet.brainage.verdict import AUTO
from flowlet.data.bins import AgeBins
from flowlet.data.tables import read_tsv

log = logging.getLogger(__name__)


DEFAULTS = Settings()


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """How predictions are judged: bins, bootstrap intervals and the verdict's model (also `brainage-pool`'s)."""
    parser.add_argument("--bin-edges", type=float, nargs="+", default=DEFAULTS.bin_edges, help="age bin edges in years")
    parser.add_argument(
        "--bootstrap", type=int, default=DEFAULTS.bootstrap, help="bootstrap resamples of the test subjects"
    )
    parser.add_argument(
        "--bootstrap-seed", type=int, default=DEFAULTS.bootstrap_seed, help="seed of the bootstrap resamples"
    )
    parser.add_argument(
        "--verdict-model",
        default=AUTO,
        help="feature_set/regressor the verdict reports (e.g. tissue/ridge); auto: the real arm's "
        "lowest cross-validated MAE inside the training split",
    )
    parser.add_argument(
        "--verdict-correction",
        choices=("raw", "corrected"),
        default="corrected",
        help="whether the verdict reads raw or age-bias-corrected predictions",
    )


def build_parser(parser: argparse.ArgumentParser) -> None:
    add_evaluation_arguments(parser)
    parser.add_argument(
        "--split", required=True, type=Path, help="split table (participant_id, age, sex, split, image)"
    )
    parser.add_argument(
        "--synthetic",
        type=Path,
        nargs="*",
        default=[],
        help="synthetic manifests (image, age, sex, age_bin[, qc_pass])",
    )
    parser.add_argument(
        "--baseline-synthetic",
        type=Path,
        nargs="*",
        default=[],
        help="the linear baseline generator's manifests, for the arms real+baseline and baseline",
    )
    parser.add_argument(
        "--external-split", type=Path, default=None, help="a second dataset's table, used only for evaluation"
    )
    parser.add_argument(
        "--regional-features",
        type=Path,
        default=None,
        help="regional-feature table: participant_id and/or image, then one numeric column per feature (regional_features.tsv of `flowlet regional-measures`)",
    )
    parser.add_argument(
        "--feature-sets",
        nargs="+",
        choices=FEATURE_SETS,
        default=None,
        help="what the classical regressors learn from: voxels (masked downsampled intensities), regional (the --regional-features "
        "table) and tissue (smoothed CSF and grey-matter density maps from the segmentations that table lists); every regressor is "
        "trained on each; default: voxels, plus regional and tissue when --regional-features is given. The CNN uses "
        "voxels only",
    )
    parser.add_argument(
        "--tissue-fwhm",
        type=float,
        default=DEFAULTS.tissue_fwhm_mm,
        help="FWHM in mm of the Gaussian smoothing of the tissue density maps (feature set tissue)",
    )
    parser.add_argument(
        "--output-dir", required=True, type=Path, help="folder for metrics.tsv, predictions.tsv, figures, model"
    )
    parser.add_argument(
        "--regressors", nargs="+", choices=REGRESSORS, default=DEFAULTS.regressors, help="regressors to train"
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=DEFAULTS.arms, help="training sets to compare")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=DEFAULTS.seeds, help="repetitions (CV shuffles, CNN initialisation)"
    )
    parser.add_argument(
        "--downsample", type=int, default=DEFAULTS.downsample, help="block-averaging factor applied to the MNI volumes"
    )
    parser.add_argument(
        "--pca-components",
        type=int,
        nargs="+",
        default=DEFAULTS.pca_components,
        help="PCA sizes searched by cross-validation",
    )
    parser.add_argument(
        "--cv-folds",
        type=int,
        default=DEFAULTS.cv_folds,
        help="folds for hyper-parameter search and the out-of-sample bias-correction fit",
    )
    parser.add_argument(
        "--cnn-arch",
        choices=CNN_ARCHITECTURES,
        default=DEFAULTS.cnn.architecture,
        help="CNN architecture when 'cnn' is among --regressors",
    )
    parser.add_argument(
        "--cnn-channels",
        type=int,
        nargs="+",
        default=list(DEFAULTS.cnn.channels),
        help="SFCN block widths (paper: 32 64 128 256 256 64)",
    )
    parser.add_argument("--cnn-epochs", type=int, default=DEFAULTS.cnn.epochs, help="CNN training epochs")
    parser.add_argument("--cnn-batch-size", type=int, default=DEFAULTS.cnn.batch_size, help="CNN batch size")
    parser.add_argument(
        "--cnn-learning-rate",
        type=float,
        default=DEFAULTS.cnn.learning_rate,
        help="CNN SGD learning rate (cosine warm restarts, T0 17, T_mult 2)",
    )
    parser.add_argument(
        "--densenet-growth", type=int, default=DEFAULTS.cnn.densenet_growth, help="DenseNet-121 growth rate"
    )
    parser.add_argument(
        "--densenet-blocks",
        type=int,
        nargs="+",
        default=list(DEFAULTS.cnn.densenet_blocks),
        help="DenseNet layers per dense block",
    )
    parser.add_argument(
        "--densenet-init-features", type=int, default=DEFAULTS.cnn.densenet_init_features, help="DenseNet stem width"
    )
    parser.add_argument(
        "--device", default=DEFAULTS.cnn.device, help="torch device for the CNN: auto, cpu, cuda, cuda:1"
    )
    parser.add_argument(
        "--plan",
        type=Path,
        default=None,
        help="the synthetic plan (plan.tsv of `flowlet plan`): which bins the verdict answers for",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        regressors=list(args.regressors),
        arms=list(args.arms),
        seeds=list(args.seeds),
        bin_edges=list(args.bin_edges),
        downsample=args.downsample,
        pca_components=list(args.pca_components),
        tissue_fwhm_mm=args.tissue_fwhm,
        cv_folds=args.cv_folds,
        bootstrap=args.bootstrap,
        bootstrap_seed=args.bootstrap_seed,
        feature_sets=list(args.feature_sets) if args.feature_sets else None,
        cnn=CNNSettings(
            architecture=args.cnn_arch,
            channels=tuple(args.cnn_channels),
            densenet_growth=args.densenet_growth,
            densenet_blocks=tuple(args.densenet_blocks),
            densenet_init_features=args.densenet_init_features,
            epochs=args.cnn_epochs,
            batch_size=args.cnn_batch_size,
            learning_rate=args.cnn_learning_rate,
            device=args.device,
        ),
    )


def bin_labels(settings: Settings) -> list[str]:
    return AgeBins.from_edges(settings.bin_edges).labels


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    results = run_experiment(
        args.split,
        list(args.synthetic),
        settings,
        args.external_split,
        args.regional_features,
        list(args.baseline_synthetic),
    )
    output = args.output_dir
    output.mkdir(parents=True, exist_ok=True)
    best = results.best_real_model
    if best is not None:
        save_model(
            output / "model_real.joblib",
            best.estimator,
            best.regressor,
            settings.downsample,
            results.voxels.resolution_mm,
            best.correction.slope,
            best.correction.intercept,
            best.correction.usable,
            best.cv_mae,
        )
        results.evaluation.notes.append(
            f"model_real.joblib: {best.regressor} on voxels, seed {best.seed} ({best.choice}), cross-validated MAE {best.cv_mae:.2f} years"
        )
    plan = (
        read_tsv(args.plan, "synthetic plan", required=("age_bin", "n_synthetic"), dtype={"age_bin": str})
        if args.plan
        else None
    )
    write_evaluation(
        results.evaluation, output, bin_labels(settings), plan, args.verdict_model, args.verdict_correction
    )
    log.info("wrote %s", output)
    return 0
