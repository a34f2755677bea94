import numpy as np
import pytest
from sklearn import metrics as sk

from pneumonia.core.errors import DatasetError
from pneumonia.evaluation.operating_points import (
    choose_thresholds,
    operating_point,
    operating_points,
    threshold_for_sensitivity,
    youden_threshold,
)


def make_split(seed: int, n: int = 400, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probs = np.clip(0.3 * labels + rng.normal(0.35, 0.2, n), 0, 1)
    return labels, probs if decimals is None else np.round(probs, decimals)


def sensitivity(labels, probs, t):
    return np.mean(probs[labels == 1] >= t)


def specificity(labels, probs, t):
    return np.mean(probs[labels == 0] < t)


@pytest.mark.parametrize("decimals", [None, 2])  # 2 decimals: many ties
@pytest.mark.parametrize("target", [0.5, 0.7, 0.9, 0.95, 1.0])
def test_threshold_for_sensitivity_is_the_highest_reaching_the_target(target, decimals):
    labels, probs = make_split(1, decimals=decimals)
    t = threshold_for_sensitivity(labels, probs, target)
    assert t in probs
    assert sensitivity(labels, probs, t) >= target
    # Every higher candidate misses the target: t is the most specific choice.
    higher = np.unique(probs[probs > t])
    assert all(sensitivity(labels, probs, h) < target for h in higher)


def test_threshold_for_sensitivity_on_a_hand_example():
    labels = np.array([1, 1, 1, 1, 0, 0])
    probs = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.1])
    assert threshold_for_sensitivity(labels, probs, 0.75) == 0.6  # 3 of 4 positives
    assert threshold_for_sensitivity(labels, probs, 0.76) == 0.3  # needs all 4
    assert threshold_for_sensitivity(labels, probs, 0.7) == 0.6  # 0.7 * 4 = 2.8 -> 3 positives


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_youden_threshold_maximises_j_against_a_direct_search(decimals):
    labels, probs = make_split(2, decimals=decimals)
    fpr, tpr, thresholds = sk.roc_curve(labels, probs, drop_intermediate=False)
    j = tpr - fpr
    best = thresholds[np.isclose(j, j.max(), rtol=0, atol=1e-12)].max()  # ties: the higher threshold
    assert youden_threshold(labels, probs) == best
    got = youden_threshold(labels, probs)
    assert sensitivity(labels, probs, got) + specificity(labels, probs, got) - 1 == pytest.approx(j.max())


def test_youden_ties_go_to_the_higher_threshold():
    # J = 1/2 - 0 at 0.9 and 1 - 1/2 at 0.5, 0 elsewhere: the tie goes to 0.9.
    labels = np.array([1, 0, 1, 0])
    probs = np.array([0.9, 0.7, 0.5, 0.3])
    assert youden_threshold(labels, probs) == 0.9
    assert youden_threshold(labels[::-1], probs[::-1]) == 0.9  # whatever the order of the patients


def test_choosers_need_both_classes():
    with pytest.raises(DatasetError, match="no positive"):
        threshold_for_sensitivity(np.zeros(5), np.linspace(0, 1, 5), 0.9)
    with pytest.raises(DatasetError, match="no negative"):
        youden_threshold(np.ones(5), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="target"):
        threshold_for_sensitivity(np.array([0, 1]), np.array([0.1, 0.9]), 0.0)


@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.9])
def test_operating_point_matches_scikit_learn(threshold):
    labels, probs = make_split(3)
    predicted = (probs >= threshold).astype(int)
    got = operating_point(labels, probs, threshold)
    tn, fp, fn, tp = sk.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    assert (got["tn"], got["fp"], got["fn"], got["tp"]) == (tn, fp, fn, tp)
    assert got["threshold"] == threshold
    assert got["sensitivity"] == pytest.approx(sk.recall_score(labels, predicted))
    assert got["specificity"] == pytest.approx(sk.recall_score(labels, predicted, pos_label=0))
    assert got["ppv"] == pytest.approx(sk.precision_score(labels, predicted))
    assert got["npv"] == pytest.approx(sk.precision_score(labels, predicted, pos_label=0))
    assert got["f1"] == pytest.approx(sk.f1_score(labels, predicted))


def test_undefined_rates_are_none():
    # No negative prediction: NPV undefined; no negative patient: specificity undefined.
    got = operating_point(np.array([1, 1]), np.array([0.6, 0.7]), 0.5)
    assert got["npv"] is None and got["specificity"] is None
    assert got["sensitivity"] == 1.0 and got["ppv"] == 1.0
    # No positive patient and no positive prediction: sensitivity, PPV and F1 undefined.
    got = operating_point(np.array([0, 0]), np.array([0.1, 0.2]), 0.5)
    assert got["sensitivity"] is None and got["ppv"] is None and got["f1"] is None
    assert got["specificity"] == 1.0 and got["npv"] == 1.0


def test_choose_thresholds_names_and_values():
    labels, probs = make_split(4)
    chosen = choose_thresholds(labels, probs, 0.9)
    assert set(chosen) == {"0p50", "0p25", "sensitivity_0p90", "youden"}
    assert all("." not in name for name in chosen)
    assert chosen["0p50"] == 0.5 and chosen["0p25"] == 0.25
    assert chosen["sensitivity_0p90"] == threshold_for_sensitivity(labels, probs, 0.9)
    assert chosen["youden"] == youden_threshold(labels, probs)


def test_thresholds_chosen_on_val_never_read_test_labels():
    val_labels, val_probs = make_split(5)
    test_labels, test_probs = make_split(6)
    chosen = choose_thresholds(val_labels, val_probs, 0.9)
    frozen = dict(chosen)
    rng = np.random.default_rng(0)
    reports = []
    for _ in range(5):
        shuffled = rng.permutation(test_labels)
        reports.append(operating_points(shuffled, test_probs, chosen))
        # Choosing again on val after the test evaluation gives the same thresholds.
        assert choose_thresholds(val_labels, val_probs, 0.9) == frozen
    assert chosen == frozen  # the evaluation did not touch them
    for report in reports:
        assert {name: point["threshold"] for name, point in report.items()} == frozen
    # The test metrics did move with the shuffled labels: the check is not vacuous.
    assert len({r["youden"]["sensitivity"] for r in reports}) > 1
    # And val labels do matter: shuffling them moves the chosen thresholds.
    assert choose_thresholds(rng.permutation(val_labels), val_probs, 0.9) != frozen
