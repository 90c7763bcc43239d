"""Detection metrics of the ChatRex evaluation protocol, as pure functions of boxes and labels.

No bag or message I/O here (numpy, plus faster-coco-eval for COCO mAP), so each metric is testable on
hand-computed cases. Matching follows COCO's rule, so our numbers and pycocotools' agree: predictions in
descending score order (stable), each takes the unmatched ground-truth box of highest IoU >= threshold (a
tie goes to the later box), at most one prediction per ground-truth box. The one exception is DensityF1,
which matches the way its authors' HumanRef evaluation does (:func:`humanref_match_count`), so that our
DensityF1 means what theirs means.
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
    return greedy_match_at_thresholds(ious, (threshold,))[0]


def greedy_match_at_thresholds(ious: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """:func:`greedy_match` at every threshold at once: (T, P), the matched ground-truth index or -1.

    The thresholds are independent matchings; doing them together walks the predictions once with a
    (T, G) step instead of T walks, which is what keeps scoring 1,000 frames at ten IoU thresholds cheap.
    """
    ious = np.asarray(ious, dtype=np.float64)
    predictions, truths = ious.shape
    levels = np.minimum(np.asarray(thresholds, dtype=np.float64), 1 - 1e-10)[:, None]  # (T, 1)
    matched_to = np.full((len(levels), predictions), -1, dtype=np.int64)
    if predictions == 0 or truths == 0 or len(levels) == 0:
        return matched_to
    taken = np.zeros((len(levels), truths), dtype=bool)
    reversed_ious = ious[:, ::-1]  # argmax finds the first maximum; reversed, that is the row's last one
    every_level = np.arange(len(levels))
    # Only predictions that reach the lowest threshold with some box can match: usually a handful.
    for p in np.flatnonzero(ious.max(axis=1) >= levels.min()):
        row = np.where(taken[:, ::-1] | (reversed_ious[p] < levels), -np.inf, reversed_ious[p])  # (T, G)
        best_reversed = np.argmax(row, axis=1)
        hit = row[every_level, best_reversed] > -np.inf
        best = truths - 1 - best_reversed[hit]
        taken[hit, best] = True
        matched_to[hit, p] = best
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
        matched = greedy_match_at_thresholds(box_iou(proposals, truths), thresholds) >= 0  # (T, P)
        within = np.arange(len(proposals))[None, :] < np.asarray(ks)[:, None]  # (K, P): rank < K
        found += within.astype(np.int64) @ matched.T.astype(np.int64)  # (K, T) matches among the top K
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
    return count_matches_by_threshold(frames, (iou_threshold,))[0]


def count_matches_by_threshold(
    frames: Iterable[FrameDetections], thresholds: Sequence[float] = tuple(IOU_THRESHOLDS)
) -> list[dict[str, ClassCounts]]:
    """:func:`count_matches` at each threshold (one dict per threshold, classes in first-seen order).

    One pass: each frame and class gets one IoU matrix, which every threshold's matching reuses, so
    P/R over 0.5:0.95 costs ten greedy matchings, not ten passes over the answers.
    """
    thresholds = [float(t) for t in thresholds]
    tallies: dict[str, np.ndarray] = {}  # class -> (T, 3) tp, fp, fn
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
            ious = box_iou(boxes[pred_rows], gt_boxes[truth_rows])
            tally = tallies.setdefault(name, np.zeros((len(thresholds), 3), dtype=np.int64))
            hits = np.count_nonzero(greedy_match_at_thresholds(ious, thresholds) >= 0, axis=1)  # (T,)
            tally += np.stack([hits, len(pred_rows) - hits, len(truth_rows) - hits], axis=1)
    return [
        {name: ClassCounts(*(int(v) for v in tally[t])) for name, tally in tallies.items()}
        for t in range(len(thresholds))
    ]


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


def class_precision_recall_over_thresholds(
    per_threshold: Sequence[Mapping[str, ClassCounts]],
) -> dict[str, tuple[float | None, float | None]]:
    """Each class's precision and recall averaged over the thresholds of :func:`count_matches_by_threshold`.

    COCO's 0.5:0.95 convention applied to the ChatRex P/R: a box that is only roughly right counts at the
    loose thresholds only (IoU 0.72 passes 0.5..0.7, five of ten). None where the value is None at every
    threshold (a class never predicted, or without ground truth: those counts do not depend on IoU).
    """
    names = dict.fromkeys(name for counts in per_threshold for name in counts)
    result: dict[str, tuple[float | None, float | None]] = {}
    for name in names:
        entries = [counts[name] for counts in per_threshold if name in counts]
        result[name] = (_mean_or_none([c.precision for c in entries]), _mean_or_none([c.recall for c in entries]))
    return result


def mean_precision_recall_over_thresholds(
    per_threshold: Sequence[Mapping[str, ClassCounts]],
) -> tuple[float | None, float | None]:
    """:func:`mean_precision_recall` at each threshold, averaged over the thresholds.

    The classes averaged are the same at every threshold, so this equals the class average of
    :func:`class_precision_recall_over_thresholds` (with never-predicted classes as precision 0).
    """
    pairs = [mean_precision_recall(counts) for counts in per_threshold]
    return _mean_or_none([p for p, _ in pairs]), _mean_or_none([r for _, r in pairs])


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean, or None when the list is empty or holds a None (an undefined value is not a 0)."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(np.asarray(values, dtype=np.float64)))


# --- DensityF1 (HumanRef) -------------------------------------------------------------------------
def humanref_match_count(ious: np.ndarray, threshold: float) -> int:
    """How many ground-truth boxes are matched under HumanRef's rule; ``ious`` is (P, G).

    Ground-truth boxes in their given order; each takes the not yet used prediction of highest IoU that
    is >= ``threshold`` (and > 0), the first such prediction on a tie; one prediction per box. Unlike COCO
    matching no scores are involved (a referring answer is a set of boxes), and the ground truth leads.
    """
    ious = np.asarray(ious, dtype=np.float64)
    predictions, truths = ious.shape
    if predictions == 0 or truths == 0:
        return 0
    used = np.zeros(predictions, dtype=bool)
    matches = 0
    for g in range(truths):
        column = ious[:, g]
        candidates = np.where(used | (column < threshold) | (column <= 0), -np.inf, column)
        best = int(np.argmax(candidates))  # the first maximum: ties go to the earlier prediction
        if candidates[best] == -np.inf:
            continue
        used[best] = True
        matches += 1
    return matches


def density_f1(
    gt_boxes: np.ndarray, pred_boxes: np.ndarray, thresholds: Sequence[float] = tuple(IOU_THRESHOLDS)
) -> np.ndarray:
    """(T,) DensityF1 of one expression (one question and its target boxes) at each IoU threshold.

    HumanRef's definition (RexSeek, arXiv 2503.08507; IDEA-Research/RexSeek
    ``rexseek/metric/recall_precision_densityf1.py``): F1 of the expression's precision and recall
    (:func:`humanref_match_count` matches), times the density penalty ``min(1, targets / predictions)``
    (0 without predictions), which stops "box everything" answers from scoring a high recall. An
    expression without targets is a rejection case, scored by :func:`rejection_summary` instead: ValueError.
    """
    truths = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    predicted = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    if len(truths) == 0:
        raise ValueError("an expression without targets is a rejection case: score it with rejection_summary")
    scores = np.zeros(len(thresholds), dtype=np.float64)
    if len(predicted) == 0:
        return scores
    ious = box_iou(predicted, truths)
    penalty = min(1.0, len(truths) / len(predicted))
    for t, threshold in enumerate(thresholds):
        matches = humanref_match_count(ious, float(threshold))
        if matches:
            precision, recall = matches / len(predicted), matches / len(truths)
            scores[t] = 2 * precision * recall / (precision + recall) * penalty
    return scores


def density_f1_by_class(
    frames: Iterable[FrameDetections], thresholds: Sequence[float] = tuple(IOU_THRESHOLDS)
) -> dict[str, np.ndarray]:
    """Per class, an (F, T) array: the DensityF1 of each of the F frames whose ground truth has that class.

    Each (frame, class) is one expression, "detect <class>": its targets are the frame's boxes of that
    class, its predictions the boxes answered with that label, in answer order. A label the frame has no
    ground truth for is no such expression (HumanRef averages over expressions with targets; those boxes
    still count as false positives in P/R). Classes in first-seen order.
    """
    rows: dict[str, list[np.ndarray]] = {}
    for frame in frames:
        gt_labels = list(frame.gt_labels)
        gt_boxes = np.asarray(frame.gt_boxes, dtype=np.float64).reshape(-1, 4)
        boxes = np.asarray(frame.boxes, dtype=np.float64).reshape(-1, 4)
        labels = list(frame.labels)
        if len(gt_labels) != len(gt_boxes) or len(labels) != len(boxes):
            raise ValueError("labels and boxes of a frame must have matching lengths")
        for name in dict.fromkeys(gt_labels):
            truths = gt_boxes[[i for i, label in enumerate(gt_labels) if label == name]]
            predicted = boxes[[i for i, label in enumerate(labels) if label == name]]
            rows.setdefault(name, []).append(density_f1(truths, predicted, thresholds))
    return {name: np.vstack(values) for name, values in rows.items()}


# --- rejection (negative queries) and counting -----------------------------------------------------
@dataclass(frozen=True)
class RejectionSummary:
    """Negative queries (nothing in the image matches the phrase): how often the model said so."""

    queries: int = 0
    answered: int = 0
    correct: int = 0
    false_positives: int = 0

    @property
    def accuracy(self) -> float | None:
        """Correct rejections over all negative queries; an unanswered query is no rejection. None without queries."""
        return self.correct / self.queries if self.queries else None

    @property
    def false_positives_per_query(self) -> float | None:
        """Mean number of boxes per answered negative query (a failed query returned nothing to count)."""
        return self.false_positives / self.answered if self.answered else None


def rejection_summary(box_counts: Iterable[int | None]) -> RejectionSummary:
    """Tally negative queries from how many boxes each answer returned; None for a query not answered.

    A correct rejection is an answer with zero boxes. An unanswered query (error status, or no answer at
    all) counts against the accuracy: otherwise a model that fails every query would reject perfectly.
    """
    counts = list(box_counts)
    answered = [c for c in counts if c is not None]
    if any(c < 0 for c in answered):
        raise ValueError(f"box counts must be >= 0, got {answered}")
    return RejectionSummary(len(counts), len(answered), sum(c == 0 for c in answered), int(sum(answered)))


@dataclass(frozen=True)
class CountSummary:
    """Count queries ("How many <class> are there?") against the ground-truth number of instances."""

    queries: int = 0
    answered: int = 0
    exact: int = 0
    absolute_error: int = 0

    @property
    def accuracy(self) -> float | None:
        """Exact counts over all count queries; an unanswered query is not exact. None without queries."""
        return self.exact / self.queries if self.queries else None

    @property
    def mean_absolute_error(self) -> float | None:
        """Mean |answered - true| over the answered queries (an unanswered one has no count)."""
        return self.absolute_error / self.answered if self.answered else None


def count_summary(pairs: Iterable[tuple[int, int | None]]) -> CountSummary:
    """Tally (true count, answered count or None when not answered) pairs."""
    rows = list(pairs)
    answered = [(truth, count) for truth, count in rows if count is not None]
    return CountSummary(
        len(rows),
        len(answered),
        sum(truth == count for truth, count in answered),
        int(sum(abs(truth - count) for truth, count in answered)),
    )


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
    """COCO's 12 bbox statistics (AP over IoU 0.5:0.95, AP50, ...), -1 where undefined.

    ``detections``: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts. Computed by
    faster-coco-eval, pycocotools' algorithm in C++ (identical numbers, checked against pycocotools in the
    tests): at 1,000 frames pycocotools' per-image Python loop was most of the evaluation's own time.
    No detections gives 0 AP (COCO's loaders refuse an empty result list). Progress prints are swallowed.
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as error:
        raise ImportError("COCO mAP needs faster-coco-eval: pip install faster-coco-eval") from error
    if not coco_gt.get("annotations"):
        return {name: -1.0 for name in COCO_STAT_NAMES}
    if not detections:
        return {name: (-1.0 if name.endswith(("small", "medium", "large")) else 0.0) for name in COCO_STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {**coco_gt, "annotations": [dict(a) for a in coco_gt["annotations"]]}
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval_faster(gt, dt, "bbox", print_function=_discard)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats[:12], strict=True)}


def _discard(*_args: Any, **_kwargs: Any) -> None:
    """faster-coco-eval's print function, silenced: a metrics call writes nothing."""


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
