"""Scoring answers recorded from the running nodes (``eval --answers REC``).

The recorded ``Answer`` and ``ProposalArray`` messages become the same records the offline evaluation
makes, and go through the same scoring, so a live run and an offline run of the same models report
comparable numbers. What only a live run has is added: frames the nodes dropped (no proposals),
end-to-end latency from the image stamp to the recorder's receive time, and the pipeline's throughput
over the recording's log time (what the scorer measures about itself is only reported as scoring time).

A recording in which no answer is OK (typically a graph started without a language model, which answers
every query MODEL_ERROR) gets the offline evaluation's treatment: detection and referring metrics are
reported as not available, with the answer statuses found, rather than as zeros.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from chatrex_ros.core.stamps import NS_PER_S
from chatrex_ros.eval.bagio import ANSWER_TYPE, IMAGE_TYPES, PROPOSALS_TYPE, BagError, BagReader
from chatrex_ros.eval.groundtruth import GroundTruth, ReferringQuery, match_stamps
from chatrex_ros.eval.result import EvaluationResult
from chatrex_ros.eval.scoring import answers_not_available, score_answers, score_proposals, timing_summary

NO_PROPOSALS_NOTE = (
    "No ProposalArray topic in the recorded bag: proposal recall and drops are not reported "
    "(pass --proposal-topic if it has another name)."
)


def evaluate_recorded(
    answers_bag: str | Path,
    gt: GroundTruth,
    queries: Sequence[ReferringQuery] = (),
    answer_topic: str | None = None,
    proposal_topic: str | None = None,
    image_topic: str | None = None,
    input_bag: str | Path | None = None,
    stamp_tolerance_ns: int = 0,
    queries_file: str | Path | None = None,
) -> EvaluationResult:
    """Score a recorded bag with the metrics of :func:`chatrex_ros.eval.offline.evaluate_bag`.

    Answers must carry the ``eval-detect/<image id>`` / ``eval-refer/<query id>`` query ids (see
    :mod:`chatrex_ros.eval.records`). The evaluated frames are the ground-truth images present on the image
    topic (of ``input_bag``, else of the recorded bag); with no image topic at all, every ground-truth image.
    End-to-end latency (receive time minus image stamp) is meaningful when the images were stamped with
    the clock the recorder uses, as a replay that re-stamps them does.
    """
    started = time.perf_counter()
    with BagReader(answers_bag) as reader:
        answer_topic = answer_topic or _only_topic(reader, ANSWER_TYPE, exclude=("ground_truth",))
        answers = reader.answers(answer_topic)
        proposal_topics = reader.topics_of_type(PROPOSALS_TYPE)
        proposal_topic = proposal_topic or (proposal_topics[0] if len(proposal_topics) == 1 else None)
        proposals = reader.proposals(proposal_topic) if proposal_topic else []
        frame_stamps = _frame_stamps(reader, image_topic) if input_bag is None else None
    if input_bag is not None:
        with BagReader(input_bag) as source:
            frame_stamps = _frame_stamps(source, image_topic)
    if frame_stamps:
        image_ids = [image.id for image in match_stamps(gt, frame_stamps, stamp_tolerance_ns).values()]
    else:
        image_ids = [image.id for image in gt.images]
    image_ids.sort(key=lambda i: gt.image(i).stamp_ns)
    latency_ms = {  # before any stamp snapping: latency is measured from the stamp the image really had
        "proposals": [(p.received_ns - p.stamp_ns) / 1e6 for p in proposals if p.received_ns is not None],
        # An answer without a frame (NO_IMAGE, BUSY, ...) has no image stamp to measure from.
        "answers": [
            (a.received_ns - a.stamp_ns) / 1e6 for a in answers if a.received_ns is not None and a.stamp_ns > 0
        ],
        "answer_model": [a.model_ms for a in answers if a.ok],
        "answer_total": [a.total_ms for a in answers],
    }
    proposals = _snap_stamps(proposals, gt, stamp_tolerance_ns)
    answers = _snap_stamps(answers, gt, stamp_tolerance_ns)
    read_done = time.perf_counter()

    metrics: dict[str, Any] = {}
    notes: list[str] = []
    if proposal_topic:
        metrics["proposals"] = score_proposals(proposals, gt, image_ids)
    else:
        notes.append(NO_PROPOSALS_NOTE)
    unavailable = answers_not_available(answers)
    if unavailable is None:
        metrics["answers"] = score_answers(answers, gt, queries, image_ids)
    else:
        metrics["answers"] = unavailable
        notes.append(not_available_note(unavailable, answer_topic))
    metrics_done = time.perf_counter()

    timing = timing_summary({k: v for k, v in latency_ms.items() if v}, len(image_ids), metrics_done - started)
    # frames / wall time here would be the scorer's own speed, not the pipeline's: report it as scoring time.
    del timing["frames_per_s"]
    timing["scoring_s"] = timing.pop("wall_s")
    timing["recorded_throughput"] = {
        "answers": log_time_rate([a.received_ns for a in answers if a.received_ns is not None]),
        "proposals": log_time_rate([p.received_ns for p in proposals if p.received_ns is not None]),
    }
    timing["read_ms"] = round((read_done - started) * 1e3, 3)
    timing["metrics_ms"] = round((metrics_done - read_done) * 1e3, 3)
    timing["note"] = (
        "stages_ms.proposals/answers: bag receive time minus image stamp (end-to-end latency); "
        "recorded_throughput: messages per second of the recording's log time"
    )
    inputs = {
        "mode": "recorded",
        "answers_bag": str(answers_bag),
        "input_bag": str(input_bag) if input_bag else None,
        "answer_topic": answer_topic,
        "proposal_topic": proposal_topic,
        "ground_truth": gt.source,
        "frames_evaluated": len(image_ids),
        "queries": len(queries),
        "queries_file": None if queries_file is None else str(queries_file),
    }
    return EvaluationResult(inputs, metrics, timing, notes, proposals, answers, latency_ms)


def not_available_note(entry: Mapping[str, Any], answer_topic: str) -> str:
    """The report note for a recording without usable answers: why, and what to record instead."""
    if entry["no_language_model"]:
        cause = (
            "The language_node ran without a language model: start it with language_backend:=chatrex and "
            "model_path:=<ChatRex-7B dir> and record again"
        )
    elif not entry["answers"]:
        cause = "Replay with --gt (and --queries) so that the evaluation queries are asked and recorded"
    else:
        cause = "The answer statuses say why"
    return (
        f"Detection precision/recall, COCO mAP by class and referring accuracy are not available: "
        f"{entry['reason']} on {answer_topic}. {cause}. Proposal recall, class-agnostic AP and latency are "
        "reported."
    )


def log_time_rate(received_ns: Sequence[int]) -> dict[str, Any]:
    """Messages per second of log time: (count - 1) intervals over the first-to-last span.

    Counting intervals rather than messages means N messages at a steady rate r give r, however short
    the recording. None with fewer than two messages (no span to divide by).
    """
    times = sorted(received_ns)
    span_s = (times[-1] - times[0]) / NS_PER_S if len(times) >= 2 else 0.0
    return {
        "count": len(times),
        "span_s": round(span_s, 6),
        "per_s": round((len(times) - 1) / span_s, 4) if span_s > 0 else None,
    }


def _only_topic(reader: BagReader, msgtype: str, exclude: Sequence[str] = ()) -> str:
    topics = [t for t in reader.topics_of_type(msgtype) if not any(word in t for word in exclude)]
    if len(topics) == 1:
        return topics[0]
    if not topics:
        raise BagError(f"bag {reader.path} has no {msgtype} topic; its topics: {sorted(reader.topics)}")
    raise BagError(f"bag {reader.path} has several {msgtype} topics {topics}; choose one with --answer-topic")


def _frame_stamps(reader: BagReader, image_topic: str | None) -> list[int] | None:
    if image_topic is None and not reader.topics_of_type(*IMAGE_TYPES):
        return None
    return reader.image_stamps(reader.image_topic(image_topic))


def _snap_stamps(records: list[Any], gt: GroundTruth, tolerance_ns: int) -> list[Any]:
    """Within a stamp tolerance, re-stamp records with their ground-truth stamp (scoring looks up exactly)."""
    if tolerance_ns <= 0 or not records:
        return records
    stamps = sorted({r.stamp_ns for r in records})
    try:
        mapping = {stamp: image.stamp_ns for stamp, image in match_stamps(gt, stamps, tolerance_ns).items()}
    except ValueError:  # nothing matches: scoring will report every answer as outside the ground truth
        return records
    return [replace(r, stamp_ns=mapping.get(r.stamp_ns, r.stamp_ns)) for r in records]
