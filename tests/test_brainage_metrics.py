"""Brain-age metrics against hand-computed values, the age-bias correction, and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from flowlet.brainage.metrics import (
    BiasCorrection,
    bootstrap_mae,
    bootstrap_mae_difference,
    bootstrap_resamples,
    regression_metrics,
)
from flowlet.errors import FlowletError


def test_metrics_match_hand_computed_values():
    true = np.array([20.0, 30.0, 40.0, 50.0])
    predicted = np.array([22.0, 27.0, 40.0, 55.0])
    result = regression_metrics(true, predicted)
    # errors 2, -3, 0, 5
    assert result["mae"] == pytest.approx(2.5)
    assert result["rmse"] == pytest.approx(np.sqrt((4 + 9 + 0 + 25) / 4))
    assert result["r2"] == pytest.approx(1 - 38 / 500)
    assert result["r"] == pytest.approx(np.corrcoef(true, predicted)[0, 1])


def test_metrics_of_a_constant_prediction():
    result = regression_metrics(np.array([20.0, 40.0]), np.array([30.0, 30.0]))
    assert result["mae"] == 10 and np.isnan(result["r"]) and result["r2"] == pytest.approx(0.0)
    with pytest.raises(FlowletError):
        regression_metrics(np.array([]), np.array([]))


def test_bias_correction_removes_a_known_linear_bias():
    rng = np.random.default_rng(0)
    train_ages = rng.uniform(20, 80, 300)
    # Regression to the mean: predictions = 0.6 * age + 20 (+ noise).
    train_predicted = 0.6 * train_ages + 20 + rng.normal(0, 1, 300)
    correction = BiasCorrection.fit(train_ages, train_predicted)
    assert correction.slope == pytest.approx(0.6, abs=0.02)
    assert correction.intercept == pytest.approx(20, abs=1.0)
    test_ages = np.array([25.0, 50.0, 75.0])
    corrected = correction.apply(0.6 * test_ages + 20)
    np.testing.assert_allclose(corrected, test_ages, atol=1.0)
    assert correction.usable
    assert not BiasCorrection.fit(train_ages, np.full(300, 47.0) + rng.normal(0, 0.1, 300)).usable


def test_bootstrap_interval_covers_a_known_difference():
    rng = np.random.default_rng(1)
    covered = 0
    trials = 40
    for trial in range(trials):
        n = 60
        reference = np.abs(rng.normal(0, 6, n))
        augmented = reference - 1.0 + rng.normal(0, 1.0, n)  # true MAE difference: -1
        resamples = bootstrap_resamples(n, 1000, seed=trial)
        low, high = bootstrap_mae_difference(augmented, reference, resamples)
        assert np.isfinite([low, high]).all() and low < high
        covered += low <= -1.0 <= high
    # Nominal 95%: allow for Monte Carlo error across 40 trials.
    assert covered >= 33


def test_paired_bootstrap_is_narrower_than_unpaired_and_mae_interval_brackets_the_mean():
    rng = np.random.default_rng(2)
    reference = np.abs(rng.normal(0, 6, 80))
    augmented = reference + 0.5 + rng.normal(0, 0.2, 80)
    resamples = bootstrap_resamples(80, 2000, seed=0)
    low, high = bootstrap_mae_difference(augmented, reference, resamples)
    assert low > 0  # a consistent improvement of 0.5 is detected when the comparison is paired
    other = bootstrap_resamples(80, 2000, seed=1)
    unpaired = resamples.means(augmented) - other.means(reference)
    assert high - low < np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5)
    mae_low, mae_high = bootstrap_mae(reference, resamples)
    assert mae_low < reference.mean() < mae_high


def test_bootstrap_resamples_are_reproducible_and_validated():
    np.testing.assert_array_equal(bootstrap_resamples(5, 10, 3).indices, bootstrap_resamples(5, 10, 3).indices)
    with pytest.raises(FlowletError):
        bootstrap_resamples(0, 10, 0)


def test_several_scans_of_one_subject_are_resampled_together():
    """Two sessions of each subject with the same error carry no more information than one: the interval must be
    that of the subjects, not the narrower one of twice as many independent scans."""
    errors = np.abs(np.random.default_rng(3).normal(0, 6, 40))
    subjects = np.repeat([f"sub-{index:02d}" for index in range(40)], 2)
    by_subject = bootstrap_mae(np.repeat(errors, 2), bootstrap_resamples(80, 2000, seed=0, subjects=subjects))
    assert by_subject == pytest.approx(bootstrap_mae(errors, bootstrap_resamples(40, 2000, seed=0)))
    naive_low, naive_high = bootstrap_mae(np.repeat(errors, 2), bootstrap_resamples(80, 2000, seed=0))
    assert naive_high - naive_low < 0.8 * (by_subject[1] - by_subject[0])
    # One scan per subject: exactly the plain scan bootstrap, so datasets without sessions keep their numbers.
    single = bootstrap_resamples(40, 50, seed=4, subjects=[f"sub-{index}" for index in range(40)])
    np.testing.assert_array_equal(single.indices, bootstrap_resamples(40, 50, seed=4).indices)


def test_cross_validation_keeps_a_subjects_scans_in_one_fold():
    from flowlet.brainage.regressors import cv_splits

    subjects = np.repeat([f"sub-{index:02d}" for index in range(10)], 2)
    for train, held in cv_splits(len(subjects), 5, seed=0, groups=subjects):
        assert not set(subjects[train]) & set(subjects[held])
    # One scan per subject: the shuffled KFold of before, fold for fold.
    plain = cv_splits(20, 5, seed=0)
    unique = cv_splits(20, 5, seed=0, groups=[f"sub-{index}" for index in range(20)])
    assert all((a[1] == b[1]).all() for a, b in zip(plain, unique))
