"""The baseline generator a deep generator must beat: a per-voxel linear age model plus PCA residuals.

Fitted on the real training images exactly as FlowLet sees them (mapped to [-1, 1], block-averaged to the same
working resolution): every voxel's intensity is a straight line in age, y = a + b (age - mean age), by least
squares, and what the lines leave unexplained is summarised by the principal components of the residuals. A
sample of age A is the fitted mean image at A plus sum_k z_k (s_k / sqrt(n - 2)) v_k with z ~ N(0, I): a draw
from the Gaussian of the training residuals, restricted to the span they occupy. It fits in seconds and gives
plausible, age-varying brains; a deep generator that does not beat it adds nothing (generator-training notes).

The model is saved as a plain ``.npz`` (read with ``allow_pickle=False``) and sampled through the same request,
seed, QC and manifest machinery as FlowLet (:func:`flowlet.generative.generate.write_samples`).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowlet.errors import FlowletError
from flowlet.generative.data import load_volumes, read_training_table, upsample_to_grid

log = logging.getLogger(__name__)

# Two parameters per voxel leave n - 2 degrees of freedom; two of them give the residuals some spread to sample.
MIN_TRAINING_IMAGES = 4
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LinearBaseline:
    intercept: np.ndarray  # working grid, the fitted image at mean_age
    slope: np.ndarray  # working grid, change per year
    components: np.ndarray  # (K, *working grid), residual principal directions scaled by their SD
    mean_age: float
    age_range: tuple[float, float]
    downsample: int
    full_resolution_size: tuple[int, int, int]

    condition_vars = ("Age",)

    @property
    def default_save_size(self) -> tuple[int, int, int]:
        return self.full_resolution_size

    @classmethod
    def fit(
        cls, images: Sequence[np.ndarray], ages: Sequence[float], downsample: int, full_resolution_size: Sequence[int]
    ) -> LinearBaseline:
        """Least-squares lines per voxel and the residuals' principal components, from working-grid volumes."""
        n = len(images)
        if n < MIN_TRAINING_IMAGES:
            raise FlowletError(
                f"the linear baseline generator needs at least {MIN_TRAINING_IMAGES} training images "
                f"(a line per voxel plus residuals to sample), got {n}"
            )
        ages = np.asarray(ages, dtype=np.float64)
        if not np.ptp(ages) > 0:
            raise FlowletError(f"all {n} training images have age {ages[0]:g}: an age slope cannot be fitted")
        shape = images[0].shape
        data = np.stack([np.asarray(image, dtype=np.float64).ravel() for image in images])
        centred_age = ages - ages.mean()
        intercept = data.mean(axis=0)
        slope = centred_age @ (data - intercept) / (centred_age @ centred_age)
        residuals = data - intercept - np.outer(centred_age, slope)
        _, singular, directions = np.linalg.svd(residuals, full_matrices=False)
        keep = singular > singular[0] * 1e-6
        scale = singular[keep] / np.sqrt(n - 2)
        components = (directions[keep] * scale[:, None]).astype(np.float32)
        return cls(
            intercept.reshape(shape).astype(np.float32),
            slope.reshape(shape).astype(np.float32),
            components.reshape(-1, *shape),
            float(ages.mean()),
            (float(ages.min()), float(ages.max())),
            int(downsample),
            tuple(int(s) for s in full_resolution_size),
        )

    @classmethod
    def fit_table(cls, table: str | Path, downsample: int) -> LinearBaseline:
        """Fit on the ``train`` rows of a split table (or every row of a table without a split column)."""
        records = read_training_table(table, ["Age"])
        volumes, full_shape = load_volumes(records, downsample)
        model = cls.fit(volumes, [record.conditions["Age"] for record in records], downsample, full_shape)
        log.info(
            "linear baseline: %d training images, ages %.1f-%.1f, %d residual components, working grid %s",
            len(records),
            *model.age_range,
            len(model.components),
            list(model.intercept.shape),
        )
        return model

    def sample(self, ages: Sequence[float], seeds: Sequence[int], save_size: Sequence[int] | None = None) -> np.ndarray:
        """Volumes (N, *save_size) in [-1, 1]; sample i draws its residual from a generator seeded by seeds[i]."""
        save_size = tuple(save_size or self.full_resolution_size)
        volumes = []
        for age, seed in zip(ages, seeds):
            weights = torch.randn(len(self.components), generator=torch.Generator().manual_seed(int(seed))).numpy()
            residual = np.tensordot(weights.astype(np.float32), self.components, axes=1)
            volumes.append(self.intercept + self.slope * np.float32(age - self.mean_age) + residual)
        coarse = torch.from_numpy(np.stack(volumes))[:, None]
        return upsample_to_grid(coarse, self.downsample, save_size)[:, 0].clamp(-1.0, 1.0).numpy()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as stream:
            np.savez(
                stream,
                format_version=FORMAT_VERSION,
                intercept=self.intercept,
                slope=self.slope,
                components=self.components,
                mean_age=self.mean_age,
                age_range=np.asarray(self.age_range),
                downsample=self.downsample,
                full_resolution_size=np.asarray(self.full_resolution_size),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> LinearBaseline:
        path = Path(path)
        if not path.is_file():
            raise FlowletError(f"linear baseline model {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as stored:
                if int(stored["format_version"]) != FORMAT_VERSION:
                    raise FlowletError(
                        f"linear baseline model {path} has format {int(stored['format_version'])}, "
                        f"this version reads {FORMAT_VERSION}"
                    )
                return cls(
                    stored["intercept"],
                    stored["slope"],
                    stored["components"],
                    float(stored["mean_age"]),
                    tuple(float(a) for a in stored["age_range"]),
                    int(stored["downsample"]),
                    tuple(int(s) for s in stored["full_resolution_size"]),
                )
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise FlowletError(f"linear baseline model {path} is unreadable or not one: {error}") from None


def generate_baseline(
    model: LinearBaseline,
    requests: Sequence,
    output_dir: str | Path,
    batch_size: int = 4,
    save_size: Sequence[int] | None = None,
    intensity: str = "zscore",
    manifest: str | Path | None = None,
) -> Path:
    """Sample and save every request like :func:`flowlet.generative.generate.generate` does for FlowLet."""
    from flowlet.generative.generate import write_samples

    save_size = tuple(save_size or model.default_save_size)
    if requests:
        log.info("sampling %d volumes from the linear baseline into %s", len(requests), output_dir)

    def sample(start: int, stop: int) -> np.ndarray:
        chunk = requests[start:stop]
        return model.sample([r.conditions["Age"] for r in chunk], [r.seed for r in chunk], save_size)

    return write_samples(sample, requests, output_dir, model.condition_vars, batch_size, save_size, intensity, manifest)
