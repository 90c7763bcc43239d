"""Metrics of the evaluation: hand-computed cases, and agreement with pycocotools on random cases."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from chatrex_ros.core.answering import AnswerStatus
from chatrex_ros.core.types import Detection
from chatrex_ros.eval import metrics as m
from chatrex_ros.eval.groundtruth import GroundTruth, GroundTruthImage, GroundTruthObject, ReferringQuery
from chatrex_ros.eval.records import (
    AnswerRecord,
    ProposalRecord,
    detection_query_id,
    referring_query_id,
)
from chatrex_ros.eval.scoring import score_answers, score_proposals

SQUARE = np.array([[0.0, 0.0, 10.0, 10.0]])
SHIFT_2 = np.array([[2.0, 0.0, 12.0, 10.0]])  # IoU 80 / 120 = 2/3 with SQUARE
SHIFT_5 = np.array([[5.0, 0.0, 15.0, 10.0]])  # IoU 50 / 150 = 1/3 with SQUARE


# --- matching -------------------------------------------------------------------------------------
def test_greedy_match_takes_the_best_unmatched_box_in_prediction_order():
    ious = np.array([[0.9, 0.6], [0.95, 0.55], [0.1, 0.2]])
    # prediction 0 takes box 0 even though prediction 1 overlaps it more: order is score order
    assert m.greedy_match(ious, 0.5).tolist() == [0, 1, -1]
    assert m.greedy_match(ious, 0.58).tolist() == [0, -1, -1]  # box 1 at 0.55 is below 0.58


def test_greedy_match_threshold_is_inclusive_and_ties_go_to_the_later_box():
    assert m.greedy_match(np.array([[0.5]]), 0.5).tolist() == [0]
    assert m.greedy_match(np.array([[0.7, 0.7, 0.3]]), 0.5).tolist() == [1]


def test_score_order_is_descending_and_stable():
    assert m.score_order(np.array([0.5, 0.9, 0.5, 0.9])).tolist() == [1, 3, 0, 2]


# --- proposal recall ------------------------------------------------------------------------------
def test_recall_perfect_and_empty():
    gt = [SQUARE, np.array([[20.0, 20.0, 40.0, 50.0], [0.0, 0.0, 5.0, 5.0]])]
    perfect = m.proposal_recall(gt, [g.copy() for g in gt], ks=(1, 10))
    assert perfect.shape == (2, 10)
    assert np.all(perfect[1] == 1.0)
    assert np.allclose(perfect[0], 2 / 3)  # K=1 finds one box in the 2-box frame
    empty = m.proposal_recall(gt, [np.zeros((0, 4)), np.zeros((0, 4))], ks=(10,))
    assert np.all(empty == 0.0)


def test_recall_shifted_box_counts_only_thresholds_below_its_iou():
    recall = m.proposal_recall([SQUARE], [SHIFT_2], ks=(10,))[0]
    # IoU 2/3 passes 0.5, 0.55, 0.6, 0.65 and fails 0.7..0.95
    assert recall.tolist() == [1.0] * 4 + [0.0] * 6
    assert recall.mean() == pytest.approx(0.4)
    assert m.proposal_recall([SQUARE], [SHIFT_5], ks=(10,))[0, 0] == 0.0


def test_recall_duplicates_cover_one_box_once_and_k_cuts_the_list():
    gt = [np.vstack([SQUARE, SQUARE + 100])]
    duplicates = [np.vstack([SQUARE, SQUARE, SQUARE, SQUARE + 100])]
    recall = m.proposal_recall(gt, duplicates, ks=(1, 3, 4))
    assert recall[:, 0].tolist() == [0.5, 0.5, 1.0]  # the second box is only reached at K=4


def test_recall_rejects_bad_arguments():
    with pytest.raises(ValueError, match="frames"):
        m.proposal_recall([SQUARE], [], ks=(10,))
    with pytest.raises(ValueError, match="K values"):
        m.proposal_recall([SQUARE], [SQUARE], ks=(0,))


# --- precision / recall per class -----------------------------------------------------------------
def frame(gt_labels, gt_boxes, labels, boxes, scores=None):
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    scores = np.linspace(0.9, 0.5, len(boxes)) if scores is None else np.asarray(scores, dtype=float)
    return m.FrameDetections(gt_labels, np.asarray(gt_boxes, dtype=float).reshape(-1, 4), labels, boxes, scores)


def test_precision_recall_hand_computed():
    cup, dog = [0, 0, 10, 10], [50, 50, 80, 90]
    frames = [
        frame(["cup", "dog"], [cup, dog], ["cup", "cup", "dog"], [cup, cup, SHIFT_5[0]]),  # duplicate cup, dog missed
        frame(["dog"], [dog], ["dog"], [dog]),
    ]
    counts = m.count_matches(frames, 0.5)
    assert (counts["cup"].true_positives, counts["cup"].false_positives, counts["cup"].false_negatives) == (1, 1, 0)
    assert (counts["dog"].true_positives, counts["dog"].false_positives, counts["dog"].false_negatives) == (1, 1, 1)
    precision, recall = m.mean_precision_recall(counts)
    assert precision == pytest.approx((0.5 + 0.5) / 2)
    assert recall == pytest.approx((1.0 + 0.5) / 2)


def test_precision_recall_perfect_empty_and_wrong_label():
    box = [0, 0, 10, 10]
    assert m.mean_precision_recall(m.count_matches([frame(["cup"], [box], ["cup"], [box])])) == (1.0, 1.0)
    empty = m.count_matches([frame(["cup"], [box], [], [])])
    assert empty["cup"].precision is None and m.mean_precision_recall(empty) == (0.0, 0.0)
    # the right box with the wrong label is a false positive of "mug" and a miss of "cup"
    wrong = m.count_matches([frame(["cup"], [box], ["mug"], [box])])
    assert wrong["mug"].recall is None and wrong["mug"].false_positives == 1
    assert m.mean_precision_recall(wrong) == (0.0, 0.0)
    assert m.mean_precision_recall({}) == (None, None)


def test_shifted_detection_is_a_hit_only_above_the_threshold():
    assert m.count_matches([frame(["cup"], SQUARE, ["cup"], SHIFT_2)], 0.5)["cup"].true_positives == 1
    assert m.count_matches([frame(["cup"], SQUARE, ["cup"], SHIFT_2)], 0.7)["cup"].true_positives == 0


def test_referring_hit_needs_iou_strictly_above_half():
    targets = np.array([[0, 0, 10, 10]] * 3, dtype=float)
    predicted = [np.array([0, 0, 10, 20.0]), np.array([0, 0, 10, 19.0]), None]  # IoU 0.5, 0.526, no answer
    assert m.referring_hits(targets, predicted).tolist() == [False, True, False]


def test_latency_summary_percentiles():
    stats = m.latency_summary(list(range(1, 101)))
    assert (stats["count"], stats["p50"], stats["mean"], stats["max"]) == (100, 50.5, 50.5, 100.0)
    assert stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)
    assert m.latency_summary([]) == {"count": 0}


# --- agreement with pycocotools -------------------------------------------------------------------
def random_boxes(rng, count, size=200.0):
    xy = rng.uniform(0, size * 0.8, (count, 2))
    wh = rng.uniform(4, size * 0.5, (count, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def random_case(rng, categories=("a",), frames=4):
    """Frames of random ground truth and predictions, half of them jittered copies of the truth."""
    cases = []
    for _ in range(frames):
        gt = random_boxes(rng, int(rng.integers(0, 8)))
        labels = [str(rng.choice(categories)) for _ in gt]
        noise = random_boxes(rng, int(rng.integers(0, 60)))
        near = gt[rng.integers(0, len(gt), 12)] + rng.normal(0, 6, (12, 4)) if len(gt) else np.zeros((0, 4))
        boxes = np.vstack([noise, near])
        pred_labels = [str(rng.choice(categories)) for _ in boxes]
        cases.append((labels, gt, pred_labels, boxes, rng.uniform(0, 1, len(boxes))))
    return cases


def coco_inputs(cases, categories):
    """The cases as a COCO ground-truth dict and a detection list."""
    ids = {name: i + 1 for i, name in enumerate(categories)}
    images, annotations, detections = [], [], []
    for image_id, (labels, gt, pred_labels, boxes, scores) in enumerate(cases, start=1):
        images.append({"id": image_id, "width": 200, "height": 200})
        for label, (x1, y1, x2, y2) in zip(labels, gt, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ids[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        for label, (x1, y1, x2, y2), score in zip(pred_labels, boxes, scores, strict=True):
            detections.append(
                {"image_id": image_id, "category_id": ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            )
    coco = {"images": images, "annotations": annotations, "categories": [{"id": i, "name": n} for n, i in ids.items()]}
    return coco, detections


def pycocotools_evaluator(coco_gt, detections, max_dets=None):
    """The reference: pycocotools' COCOeval, evaluated and accumulated."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = coco_gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
        if max_dets is not None:
            evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def pycocotools_eval(cases, categories, max_dets):
    return pycocotools_evaluator(*coco_inputs(cases, categories), max_dets).eval["recall"]  # (T, K, A, M)


