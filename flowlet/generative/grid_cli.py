"""`flowlet synthetic-grid`: one row of synthetic brains per age bin, three views each, for a quick look."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flowlet.data.nifti import load_nifti  # noqa: E402
from flowlet.data.tables import resolve_image_path, synthetic_qc_flagged, synthetic_qc_passed  # noqa: E402


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifests", nargs="+", required=True, type=Path, help="per-bin manifests from 'flowlet generate'"
    )
    parser.add_argument("--per-bin", type=int, default=4, help="synthetic subjects shown per age bin")
    parser.add_argument("--output", required=True, type=Path, help="PNG to write")


def _views(volume: np.ndarray) -> list[np.ndarray]:
    x, y, z = (size // 2 for size in volume.shape)
    return [np.rot90(volume[:, :, z]), np.rot90(volume[:, y, :]), np.rot90(volume[x, :, :])]


def _qc_status(item) -> str:
    """What the QC gate said about a volume, for its panel title: the grid shows every volume generated."""
    if not item.qc_passed:
        return "dropped by QC"
    return "QC outlier, kept" if item.qc_flagged else ""


def draw_grid(manifests: list[Path], per_bin: int) -> plt.Figure:
    """One row per manifest (age bin): the youngest ``per_bin`` volumes, three mid-slices each."""
    bins = []
    manifest_of = {}
    for manifest in manifests:
        table = pd.read_csv(manifest, sep="\t")
        label = manifest.parent.name.removeprefix("bin-")
        manifest_of[label] = manifest
        table = table.assign(
            qc_passed=synthetic_qc_passed(table, manifest), qc_flagged=synthetic_qc_flagged(table, manifest)
        )
        bins.append((label, table.sort_values("age").head(per_bin)))
    columns = max(1, max(len(table) for _, table in bins)) * 3
    figure, axes = plt.subplots(
        len(bins),
        columns,
        figsize=(1.6 * columns, 1.9 * len(bins)),
        squeeze=False,
        gridspec_kw={"left": 0.01, "right": 0.99, "bottom": 0.01, "top": 0.93, "wspace": 0.05, "hspace": 0.3},
    )
    for row, (label, table) in enumerate(bins):
        for axis in axes[row]:
            axis.axis("off")
        if table.empty:
            # Text in figure coordinates: text inside a tiny axis makes the layout shrink every image.
            box = axes[row][0].get_position()
            figure.text(
                box.x0, (box.y0 + box.y1) / 2, f"{label}: no synthetic subjects planned", fontsize=9, va="center"
            )
            continue
        for index, item in enumerate(table.itertuples()):
            volume = load_nifti(resolve_image_path(item.image, manifest_of[label]), "synthetic volume").get_fdata()
            limits = np.percentile(volume[volume != 0], [1, 99]) if np.any(volume) else (0, 1)
            for view, image in enumerate(_views(volume)):
                axis = axes[row][index * 3 + view]
                axis.imshow(image, cmap="gray", vmin=limits[0], vmax=limits[1])
                if view == 0:
                    status = _qc_status(item)
                    axis.set_title(
                        f"{label}: age {item.age:.1f}" + (f" ({status})" if status else ""),
                        fontsize=8,
                        loc="left",
                        color="tab:red" if status else "black",
                    )
    figure.suptitle("Synthetic brains per age bin (axial, coronal, sagittal mid-slices)", fontsize=10)
    return figure


def run(args: argparse.Namespace) -> int:
    figure = draw_grid(args.manifests, args.per_bin)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=110)
    plt.close(figure)
    return 0
