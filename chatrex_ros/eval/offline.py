"""Offline evaluation: a bag's images through the same core calls the nodes make, frame by frame.

read (bag -> RGB) -> propose (backend + selection policy) -> ask (prompt -> language backend -> parse ->
resolve) -> records -> :mod:`chatrex_ros.eval.scoring`. No DDS, no threads, no clock in the metrics:
the same inputs give the same ``metrics`` (timings are kept apart in ``timing``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chatrex_ros.core.answering import QueryError, answer_query
from chatrex_ros.core.types import Proposals
from chatrex_ros.eval.bagio import BagError, BagReader
from chatrex_ros.eval.groundtruth import GroundTruth, GroundTruthImage, ReferringQuery, match_stamps
from chatrex_ros.eval.records import AnswerRecord, ProposalRecord, evaluation_requests
from chatrex_ros.eval.result import EvaluationResult
from chatrex_ros.eval.scoring import no_language_model_entry, score_answers, score_proposals, timing_summary
from chatrex_ros.models.base import LanguageBackend, ProposalPipeline

NO_LANGUAGE_NOTE = (
    "No language model configured: detection precision/recall (IoU 0.5 and 0.5:0.95), DensityF1, COCO mAP by "
    "class, referring and rejection accuracy and count accuracy (--count-queries) "
    "need one (--language-backend chatrex --model-path DIR --language-param trust_remote_code=true, or a "
    "python:module:Class plugin). Proposal "
    "recall, class-agnostic AP and latency are reported."
)


def evaluate_bag(
    bag: str | Path,
    gt: GroundTruth,
    pipeline: ProposalPipeline,
    language: LanguageBackend | None = None,
    queries: Sequence[ReferringQuery] = (),
    image_topic: str | None = None,
    stamp_tolerance_ns: int = 0,
    max_frames: int | None = None,
    progress: bool = True,
    progress_label: str | None = None,
    progress_position: int | None = None,
    count_queries: bool = False,
    queries_file: str | Path | None = None,
) -> EvaluationResult:
    """Run the pipeline (and the language backend, when given) on every ground-truth frame of ``bag``.

    ``progress_label``/``progress_position``: the bar's title (default ``eval <topic>``) and terminal line,
    so the bars of several bags evaluated at once (:mod:`chatrex_ros.eval.parallel`) do not overwrite each other.
    ``count_queries``: also ask a ``count`` query per frame and category present, scored as count accuracy.
    ``queries_file``: where ``queries`` were read from, named in the inputs and the report.
    Raises BagError/ValueError for a missing topic, a corrupt bag, or ground truth matching no image.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    started = time.perf_counter()
    with BagReader(bag) as reader:
        run = _OfflineRun(reader, gt, pipeline, language, queries)
        run.bar_label, run.bar_position = progress_label, progress_position
        run.count_queries = count_queries
        run.queries_file = None if queries_file is None else str(queries_file)
        return run.run(image_topic, stamp_tolerance_ns, max_frames, progress, started)