@pytest.mark.parametrize("seed", range(12))
def test_proposal_recall_equals_pycocotools_average_recall(seed):
    rng = np.random.default_rng(seed)
    cases = random_case(rng)
    if not sum(len(c[1]) for c in cases):
        cases[0] = (["a"], SQUARE, ["a"], SHIFT_2, np.array([0.5]))
    proposals = [boxes[m.score_order(scores)] for _, _, _, boxes, scores in cases]
    ours = m.proposal_recall([c[1] for c in cases], proposals, ks=(10, 30, 100))  # (K, T)
    theirs = pycocotools_eval(cases, ("a",), (10, 30, 100))[:, 0, 0, :]  # (T, M), area "all"
    np.testing.assert_allclose(ours.T, theirs, atol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_per_class_recall_equals_pycocotools_recall_at_iou_half(seed):
    categories = ("cup", "dog", "person")
    rng = np.random.default_rng(100 + seed)
    cases = random_case(rng, categories, frames=5)
    counts = m.count_matches([m.FrameDetections(*case) for case in cases], 0.5)
    theirs = pycocotools_eval(cases, categories, (1000,))[0, :, 0, 0]  # IoU 0.5, per category
    for index, name in enumerate(categories):
        expected = theirs[index]
        if expected < 0:  # pycocotools: no ground truth for this category
            assert name not in counts or counts[name].recall is None
        else:
            assert counts[name].recall == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_coco_metrics_equal_pycocotools_statistics(seed):
    """faster-coco-eval computes the mAP; pycocotools, the reference implementation, must agree on all 12."""
    categories = ("cup", "dog", "person")
    rng = np.random.default_rng(200 + seed)
    cases = random_case(rng, categories, frames=6)
    coco_gt, detections = coco_inputs(cases, categories)
    assert detections and coco_gt["annotations"]  # these seeds draw both; empty inputs have their own test below
    evaluator = pycocotools_evaluator(coco_gt, detections)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    ours = m.coco_detection_metrics(coco_gt, detections)
    assert list(ours) == list(m.COCO_STAT_NAMES)
    np.testing.assert_allclose(list(ours.values()), evaluator.stats, atol=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_matching_at_all_thresholds_at_once_equals_one_threshold_at_a_time(seed):
    rng = np.random.default_rng(300 + seed)
    predictions, truths = int(rng.integers(0, 30)), int(rng.integers(0, 8))
    ious = np.round(rng.uniform(0, 1, (predictions, truths)), 1)  # coarse values: many ties
    together = m.greedy_match_at_thresholds(ious, m.IOU_THRESHOLDS)
    assert together.shape == (len(m.IOU_THRESHOLDS), predictions)
    for row, threshold in zip(together, m.IOU_THRESHOLDS, strict=True):
        assert row.tolist() == reference_greedy_match(ious, threshold)


def reference_greedy_match(ious, threshold):
    """COCO's matching written out as pycocotools' evaluateImg loops (the later box wins a tie)."""
    taken, matched = set(), []
    for p in range(ious.shape[0]):
        best, best_iou = -1, min(threshold, 1 - 1e-10)
        for g in range(ious.shape[1]):
            if g in taken or ious[p, g] < best_iou:
                continue
            best, best_iou = g, ious[p, g]
        if best >= 0:
            taken.add(best)
        matched.append(best)
    return matched


def test_coco_metrics_perfect_empty_and_shifted():
    coco = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "cup"}],
    }
    perfect = m.coco_detection_metrics(coco, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}])
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    shifted = m.coco_detection_metrics(coco, [{"image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10], "score": 0.9}])
    assert shifted["AP50"] == pytest.approx(1.0) and shifted["AP75"] == 0.0 and shifted["AP"] == pytest.approx(0.4)
    assert m.coco_detection_metrics(coco, [])["AP"] == 0.0


# --- scoring records ------------------------------------------------------------------------------
def small_truth():
    images = [GroundTruthImage(1, 1_000, 100, 100), GroundTruthImage(2, 2_000, 100, 100)]
    objects = [
        GroundTruthObject(1, 1, "cup", (0.0, 0.0, 10.0, 10.0)),
        GroundTruthObject(2, 1, "dog", (50.0, 50.0, 90.0, 90.0)),
        GroundTruthObject(3, 2, "cup", (20.0, 20.0, 40.0, 40.0)),
    ]
    return GroundTruth(images, objects, "small")


def detection(label, box, score=0.9, index=0):
    x1, y1, x2, y2 = (float(v) for v in box)
    return Detection(index, label, (x1, y1, x2, y2), score)


def test_score_answers_hand_computed():
    gt = small_truth()
    queries = [ReferringQuery("q1", 1, "the dog", 2), ReferringQuery("q2", 2, "the cup", 3)]
    answers = [
        AnswerRecord(
            1_000,
            detection_query_id(1),
            "detect",
            detections=(
                detection("Cup", (0, 0, 10, 10)),
                detection("dog", (0, 0, 10, 10), 0.5),
                detection("horse", (1, 1, 5, 5), 0.4),
            ),
        ),
        AnswerRecord(2_000, detection_query_id(2), "detect", status=int(AnswerStatus.MODEL_ERROR)),
        AnswerRecord(1_000, referring_query_id("q1"), "detect", detections=(detection("the dog", (50, 50, 90, 90)),)),
        AnswerRecord(2_000, referring_query_id("q2"), "detect", detections=(detection("the cup", (0, 0, 10, 10)),)),
        AnswerRecord(9_000, "somebody-else", "detect"),
    ]
    result = score_answers(answers, gt, queries)
    detect = result["detection"]
    assert detect["per_class"]["cup"] == {"tp": 1, "fp": 0, "fn": 1, "precision": 1.0, "recall": 0.5}
    assert detect["per_class"]["dog"] == {"tp": 0, "fp": 1, "fn": 1, "precision": 0.0, "recall": 0.0}
    assert detect["per_class"]["horse"]["fp"] == 1
    assert detect["precision_iou_0.5"] == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3 classes
    assert detect["recall_iou_0.5"] == pytest.approx(0.25)  # (0.5 + 0) / 2 classes with truth
    assert detect["labels_outside_vocabulary"] == {"horse": 1}
    assert detect["frames_answered"] == 1
    assert result["referring"]["hits"] == 1 and result["referring"]["accuracy_iou_0.5"] == 0.5
    assert result["referring"]["per_query"] == {"q1": True, "q2": False}
    assert result["status_counts"] == {"MODEL_ERROR": 1, "OK": 3}
    assert result["answers_not_in_ground_truth"] == 1


def test_score_answers_perfect_gives_full_marks_and_nothing_gives_zero():
    gt = small_truth()
    perfect = [
        AnswerRecord(
            image.stamp_ns,
            detection_query_id(image.id),
            "detect",
            detections=tuple(detection(o.category, o.box) for o in gt.objects(image.id)),
        )
        for image in gt.images
    ]
    scored = score_answers(perfect, gt)["detection"]
    assert (scored["precision_iou_0.5"], scored["recall_iou_0.5"], scored["coco"]["AP"]) == (1.0, 1.0, 1.0)
    nothing = score_answers([], gt, [ReferringQuery("q", 1, "x", 1)])
    assert nothing["detection"]["recall_iou_0.5"] == 0.0 and nothing["detection"]["coco"]["AP"] == 0.0
    assert nothing["referring"]["unanswered"] == 1 and nothing["referring"]["accuracy_iou_0.5"] == 0.0


def test_score_proposals_counts_missing_frames_as_drops():
    gt = small_truth()
    records = [
        ProposalRecord(
            1_000, np.array([[0, 0, 10, 10], [50, 50, 90, 90]], np.float32), np.array([0.9, 0.8], np.float32)
        )
    ]
    scored = score_proposals(records, gt, [1, 2])
    assert scored["frames_without_proposals"] == [2]
    assert scored["recall"]["10"] == {"iou_0.5": pytest.approx(2 / 3), "iou_0.5:0.95": pytest.approx(2 / 3)}
    assert scored["recall_at_100_per_class_iou_0.5"] == {"cup": 0.5, "dog": 1.0}
    assert scored["count_mean"] == 1.0
