"""Records + ground truth -> the metrics dictionary written to ``metrics.json``.

Shared by the offline evaluation (records made by calling the core) and by scoring recorded answers
(records read from a bag), so both report identical metrics for identical answers. Deterministic:
only counts and boxes go in, no clock. Timings are summarised separately (:func:`timing_summary`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from chatrex_ros.core.answering import AnswerStatus, status_name
from chatrex_ros.core.proposals import box_iou
from chatrex_ros.core.types import MAX_PROPOSALS
from chatrex_ros.eval import metrics as m
from chatrex_ros.eval.groundtruth import GroundTruth, ReferringQuery, normalise_label
from chatrex_ros.eval.records import (
    DETECTION_QUERY_PREFIX,
    AnswerRecord,
    ProposalRecord,
    detection_query_id,
    referring_query_id,
)

RECALL_CURVE_KS = (1, 2, 5, 10, 20, 30, 50, MAX_PROPOSALS)
"""K values of the recall-vs-K plot (the headline numbers use :data:`metrics.RECALL_KS`)."""


def _rounded(value: float | None, digits: int = 6) -> float | None:
    """Fixed precision in metrics.json: the file is compared across runs, float noise must not show."""
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def score_proposals(proposals: Sequence[ProposalRecord], gt: GroundTruth, image_ids: Sequence[int]) -> dict[str, Any]:
    """Proposal recall@K (IoU 0.5 and mean over 0.5:0.95), class-agnostic COCO AP, drops.

    ``image_ids``: the evaluated frames; a frame whose proposals are missing counts as zero proposals.
    """
    by_stamp = {record.stamp_ns: record for record in proposals}
    empty = np.zeros((0, 4), dtype=np.float32)
    frame_boxes = []
    counts = []
    dropped = []
    detections: list[dict[str, Any]] = []
    for image_id in image_ids:
        image = gt.image(image_id)
        record = by_stamp.get(image.stamp_ns)
        boxes = empty if record is None else np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.zeros(0) if record is None else np.asarray(record.scores, dtype=np.float64)
        order = m.score_order(scores)  # already sorted by the selection policy; re-sorting is a no-op guard
        boxes, scores = boxes[order], scores[order]
        frame_boxes.append(boxes)
        counts.append(len(boxes))
        if len(boxes) == 0:
            dropped.append(image_id)
        detections.extend(
            {"image_id": image_id, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
            for (x1, y1, x2, y2), s in zip(boxes.tolist(), scores.tolist(), strict=True)
        )
    gt_boxes = [gt.boxes(image_id) for image_id in image_ids]
    all_ks = sorted(set(m.RECALL_KS) | set(RECALL_CURVE_KS))
    recall = m.proposal_recall(gt_boxes, frame_boxes, all_ks)  # one matching pass serves every K
    headline = recall[[all_ks.index(k) for k in m.RECALL_KS]]
    curve = recall[[all_ks.index(k) for k in RECALL_CURVE_KS]]
    coco = m.coco_detection_metrics(_coco_subset(gt, image_ids, class_agnostic=True), detections)
    return {
        "frames": len(image_ids),
        "frames_without_proposals": [int(i) for i in dropped],
        "count_mean": _rounded(float(np.mean(counts)) if counts else None),
        "recall": {
            str(k): {"iou_0.5": _rounded(headline[i, 0]), "iou_0.5:0.95": _rounded(headline[i].mean())}
            for i, k in enumerate(m.RECALL_KS)
        },
        "recall_curve": {
            "k": list(RECALL_CURVE_KS),
            "iou_0.5": [_rounded(v) for v in curve[:, 0]],
            "iou_0.5:0.95": [_rounded(v) for v in curve.mean(axis=1)],
        },
        "recall_at_100_per_class_iou_0.5": _per_class_recall(gt, image_ids, frame_boxes),
        "class_agnostic_coco": {name: _rounded(coco[name]) for name in ("AP", "AP50", "AP75", "AR100")},
    }


def _per_class_recall(
    gt: GroundTruth, image_ids: Sequence[int], frame_boxes: Sequence[np.ndarray]
) -> dict[str, float | None]:
    """Which kinds of object the proposer finds at all: recall@100, IoU 0.5, per category."""
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for image_id, boxes in zip(image_ids, frame_boxes, strict=True):
        objects = gt.objects(image_id)
        matched = (
            m.greedy_match(box_iou(boxes[:MAX_PROPOSALS], gt.boxes(image_id)), 0.5)
            if len(objects)
            else np.zeros(0, int)
        )
        for index in matched[matched >= 0]:
            found[objects[int(index)].category] += 1
        total.update(obj.category for obj in objects)
    return {name: _rounded(found[name] / total[name]) for name in gt.categories if total[name]}


def _coco_subset(gt: GroundTruth, image_ids: Sequence[int], class_agnostic: bool) -> dict[str, Any]:
    """COCO dict restricted to the evaluated frames: unevaluated frames must not count as misses."""
    coco = gt.to_coco(class_agnostic=class_agnostic)
    keep = set(image_ids)
    coco["images"] = [image for image in coco["images"] if image["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    return coco


def _as_records(answers: Iterable[Any]) -> list[AnswerRecord]:
    """Accept records, or recorded ``Answer`` messages (duck-typed), so replays can pass messages as read."""
    return [a if isinstance(a, AnswerRecord) else AnswerRecord.from_message(a) for a in answers]


def score_answers(
    answers: Iterable[Any],
    gt: GroundTruth,
    queries: Sequence[ReferringQuery] = (),
    image_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Detection P/R (IoU 0.5, per class then averaged), COCO mAP and referring accuracy from answers.

    ``answers``: :class:`AnswerRecord` or ``chatrex_ros/msg/Answer`` messages whose ``query_id`` follows
    the ``eval-detect/<image id>`` / ``eval-refer/<query id>`` convention (others are counted and ignored).
    ``image_ids``: the evaluated frames (default: every ground-truth frame); a frame without a detection
    answer has all its objects missed, a referring query without an answer is a miss.
    """
    records = _as_records(answers)
    frames = list(gt.images) if image_ids is None else [gt.image(i) for i in image_ids]
    evaluated = {image.id for image in frames}
    by_id: dict[str, AnswerRecord] = {}
    unmatched = 0
    for record in records:
        image = gt.image_at(record.stamp_ns)
        if image is None or image.id not in evaluated:
            unmatched += 1
            continue
        by_id.setdefault(record.query_id, record)  # a repeated query id: the first answer counts
    statuses = Counter(status_name(r.status) for r in by_id.values())
    referring_ids = {referring_query_id(query.id) for query in queries}
    unknown_ids = [q for q in by_id if not q.startswith(DETECTION_QUERY_PREFIX) and q not in referring_ids]
    result: dict[str, Any] = {
        "answers": len(records),
        "answers_scored": len(by_id) - len(unknown_ids),
        "answers_not_in_ground_truth": unmatched,
        "answers_with_unknown_query_id": len(unknown_ids),
        "status_counts": dict(sorted(statuses.items())),
        "detection": _score_detection(by_id, gt, frames),
        "referring": _score_referring(by_id, gt, [q for q in queries if q.image_id in evaluated]),
    }
    return result


