"""Memorisation check: how close does each synthetic brain come to its nearest real training brain?

Similarity is the Pearson correlation of intensities inside the template brain mask, maximised over
integer shifts of up to ``max_shift`` voxels along each axis, so that a copy displaced by a few millimetres
is still recognised. Real images give the reference distribution of that highest similarity: the test images
against the training images, and each training image against the training images of everyone else (leave one
person out). A synthetic image more similar to a training image than the 99th percentile of that distribution
is flagged as a possible copy.

Why the training images too: a percentile of 21 test images (IXI's) is not a 99th percentile. It interpolates
between the two largest, so 5.5% of real-like volumes exceed it; with the 60 training images beside them,
2.2% do. A training image is compared with one image fewer than a test image, so its highest similarity is
if anything lower: the pooled threshold errs towards flagging.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

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
    best = _pairwise_similarity(queries, training, mask, max_shift)
    return best.max(axis=1).astype(float), best.argmax(axis=1)


def leave_one_out_similarity(
    training: list[np.ndarray], subjects: Sequence[str], mask: np.ndarray, max_shift: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Each training volume's highest shifted correlation with the training volumes of other subjects (another
    session of the same person would look like a copy), and that volume's index; empty when only one subject
    trained."""
    if len(subjects) != len(training):
        raise FlowletError(f"memorisation: {len(subjects)} subject id(s) for {len(training)} training image(s)")
    if len(set(subjects)) < 2:
        return np.zeros(0), np.zeros(0, dtype=int)
    best = _pairwise_similarity(training, training, mask, max_shift)
    ids = np.asarray(subjects)
    best[ids[:, None] == ids[None, :]] = -np.inf
    return best.max(axis=1).astype(float), best.argmax(axis=1)


def _pairwise_similarity(
    queries: list[np.ndarray], training: list[np.ndarray], mask: np.ndarray, max_shift: int
) -> np.ndarray:
    """The highest correlation over shifts of every query (rows) with every training volume (columns)."""
    reference = _normalised_rows(training, mask)
    best = np.full((len(queries), len(training)), -np.inf, dtype=np.float32)
    # A shift brings what lies outside the mask into it. Real images keep their background there, generated
    # ones are saved with their brain's mean: put every query's mean there, so both are compared alike.
    queries = [np.where(mask, query, np.asarray(query)[mask].mean()) for query in queries]
    shifts = range(-max_shift, max_shift + 1)
    for shift in itertools.product(shifts, shifts, shifts):
        # np.roll wraps around the edges, which only moves background into the mask's far side.
        shifted = [np.roll(query, shift, axis=(0, 1, 2)) for query in queries]
        best = np.maximum(best, _normalised_rows(shifted, mask) @ reference.T)
    return best


@dataclass(frozen=True)
class MemorisationReference:
    """Real images' highest similarity to a training image, and the threshold it sets."""

    test: np.ndarray  # each real test image's, to the training images
    test_nearest: np.ndarray  # the index of that training image
    training: np.ndarray  # each training image's, to the training images of other subjects
    training_nearest: np.ndarray
    percentile: float

    @property
    def similarities(self) -> np.ndarray:
        return np.concatenate([self.test, self.training])

    @property
    def threshold(self) -> float:
        return memorisation_threshold(self.similarities, self.percentile)

    def flags(self, similarities: np.ndarray) -> np.ndarray:
        """Which volumes, by their highest similarity to a training image, are possible copies."""
        return np.asarray(similarities) > self.threshold

    def expected_flagged(self, n_volumes: int) -> float:
        """How many of ``n_volumes`` real-like volumes would be flagged on average."""
        return n_volumes * share_flagged_by_chance(len(self.similarities), self.percentile)

    def chance_of_as_many(self, n_flagged: int, n_volumes: int) -> float:
        """How often ``n_volumes`` real-like volumes would flag ``n_flagged`` or more."""
        return chance_flagged_at_least(n_flagged, n_volumes, len(self.similarities), self.percentile)

    def judge(self, n_flagged: int, n_volumes: int) -> str:
        """The count beside what chance gives, in words."""
        return (
            f"volumes as varied as real ones would flag {self.expected_flagged(n_volumes):.1f} on average, and "
            f"{n_flagged} or more with probability {self.chance_of_as_many(n_flagged, n_volumes):.2f}"
        )

    def describe(self) -> str:
        return (
            f"the {self.percentile:g}th percentile of real images' own ({len(self.test)} test images against the "
            f"training images, {len(self.training)} training images against other subjects')"
        )


def memorisation_reference(
    test: list[np.ndarray],
    training: list[np.ndarray],
    training_subjects: Sequence[str],
    mask: np.ndarray,
    max_shift: int = 1,
    percentile: float = 99.0,
) -> MemorisationReference:
    test_best, test_nearest = nearest_training_similarity(test, training, mask, max_shift)
    training_best, training_nearest = leave_one_out_similarity(training, training_subjects, mask, max_shift)
    return MemorisationReference(test_best, test_nearest, training_best, training_nearest, percentile)


def memorisation_threshold(real_similarities: np.ndarray, percentile: float = 99.0) -> float:
    """The given percentile of real images' highest similarity to a training image (of someone else)."""
    _require_real_images(len(real_similarities))
    return float(np.percentile(real_similarities, percentile))


def share_flagged_by_chance(n_real: int, percentile: float = 99.0) -> float:
    """The expected share of volumes flagged when they are as varied as the ``n_real`` real images that set the
    threshold (exchangeable with them).

    A new draw exceeds the k-th smallest of n values with probability (n + 1 - k) / (n + 1); the threshold
    interpolates between two of them (numpy's default), and so, about, does this share. At the 99th percentile
    it is 0.055 for 21 real images (24 real-like volumes would flag 1.3 on average, and none only 38% of the
    time) and 0.022 for 81 (0.5 on average, none 62% of the time).
    """
    above, below = _share_above_threshold(n_real, percentile)
    return above / (above + below)


def chance_flagged_at_least(n_flagged: int, n_volumes: int, n_real: int, percentile: float = 99.0) -> float:
    """The probability that ``n_volumes`` volumes exchangeable with the ``n_real`` real images flag ``n_flagged`` or
    more.

    The share above the threshold is itself random (the k-th smallest of n uniforms leaves Beta(n + 1 - k, k)
    above it), so the count is beta-binomial, not binomial: one threshold serves all volumes. k is fractional where
    the percentile interpolates, as in :func:`share_flagged_by_chance`.
    """
    above, below = _share_above_threshold(n_real, percentile)
    if n_flagged <= 0:
        return 1.0
    return float(stats.betabinom.sf(n_flagged - 1, n_volumes, above, below))


def _share_above_threshold(n_real: int, percentile: float) -> tuple[float, float]:
    """The Beta(n + 1 - k, k) parameters of the share of real-like draws above the threshold, whose rank k among
    the ``n_real`` real values is fractional where the percentile interpolates."""
    _require_real_images(n_real)
    position = percentile / 100 * (n_real - 1)
    return n_real - position, position + 1


def _require_real_images(n_real: int) -> None:
    if n_real < 1:
        raise FlowletError("memorisation: there are no real test images to set the threshold with")
