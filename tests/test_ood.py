"""The out-of-distribution guard: the Mahalanobis distance, the threshold chosen on val, the unlike set."""

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis

from pneumonia.prediction.ood import UNLIKE_KINDS, catch_rates, fit_guard, reason, turned_copies, unlike_images


def test_distance_is_scipys_mahalanobis_and_the_threshold_is_vals_quantile():
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (500, 6)) * [1, 2, 3, 1, 1, 1]
    val = rng.normal(0, 1, (200, 6)) * [1, 2, 3, 1, 1, 1]
    guard = fit_guard(train, val, quantile=0.95)
    expected = [mahalanobis(v, guard.mean, guard.precision) for v in val[:5]]
    assert guard.distance(val[:5]) == pytest.approx(expected)
    assert np.mean(guard.unlike(val)) == pytest.approx(0.05, abs=0.006)
    assert guard.unlike(np.full((1, 6), 20.0))[0]
    assert reason(41.23, 18.7) == "unlike the training images: distance 41.2 > 18.7"


def test_the_unlike_set_is_made_offline_deterministically_with_every_kind():
    chests = np.random.default_rng(1).integers(0, 256, (8, 64, 64), dtype=np.uint8)
    no_lungs = np.zeros((2, 64, 64), np.uint8)
    first = unlike_images(32, chests, seed=3, no_lungs=no_lungs)
    second = unlike_images(32, chests, seed=3, no_lungs=no_lungs)
    assert [(k, n) for k, n, _ in first] == [(k, n) for k, n, _ in second]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(first, second))
    assert {k for k, _, _ in first} == set(UNLIKE_KINDS)
    assert all(image.shape == (32, 32) and image.dtype == np.uint8 for _, _, image in first)
    kinds = [k for k, _, _ in first]
    assert kinds.count("photograph") >= 10 and kinds.count("dicom_other_modality") >= 5
    rates = catch_rates(kinds, np.array([k != "noise" for k in kinds]))
    assert rates["by_kind"]["noise"]["rate"] == 0 and rates["by_kind"]["blank"]["rate"] == 1
    assert rates["caught"] == len(kinds) - kinds.count("noise")


def test_the_orientation_check_refuses_turned_features_and_keeps_its_share_of_val():
    """Features of 'upright' images differ from their turned copies' along one direction the distance hardly sees."""
    rng = np.random.default_rng(4)
    upright, turned = rng.normal(0, 1, (1000, 64)), rng.normal(0, 1, (1000, 64))
    val, test_turned = rng.normal(0, 1, (800, 64)), rng.normal(0, 1, (800, 64))
    for features, shift in ((upright, 2.0), (val, 2.0), (turned, -2.0), (test_turned, -2.0)):
        features[:, 0] += shift
    plain = fit_guard(upright, val, quantile=0.95)
    guard = fit_guard(upright, val, quantile=0.95, turned_features=turned)
    assert plain.upright is None and np.mean(plain.unlike(test_turned)) < 0.5  # the distance alone lets most through
    assert np.mean(guard.unlike(test_turned)) > 0.9
    # Each check refuses half the share: together about 1 - quantile of val, as the distance alone did.
    assert np.mean(guard.unlike(val)) == pytest.approx(0.05, abs=0.015)
    assert np.mean(guard.distance(val) > guard.threshold) == pytest.approx(0.025, abs=0.006)
    row = test_turned[guard.upright_score(test_turned) < guard.upright_threshold][:1]
    why = guard.why(float(guard.distance(row)[0]), float(guard.upright_score(row)[0]))
    assert "not an upright chest in normal polarity" in why


def test_turned_copies_are_seeded_and_a_quarter_of_each_turn():
    images = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
    first, again = turned_copies(images, 4, seed=1), turned_copies(images, 4, seed=1)
    assert np.array_equal(first, again) and first.shape == (4, 4, 4)
    picked = np.random.default_rng(1).choice(6, 4, replace=False)
    assert np.array_equal(first[0], 255 - images[picked[0]]) and np.array_equal(first[2], np.rot90(images[picked[2]], 2))
    assert len(turned_copies(images, 100, seed=1)) == 6
