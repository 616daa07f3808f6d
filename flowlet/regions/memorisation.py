"""Memorisation check: how close does each synthetic brain come to its nearest real training brain?

Similarity is the Pearson correlation of intensities inside the template brain mask, maximised over
integer shifts of up to ``max_shift`` voxels along each axis, so that a copy displaced by a few millimetres
is still recognised. Real test images against the training images give the reference distribution: a
synthetic image more similar to a training image than the 99th percentile of the real test images'
nearest-neighbour similarity is flagged as a possible copy.
"""

from __future__ import annotations

import itertools

import numpy as np

from flowlet.errors import FlowletError


def _normalised_rows(volumes: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Each volume's masked voxels, centred and scaled to unit norm (so a dot product is a correlation)."""
    rows = np.stack([np.asarray(volume, dtype=np.float32)[mask] for volume in volumes]).astype(np.float64)
    rows -= rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (rows / norms).astype(np.float32)


def nearest_training_similarity(
    queries: list[np.ndarray], training: list[np.ndarray], mask: np.ndarray, max_shift: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """For every query volume: the highest shifted correlation with any training volume, and that volume's index."""
    if not training:
        raise FlowletError("memorisation: there are no real training images to compare with")
    if max_shift < 0:
        raise FlowletError(f"memorisation: the maximum shift must be >= 0 voxels, got {max_shift}")
    if not queries:
        return np.zeros(0), np.zeros(0, dtype=int)
    reference = _normalised_rows(training, mask)
    best = np.full((len(queries), len(training)), -np.inf, dtype=np.float32)
    shifts = range(-max_shift, max_shift + 1)
    for shift in itertools.product(shifts, shifts, shifts):
        # np.roll wraps around the edges, which only moves background into the mask's far side.
        shifted = [np.roll(query, shift, axis=(0, 1, 2)) for query in queries]
        best = np.maximum(best, _normalised_rows(shifted, mask) @ reference.T)
    return best.max(axis=1).astype(float), best.argmax(axis=1)


def memorisation_threshold(test_similarities: np.ndarray, percentile: float = 99.0) -> float:
    """The given percentile of the real test images' nearest-training similarity."""
    _require_test_images(len(test_similarities))
    return float(np.percentile(test_similarities, percentile))


def share_flagged_by_chance(n_test: int, percentile: float = 99.0) -> float:
    """The expected share of volumes flagged when they are as varied as the real test images (exchangeable with them).

    A new draw exceeds the k-th smallest of n_test values with probability (n_test + 1 - k) / (n_test + 1); the
    threshold interpolates between two of them (numpy's default), and so, about, does this share. With 21 test
    images and the 99th percentile it is 0.055: 24 real-like volumes would flag 1.3 on average, and none only 38%
    of the time.
    """
    _require_test_images(n_test)
    position = percentile / 100 * (n_test - 1)
    return (n_test - position) / (n_test + 1)


def _require_test_images(n_test: int) -> None:
    if n_test < 1:
        raise FlowletError("memorisation: there are no real test images to set the threshold with")