NO_LANGUAGE_MODEL_MESSAGE = "no language model configured"
"""How language_node's status message starts when it runs with ``language_backend: none``."""

STATUS_MESSAGE_CHARS = 120


def answers_not_available(answers: Iterable[Any]) -> dict[str, Any] | None:
    """None when some answer is OK (score them); else the ``metrics["answers"]`` entry saying why not.

    Precision, recall and referring accuracy computed from answers of which none is OK would all be 0.0,
    which reads as "the model found nothing" when no model ran at all (a graph started without one answers
    every query MODEL_ERROR). Those metrics are then reported as not available, with the statuses found
    and their typical message as the reason; ``detection`` and ``referring`` are None.
    :func:`score_answers` itself still scores any list (an empty one gives zeros), for callers that want that.
    """
    records = _as_records(answers)
    if any(record.ok for record in records):
        return None
    statuses = Counter(status_name(r.status) for r in records)
    messages: dict[str, Counter[str]] = {}
    for record in records:
        messages.setdefault(status_name(record.status), Counter())[record.status_message] += 1
    typical = {name: counter.most_common(1)[0][0] for name, counter in sorted(messages.items())}
    no_model = bool(records) and all(
        r.status == int(AnswerStatus.MODEL_ERROR) and r.status_message.startswith(NO_LANGUAGE_MODEL_MESSAGE)
        for r in records
    )
    if records:
        found = ", ".join(
            f"{name}: {count}" + (f' ("{_shorten(typical[name])}")' if typical[name] else "")
            for name, count in sorted(statuses.items())
        )
        reason = f"no answer in the recording is OK ({found})"
    else:
        reason = "the recording has no answers"
    return {
        "available": False,
        "reason": reason,
        "no_language_model": no_model,
        "answers": len(records),
        "status_counts": dict(sorted(statuses.items())),
        "status_messages": typical,
        "detection": None,
        "referring": None,
    }


