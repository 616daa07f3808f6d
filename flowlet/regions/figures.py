"""Figures of the regional analysis; each function writes one PNG and returns its caption (how to read it)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flowlet.regions.atlas import Atlas  # noqa: E402
from flowlet.regions.measures import REAL_GROUPS, SYNTHETIC  # noqa: E402
from flowlet.regions.memorisation import MemorisationReference  # noqa: E402
from flowlet.regions.trajectories import FAST_AGEING_PANELS, ols_slope  # noqa: E402

COLOURS = {"real": "tab:blue", "synthetic": "tab:orange", "test": "tab:green"}


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def not_defined(reason: str, path: Path) -> str:
    """A figure that says why it has nothing to show (the workflow declares every figure as an output)."""
    figure, axis = plt.subplots(figsize=(6, 1.6))
    axis.axis("off")
    axis.text(0.5, 0.5, reason, ha="center", va="center", wrap=True, fontsize=10)
    _save(figure, path)
    return f"Not drawn: {reason}."


def slope_difference_map(slopes: pd.DataFrame, atlas: Atlas, background: np.ndarray, path: Path) -> str:
    """Axial slices of the atlas coloured by synthetic minus real slope (% of the real mean volume per year)."""
    volumes = slopes[slopes["measure"] == "volume_ml"]
    values = dict(zip(volumes["region"], volumes["slope_difference_percent_per_year"]))
    painted = np.full(atlas.labels.shape, np.nan, dtype=np.float32)
    for region in atlas.atlas_regions:
        value = values.get(region.name, np.nan)
        if np.isfinite(value):
            painted.ravel()[region.voxels] = value
    finite = painted[np.isfinite(painted)]
    limit = float(np.percentile(np.abs(finite), 98)) if finite.size else 1.0
    limit = limit if limit > 0 else 1.0
    slices = np.linspace(atlas.labels.shape[2] * 0.2, atlas.labels.shape[2] * 0.75, 8).astype(int)
    figure, axes = plt.subplots(2, 4, figsize=(12, 6.5), layout="constrained")
    for axis, z in zip(axes.ravel(), slices):
        # FSL's grid stores x flipped (radiological); transposing and flipping shows it in radiological view.
        axis.imshow(np.rot90(background[:, :, z]), cmap="gray")
        shown = axis.imshow(np.rot90(painted[:, :, z]), cmap="RdBu_r", vmin=-limit, vmax=limit)
        axis.set_title(f"z = {z}", fontsize=9)
        axis.axis("off")
    figure.colorbar(shown, ax=axes, shrink=0.6, label="synthetic − real slope (% of volume / year)")
    _save(figure, path)
    return (
        "Difference between the synthetic and the real age slope of each atlas region's own-tissue volume, in percent "
        "of the region's mean real volume per year, on axial slices (radiological view: the left hemisphere is on the "
        "right). White: synthetic brains age like real ones there; red: the region grows faster (or shrinks slower) "
        "with requested age than it does with real age; blue: the opposite. Regions with no estimate are uncoloured."
    )


def trajectory_panels(
    measures: pd.DataFrame, path: Path, panels: tuple[tuple[str, str], ...] = FAST_AGEING_PANELS
) -> str:
    """A measure against age for the fastest-ageing regions, real and synthetic points with their OLS lines."""
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), layout="constrained")
    for axis, (region, measure) in zip(np.atleast_1d(axes), panels):
        table = measures[measures["region"] == region]
        for source, subset in (
            ("real", table[table["group"].isin(REAL_GROUPS)]),
            ("synthetic", table[table["group"] == SYNTHETIC]),
        ):
            if subset.empty:
                continue
            axis.scatter(
                subset["age"],
                subset[measure],
                s=14,
                alpha=0.7,
                color=COLOURS[source],
                label=f"{source} (n={len(subset)})",
            )
            fit = ols_slope(subset["age"].to_numpy(), subset[measure].to_numpy())
            if np.isfinite(fit["slope"]):
                ages = np.linspace(subset["age"].min(), subset["age"].max(), 2)
                axis.plot(ages, fit["intercept"] + fit["slope"] * ages, color=COLOURS[source], lw=2)
        tissue = table["region_tissue"].iloc[0] if len(table) else ""
        axis.set_title(f"{region} ({tissue})")
        axis.set_xlabel("age (years; requested age for synthetic)")
        axis.set_ylabel("volume (ml)" if measure == "volume_ml" else f"{tissue} fraction of the region")
        axis.legend(fontsize=8)
    _save(figure, path)
    return (
        "Own-tissue volume against age for the regions that change most in adulthood (CSF in the ventricles, grey matter "
        "of hippocampus and cortex), in MNI space, and the brain parenchymal fraction (grey plus white matter over all "
        "tissue in the brain mask; affine normalisation to MNI removes head size and uniform shrinkage from volumes, "
        "not from this fraction). Blue: real images (training and test) against their age; orange: synthetic "
        "images against the age they were generated for; lines are least-squares fits. Age-faithful synthetic brains "
        "lie on the real cloud and have parallel lines."
    )


def slope_correlation(slopes: pd.DataFrame, region_names: set[str], agreement: dict, path: Path) -> str:
    subset = slopes[slopes["region"].isin(region_names)]
    subset = subset[subset["measure"] == "volume_ml"]
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(subset["real_slope_percent_per_year"], subset["synthetic_slope_percent_per_year"], s=14, alpha=0.8)
    finite = subset[["real_slope_percent_per_year", "synthetic_slope_percent_per_year"]].to_numpy(float)
    finite = finite[np.isfinite(finite).all(axis=1)]
    if finite.size:
        low, high = finite.min(), finite.max()
        axis.plot([low, high], [low, high], color="gray", ls="--", lw=1, label="identity")
        axis.legend(fontsize=8)
    axis.axhline(0, color="lightgray", lw=0.8)
    axis.axvline(0, color="lightgray", lw=0.8)
    axis.set_xlabel("real slope (% of volume / year)")
    axis.set_ylabel("synthetic slope (% of volume / year)")
    axis.set_title(
        f"r = {agreement['pearson_r']:.2f}, rho = {agreement['spearman_rho']:.2f} over {agreement['n_regions']} regions",
        fontsize=10,
    )
    _save(figure, path)
    return (
        "Each point is one atlas region: its volume's age slope in real images (x) against the slope in synthetic images "
        "(y), both in percent of the region's mean real volume per year. Points on the dashed identity line age at the "
        "real rate; the Pearson r and Spearman rho in the title measure whether the generator reproduces which regions "
        "age faster than others."
    )


def paired_overview(summary: pd.DataFrame, regions: list[str], path: Path) -> str:
    """Mean Dice per region for synthetic-vs-train pairs beside the real test-vs-train floor."""
    table = summary[summary["region"].isin(regions)]
    comparisons = list(dict.fromkeys(table["comparison"]))
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(regions) + 1.5), layout="constrained")
    positions = np.arange(len(regions))
    height = 0.8 / max(len(comparisons), 1)
    for k, comparison in enumerate(comparisons):
        values = table[table["comparison"] == comparison].set_index("region").reindex(regions)
        colour = COLOURS["synthetic"] if comparison.startswith("synthetic") else COLOURS["test"]
        axis.barh(
            positions + k * height,
            values["dice_mean"],
            height,
            xerr=values["dice_std"],
            color=colour,
            label=comparison,
            alpha=0.85,
        )
    axis.set_yticks(positions + height * (len(comparisons) - 1) / 2, regions)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("Dice of the paired regional tissue masks (mean ± SD over pairs)")
    axis.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
    _save(figure, path)
    return (
        "Dice overlap between age-paired images' own masks of each region (atlas region intersected with the region's "
        "tissue in each image's segmentation). Orange: synthetic images paired with real training images; green: real "
        "test images paired with real training images, the level that two different real people reach and the target "
        "for synthetic data. Synthetic bars far above green would hint at copying; far below, at implausible anatomy."
    )


def memorisation_histogram(reference: MemorisationReference, synthetic: np.ndarray, path: Path) -> str:
    figure, axis = plt.subplots(figsize=(6, 3.8))
    threshold = reference.threshold
    values = np.concatenate([reference.similarities, synthetic])
    bins = np.linspace(values.min() - 1e-3, max(values.max(), threshold) + 1e-3, 30)
    for similarities, colour, label in (
        (reference.training, COLOURS["real"], "real training, to other subjects'"),
        (reference.test, COLOURS["test"], "real test"),
        (synthetic, COLOURS["synthetic"], "synthetic"),
    ):
        if len(similarities):
            axis.hist(similarities, bins=bins, alpha=0.5, color=colour, label=f"{label} (n={len(similarities)})")
    axis.axvline(threshold, color="black", ls="--", lw=1, label=f"{reference.percentile:g}th percentile of real")
    axis.set_xlabel("highest similarity to any real training image (shift-tolerant correlation)")
    axis.set_ylabel("images")
    axis.legend(fontsize=8)
    _save(figure, path)
    return (
        "For each image, its similarity to the most similar real training image (Pearson correlation inside the brain "
        "mask, maximised over small shifts). Green: real test images, people the generator never saw; blue: each real "
        "training image against the training images of everyone else. Together they set what 'similar but distinct' "
        "looks like. Orange: synthetic images. Synthetic images to the right of the dashed line (the real images' "
        "percentile) are flagged as possible copies of a training subject."
    )


def fidelity_scatter(per_image: pd.DataFrame, path: Path) -> str:
    figure, axis = plt.subplots(figsize=(5, 5))
    for group, colour, label in (
        (SYNTHETIC, COLOURS["synthetic"], "synthetic (requested age)"),
        ("test", COLOURS["test"], "real test (true age)"),
    ):
        subset = per_image[per_image["group"] == group]
        axis.scatter(subset["age"], subset["predicted_age"], s=14, alpha=0.8, color=colour, label=label)
    low, high = per_image[["age", "predicted_age"]].min().min(), per_image[["age", "predicted_age"]].max().max()
    axis.plot([low, high], [low, high], color="gray", ls="--", lw=1)
    axis.set_xlabel("requested (synthetic) or true (real) age")
    axis.set_ylabel("age predicted by the real-only brain-age model")
    axis.legend(fontsize=8)
    _save(figure, path)
    return (
        "Age predicted by the brain-age model trained on real images only, against the age each synthetic image was "
        "generated for (orange) and against the true age of real test images (green). Orange points as close to the "
        "dashed identity line as the green ones mean the generator renders the requested age as well as real anatomy "
        "shows true age."
    )
