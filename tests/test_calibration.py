import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import brier_score_loss

from pneumonia.evaluation.calibration import (
    probability,
    binary_nll,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)


def make_predictions(seed: int = 0, n: int = 1000):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probs = np.clip(0.3 * labels + rng.normal(0.35, 0.2, n), 0, 1)
    return labels, probs


def loop_ece(labels, probs, bins):
    """ECE written out bin by bin, straight from the definition."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for i in range(bins):
        lo, hi = edges[i], edges[i + 1]
        inside = (probs >= lo) & ((probs < hi) if i < bins - 1 else (probs <= hi))
        if inside.any():
            total += inside.sum() / len(probs) * abs(labels[inside].mean() - probs[inside].mean())
    return total


def test_brier_score_matches_scikit_learn():
    labels, probs = make_predictions()
    assert brier_score(labels, probs) == pytest.approx(brier_score_loss(labels, probs), abs=1e-12)
    assert brier_score([], []) is None


@pytest.mark.parametrize("bins", [15, 10, 1])
def test_ece_matches_the_loop_definition(bins):
    labels, probs = make_predictions()
    # Values on bin edges, 0 and 1 included, land in the same bin as in the loop.
    probs[: bins + 1] = np.linspace(0, 1, bins + 1)
    probs[bins + 1 : bins + 4] = [0.2, 0.4, 0.6]  # edges for 15 and 10 bins, as written, not as linspace computes them
    assert expected_calibration_error(labels, probs, bins) == pytest.approx(loop_ece(labels, probs, bins), abs=1e-12)


def test_ece_of_calibrated_and_hand_examples():
    assert expected_calibration_error([1, 0, 1, 0], [1.0, 0.0, 1.0, 0.0]) == 0.0
    # All in one bin: |0.5 - 0.9| = 0.4.
    assert expected_calibration_error([1, 0], [0.9, 0.9]) == pytest.approx(0.4)
    assert expected_calibration_error([], []) is None
    rng = np.random.default_rng(1)
    probs = rng.uniform(0, 1, 200_000)
    assert expected_calibration_error(rng.uniform(0, 1, probs.size) < probs, probs) < 0.01
    with pytest.raises(ValueError, match="sigmoid"):
        expected_calibration_error([1], [2.0])


def test_reliability_curve_points():
    labels, probs = make_predictions()
    curve = reliability_curve(labels, probs, bins=15)
    assert sum(point["count"] for point in curve) == len(labels)
    edges = np.linspace(0, 1, 16)
    for point in curve:
        i = int(point["bin_centre"] * 15)
        inside = (probs >= edges[i]) & ((probs < edges[i + 1]) if i < 14 else (probs <= 1))
        assert point["bin_centre"] == pytest.approx((edges[i] + edges[i + 1]) / 2)
        assert point["count"] == inside.sum()
        assert point["mean_predicted"] == pytest.approx(probs[inside].mean())
        assert point["observed_fraction"] == pytest.approx(labels[inside].mean())
    # ECE is the count-weighted gap of the diagram's points.
    gap = sum(p["count"] * abs(p["observed_fraction"] - p["mean_predicted"]) for p in curve) / len(labels)
    assert gap == pytest.approx(expected_calibration_error(labels, probs))
    assert all(p["count"] > 0 for p in reliability_curve([1, 0], [0.01, 0.99]))


@pytest.mark.parametrize("true_temperature", [0.5, 2.0, 3.0])
def test_fit_temperature_recovers_a_known_temperature(true_temperature):
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 4, 20_000)
    # Labels drawn so that sigmoid(logit / T_true) is calibrated.
    labels = (rng.uniform(size=logits.size) < expit(logits / true_temperature)).astype(int)
    fitted = fit_temperature(labels, logits)
    assert fitted == pytest.approx(true_temperature, rel=0.1)
    assert binary_nll(labels, logits / fitted) <= binary_nll(labels, logits)
    # Scaling improves calibration: ECE falls.
    before = expected_calibration_error(labels, expit(logits))
    after = expected_calibration_error(labels, probability(logits, fitted))
    assert after < before


def test_nll_after_scaling_is_never_worse():
    labels, probs = make_predictions(3)
    logits = np.log(np.clip(probs, 1e-6, 1 - 1e-6) / np.clip(1 - probs, 1e-6, 1))
    fitted = fit_temperature(labels, logits)
    assert binary_nll(labels, logits / fitted) <= binary_nll(labels, logits) + 1e-12


def test_binary_nll_matches_the_log_formula():
    labels = np.array([1, 0, 1, 0])
    logits = np.array([2.0, -1.0, -0.5, 3.0])
    p = expit(logits)
    assert binary_nll(labels, logits) == pytest.approx(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    assert np.isfinite(binary_nll(np.array([0]), np.array([800.0])))  # stable where sigmoid saturates


def test_temperature_one_is_identity_and_ranking_is_kept():
    logits = np.linspace(-8, 8, 33)
    assert np.array_equal(probability(logits, 1.0), expit(logits))
    scaled = probability(logits, 2.5)
    assert np.all(np.diff(scaled) > 0)
    with pytest.raises(ValueError, match="> 0"):
        probability(logits, 0.0)


def test_fit_temperature_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature(np.ones(10), np.linspace(-1, 1, 10))
