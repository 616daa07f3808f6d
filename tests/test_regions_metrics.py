"""Each metric of the regional analysis against a case whose answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from flowlet.errors import FlowletError
from flowlet.regions.atlas import TISSUE_LABEL, load_atlas
from flowlet.regions.measures import ImageEntry, MeasuredImage, region_mask
from flowlet.regions.memorisation import (
    chance_flagged_at_least,
    leave_one_out_similarity,
    memorisation_reference,
    memorisation_threshold,
    nearest_training_similarity,
    share_flagged_by_chance,
)
from flowlet.regions.paired import compare_pair, dice, histogram_distances, pair_by_age
from flowlet.regions.realism import (
    FeatureProjection,
    frechet_distance,
    frechet_distance_from_moments,
    mean_ms_ssim,
    mmd_rbf,
    ms_ssim3d,
    sample_pairs,
    ssim3d,
)
from flowlet.regions.trajectories import ols_slope, slope_agreement, slopes_table


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(2)


# Atlas ------------------------------------------------------------------------------------------------


def test_atlas_has_the_regions_the_ageing_analysis_needs(atlas):
    shape = atlas.labels.shape
    assert shape == (91, 109, 91)
    names = {region.name for region in atlas.regions}
    for needed in (
        "Left-Lateral-Ventricle",
        "Right-Hippocampus",
        "Left-Thalamus-Proper",
        "ctx-lh-precentral",
        "ventricles",
        "hippocampus",
        "thalamus",
        "cortex",
        "brain",
    ):
        assert needed in names
    assert atlas.region("ventricles").tissue == "csf"
    assert atlas.region("cortex").tissue == "grey"
    assert atlas.region("Left-Cerebral-White-Matter").tissue == "white"
    # Cortical regions are grey matter and there are 34 per hemisphere at most (DK protocol).
    cortical = [region for region in atlas.atlas_regions if region.kind == "cortical"]
    assert 60 <= len(cortical) <= 68
    # Single regions tile the atlas without overlap; the left hippocampus lies left of the midline (x < 0 mm).
    voxels = np.concatenate([region.voxels for region in atlas.atlas_regions])
    assert len(voxels) == len(np.unique(voxels))
    centre = np.array(np.unravel_index(atlas.region("Left-Hippocampus").voxels, shape)).mean(axis=1)
    assert (atlas.affine @ np.append(centre, 1))[0] < -10


def test_atlas_region_lookup_names_the_missing_region(atlas):
    with pytest.raises(FlowletError, match="no region named 'Nucleus-Imaginarius'"):
        atlas.region("Nucleus-Imaginarius")


# Paired analysis ----------------------------------------------------------------------------------------


def test_dice_known_values():
    a = np.zeros(10, bool)
    b = np.zeros(10, bool)
    a[:4], b[2:6] = True, True
    assert dice(a, b) == pytest.approx(2 * 2 / 8)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert np.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_histogram_distances_known_values():
    same = np.array([0.0, 0.5, 1.0, 1.0])
    assert histogram_distances(same, same.copy(), bins=4) == {"mae": 0.0, "mse": 0.0, "kl": 0.0}
    # Two bins over [0, 1]: p = (1, 0), q = (0.5, 0.5): |p - q| = (0.5, 0.5).
    result = histogram_distances(np.array([0.0, 0.1]), np.array([0.0, 1.0]), bins=2)
    assert result["mae"] == pytest.approx(0.5)
    assert result["mse"] == pytest.approx(0.25)
    assert result["kl"] == pytest.approx(np.log(2.0), rel=1e-6)
    assert all(np.isnan(v) for v in histogram_distances(np.array([]), same, bins=4).values())


def test_pairing_sorts_by_age_and_never_reuses_an_image():
    assert pair_by_age([50, 20, 35], [36, 49, 21]) == [(1, 2), (2, 0), (0, 1)]
    pairs = pair_by_age([20, 30, 40, 50, 60], [58, 41])
    assert pairs == [(2, 1), (4, 0)]
    assert pair_by_age([], [1.0]) == []


def _template_like_segmentation(atlas) -> tuple[np.ndarray, np.ndarray]:
    from flowlet.data.templates import template_t1, template_tissue_priors

    priors = template_tissue_priors(2)
    stacked = np.stack([priors[name].get_fdata() for name in ("csf", "grey", "white")])
    labels = np.where(stacked.sum(0) > 0.1, stacked.argmax(0) + 1, 0).astype(np.uint8)
    return np.asarray(template_t1(2).get_fdata(), dtype=np.float32), labels


def test_identical_images_give_dice_one_and_zero_histogram_distances(atlas):
    intensities, labels = _template_like_segmentation(atlas)
    entry = ImageEntry("sub-a", "train", 40.0, "F", "40-50", Path("a.nii.gz"))
    image = MeasuredImage(entry, intensities, labels)
    rows = compare_pair(image, MeasuredImage(entry, intensities.copy(), labels.copy()), atlas, bins=256)
    assert len(rows) == len(atlas.regions)
    compared = [row for row in rows if region_mask(labels, atlas.region(row["region"])).any()]
    assert len(compared) > 0.9 * len(rows)
    for row in compared:
        assert row["dice"] == 1.0
        for key in ("mae_intersection", "mse_intersection", "kl_intersection", "mae_union", "mse_union", "kl_union"):
            assert row[key] == 0.0, (row["region"], key)


def test_different_images_give_lower_dice_and_positive_distances(atlas):
    intensities, labels = _template_like_segmentation(atlas)
    entry = ImageEntry("sub-a", "train", 40.0, "F", "40-50", Path("a.nii.gz"))
    # Shifting by two voxels moves every tissue boundary; intensities shift with it.
    moved = MeasuredImage(entry, np.roll(intensities, 2, axis=0) * 1.1, np.roll(labels, 2, axis=0))
    rows = {
        row["region"]: row for row in compare_pair(MeasuredImage(entry, intensities, labels), moved, atlas, bins=256)
    }
    assert 0.2 < rows["cortex"]["dice"] < 0.95
    assert rows["cortex"]["mae_union"] > 0 and rows["cortex"]["kl_union"] > 0


def test_brain_mask_ignores_noisy_background_outside_the_brain_limit():
    from flowlet.regions.tissue import brain_mask_of

    image = np.zeros((30, 30, 30), np.float32)
    image[8:22, 8:22, 8:22] = 1.0
    image[12:16, 12:16, 12:16] = 0.0  # a hole, e.g. a ventricle of value 0 after z-scoring
    assert brain_mask_of(image).sum() == 14**3
    noisy = image + np.random.default_rng(0).normal(0, 0.01, image.shape).astype(np.float32)
    limit = np.zeros(image.shape, bool)
    limit[6:24, 6:24, 6:24] = True
    mask = brain_mask_of(noisy, fallback=limit)
    assert mask[8:22, 8:22, 8:22].all() and not mask[:6].any()


# Trajectories -----------------------------------------------------------------------------------------


def test_ols_slope_recovers_a_simulated_slope_within_its_interval():
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 60)
    volumes = 30.0 + 0.25 * ages + rng.normal(0, 1.0, ages.size)
    fit = ols_slope(ages, volumes)
    assert fit["ci_low"] < 0.25 < fit["ci_high"]
    assert fit["ci_high"] - fit["ci_low"] < 0.1
    assert fit["n"] == 60
    # The interval has the nominal coverage: about 95 of 100 simulated studies contain the true slope.
    covered = 0
    for seed in range(200):
        r = np.random.default_rng(seed)
        x = r.uniform(20, 80, 15)
        f = ols_slope(x, 5 - 0.1 * x + r.normal(0, 2, 15))
        covered += f["ci_low"] < -0.1 < f["ci_high"]
    assert 180 <= covered <= 198


def test_ols_slope_is_undefined_without_age_spread():
    assert np.isnan(ols_slope(np.array([40.0, 40.0, 40.0]), np.array([1.0, 2.0, 3.0]))["slope"])
    assert np.isnan(ols_slope(np.array([30.0, 40.0]), np.array([1.0, 2.0]))["slope"])


def test_slopes_table_and_their_agreement_across_regions():
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    true = {"a": 0.5, "b": -0.2, "c": 0.1, "d": 0.0}
    for group, ages in (("train", rng.uniform(20, 80, 40)), ("synthetic", rng.uniform(20, 80, 40))):
        for age in ages:
            for region, slope in true.items():
                volume = 50 + slope * age + rng.normal(0, 0.5)
                rows.append(
                    {
                        "image_id": f"{group}{age}",
                        "group": group,
                        "age": age,
                        "region": region,
                        "region_tissue": "grey",
                        "volume_ml": volume,
                        "tissue_fraction": volume / 100,
                    }
                )
    table = slopes_table(pd.DataFrame(rows))
    assert set(table["measure"]) == {"volume_ml", "tissue_fraction"}
    slopes = table[table["measure"] == "volume_ml"].set_index("region")
    fractions = table[table["measure"] == "tissue_fraction"].set_index("region")
    for region, slope in true.items():
        assert slopes.loc[region, "real_ci_low"] < slope < slopes.loc[region, "real_ci_high"]
        assert slopes.loc[region, "difference_ci_low"] < 0 < slopes.loc[region, "difference_ci_high"]
        assert fractions.loc[region, "real_slope"] == pytest.approx(slopes.loc[region, "real_slope"] / 100)
    assert slope_agreement(table, set(true))["pearson_r"] > 0.95


# Realism ----------------------------------------------------------------------------------------------


def test_frechet_distance_of_gaussians_known_answer():
    # Diagonal covariances: ||mu_a - mu_b||^2 + sum (sigma_a - sigma_b)^2.
    mean_a, mean_b = np.array([0.0, 1.0]), np.array([3.0, 1.0])
    cov_a, cov_b = np.diag([1.0, 4.0]), np.diag([4.0, 9.0])
    assert frechet_distance_from_moments(mean_a, cov_a, mean_b, cov_b) == pytest.approx(9 + 1 + 1)
    sample = np.random.default_rng(0).normal(size=(50, 3))
    assert frechet_distance(sample, sample) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(sample, sample + 2.0) == pytest.approx(12.0, rel=1e-6)


def test_mmd_known_answer_and_behaviour():
    a, b = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    # Unbiased estimate with bandwidth 1 written out by hand.
    k = lambda d: np.exp(-(d**2) / 2)  # noqa: E731
    expected = k(1.0) + k(2.0) - 2 * np.mean([k(0), k(2), k(1), k(1)])
    assert mmd_rbf(a, b, bandwidth=1.0) == pytest.approx(expected)
    rng = np.random.default_rng(1)
    same = mmd_rbf(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)))
    shifted = mmd_rbf(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 1.0)
    assert abs(same) < 0.01 < shifted


def test_feature_projection_is_fitted_on_training_only():
    rng = np.random.default_rng(2)
    training = rng.normal(size=(12, 30)) * np.arange(1, 31)
    projection = FeatureProjection(training, components=50)
    assert projection.components == 11  # fewer components than training images
    projected = projection(training)
    assert projected.shape == (12, 11)
    np.testing.assert_allclose(projected.mean(axis=0), 0, atol=1e-9)
    with_missing = training[:2].copy()
    with_missing[0, 3] = np.nan
    assert np.isfinite(projection(with_missing)).all()


def test_ssim_matches_scikit_image_and_ms_ssim_of_identical_volumes_is_one():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.normal(size=(30, 34, 28)), 2)
    b = a + rng.normal(0, 0.05, a.shape)
    data_range = float(a.max() - a.min())
    expected = structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim3d(a, b, data_range) == pytest.approx(expected, abs=1e-6)
    volume = ndimage.gaussian_filter(rng.normal(size=(91, 109, 91)), 2).astype(np.float32)
    volume -= volume.min()
    span = float(volume.max())
    assert ms_ssim3d(volume, volume, span) == pytest.approx(1.0, abs=1e-6)
    noisy = ms_ssim3d(volume, volume + rng.normal(0, 0.1 * span, volume.shape).astype(np.float32), span)
    unrelated = ms_ssim3d(volume, np.roll(volume, 20, axis=0), span)
    assert unrelated < noisy < 1.0
    with pytest.raises(FlowletError, match="too small"):
        ms_ssim3d(volume[:40], volume[:40], span, scales=4)


def test_mean_ms_ssim_filters_each_volume_once_and_gives_what_it_gave_pair_by_pair(monkeypatch):
    from flowlet.regions import realism

    rng = np.random.default_rng(1)
    volumes = [ndimage.gaussian_filter(rng.normal(size=(48, 52, 44)), 2).astype(np.float32) for _ in range(4)]
    window = (-0.2, 0.25)
    pairs = [(volumes[i], volumes[j]) for i, j in sample_pairs(4, None, 10, 0)]
    built = []
    pyramid = realism._pyramid
    monkeypatch.setattr(realism, "_pyramid", lambda *args, **kwargs: built.append(1) or pyramid(*args, **kwargs))
    # The value of the code before volumes were reused, which filtered each pair's five maps on their own.
    assert mean_ms_ssim(pairs, window, scales=2) == pytest.approx(0.06431948572022485, rel=1e-6)
    assert len(built) == 4
    # Room for two volumes' maps only: evicted ones are filtered again, with the same result.
    built.clear()
    assert mean_ms_ssim(pairs, window, scales=2, cache_bytes=1) == pytest.approx(0.06431948572022485, rel=1e-6)
    assert len(built) > 4
    assert mean_ms_ssim([(volumes[0], volumes[0])], window, scales=2) == pytest.approx(1.0, abs=1e-6)


def test_sample_pairs_caps_and_is_reproducible():
    assert sample_pairs(4, None, 100, 0) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(sample_pairs(3, 5, 100, 0)) == 15
    assert sample_pairs(30, None, 10, 3) == sample_pairs(30, None, 10, 3)
    assert len(sample_pairs(30, None, 10, 3)) == 10


# Age fidelity ------------------------------------------------------------------------------------------


def test_fidelity_tables_known_values():
    from flowlet.regions.fidelity import fidelity_tables

    entries = [
        ImageEntry("s1", "synthetic", 70.0, "F", "70-80", Path("s1.nii.gz")),
        ImageEntry("s2", "synthetic", 75.0, "F", "70-80", Path("s2.nii.gz")),
        ImageEntry("s3", "synthetic", 22.0, "M", "20-30", Path("s3.nii.gz")),
        ImageEntry("t1", "test", 40.0, "M", "40-50", Path("t1.nii.gz")),
    ]
    per_image, summary = fidelity_tables(entries, np.array([72.0, 71.0, 22.0, 45.0]))
    assert per_image["error"].tolist() == [2.0, -4.0, 0.0, 5.0]
    table = summary.set_index(["set", "age_bin"])
    old = table.loc[("synthetic (requested age)", "70-80")]
    assert old["n"] == 2 and old["mae"] == pytest.approx(3.0) and old["mean_error"] == pytest.approx(-1.0)
    overall = table.loc[("synthetic (requested age)", "all")]
    assert overall["mae"] == pytest.approx(2.0) and overall["r"] > 0.99
    assert table.loc[("real test (true age)", "all"), "mae"] == pytest.approx(5.0)


# Memorisation ------------------------------------------------------------------------------------------


def _smooth_volumes(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [ndimage.gaussian_filter(rng.normal(size=(24, 26, 22)), 1.5).astype(np.float32) for _ in range(count)]


def test_a_shifted_copy_of_a_training_volume_is_flagged_as_memorised():
    training, test, fresh = _smooth_volumes(6, 0), _smooth_volumes(6, 1), _smooth_volumes(3, 2)
    mask = np.zeros((24, 26, 22), bool)
    mask[3:-3, 3:-3, 3:-3] = True
    rng = np.random.default_rng(3)
    copy = np.roll(training[4], (1, -1, 0), axis=(0, 1, 2)) + rng.normal(0, 0.01, training[4].shape).astype(np.float32)
    test_best, _ = nearest_training_similarity(test, training, mask, max_shift=1)
    synthetic_best, nearest = nearest_training_similarity(fresh + [copy], training, mask, max_shift=1)
    threshold = memorisation_threshold(test_best, 99.0)
    flagged = synthetic_best > threshold
    assert flagged.tolist() == [False, False, False, True]
    assert nearest[-1] == 4
    # Not 1: the shift brings the mask's outer layer from outside it, where every volume counts as its mean.
    assert synthetic_best[-1] > 0.9
    # Without the shift search the displaced copy would hide among unrelated volumes.
    unshifted, _ = nearest_training_similarity([copy], training, mask, max_shift=0)
    assert unshifted[0] < synthetic_best[-1]


def test_what_lies_outside_the_mask_does_not_change_a_similarity():
    # Real images keep tissue and background outside the template mask, generated ones are saved with 0 there;
    # the shifts must not let that difference count.
    training, queries = _smooth_volumes(4, 0), _smooth_volumes(3, 7)
    mask = np.zeros((24, 26, 22), bool)
    mask[3:-3, 3:-3, 3:-3] = True
    masked = [np.where(mask, query, query[mask].mean()) for query in queries]
    as_is, nearest = nearest_training_similarity(queries, training, mask, max_shift=1)
    as_saved, nearest_saved = nearest_training_similarity(masked, training, mask, max_shift=1)
    np.testing.assert_allclose(as_is, as_saved, atol=1e-6)
    assert nearest.tolist() == nearest_saved.tolist()


def test_the_threshold_counts_training_images_against_other_people_only():
    people = _smooth_volumes(5, 4)
    rng = np.random.default_rng(5)
    # A second session of person "b": the same brain, scanned again.
    rescan = people[1] + rng.normal(0, 0.01, people[1].shape).astype(np.float32)
    training = [*people, rescan]
    mask = np.zeros(people[0].shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    by_scan, scan_nearest = leave_one_out_similarity(training, ["a", "b", "c", "d", "e", "f"], mask)
    by_person, person_nearest = leave_one_out_similarity(training, ["a", "b", "c", "d", "e", "b"], mask)
    unrelated, _ = nearest_training_similarity(_smooth_volumes(4, 6), people, mask)
    # Taken for different people, the two sessions would set the threshold at a copy's similarity.
    assert by_scan[1] > 0.95 and by_scan[5] > 0.95
    assert by_person.max() < 0.95
    assert scan_nearest[1] == 5 and scan_nearest[5] == 1
    assert person_nearest[1] not in (1, 5) and person_nearest[5] not in (1, 5)
    assert by_person.max() < unrelated.max() + 0.1
    np.testing.assert_allclose(np.delete(by_person, [1, 5]), np.delete(by_scan, [1, 5]))
    reference = memorisation_reference(_smooth_volumes(4, 6), training, ["a", "b", "c", "d", "e", "b"], mask)
    assert len(reference.similarities) == 10
    assert reference.threshold == pytest.approx(np.percentile(np.concatenate([unrelated, by_person]), 99.0))
    assert leave_one_out_similarity(training[:2], ["a", "a"], mask)[0].size == 0
    with pytest.raises(FlowletError, match="2 subject id"):
        leave_one_out_similarity(training[:3], ["a", "b"], mask)


def test_the_share_flagged_by_chance_is_what_real_like_volumes_give():
    # Draws from one distribution: "test" set the threshold, the others are flagged above it.
    rng = np.random.default_rng(0)
    for n_test, percentile in [(21, 99.0), (9, 99.0), (40, 95.0)]:
        draws = rng.random((20000, n_test + 30))
        thresholds = np.percentile(draws[:, :n_test], percentile, axis=1)
        simulated = (draws[:, n_test:] > thresholds[:, None]).mean()
        assert share_flagged_by_chance(n_test, percentile) == pytest.approx(simulated, abs=0.003)
    with pytest.raises(FlowletError, match="no real test images"):
        share_flagged_by_chance(0)


def test_the_chance_of_as_many_flagged_is_what_real_like_volumes_give():
    # One threshold serves all volumes, so counts spread wider than a binomial's: 24 volumes against 80 real
    # images flag none about 62% of the time, not the binomial's 59%.
    rng = np.random.default_rng(1)
    n_real, n_volumes = 80, 24
    draws = rng.random((40000, n_real + n_volumes))
    thresholds = np.percentile(draws[:, :n_real], 99.0, axis=1)
    counts = (draws[:, n_real:] > thresholds[:, None]).sum(axis=1)
    for n_flagged in [0, 1, 2, 3]:
        simulated = (counts >= n_flagged).mean()
        assert chance_flagged_at_least(n_flagged, n_volumes, n_real) == pytest.approx(simulated, abs=0.01)
    binomial_none = (1 - share_flagged_by_chance(n_real)) ** n_volumes
    assert 1 - chance_flagged_at_least(1, n_volumes, n_real) > binomial_none + 0.02


def test_memorisation_needs_training_and_test_images():
    volumes = _smooth_volumes(2, 0)
    mask = np.ones(volumes[0].shape, bool)
    with pytest.raises(FlowletError, match="no real training images"):
        nearest_training_similarity(volumes, [], mask)
    with pytest.raises(FlowletError, match="no real test images"):
        memorisation_threshold(np.zeros(0))
    best, nearest = nearest_training_similarity([], volumes, mask)
    assert best.size == 0 and nearest.size == 0


def test_region_mask_is_region_intersected_with_its_tissue(atlas):
    labels = np.zeros(atlas.labels.shape, np.uint8)
    ventricles = atlas.region("ventricles")
    labels.ravel()[ventricles.voxels[:10]] = TISSUE_LABEL["csf"]
    labels.ravel()[ventricles.voxels[10:20]] = TISSUE_LABEL["white"]
    assert region_mask(labels, ventricles).sum() == 10
    brain = atlas.region("brain")
    assert region_mask(labels, brain).sum() == 10  # grey + white: the white voxels only


def test_equal_n_frechet_and_mmd_of_one_distribution_sit_at_the_real_floor():
    from flowlet.regions.realism import equal_n_distance, frechet_distance, mmd_rbf

    rng = np.random.default_rng(4)
    dimensions, n_test = 5, 15
    training = rng.normal(size=(60, dimensions))
    many = rng.normal(size=(300, dimensions))  # a "generator" that samples the real distribution exactly
    for distance in (frechet_distance, mmd_rbf):
        floors = [distance(rng.normal(size=(n_test, dimensions)), training) for _ in range(40)]
        value = equal_n_distance(distance, many, training, n_test, repeats=40, seed=1)
        spread = np.std(floors)
        assert abs(value - np.mean(floors)) < 0.5 * spread + 1e-3, (distance.__name__, value, np.mean(floors), spread)
    frechet_floor = np.mean([frechet_distance(rng.normal(size=(n_test, dimensions)), training) for _ in range(40)])
    # Without equal n the Fréchet distance of 300 perfect samples would look far better than the floor,
    assert frechet_distance(many, training) < 0.6 * frechet_floor
    # and a shifted distribution stays well above the floor at equal n.
    shifted = rng.normal(0.8, 1.0, size=(300, dimensions))
    assert equal_n_distance(frechet_distance, shifted, training, n_test) > 2 * frechet_floor


def test_scorecard_voxel_features_are_8_mm_blocks_on_either_grid():
    from flowlet.regions.scorecard import voxel_features

    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(91, 109, 91)).astype(np.float32)
    fine = coarse.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)  # the same image on the 1 mm grid
    two_mm, one_mm = voxel_features([coarse], 2), voxel_features([fine], 1)
    assert two_mm.shape == (1, 22 * 27 * 22)
    np.testing.assert_allclose(one_mm, two_mm, rtol=1e-5, atol=1e-6)