class _OfflineRun:
    """One pass over a bag; holds the records and per-stage samples while it goes."""

    def __init__(
        self,
        reader: BagReader,
        gt: GroundTruth,
        pipeline: ProposalPipeline,
        language: LanguageBackend | None,
        queries: Sequence[ReferringQuery],
    ) -> None:
        self.reader, self.gt, self.pipeline, self.language, self.queries = reader, gt, pipeline, language, queries
        self.count_queries = False
        self.queries_file: str | None = None
        self.proposals: list[ProposalRecord] = []
        self.answers: list[AnswerRecord] = []
        stages = ("read", "infer", "select") + (("language", "resolve") if language is not None else ()) + ("frame",)
        self.stage_ms: dict[str, list[float]] = {stage: [] for stage in stages}
        self.bar_label: str | None = None
        self.bar_position: int | None = None

    def run(
        self, image_topic: str | None, tolerance_ns: int, max_frames: int | None, progress: bool, started: float
    ) -> EvaluationResult:
        """``started``: perf_counter() before the bag was opened, so opening counts as reading time."""
        indexing = time.perf_counter()
        topic = self.reader.image_topic(image_topic)
        bag_stamps = self.reader.image_stamps(topic)  # header peeks only: cheap
        if not bag_stamps:
            raise BagError(f"image topic {topic!r} of {self.reader.path} has no messages")
        matched = match_stamps(self.gt, bag_stamps, tolerance_ns)
        wanted = sorted(matched)[:max_frames]
        index_ms = (time.perf_counter() - indexing) * 1e3

        evaluated = self._frames(topic, {stamp: matched[stamp] for stamp in wanted}, progress)
        loop_done = time.perf_counter()

        metrics: dict[str, Any] = {"proposals": score_proposals(self.proposals, self.gt, evaluated)}
        if self.language is not None:
            counts = True if self.count_queries else None
            metrics["answers"] = score_answers(self.answers, self.gt, self.queries, evaluated, counts=counts)
        else:
            metrics["answers"] = no_language_model_entry()
        metrics_ms = (time.perf_counter() - loop_done) * 1e3

        timing = timing_summary(self.stage_ms, len(evaluated), loop_done - started)
        timing["open_ms"] = round((indexing - started) * 1e3, 3)
        timing["index_ms"] = round(index_ms, 3)
        timing["metrics_ms"] = round(metrics_ms, 3)
        notes = self._notes(topic, len(bag_stamps), len(matched), len(wanted))
        return EvaluationResult(
            self._inputs(topic, len(bag_stamps), len(evaluated)),
            metrics,
            timing,
            notes,
            self.proposals,
            self.answers,
            self.stage_ms,
        )

    def _frames(self, topic: str, wanted: dict[int, GroundTruthImage], progress: bool) -> list[int]:
        """Evaluate the wanted frames in bag order; returns their image ids in stamp order."""
        evaluated: dict[int, None] = {}
        bar = progress_bar(len(wanted), progress, self.bar_label or f"eval {topic}", self.bar_position)
        try:
            read_started = time.perf_counter()
            for frame in self.reader.image_frames(topic, set(wanted)):
                image = wanted[frame.stamp_ns]
                if image.id not in evaluated:  # the same stamp twice in a bag is scored once
                    rgb = frame.rgb()
                    self.stage_ms["read"].append((time.perf_counter() - read_started) * 1e3)
                    _check_size(image, rgb, frame.stamp_ns)
                    self._frame(image, rgb)
                    self.stage_ms["frame"].append((time.perf_counter() - read_started) * 1e3)
                    evaluated[image.id] = None
                    bar.update(1)
                read_started = time.perf_counter()
        finally:
            bar.close()
        return sorted(evaluated, key=lambda image_id: self.gt.image(image_id).stamp_ns)

    def _frame(self, image: GroundTruthImage, rgb: np.ndarray) -> None:
        proposals = self.pipeline.run(rgb)
        # Records carry the ground-truth stamp: within a stamp tolerance the bag's may differ slightly.
        self.proposals.append(ProposalRecord.from_proposals(image.stamp_ns, proposals, rgb.shape[1], rgb.shape[0]))
        self.stage_ms["infer"].append(proposals.timings_ms.get("infer", proposals.inference_ms))
        self.stage_ms["select"].append(proposals.timings_ms.get("select", 0.0))
        if self.language is not None:
            self._ask(self.language, image, rgb, proposals)

    def _ask(self, language: LanguageBackend, image: GroundTruthImage, rgb: np.ndarray, proposals: Proposals) -> None:
        """The frame's detection query and referring queries; failures become records with their status."""
        language_ms = resolve_ms = 0.0
        for query_id, request in evaluation_requests(self.gt, image.id, self.queries, counts=self.count_queries):
            asked = time.perf_counter()
            try:
                answer = answer_query(language, rgb, proposals, request)
                total_ms = (time.perf_counter() - asked) * 1e3
                record = AnswerRecord.from_result(
                    image.stamp_ns, query_id, request.task.value, answer, len(proposals), total_ms
                )
                language_ms += answer.model_ms
                resolve_ms += total_ms - answer.model_ms
            except QueryError as error:
                total_ms = (time.perf_counter() - asked) * 1e3
                record = AnswerRecord.from_error(
                    image.stamp_ns, query_id, request.task.value, error, len(proposals), total_ms
                )
                language_ms += total_ms
            self.answers.append(record)
        self.stage_ms["language"].append(language_ms)
        self.stage_ms["resolve"].append(resolve_ms)

    def _notes(self, topic: str, in_bag: int, matched: int, wanted: int) -> list[str]:
        notes = [] if self.language is not None else [NO_LANGUAGE_NOTE]
        if len(self.gt) > matched:
            notes.append(
                f"{len(self.gt) - matched} ground-truth image(s) match no image of {topic} and are not scored."
            )
        if in_bag > matched:
            notes.append(f"{in_bag - matched} bag image(s) have no ground truth and were skipped.")
        if wanted < matched:
            notes.append(f"Only the first {wanted} of {matched} annotated frames were evaluated (max_frames).")
        return notes

    def _inputs(self, topic: str, in_bag: int, evaluated: int) -> dict[str, Any]:
        policy = self.pipeline.policy
        return {
            "mode": "offline",
            "bag": str(self.reader.path),
            "storage": self.reader.storage,
            "image_topic": topic,
            "ground_truth": self.gt.source,
            "frames_in_bag": in_bag,
            "frames_evaluated": evaluated,
            "queries": len(self.queries),
            "queries_file": self.queries_file,
            "proposal_backend": self.pipeline.backend.name,
            "selection": {"min_score": policy.min_score, "nms_iou": policy.nms_iou, "max_count": policy.max_count},
            "language_backend": getattr(self.language, "name", None),
        }


def _check_size(image: GroundTruthImage, rgb: np.ndarray, stamp_ns: int) -> None:
    """Boxes of a differently sized image would be scored in the wrong pixels: refuse (0 = size unknown)."""
    if image.width and image.height and rgb.shape[:2] != (image.height, image.width):
        raise ValueError(
            f"ground-truth image {image.id} is {image.width}x{image.height} but the bag image at stamp {stamp_ns} "
            f"is {rgb.shape[1]}x{rgb.shape[0]}: wrong ground truth for this bag?"
        )


def progress_bar(
    total: int, enabled: bool, label: str, position: int | None = None, unit: str = "frame", leave: bool = False
) -> Any:
    """Tqdm on stderr, or a silent stand-in when disabled, tqdm is missing, or stderr is not a terminal.

    Not on a terminal (a log file, CI) the bars' cursor movements would fill the log with escape codes.
    """
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=label, unit=unit, leave=leave, position=position)
        except ImportError:
            pass
    return _Silent()


class _Silent:
    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
