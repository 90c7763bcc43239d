"""Detection metrics of the ChatRex evaluation protocol, as pure functions of boxes and labels.

No bag or message I/O here (numpy, plus pycocotools for COCO mAP), so each metric is testable on
hand-computed cases. Matching follows COCO's rule everywhere, so our numbers and pycocotools' agree:
predictions in descending score order (stable), each takes the unmatched ground-truth box of highest
IoU >= threshold (a tie goes to the later box), at most one prediction per ground-truth box.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatrex_ros.core.proposals import box_iou
from chatrex_ros.core.types import MAX_PROPOSALS

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
"""COCO's 0.5:0.05:0.95 (the same floats pycocotools uses, so threshold ties agree)."""

RECALL_KS = (10, 30, MAX_PROPOSALS)
"""Proposal recall is reported for the top 10, 30 and 100 proposals (ChatRex gives the model <= 100)."""


def greedy_match(ious: np.ndarray, threshold: float) -> np.ndarray:
    """COCO matching for predictions already in descending score order.

    ``ious``: (P, G). Returns (P,) int: the ground-truth index each prediction matched, -1 for none.
    """
    predictions, truths = ious.shape
    matched_to = np.full(predictions, -1, dtype=np.int64)
    if predictions == 0 or truths == 0:
        return matched_to
    taken = np.zeros(truths, dtype=bool)
    reversed_columns = ious[:, ::-1]
    threshold = min(float(threshold), 1 - 1e-10)
    # Only predictions that reach the threshold with some box can match: usually a handful of the 100.
    for p in np.flatnonzero(ious.max(axis=1) >= threshold):
        row = np.where(taken[::-1] | (reversed_columns[p] < threshold), -np.inf, reversed_columns[p])
        best_reversed = int(np.argmax(row))  # first max of the reversed row = last max of the row
        if row[best_reversed] == -np.inf:
            continue
        best = truths - 1 - best_reversed
        taken[best] = True
        matched_to[p] = best
    return matched_to


def score_order(scores: np.ndarray) -> np.ndarray:
    """Descending score, ties in input order (what pycocotools' mergesort does)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")


# --- proposal recall ------------------------------------------------------------------------------
def proposal_recall(
    gt_boxes: Sequence[np.ndarray],
    proposal_boxes: Sequence[np.ndarray],
    ks: Sequence[int] = RECALL_KS,
    thresholds: Sequence[float] = tuple(IOU_THRESHOLDS),
) -> np.ndarray:
    """Class-agnostic recall of the top-K proposals: (len(ks), len(thresholds)) fractions of GT boxes.

    One entry per frame in both sequences; each frame's proposals must already be in the order the
    model sees them (descending score). One-to-one matching as in COCO AR, so the mean over
    ``IOU_THRESHOLDS`` equals pycocotools' AR@K for a single "object" category. Greedy matching over a
    prefix never depends on later proposals, so one pass over the top max(K) serves every K.
    """
    if len(gt_boxes) != len(proposal_boxes):
        raise ValueError(f"{len(gt_boxes)} ground-truth frames but {len(proposal_boxes)} proposal frames")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"K values must be >= 1, got {ks}")
    kmax = max(ks)
    found = np.zeros((len(ks), len(thresholds)), dtype=np.int64)
    total = 0
    for truths, proposals in zip(gt_boxes, proposal_boxes, strict=True):
        truths = np.asarray(truths, dtype=np.float64).reshape(-1, 4)
        proposals = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)[:kmax]
        total += len(truths)
        if len(truths) == 0 or len(proposals) == 0:
            continue
        ious = box_iou(proposals, truths)
        for t, threshold in enumerate(thresholds):
            matched_by = greedy_match(ious, threshold)
            rank = np.nonzero(matched_by >= 0)[0]  # proposal positions that matched something
            for k_index, k in enumerate(ks):
                found[k_index, t] += int(np.count_nonzero(rank < k))
    if total == 0:
        return np.full((len(ks), len(thresholds)), np.nan)
    return found / total


# --- detection precision / recall -----------------------------------------------------------------
@dataclass(frozen=True)
class FrameDetections:
    """One frame: ground-truth labels/boxes and the predicted ones (any order; scores decide)."""

    gt_labels: Sequence[str]
    gt_boxes: np.ndarray
    labels: Sequence[str]
    boxes: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class ClassCounts:
    """One class's detection tallies at one IoU threshold, from which precision and recall follow."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def predictions(self) -> int:
        """How many boxes were predicted with this label (true plus false positives)."""
        return self.true_positives + self.false_positives

    @property
    def truths(self) -> int:
        """How many ground-truth boxes have this label (true positives plus false negatives)."""
        return self.true_positives + self.false_negatives

    @property
    def precision(self) -> float | None:
        """None for a class that was never predicted."""
        return self.true_positives / self.predictions if self.predictions else None

    @property
    def recall(self) -> float | None:
        """None for a class without ground truth."""
        return self.true_positives / self.truths if self.truths else None