def _shorten(text: str) -> str:
    return text if len(text) <= STATUS_MESSAGE_CHARS else text[: STATUS_MESSAGE_CHARS - 3].rstrip() + "..."


def _score_detection(by_id: Mapping[str, AnswerRecord], gt: GroundTruth, frames: Sequence[Any]) -> dict[str, Any]:
    vocabulary = {name: index + 1 for index, name in enumerate(gt.categories)}
    frame_detections = []
    coco_detections = []
    outside_vocabulary: Counter[str] = Counter()
    answered = 0
    for image in frames:
        record = by_id.get(detection_query_id(image.id))
        detections = record.detections if record is not None and record.ok else ()
        answered += record is not None and record.ok
        labels = [normalise_label(d.label) for d in detections]
        boxes = np.asarray([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray([d.score for d in detections], dtype=np.float64)
        frame_detections.append(m.FrameDetections(gt.labels(image.id), gt.boxes(image.id), labels, boxes, scores))
        for label, (x1, y1, x2, y2), score in zip(labels, boxes.tolist(), scores.tolist(), strict=True):
            if label not in vocabulary:
                outside_vocabulary[label] += 1
                continue
            coco_detections.append(
                {
                    "image_id": image.id,
                    "category_id": vocabulary[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    counts = m.count_matches(frame_detections, 0.5)
    precision, recall = m.mean_precision_recall(counts)
    coco = m.coco_detection_metrics(_coco_subset(gt, [f.id for f in frames], class_agnostic=False), coco_detections)
    return {
        "frames": len(frames),
        "frames_answered": int(answered),
        "precision_iou_0.5": _rounded(precision),
        "recall_iou_0.5": _rounded(recall),
        "per_class": {
            name: {
                "tp": c.true_positives,
                "fp": c.false_positives,
                "fn": c.false_negatives,
                "precision": _rounded(c.precision),
                "recall": _rounded(c.recall),
            }
            for name, c in sorted(counts.items())
        },
        "labels_outside_vocabulary": dict(sorted(outside_vocabulary.items())),
        "coco": {name: _rounded(coco[name]) for name in ("AP", "AP50", "AP75", "AR100")},
    }


def _score_referring(
    by_id: Mapping[str, AnswerRecord], gt: GroundTruth, queries: Sequence[ReferringQuery]
) -> dict[str, Any]:
    targets = np.asarray([gt.object(q.annotation_id).box for q in queries], dtype=np.float64).reshape(-1, 4)
    predicted: list[np.ndarray | None] = []
    unanswered = 0
    for query in queries:
        record = by_id.get(referring_query_id(query.id))
        if record is None or not record.ok:
            unanswered += 1
        # The model's first grounded box is its answer to "which one": later ones are extra guesses.
        first = record.detections[0].box if record is not None and record.ok and record.detections else None
        predicted.append(None if first is None else np.asarray(first, dtype=np.float64))
    hits = m.referring_hits(targets, predicted, 0.5)
    return {
        "queries": len(queries),
        "hits": int(hits.sum()),
        "unanswered": unanswered,
        "empty_answers": int(sum(p is None for p in predicted)) - unanswered,
        "accuracy_iou_0.5": _rounded(float(hits.mean())) if len(queries) else None,
        "per_query": {q.id: bool(hit) for q, hit in zip(queries, hits, strict=True)},
    }


def timing_summary(stage_ms: Mapping[str, Sequence[float]], frames: int, wall_s: float) -> dict[str, Any]:
    """Per-stage latency percentiles and throughput; varies run to run, so kept out of the metrics."""
    return {
        "frames": frames,
        "wall_s": round(wall_s, 4),
        "frames_per_s": round(frames / wall_s, 4) if wall_s > 0 else None,
        "stages_ms": {
            stage: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.latency_summary(values).items()}
            for stage, values in stage_ms.items()
        },
    }
