"""Box overlaps, accuracies, the RSNA challenge score and size agreement, against hand-computed cases."""

import pytest

from pneumonia.evaluation import box_metrics as loc

# --------------------------------------------------------------------------- overlaps and accuracies


def test_iobb_and_iou_disagree_for_a_small_box_inside_a_big_one():
    small, big = (10, 10, 10, 10), (0, 0, 100, 100)
    assert loc.box_iobb_xywh([small], [big])[0, 0] == pytest.approx(1.0)
    assert loc.box_iou_xywh([small], [big])[0, 0] == pytest.approx(0.01)
    iobb = loc.iobb_accuracy([[small]], [[big]])
    iou = loc.iou_accuracy([[small]], [[big]])
    assert [a.accuracy for a in iobb.values()] == [1.0, 1.0, 1.0, 1.0]
    assert [a.false_positives_per_image for a in iobb.values()] == [0.0] * 4
    assert iou[0.1].accuracy == 0.0 and iou[0.1].false_positives_per_image == 1.0


def test_partial_overlap_at_each_threshold():
    # Predicted (0,0,10,10) against truth (5,0,10,10): intersection 50, IoU 50/150, IoBB 50/100.
    predicted, truth = [[(0, 0, 10, 10)]], [[(5, 0, 10, 10)]]
    iou = loc.iou_accuracy(predicted, truth)
    assert {t: a.accuracy for t, a in iou.items()} == {0.1: 1, 0.2: 1, 0.3: 1, 0.4: 0, 0.5: 0, 0.6: 0, 0.7: 0}
    iobb = loc.iobb_accuracy(predicted, truth)
    assert {t: a.accuracy for t, a in iobb.items()} == {0.1: 1, 0.25: 1, 0.5: 1, 0.75: 0}
    assert iobb[0.75].false_positives_per_image == 1.0 and iobb[0.5].false_positives_per_image == 0.0


def test_accuracy_counts_ground_truth_boxes_and_false_positives_over_all_images():
    predicted = [[(0, 0, 10, 10)], [(0, 0, 5, 5), (20, 20, 5, 5)], []]
    truth = [[(0, 0, 10, 10), (50, 50, 10, 10)], [], [(0, 0, 8, 8)]]
    result = loc.iou_accuracy(predicted, truth, thresholds=(0.5,))[0.5]
    assert result.accuracy == pytest.approx(1 / 3)  # one of three ground-truth boxes hit
    assert result.false_positives_per_image == pytest.approx(2 / 3)  # two boxes on the negative image
    assert loc.iou_accuracy([[]], [[]])[0.1].accuracy is None


def test_pointing_game():
    points = [(5, 5), (50, 50), (0, 0), (10, 10)]
    boxes = [[(0, 0, 10, 10)], [(0, 0, 10, 10), (60, 60, 5, 5)], [], [(0, 0, 10, 10)]]
    # Inside, outside every box, negative (left out), on the edge (inside).
    assert loc.pointing_game(points, boxes) == pytest.approx(2 / 3)
    assert loc.pointing_game([(1, 1)], [[]]) is None


# --------------------------------------------------------------------------- the RSNA metric


def test_rsna_image_without_ground_truth():
    assert loc.rsna_image_score([], [], []) is None
    assert loc.rsna_image_score([(0, 0, 10, 10)], [0.9], []) == 0.0


def test_rsna_image_without_prediction():
    assert loc.rsna_image_score([], [], [(0, 0, 10, 10)]) == 0.0


def test_rsna_perfect_and_partial_iou():
    assert loc.rsna_image_score([(0, 0, 10, 10)], [0.5], [(0, 0, 10, 10)]) == 1.0
    # IoU 0.62 beats the thresholds 0.40 ... 0.60 (5 of 8), not 0.65 ... 0.75.
    assert loc.rsna_image_score([(0, 0, 10, 10)], [0.5], [(0, 0, 10, 6.2)]) == pytest.approx(5 / 8)


def test_rsna_more_predictions_than_boxes():
    # The second prediction finds no ground truth left: TP 1, FP 1, FN 0 at every threshold.
    score = loc.rsna_image_score([(0, 0, 10, 10), (50, 50, 10, 10)], [0.9, 0.8], [(0, 0, 10, 10)])
    assert score == pytest.approx(0.5)


def test_rsna_a_matched_box_is_not_matched_twice():
    # Both predictions overlap only the first box: the more confident takes it, the other is an FP,
    # and the second box is missed: 1 / (1 + 1 + 1).
    score = loc.rsna_image_score([(0, 0, 10, 10), (0, 0, 10, 10)], [0.9, 0.5], [(0, 0, 10, 10), (20, 0, 10, 10)])
    assert score == pytest.approx(1 / 3)


def test_rsna_matching_follows_confidence():
    # Truth A = (0,0,10,10), B = (4,0,10,10). X = A overlaps B at IoU 0.43; Y = (1,0,10,10) overlaps
    # A at 0.82 and B at 0.54. X first: X takes A, Y takes B where 0.54 > t (3 of 8 thresholds score 1,
    # the rest 1/3). Y first: Y takes A, X takes B only at t = 0.40 (1 of 8 scores 1).
    truth = [(0, 0, 10, 10), (4, 0, 10, 10)]
    boxes = [(0, 0, 10, 10), (1, 0, 10, 10)]
    assert loc.rsna_image_score(boxes, [0.9, 0.1], truth) == pytest.approx((3 + 5 / 3) / 8)
    assert loc.rsna_image_score(boxes, [0.1, 0.9], truth) == pytest.approx((1 + 7 / 3) / 8)


def test_rsna_score_averages_over_the_images_it_keeps():
    predicted = [[(0, 0, 10, 10)], [(0, 0, 10, 10)], []]
    confidences = [[0.9], [0.9], []]
    truth = [[(0, 0, 10, 10)], [], []]  # 1, 0 (prediction without truth), left out
    assert loc.rsna_score(predicted, confidences, truth) == pytest.approx(0.5)
    assert loc.rsna_score([[]], [[]], [[]]) is None


# --------------------------------------------------------------------------- size


def test_union_area_counts_overlaps_once():
    assert loc.union_area([]) == 0.0
    assert loc.union_area([(0, 0, 10, 10), (5, 5, 10, 10)]) == pytest.approx(175.0)
    assert loc.union_area([(0, 0, 10, 10), (2, 2, 3, 3)]) == pytest.approx(100.0)
    assert loc.union_area([(0, 0, 10, 10), (20, 0, 2.5, 4)]) == pytest.approx(110.0)


def test_size_agreement():
    result = loc.size_agreement([0.1, 0.2, 0.3], [0.15, 0.25, 0.5])
    assert result["n"] == 3 and result["spearman"] == pytest.approx(1.0)
    assert result["mean_absolute_error"] == pytest.approx(0.1)
    assert loc.size_agreement([0.1, 0.1], [0.2, 0.3])["spearman"] is None  # constant estimate
    assert loc.size_agreement([], [])["mean_absolute_error"] is None
