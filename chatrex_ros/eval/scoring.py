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
    count_query_id,
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
    counts: bool | None = None,
) -> dict[str, Any]:
    """Detection P/R (IoU 0.5 and 0.5:0.95), DensityF1, COCO mAP, referring and rejection accuracy, counts.

    ``answers``: :class:`AnswerRecord` or ``chatrex_ros/msg/Answer`` messages whose ``query_id`` follows
    the ``eval-detect/<image id>`` / ``eval-refer/<query id>`` / ``eval-count/<image id>/<category>``
    convention (others are counted and ignored). ``image_ids``: the evaluated frames (default: every
    ground-truth frame); a frame without a detection answer has all its objects missed, a referring query
    without an answer is a miss. ``counts``: score count queries (True: every frame and category present
    was asked, a missing answer is wrong), skip them (False), or score them when any count answer is there
    (None, the default: a run that asked none reports ``count`` None instead of all wrong).
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
    count_ids = {count_query_id(image.id, name) for image in frames for name in gt.frame_categories(image.id)}
    unknown_ids = [
        q for q in by_id if not q.startswith(DETECTION_QUERY_PREFIX) and q not in referring_ids and q not in count_ids
    ]
    if counts is None:
        counts = any(q in count_ids for q in by_id)
    result: dict[str, Any] = {
        "answers": len(records),
        "answers_scored": len(by_id) - len(unknown_ids),
        "answers_not_in_ground_truth": unmatched,
        "answers_with_unknown_query_id": len(unknown_ids),
        "status_counts": dict(sorted(statuses.items())),
        "detection": _score_detection(by_id, gt, frames),
        "referring": _score_referring(by_id, gt, [q for q in queries if q.image_id in evaluated]),
        "count": _score_counts(by_id, gt, frames) if counts else None,
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


def no_language_model_entry() -> dict[str, Any]:
    """The ``metrics["answers"]`` entry of an evaluation run without a language model.

    The same shape as :func:`answers_not_available`'s, so every metrics.json has an ``answers`` entry and a
    reader tells "not measured" from "measured as 0" by ``available`` alone.
    """
    return {
        "available": False,
        "reason": f"{NO_LANGUAGE_MODEL_MESSAGE} for this evaluation",
        "no_language_model": True,
        "answers": 0,
        "status_counts": {},
        "status_messages": {},
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
    per_threshold = m.count_matches_by_threshold(frame_detections)
    counts = per_threshold[0]  # IOU_THRESHOLDS[0] is 0.5: the ChatRex protocol's numbers
    precision, recall = m.mean_precision_recall(counts)
    precision_avg, recall_avg = m.mean_precision_recall_over_thresholds(per_threshold)
    density = m.density_f1_by_class(frame_detections)
    coco = m.coco_detection_metrics(_coco_subset(gt, [f.id for f in frames], class_agnostic=False), coco_detections)
    return {
        "frames": len(frames),
        "frames_answered": int(answered),
        "precision_iou_0.5": _rounded(precision),
        "recall_iou_0.5": _rounded(recall),
        "precision_iou_0.5:0.95": _rounded(precision_avg),
        "recall_iou_0.5:0.95": _rounded(recall_avg),
        **_density_headline(list(density.values())),
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
        "per_class_iou_0.5:0.95": {
            name: {"precision": _rounded(p), "recall": _rounded(r)}
            for name, (p, r) in sorted(m.class_precision_recall_over_thresholds(per_threshold).items())
        },
        "per_class_densityf1": {
            name: {"frames": len(rows), **_density_values(rows)} for name, rows in sorted(density.items())
        },
        "labels_outside_vocabulary": dict(sorted(outside_vocabulary.items())),
        "coco": {name: _rounded(coco[name]) for name in ("AP", "AP50", "AP75", "AR100")},
    }


def _density_values(rows: np.ndarray) -> dict[str, float | None]:
    """DensityF1 at IoU 0.5 and over 0.5:0.95 of (N, T) per-expression values: the mean over expressions."""
    if not len(rows):
        return {"densityf1_iou_0.5": None, "densityf1_iou_0.5:0.95": None}
    mean = rows.mean(axis=0)
    return {"densityf1_iou_0.5": _rounded(mean[0]), "densityf1_iou_0.5:0.95": _rounded(mean.mean())}


def _density_headline(per_class: Sequence[np.ndarray]) -> dict[str, float | None]:
    """Per-class DensityF1 averaged over classes, like the ChatRex P/R (each class weighs the same)."""
    if not per_class:
        return _density_values(np.zeros((0, len(m.IOU_THRESHOLDS))))
    return _density_values(np.vstack([rows.mean(axis=0) for rows in per_class]))


def _score_referring(
    by_id: Mapping[str, AnswerRecord], gt: GroundTruth, queries: Sequence[ReferringQuery]
) -> dict[str, Any]:
    """Positive queries: accuracy of the first box, DensityF1 of all boxes; negative ones: rejection.

    The two are scored apart, so adding negative queries to a file leaves every positive number as it was.
    """
    negatives = [q for q in queries if q.negative]
    positives = [q for q in queries if not q.negative]
    targets = np.asarray(
        [gt.object(q.annotation_id).box for q in positives if q.annotation_id is not None], dtype=np.float64
    ).reshape(-1, 4)
    predicted: list[np.ndarray | None] = []
    density_rows = []
    unanswered = 0
    for query, target in zip(positives, targets, strict=True):
        record = by_id.get(referring_query_id(query.id))
        answered = record is not None and record.ok
        unanswered += not answered
        detections = record.detections if record is not None and answered else ()
        # The model's first grounded box is its answer to "which one": later ones are extra guesses.
        predicted.append(np.asarray(detections[0].box, dtype=np.float64) if detections else None)
        boxes = np.asarray([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        density_rows.append(m.density_f1(target.reshape(1, 4), boxes))
    hits = m.referring_hits(targets, predicted, 0.5)
    density = np.vstack(density_rows) if density_rows else np.zeros((0, len(m.IOU_THRESHOLDS)))
    return {
        "queries": len(positives),
        "hits": int(hits.sum()),
        "unanswered": unanswered,
        "empty_answers": int(sum(p is None for p in predicted)) - unanswered,
        "accuracy_iou_0.5": _rounded(float(hits.mean())) if len(positives) else None,
        "per_query": {q.id: bool(hit) for q, hit in zip(positives, hits, strict=True)},
        **_density_values(density),
        "negatives": _score_negatives(by_id, negatives),
    }


def _score_negatives(by_id: Mapping[str, AnswerRecord], queries: Sequence[ReferringQuery]) -> dict[str, Any]:
    """Rejection accuracy and false positives per negative query (see :func:`metrics.rejection_summary`)."""
    boxes: list[int | None] = []
    for query in queries:
        record = by_id.get(referring_query_id(query.id))
        boxes.append(_distinct_boxes(record) if record is not None and record.ok else None)
    summary = m.rejection_summary(boxes)
    return {
        "queries": summary.queries,
        "answered": summary.answered,
        "unanswered": summary.queries - summary.answered,
        "correct_rejections": summary.correct,
        "rejection_accuracy": _rounded(summary.accuracy),
        "false_positives": summary.false_positives,
        "false_positives_per_query": _rounded(summary.false_positives_per_query),
        "per_query": {q.id: count == 0 for q, count in zip(queries, boxes, strict=True)},
    }


def _distinct_boxes(record: AnswerRecord) -> int:
    """How many proposals an answer grounds, each once (two phrases on the same box are one object)."""
    return len({d.proposal_index for d in record.detections})


def _score_counts(by_id: Mapping[str, AnswerRecord], gt: GroundTruth, frames: Sequence[Any]) -> dict[str, Any]:
    """Count queries, one per frame and category present: the grounded boxes against the instances.

    An answer's count is the number of distinct proposals it grounds, not a number in its text: the
    boxes are what the protocol resolves (and what a robot acts on); free text is the model's own prose.
    """
    pairs: dict[str, list[tuple[int, int | None]]] = {}
    for image in frames:
        instances = Counter(gt.labels(image.id))
        for name in gt.frame_categories(image.id):
            record = by_id.get(count_query_id(image.id, name))
            answered = _distinct_boxes(record) if record is not None and record.ok else None
            pairs.setdefault(name, []).append((instances[name], answered))
    overall = m.count_summary(pair for rows in pairs.values() for pair in rows)
    return {
        **_count_values(overall),
        "answered": overall.answered,
        "unanswered": overall.queries - overall.answered,
        "per_class": {name: _count_values(m.count_summary(rows)) for name, rows in sorted(pairs.items())},
    }


def _count_values(summary: m.CountSummary) -> dict[str, Any]:
    return {
        "queries": summary.queries,
        "exact": summary.exact,
        "accuracy": _rounded(summary.accuracy),
        "mean_absolute_error": _rounded(summary.mean_absolute_error),
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
