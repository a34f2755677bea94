import numpy as np
import pytest
from sklearn import metrics as sk

from pneumonia.evaluation.metrics import pr_curve_points, ranking_metrics, roc_curve_points, threshold_metrics


@pytest.fixture
def predictions():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 400)
    probs = np.clip(0.3 * labels + rng.normal(0.35, 0.2, 400), 0, 1)
    return labels, probs


@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.9])
def test_threshold_metrics_match_scikit_learn(predictions, threshold):
    labels, probs = predictions
    predicted = (probs >= threshold).astype(int)
    got = threshold_metrics(labels, probs, threshold)
    tn, fp, fn, tp = sk.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    assert (got["tn"], got["fp"], got["fn"], got["tp"]) == (tn, fp, fn, tp)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert got["precision"] == pytest.approx(sk.precision_score(labels, predicted, zero_division=0))
    assert got["recall"] == pytest.approx(sk.recall_score(labels, predicted))
    assert got["specificity"] == pytest.approx(sk.recall_score(labels, predicted, pos_label=0))
    assert got["f1"] == pytest.approx(sk.f1_score(labels, predicted, zero_division=0))


def test_an_undefined_rate_is_none_not_zero_nor_nan():
    got = threshold_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]), 0.99)
    assert got["precision"] is None and got["recall"] == 0.0 and got["specificity"] == 1.0
    assert threshold_metrics(np.array([0, 0]), np.array([0.1, 0.2]), 0.5)["recall"] is None


def test_ranking_metrics_match_scikit_learn(predictions):
    labels, probs = predictions
    got = ranking_metrics(labels, probs)
    assert got["auroc"] == pytest.approx(sk.roc_auc_score(labels, probs), abs=1e-6)  # torchmetrics sums in float32
    assert got["average_precision"] == pytest.approx(sk.average_precision_score(labels, probs), abs=1e-6)  # torchmetrics sums in float32


def test_curves_match_scikit_learn(predictions):
    labels, probs = predictions
    roc = roc_curve_points(labels, probs)
    fpr, tpr, _ = sk.roc_curve(labels, probs, drop_intermediate=False)
    assert np.trapezoid([p["tpr"] for p in roc], [p["fpr"] for p in roc]) == pytest.approx(np.trapezoid(tpr, fpr))
    pr = pr_curve_points(labels, probs)
    assert all(0 <= p["precision"] <= 1 and 0 <= p["recall"] <= 1 for p in pr)
    assert max(p["recall"] for p in pr) == 1.0
