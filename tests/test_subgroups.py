import numpy as np
import pytest
from sklearn import metrics as sk

from pneumonia.evaluation.subgroups import (
    NORMAL,
    NOT_NORMAL,
    age_band_labels,
    false_positive_rates_by_detailed_class,
    subgroup_metrics,
)


@pytest.fixture
def cohort():
    rng = np.random.default_rng(0)
    n = 600
    labels = rng.integers(0, 2, n)
    views = rng.choice(["AP", "PA"], n, p=[0.6, 0.4])
    # AP films are harder here: less separation between the classes.
    separation = np.where(views == "AP", 0.15, 0.35)
    probs = np.clip(0.3 + separation * labels + rng.normal(0, 0.15, n), 0, 1)
    return labels, probs, views


def test_subgroup_metrics_match_scikit_learn(cohort):
    labels, probs, views = cohort
    got = subgroup_metrics(labels, probs, views, threshold=0.4)
    assert list(got) == ["AP", "PA"]
    for view, metrics in got.items():
        y, p = labels[views == view], probs[views == view]
        predicted = (p >= 0.4).astype(int)
        assert metrics["n"] == len(y)
        assert (metrics["positives"], metrics["negatives"]) == (y.sum(), len(y) - y.sum())
        assert metrics["auroc"] == pytest.approx(sk.roc_auc_score(y, p), abs=1e-6)  # torchmetrics sums in float32
        assert metrics["sensitivity"] == pytest.approx(sk.recall_score(y, predicted))
        assert metrics["specificity"] == pytest.approx(sk.recall_score(y, predicted, pos_label=0))
    assert got["AP"]["auroc"] < got["PA"]["auroc"]


def test_small_groups_say_so_instead_of_a_number():
    labels = np.array([1] * 3 + [0] * 20 + [1] * 15 + [0] * 12 + [1] * 12)
    groups = np.array(["F"] * 23 + ["M"] * 27 + ["U"] * 12)
    probs = np.linspace(0.05, 0.95, len(labels))
    got = subgroup_metrics(labels, probs, groups, threshold=0.5, min_count=10)
    assert got["F"]["auroc"] == got["F"]["sensitivity"] == "too few positives (n=3)"
    assert isinstance(got["F"]["specificity"], float)  # 20 negatives: still a number
    assert all(isinstance(got["M"][k], float) for k in ("auroc", "sensitivity", "specificity"))
    assert got["U"]["auroc"] == got["U"]["specificity"] == "too few negatives (n=0)"
    assert got["U"]["sensitivity"] == pytest.approx(np.mean(probs[groups == "U"] >= 0.5))
    assert (got["U"]["n"], got["U"]["positives"], got["U"]["negatives"]) == (12, 12, 0)
    # min_count=0 still never reports a rate over nobody.
    assert subgroup_metrics(labels, probs, groups, 0.5, min_count=0)["U"]["specificity"] == "too few negatives (n=0)"


@pytest.mark.parametrize(
    "edges, ages, expected",
    [
        (
            (40, 60),
            [0, 39, 40, 59, 60, 95, None, float("nan"), -1],
            ["<40", "<40", "40-59", "40-59", ">=60", ">=60", "unknown", "unknown", "unknown"],
        ),
        ((18, 40, 65), [17, 18, 39, 40, 64, 65], ["<18", "18-39", "18-39", "40-64", "40-64", ">=65"]),
        ((), [30, None], ["all", "unknown"]),
    ],
)
def test_age_band_labels(edges, ages, expected):
    got = age_band_labels(ages, edges)
    assert got.tolist() == expected
    assert got.dtype.kind == "U"


def test_age_bands_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        age_band_labels([30], (60, 40))


def test_false_positive_rates_by_detailed_class():
    rng = np.random.default_rng(1)
    n = 500
    detailed = rng.choice([NOT_NORMAL, NORMAL, "Lung Opacity"], n)
    labels = (detailed == "Lung Opacity").astype(int)
    # Not-normal films look more like pneumonia than normal ones.
    probs = np.clip(rng.normal(0.3, 0.15, n) + 0.2 * (detailed != NORMAL), 0, 1)
    got = false_positive_rates_by_detailed_class(labels, probs, detailed, threshold=0.5)
    assert set(got) == {"not_normal", "normal"}
    for key, name in (("not_normal", NOT_NORMAL), ("normal", NORMAL)):
        negatives = (labels == 0) & (detailed == name)
        predicted = probs[negatives] >= 0.5
        assert got[key]["n"] == negatives.sum()
        # FPR = FP / (FP + TN) over this class's negatives, from scikit-learn's confusion matrix.
        tn, fp, _, _ = sk.confusion_matrix(np.zeros(negatives.sum()), predicted, labels=[0, 1]).ravel()
        assert got[key]["fpr"] == pytest.approx(fp / (fp + tn))
    assert got["not_normal"]["fpr"] > got["normal"]["fpr"]


def test_false_positive_rates_with_too_few_negatives():
    detailed = np.array([NOT_NORMAL] * 3 + [NORMAL] * 12)
    got = false_positive_rates_by_detailed_class(np.zeros(15), np.full(15, 0.6), detailed, 0.5)
    assert got["not_normal"] == {"n": 3, "fpr": "too few negatives (n=3)"}
    assert got["normal"] == {"n": 12, "fpr": 1.0}
