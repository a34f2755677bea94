"""The image-level decision: Platt, temperature and isotonic maps, the out-of-fold choice, the model-file round trip."""

import numpy as np
import pytest

from pneumonia.evaluation.calibration import expected_calibration_error
from pneumonia.prediction.decision import Decision, at_prevalence, choose_decision, fit_decision, out_of_fold
from pneumonia.core.errors import DatasetError
from pneumonia.evaluation.operating_points import threshold_for_sensitivity


def shifted_scores(n=600, seed=0):
    """A classifier whose logits are shifted by +2 (no temperature can fix that) and a sharper detector."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.25).astype(int)
    true_logit = np.where(labels == 1, 1.0, -1.0) * 1.5 + rng.normal(0, 1, n)
    classifier = true_logit + 2.0
    detector = 3 * np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 1.5, n)
    return labels, np.stack([classifier, detector], axis=1)


def sensitivity_90(labels, probs):
    return threshold_for_sensitivity(labels, probs, 0.9)


def test_platt_recovers_a_known_slope_and_intercept():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 20000)
    labels = (rng.random(len(z)) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(int)
    decision = fit_decision("classifier", "platt", labels, np.stack([z, np.zeros_like(z)], axis=1))
    assert decision.weights[0] == pytest.approx(0.5, abs=0.03) and decision.intercept == pytest.approx(-1.0, abs=0.05)
    assert decision.weights[1] == 0.0


def test_a_shifted_logit_needs_an_intercept_a_temperature_cannot_fix_it():
    labels, logits = shifted_scores()
    ece = {m: expected_calibration_error(labels, out_of_fold("classifier", m, labels, logits, 5, 0))
           for m in ("temperature", "platt", "isotonic")}
    assert ece["platt"] < 0.06 and ece["temperature"] > 2 * ece["platt"]


def test_platt_on_separable_data_stays_finite():
    labels = np.array([0] * 20 + [1] * 20)
    logits = np.stack([np.r_[np.linspace(-5, -1, 20), np.linspace(1, 5, 20)], np.zeros(40)], axis=1)
    decision = fit_decision("classifier", "platt", labels, logits)
    probs = decision.probability(logits[:, 0], logits[:, 1])
    assert np.isfinite(decision.weights[0]) and 0 < probs.min() and probs.max() < 1


def test_isotonic_is_monotone_and_never_says_zero_or_one():
    labels, logits = shifted_scores()
    decision = fit_decision("detector", "isotonic", labels, logits)
    grid = np.linspace(-20, 20, 500)
    probs = decision.probability(np.zeros_like(grid), grid)
    assert np.all(np.diff(probs) >= 0) and probs.min() >= 1e-3 and probs.max() <= 1 - 1e-3


def test_the_choice_is_the_lowest_out_of_fold_log_loss_and_the_threshold_is_chosen_on_its_probabilities():
    labels, logits = shifted_scores()
    decision, compared = choose_decision(labels, logits, folds=5, seed=0, threshold_for=sensitivity_90)
    best = min(compared, key=lambda c: c["log_loss"])
    assert (decision.source, decision.method) == (best["source"], best["method"])
    assert decision.source in ("detector", "stacked")  # the sharper score wins
    probs = decision.probability(logits[:, 0], logits[:, 1])
    assert decision.threshold == sensitivity_90(labels, probs)
    assert np.mean(probs[labels == 1] >= decision.threshold) >= 0.9


def test_out_of_fold_probabilities_do_not_see_their_own_label():
    """Flipping one image's label moves no probability but, at most, its own fold's others."""
    labels, logits = shifted_scores(n=200)
    before = out_of_fold("classifier", "platt", labels, logits, 5, 0)
    flipped = labels.copy()
    flipped[7] = 1 - flipped[7]
    after = out_of_fold("classifier", "platt", flipped, logits, 5, 0)
    # The folds are drawn from the labels (stratified), so compare where the folds agree: image 7 itself.
    assert after[7] == pytest.approx(before[7], abs=0.05)


def test_round_trip_through_json_keeps_every_probability():
    labels, logits = shifted_scores()
    for source, method in (("classifier", "temperature"), ("detector", "isotonic"), ("stacked", "platt")):
        decision = fit_decision(source, method, labels, logits, threshold=0.4)
        again = Decision.from_json(decision.to_json())
        assert again == decision
        assert np.array_equal(again.probability(logits[:, 0], logits[:, 1]), decision.probability(logits[:, 0], logits[:, 1]))


def test_too_few_of_a_class_for_the_folds_is_one_line():
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    with pytest.raises(DatasetError, match="2 positive and 6 negative images: too few for 5-fold"):
        choose_decision(labels, np.zeros((8, 2)), folds=5, seed=0, threshold_for=sensitivity_90)


def test_at_prevalence_moves_the_odds():
    assert at_prevalence(np.array([0.5]), 0.5, 0.1)[0] == pytest.approx(0.1)
    assert at_prevalence(np.array([0.3]), 0.3, 0.3)[0] == pytest.approx(0.3)
