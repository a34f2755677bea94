"""Thresholds tuned for a stated prevalence (val reweighted to it), and the check that the splits' prevalences agree."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from pneumonia.data import compute_stats
from pneumonia.prediction.decide import choose_box_threshold
from pneumonia.detection.detector import ImageDetections
from pneumonia.detection.thresholds import choose_box_thresholds, rsna_at
from pneumonia.evaluation.box_metrics import prevalence_weights, rsna_image_score, rsna_score
from pipeline_repo import ROOT

TRUE = (10, 10, 20, 20)


def _image(boxes, scores, probability=1.0):
    return ImageDetections(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float), probability, 100, 100)


def test_the_weighted_rsna_score_is_the_weighted_mean_over_counted_images():
    predicted = [[TRUE], [TRUE, (60, 60, 10, 10)], [(50, 50, 10, 10)], []]
    confidences = [[0.9], [0.9, 0.5], [0.7], []]
    truth = [[TRUE], [TRUE], [], []]  # scores 1, 1/2 (one TP, one FP), 0 (a box on a negative), left out
    assert rsna_score(predicted, confidences, truth, [2, 1, 3, 10]) == pytest.approx((2 * 1 + 1 * 0.5 + 3 * 0) / 6)
    assert rsna_score(predicted, confidences, truth) == pytest.approx(1.5 / 3)
    assert rsna_score([[], []], [[], []], [[], []], [1, 1]) is None  # nothing counts


def test_prevalence_weights_give_positives_the_stated_share():
    truth = [[TRUE], [], [], []]  # 25 % positive
    w = prevalence_weights(truth, 0.5)
    np.testing.assert_allclose(w, [2.0, 2 / 3, 2 / 3, 2 / 3])  # p / p_here, (1 - p) / (1 - p_here)
    assert w[0] / w.sum() == pytest.approx(0.5) and w.sum() == pytest.approx(len(truth))
    assert prevalence_weights(truth, None) is None
    assert prevalence_weights([[], []], 0.3) is None  # a single class: nothing to shift


def test_without_a_prevalence_the_scores_are_the_plain_mean_bit_for_bit():
    rng = np.random.default_rng(0)
    truth = [[tuple(rng.uniform(0, 50, 2)) + (20.0, 20.0)] if rng.random() < 0.4 else [] for _ in range(40)]
    detections = [_image([tuple(rng.uniform(0, 50, 2)) + (20.0, 20.0) for _ in range(3)], rng.random(3), rng.random())
                  for _ in truth]
    for gate, box in ((0.0, 0.1), (0.3, 0.5), (0.6, 0.2)):
        kept = [d.kept(gate, box) for d in detections]
        per_image = [rsna_image_score(b, s, t) for (b, s), t in zip(kept, truth)]
        plain = float(np.mean([s for s in per_image if s is not None]))
        assert rsna_at(detections, truth, gate, box) == plain  # exactly: the unweighted path is unchanged
    candidates = [0.1, 0.3, 0.5, 0.7]
    unweighted = choose_box_thresholds(detections, truth, candidates)
    assert unweighted == choose_box_thresholds(detections, truth, candidates, prevalence=None)
    assert [g["rsna_score"] for g in unweighted.grid] == [
        rsna_at(detections, truth, g["image_threshold"], g["box_threshold"]) or 0.0 for g in unweighted.grid]
    # reweighting to val's own prevalence is the same score (weights all 1), up to rounding
    own = choose_box_thresholds(detections, truth, candidates, prevalence=sum(map(bool, truth)) / len(truth))
    assert [g["rsna_score"] for g in own.grid] == pytest.approx([g["rsna_score"] for g in unweighted.grid], abs=1e-12)


def _gate_case(positives: int, negatives: int) -> tuple[list, list]:
    """Every box right where it is placed (score 0.9); half the positives and half the negatives at image
    probability 0.6 / 0.3 (positives) and 0.3 / 0.1 (negatives, each with a false box).

    Gate 0.2 keeps every positive and the 0.3 negatives' false boxes; gate 0.5 drops half the positives
    and every false box. Which is better depends on the prevalence.
    """
    detections = [_image([TRUE], [0.9], 0.6 if i % 2 else 0.3) for i in range(positives)]
    detections += [_image([(60, 60, 20, 20)], [0.9], 0.3 if i % 2 else 0.1) for i in range(negatives)]
    return detections, [[TRUE]] * positives + [[]] * negatives


def test_reweighting_picks_the_thresholds_that_are_best_at_the_target_prevalence():
    val, val_truth = _gate_case(8, 8)  # 50 % positive
    test, test_truth = _gate_case(2, 18)  # 10 % positive
    candidates = [0.2, 0.5, 0.8]
    best_on_test = choose_box_thresholds(test, test_truth, candidates)
    assert best_on_test.image_threshold == 0.5  # 1/2 against gate 0.2's 2/11
    assert choose_box_thresholds(val, val_truth, candidates).image_threshold == 0.2  # val's own: 8/12 against 4/8
    reweighted = choose_box_thresholds(val, val_truth, candidates, prevalence=0.1)
    assert (reweighted.image_threshold, reweighted.box_threshold) == (best_on_test.image_threshold,
                                                                       best_on_test.box_threshold)
    assert reweighted.rsna_score == pytest.approx(best_on_test.rsna_score)  # the weighting estimates test's score


def test_decides_box_threshold_is_reweighted_the_same_way():
    # Under a positive decision: strong true boxes (0.9), weak true boxes (0.4), negatives with a false box at 0.4.
    detections = [_image([TRUE], [0.9])] * 4 + [_image([TRUE], [0.4])] * 4 + [_image([(60, 60, 20, 20)], [0.4])] * 4
    truth = [[TRUE]] * 8 + [[]] * 4
    raw, positive = SimpleNamespace(detections=detections), np.ones(12, bool)
    assert choose_box_threshold(raw, positive, truth, [0.3, 0.5])[0] == 0.3  # val's own 8/12 against 4/8
    assert choose_box_threshold(raw, positive, truth, [0.3, 0.5], None) == choose_box_threshold(
        raw, positive, truth, [0.3, 0.5])
    threshold, sweep = choose_box_threshold(raw, positive, truth, [0.3, 0.5], prevalence=0.1)
    w_pos, w_neg = 0.1 / (8 / 12), 0.9 / (4 / 12)  # at 0.3 every positive scores 1, every negative 0
    assert threshold == 0.5 and sweep[0]["rsna_score"] == pytest.approx(8 * w_pos / (8 * w_pos + 4 * w_neg))


def _counts(**splits: tuple[int, int]) -> dict:
    return {s: {"total": n, "positive": round(n * p), "negative": n - round(n * p)} for s, (n, p) in splits.items()}


def test_the_prevalence_warning_stays_quiet_on_the_default_run():
    counts = json.loads((ROOT / "reports" / "dataset.json").read_text())["counts"]
    check = compute_stats.prevalence_check(counts)
    assert check["warning"] is None and check["p_value"] > 0.1
    assert check["prevalence"]["train"] == pytest.approx(counts["train"]["positive"] / counts["train"]["total"])


@pytest.mark.parametrize("counts", [
    _counts(train=(900, 0.26), val=(300, 0.36), test=(300, 0.12)),  # the real split, in file order
    _counts(train=(1200, 263 / 1200), val=(274, 96 / 274), test=(353, 42 / 353)),  # the phantom at 35 % / 12 %
    _counts(val=(274, 96 / 274), test=(353, 42 / 353)),  # two splits (a 2 x 2 table)
], ids=["issue", "phantom", "val-test"])
def test_the_prevalence_warning_fires_on_a_shift_and_advises_stratifying(counts):
    check = compute_stats.prevalence_check(counts)
    assert check["p_value"] < compute_stats.PREVALENCE_ALPHA
    assert "split.stratify: true" in check["warning"] and "val 3" in check["warning"]


def test_the_prevalence_check_needs_two_splits_and_both_classes():
    assert compute_stats.prevalence_check(_counts(train=(100, 0.2), val=(0, 0.0)))["statistic"] is None
    assert compute_stats.prevalence_check(_counts(train=(100, 0.0), val=(50, 0.0)))["warning"] is None


def test_a_gate_at_a_sensitivity_operating_point_does_not_move_with_the_negatives():
    """The gate reads the positives only: adding negatives (a lower prevalence) leaves it where it was."""
    from pneumonia.detection.thresholds import ThresholdRule

    def det(p, boxes):
        return ImageDetections(np.array(boxes, float).reshape(-1, 4), np.full(len(boxes), 0.9), p, 100, 100)

    positives = [det(p, [(10, 10, 20, 20)]) for p in (0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)]
    truth_pos = [[(10, 10, 20, 20)]] * len(positives)
    few = [det(p, [(50, 50, 20, 20)]) for p in (0.1, 0.3, 0.6)]
    many = [det(p, [(50, 50, 20, 20)]) for p in np.linspace(0.05, 0.65, 40)]
    rule = ThresholdRule((0.3, 0.5), gate_sensitivity=0.9)
    a = rule.choose(positives + few, truth_pos + [[]] * len(few))
    b = rule.choose(positives + many, truth_pos + [[]] * len(many))
    assert a.image_threshold == b.image_threshold == 0.5  # 9 of the 10 positives reach it
    assert [g["image_threshold"] for g in a.grid] == [0.5, 0.5]
