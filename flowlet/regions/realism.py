"""Realism and diversity: Fréchet distance and MMD between feature distributions, and 3D MS-SSIM.

No pretrained feature network may be downloaded, so the features are our own and documented: per image,
the own-tissue volume and the mean intensity of every atlas region, standardised with the real training
images' mean and SD and reduced by a PCA fitted on the real training images (fewer dimensions than
images, so that the covariance the Fréchet distance needs is estimable). Each value is reported beside the
same value for real test images against the real training images, the floor a generator can reach.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import linalg, ndimage

from flowlet.errors import FlowletError

# Wang, Simoncelli & Bovik (2003) scale weights; the first four are used (a 2 mm brain is too small for
# five scales of an 11-voxel window) and renormalised to sum to one.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_K1, SSIM_K2 = 0.01, 0.03
MS_SSIM_WINDOW, MS_SSIM_SIGMA = 11, 1.5
# Room for the filtered maps of the volumes mean_ms_ssim reuses: about 40 volumes on the 2 mm grid.
PYRAMID_CACHE_BYTES = 512 * 2**20


# Fréchet distance and MMD ---------------------------------------------------------------------------


def regional_feature_matrix(measures: pd.DataFrame, image_ids: list[str], regions: list[str]) -> np.ndarray:
    """Rows: images in the given order; columns: own-tissue volume then mean intensity of each region."""
    table = measures[measures["region"].isin(regions)]
    volume = table.pivot_table(index="image_id", columns="region", values="volume_ml").reindex(
        index=image_ids, columns=regions
    )
    intensity = table.pivot_table(index="image_id", columns="region", values="mean_intensity").reindex(
        index=image_ids, columns=regions
    )
    matrix = np.concatenate([volume.to_numpy(float), intensity.to_numpy(float)], axis=1)
    # A region empty of its tissue in one image has no mean intensity; the training mean stands in later.
    return matrix


class FeatureProjection:
    """Standardisation and PCA fitted on the real training features, applied to any other set."""

    def __init__(self, training: np.ndarray, components: int):
        if training.shape[0] < 3:
            raise FlowletError(f"realism features need at least 3 real training images, got {training.shape[0]}")
        self.mean = np.nanmean(training, axis=0)
        self.scale = np.nanstd(training, axis=0)
        self.scale[~(self.scale > 0)] = 1.0
        standard = self._standardise(training)
        self.components = max(1, min(components, training.shape[0] - 1, training.shape[1]))
        _, _, vt = np.linalg.svd(standard - standard.mean(axis=0), full_matrices=False)
        self.axes = vt[: self.components]
        self.centre = standard.mean(axis=0)

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        filled = np.where(np.isfinite(features), features, self.mean)
        return (filled - self.mean) / self.scale

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (self._standardise(features) - self.centre) @ self.axes.T


def frechet_distance_from_moments(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)): the Fréchet (2-Wasserstein) distance of two Gaussians."""
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = np.real(root)
    value = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    return max(value, 0.0)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature samples (rows are samples)."""
    if len(features_a) < 2 or len(features_b) < 2:
        return float("nan")
    covariance = lambda x: np.atleast_2d(np.cov(x, rowvar=False))  # noqa: E731
    return frechet_distance_from_moments(
        features_a.mean(axis=0), covariance(features_a), features_b.mean(axis=0), covariance(features_b)
    )


def equal_n_distance(
    distance, sample: np.ndarray, reference: np.ndarray, n: int, repeats: int = 20, seed: int = 0
) -> float:
    """``distance(sample, reference)`` at sample size ``n``: the mean over ``repeats`` random n-subsets of ``sample``.

    The Fréchet distance of finite samples is biased upwards, more for smaller samples, so a value and its
    real-vs-real floor are only comparable at the same n.
    """
    if len(sample) <= n:
        return distance(sample, reference)
    rng = np.random.default_rng(seed)
    return float(
        np.mean([distance(sample[rng.choice(len(sample), n, replace=False)], reference) for _ in range(repeats)])
    )


def median_bandwidth(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The median heuristic: the median of the pooled samples' pairwise distances (1 when they all coincide)."""
    pooled = np.concatenate([features_a, features_b])
    distances = np.sqrt(np.maximum(((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1), 0))
    off_diagonal = distances[~np.eye(len(pooled), dtype=bool)]
    median = float(np.median(off_diagonal)) if off_diagonal.size else 0.0
    return median if median > 0 else 1.0


def mmd_rbf(features_a: np.ndarray, features_b: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased estimate of the squared MMD with the kernel exp(-||x-y||^2 / (2 bandwidth^2)).

    The bandwidth defaults to the median heuristic. Unbiased means it can be slightly negative when the
    two samples come from the same distribution.
    """
    if len(features_a) < 2 or len(features_b) < 2:
        return float("nan")
    sigma = median_bandwidth(features_a, features_b) if bandwidth is None else bandwidth

    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))

    kaa, kbb, kab = kernel(features_a, features_a), kernel(features_b, features_b), kernel(features_a, features_b)
    m, n = len(features_a), len(features_b)
    within_a = (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
    within_b = (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * kab.mean())


# MS-SSIM --------------------------------------------------------------------------------------------


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _filter(volume: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filtering of (batch, 1, z, y, x) volumes, valid part only.

    SciPy's 1D correlation along each axis: about 3.5x faster on a CPU than PyTorch's conv3d with a 1D kernel,
    which dominated the regional analysis and the scorecard (MS-SSIM over 30 pairs of 2 mm volumes).
    """
    size = kernel.numel()
    filtered = volume.numpy()
    weights = kernel.numpy().astype(filtered.dtype)
    for axis in (2, 3, 4):
        filtered = ndimage.correlate1d(filtered, weights, axis=axis, mode="constant")
        # correlate1d centres the window on element size // 2; the positions it covers entirely are the valid
        # ones. Cropping each axis as soon as it is filtered spares the next passes the rest.
        valid = slice(size // 2, filtered.shape[axis] - (size - 1 - size // 2))
        filtered = filtered[(slice(None),) * axis + (valid,)]
    return torch.from_numpy(np.ascontiguousarray(filtered))


@dataclass(frozen=True)
class _ScaleMaps:
    """One volume at one MS-SSIM scale: (1, 1, z, y, x), and its Gaussian-filtered values and squares (valid part)."""

    volume: torch.Tensor
    mean: torch.Tensor
    mean_square: torch.Tensor


def _pyramid(volume: np.ndarray, scales: int, kernel: torch.Tensor, dtype=np.float32) -> list[_ScaleMaps]:
    """A volume's maps at every scale, halving the resolution between scales: what its SSIMs with any other
    volume share, so that a volume in several pairs is filtered once."""
    current = torch.as_tensor(np.asarray(volume, dtype=dtype))[None, None]
    maps = []
    for scale in range(scales):
        mean, mean_square = _filter(torch.cat([current, current * current]), kernel)
        maps.append(_ScaleMaps(current, mean[None], mean_square[None]))
        if scale < scales - 1:
            current = F.avg_pool3d(current, 2, ceil_mode=False)
    return maps


def _ssim_parts(
    first: _ScaleMaps, second: _ScaleMaps, kernel: torch.Tensor, data_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term over the valid region."""
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu1, mu2 = first.mean, second.mean
    e12 = _filter(first.volume * second.volume, kernel)
    var1, var2, cov = first.mean_square - mu1**2, second.mean_square - mu2**2, e12 - mu1 * mu2
    contrast_structure = (2 * cov + c2) / (var1 + var2 + c2)
    luminance = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1)
    return (luminance * contrast_structure).mean(), contrast_structure.mean()


def ssim3d(
    first: np.ndarray, second: np.ndarray, data_range: float, window: int = MS_SSIM_WINDOW, sigma: float = MS_SSIM_SIGMA
) -> float:
    """Single-scale SSIM of two volumes with a Gaussian window (valid region, population covariances)."""
    kernel = _gaussian_kernel(window, sigma)
    (a,), (b,) = (_pyramid(volume, 1, kernel, np.float64) for volume in (first, second))
    return float(_ssim_parts(a, b, kernel, data_range)[0])


def _check_scales(shape: tuple[int, ...], scales: int, window: int) -> torch.Tensor:
    """The scales' weights, after checking that the smallest scale still holds a window."""
    if not 1 <= scales <= len(MS_SSIM_WEIGHTS):
        raise FlowletError(f"MS-SSIM scales must be between 1 and {len(MS_SSIM_WEIGHTS)}, got {scales}")
    if min(shape) / 2 ** (scales - 1) < window:
        raise FlowletError(
            f"MS-SSIM: volumes of shape {shape} are too small for {scales} scales of a {window}-voxel window"
        )
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    return weights / weights.sum()


def _ms_ssim_of_pyramids(
    first: list[_ScaleMaps], second: list[_ScaleMaps], kernel: torch.Tensor, data_range: float, weights: torch.Tensor
) -> float:
    values = []
    for scale, (a, b) in enumerate(zip(first, second)):
        ssim, contrast_structure = _ssim_parts(a, b, kernel, data_range)
        values.append(torch.relu(ssim if scale == len(first) - 1 else contrast_structure))
    return float(torch.prod(torch.stack(values).to(torch.float64) ** weights))


def ms_ssim3d(
    first: np.ndarray,
    second: np.ndarray,
    data_range: float,
    scales: int = 4,
    window: int = MS_SSIM_WINDOW,
    sigma: float = MS_SSIM_SIGMA,
) -> float:
    """Multi-scale SSIM (Wang et al. 2003) of two 3D volumes, halving the resolution between scales.

    Contrast-structure terms are clipped at zero before the fractional powers, as common implementations do.
    """
    weights = _check_scales(first.shape, scales, window)
    kernel = _gaussian_kernel(window, sigma)
    return _ms_ssim_of_pyramids(
        _pyramid(first, scales, kernel), _pyramid(second, scales, kernel), kernel, data_range, weights
    )


def intensity_window(
    volumes: list[np.ndarray], brains: list[np.ndarray], quantile: float = 0.001
) -> tuple[float, float]:
    """A common intensity window for MS-SSIM: the pooled brain intensities' quantiles (background 0 included)."""
    values = np.concatenate([volume[brain] for volume, brain in zip(volumes, brains)] + [np.zeros(1, np.float32)])
    low, high = np.quantile(values, [quantile, 1 - quantile])
    if not high > low:
        raise FlowletError("MS-SSIM: the real training images have no intensity spread inside the brain")
    return float(min(low, 0.0)), float(max(high, 0.0))


def mean_ms_ssim(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    window: tuple[float, float],
    scales: int = 4,
    cache_bytes: int = PYRAMID_CACHE_BYTES,
) -> float:
    """Mean MS-SSIM over pairs of volumes, clipped to a common intensity window.

    A volume that appears in several pairs (the same array object) is clipped and filtered once, as long as
    its maps fit in ``cache_bytes`` beside the others kept (least recently used ones are dropped first).
    """
    if not pairs:
        return float("nan")
    low, high = window
    weights = _check_scales(pairs[0][0].shape, scales, MS_SSIM_WINDOW)
    kernel = _gaussian_kernel(MS_SSIM_WINDOW, MS_SSIM_SIGMA)
    # Four bytes per voxel for each of the three maps, summed over the halving scales (at most 8/7 of the first).
    pyramid_bytes = 12 * pairs[0][0].size * 8 // 7
    capacity = max(2, cache_bytes // pyramid_bytes)
    cache: OrderedDict[int, list[_ScaleMaps]] = OrderedDict()

    def pyramid(volume: np.ndarray) -> list[_ScaleMaps]:
        key = id(volume)
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = _pyramid(np.clip(volume, low, high) - low, scales, kernel)
            if len(cache) > capacity:
                cache.popitem(last=False)
        return cache[key]

    return float(np.mean([_ms_ssim_of_pyramids(pyramid(a), pyramid(b), kernel, high - low, weights) for a, b in pairs]))


def sample_pairs(n_first: int, n_second: int | None, max_pairs: int, seed: int) -> list[tuple[int, int]]:
    """Index pairs within one set (n_second None: unordered, distinct) or across two sets, at most max_pairs, at random."""
    if n_second is None:
        candidates = [(i, j) for i in range(n_first) for j in range(i + 1, n_first)]
    else:
        candidates = [(i, j) for i in range(n_first) for j in range(n_second)]
    if len(candidates) <= max_pairs:
        return candidates
    chosen = np.random.default_rng(seed).choice(len(candidates), size=max_pairs, replace=False)
    return [candidates[k] for k in sorted(chosen)]