def count_matches(frames: Iterable[FrameDetections], iou_threshold: float = 0.5) -> dict[str, ClassCounts]:
    """Per-class true/false positives and false negatives, matched per frame and class."""
    tallies: dict[str, list[int]] = {}
    for frame in frames:
        gt_labels = list(frame.gt_labels)
        gt_boxes = np.asarray(frame.gt_boxes, dtype=np.float64).reshape(-1, 4)
        boxes = np.asarray(frame.boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(frame.scores, dtype=np.float64).reshape(-1)
        labels = list(frame.labels)
        if len(gt_labels) != len(gt_boxes) or not len(labels) == len(boxes) == len(scores):
            raise ValueError("labels, boxes and scores of a frame must have matching lengths")
        for name in dict.fromkeys(gt_labels + labels):
            truth_rows = [i for i, label in enumerate(gt_labels) if label == name]
            pred_rows = [i for i, label in enumerate(labels) if label == name]
            pred_rows = [pred_rows[i] for i in score_order(scores[pred_rows])] if pred_rows else []
            matched = greedy_match(box_iou(boxes[pred_rows], gt_boxes[truth_rows]), iou_threshold)
            hits = int(np.count_nonzero(matched >= 0))
            tally = tallies.setdefault(name, [0, 0, 0])
            tally[0] += hits
            tally[1] += len(pred_rows) - hits
            tally[2] += len(truth_rows) - hits
    return {name: ClassCounts(*tally) for name, tally in tallies.items()}


def mean_precision_recall(counts: Mapping[str, ClassCounts]) -> tuple[float | None, float | None]:
    """Per-class precision and recall averaged over classes (the ChatRex protocol).

    Precision averages over classes with ground truth; a class with ground truth that was never predicted
    has precision 0 (it found nothing), a class only predicted (no ground truth) precision 0 too.
    Recall averages over classes with ground truth. None when there is nothing to average.
    """
    with_truth = [c for c in counts.values() if c.truths]
    considered = [c for c in counts.values() if c.truths or c.predictions]
    precision = [c.precision or 0.0 for c in considered]
    recall = [c.recall for c in with_truth]
    return (float(np.mean(precision)) if precision else None, float(np.mean(recall)) if recall else None)  # type: ignore[arg-type]


# --- referring ------------------------------------------------------------------------------------
def referring_hits(
    target_boxes: np.ndarray, predicted_boxes: Sequence[np.ndarray | None], threshold: float = 0.5
) -> np.ndarray:
    """(Q,) bool: the predicted box overlaps its single target with IoU strictly above ``threshold``."""
    targets = np.asarray(target_boxes, dtype=np.float64).reshape(-1, 4)
    if len(targets) != len(predicted_boxes):
        raise ValueError(f"{len(targets)} targets but {len(predicted_boxes)} predictions")
    hits = np.zeros(len(targets), dtype=bool)
    for i, predicted in enumerate(predicted_boxes):
        if predicted is not None:
            hits[i] = bool(
                box_iou(np.asarray(predicted, dtype=np.float64).reshape(1, 4), targets[i : i + 1])[0, 0] > threshold
            )
    return hits


# --- COCO mAP -------------------------------------------------------------------------------------
COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def coco_detection_metrics(coco_gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Pycocotools' 12 bbox statistics (AP over IoU 0.5:0.95, AP50, ...), -1 where undefined.

    ``detections``: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts. No detections
    gives 0 AP (pycocotools refuses an empty result list). Its progress prints are swallowed.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError("COCO mAP needs pycocotools: pip install pycocotools") from error
    if not coco_gt.get("annotations"):
        return {name: -1.0 for name in COCO_STAT_NAMES}
    if not detections:
        return {name: (-1.0 if name.endswith(("small", "medium", "large")) else 0.0) for name in COCO_STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {**coco_gt, "annotations": [dict(a) for a in coco_gt["annotations"]]}
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)}


# --- latency --------------------------------------------------------------------------------------
def latency_summary(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """count, mean, p50, p90, p99 and max of a list of milliseconds (linear-interpolated percentiles)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(values.max()),
    }
