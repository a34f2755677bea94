import time

import numpy as np
import pytest
from sklearn import metrics as sk

from pneumonia.evaluation import bootstrap as bs
from pneumonia.evaluation.metrics import ranking_metrics


def make_predictions(seed: int, n: int, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probs = np.clip(0.3 * labels + rng.normal(0.35, 0.2, n), 0, 1)
    return labels, probs if decimals is None else np.round(probs, decimals)


@pytest.mark.parametrize("decimals", [None, 2, 1])  # 1 decimal: few distinct values, heavy ties
def test_vectorised_statistics_match_scikit_learn(decimals):
    labels, probs = make_predictions(0, 400, decimals)
    assert bs.auroc(labels, probs) == pytest.approx(sk.roc_auc_score(labels, probs), abs=1e-12)
    assert bs.average_precision(labels, probs) == pytest.approx(sk.average_precision_score(labels, probs), abs=1e-12)
    for t in (0.25, 0.5, 0.7):
        predicted = (probs >= t).astype(int)
        assert bs.sensitivity_at(t)(labels, probs) == pytest.approx(sk.recall_score(labels, predicted), abs=1e-12)
        specificity = sk.recall_score(labels, predicted, pos_label=0)
        assert bs.specificity_at(t)(labels, probs) == pytest.approx(specificity, abs=1e-12)


def test_batched_rows_equal_one_row_at_a_time():
    labels, probs = make_predictions(1, 60, decimals=1)
    index = bs.resample_indices(60, 20, seed=3)
    for statistic in (bs.auroc, bs.average_precision, bs.sensitivity_at(0.4), bs.specificity_at(0.4)):
        rows = statistic(labels[index], probs[index])
        assert rows.shape == (20,)
        assert rows == pytest.approx([statistic(labels[i], probs[i]) for i in index], abs=1e-12)


def test_undefined_statistics_are_none_or_nan():
    labels, probs = np.ones(5, int), np.linspace(0, 1, 5)
    assert bs.auroc(labels, probs) is None
    assert bs.specificity_at(0.5)(labels, probs) is None
    assert bs.average_precision(1 - labels, probs) is None
    assert bs.sensitivity_at(0.5)(1 - labels, probs) is None
    rows = bs.auroc(np.array([[1, 1, 0], [1, 1, 1]]), np.array([[0.9, 0.2, 0.1], [0.1, 0.2, 0.3]]))
    assert rows[0] == 1.0 and np.isnan(rows[1])


def test_single_class_resamples_are_skipped_and_counted():
    # One positive in six: about (5/6)^6 = 33 % of resamples have no positive.
    labels, probs = np.array([1, 0, 0, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    low, high, used = bs.bootstrap_ci(labels, probs, bs.auroc, resamples=1000)
    assert 550 < used < 800
    assert low == high == 1.0
    index = bs.resample_indices(6, 1000, seed=0)
    assert used == int(labels[index].any(axis=1).sum())
    assert bs.bootstrap_ci(np.zeros(6), probs, bs.auroc, resamples=50) == (None, None, 0)


def test_a_scalar_statistic_works_and_agrees_with_the_vectorised_one():
    labels, probs = make_predictions(2, 80)
    slow = bs.bootstrap_ci(labels, probs, lambda y, p: ranking_metrics(y, p)["auroc"], resamples=100, seed=5)
    fast = bs.bootstrap_ci(labels, probs, bs.auroc, resamples=100, seed=5)
    assert slow.resamples_used == fast.resamples_used == 100
    assert slow.low == pytest.approx(fast.low, abs=1e-6) and slow.high == pytest.approx(fast.high, abs=1e-6)


def test_interval_contains_the_point_estimate():
    labels, probs = make_predictions(3, 400)
    for statistic in (bs.auroc, bs.average_precision, bs.sensitivity_at(0.5), bs.specificity_at(0.5)):
        low, high, used = bs.bootstrap_ci(labels, probs, statistic)
        assert used == 1000
        assert low < statistic(labels, probs) < high


def test_interval_narrows_as_the_sample_grows():
    small, large = make_predictions(4, 100), make_predictions(4, 2000)
    for statistic in (bs.auroc, bs.average_precision, bs.sensitivity_at(0.5)):
        low_s, high_s, _ = bs.bootstrap_ci(*small, statistic, resamples=300)
        low_l, high_l, _ = bs.bootstrap_ci(*large, statistic, resamples=300)
        # Width scales as 1/sqrt(n): about 4.5 times narrower; ask for at least 2.
        assert high_l - low_l < (high_s - low_s) / 2


def test_alpha_sets_the_percentiles():
    labels, probs = make_predictions(5, 200)
    narrow = bs.bootstrap_ci(labels, probs, bs.auroc, alpha=0.5)
    wide = bs.bootstrap_ci(labels, probs, bs.auroc, alpha=0.05)
    values = bs.auroc(labels[bs.resample_indices(200, 1000, 0)], probs[bs.resample_indices(200, 1000, 0)])
    assert (wide.low, wide.high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    assert wide.low < narrow.low < narrow.high < wide.high


def test_bootstrap_metrics_is_seeded_shaped_and_fast():
    labels, probs = make_predictions(6, 400)
    thresholds = {"0p50": 0.5, "0p25": 0.25, "sensitivity_0p90": 0.3, "youden": 0.45}
    start = time.perf_counter()
    first = bs.bootstrap_metrics(labels, probs, thresholds, resamples=1000, seed=7)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    assert first == bs.bootstrap_metrics(labels, probs, thresholds, resamples=1000, seed=7)
    assert first != bs.bootstrap_metrics(labels, probs, thresholds, resamples=1000, seed=8)
    assert set(first) == {"auroc", "average_precision", *thresholds}
    assert set(first["auroc"]) == {"low", "high", "resamples_used"}
    assert first["auroc"] == bs.bootstrap_ci(labels, probs, bs.auroc, 1000, seed=7)._asdict()
    for name, t in thresholds.items():
        assert set(first[name]) == {"sensitivity", "specificity"}
        expected = bs.bootstrap_ci(labels, probs, bs.sensitivity_at(t), 1000, seed=7)
        assert first[name]["sensitivity"] == expected._asdict()


def test_large_splits_are_evaluated_in_blocks(monkeypatch):
    labels, probs = make_predictions(7, 300)
    whole = bs.bootstrap_ci(labels, probs, bs.auroc, resamples=200, seed=1)
    monkeypatch.setattr(bs, "BLOCK_ELEMENTS", 300 * 7)  # 7 resamples per block, the last one short
    assert bs.bootstrap_ci(labels, probs, bs.auroc, resamples=200, seed=1) == whole
