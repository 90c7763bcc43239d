"""What the evaluation scores: proposals and answers per frame, independent of where they came from.

The offline evaluation makes these records by calling the core directly; the online replay (and
``eval --answers``) makes them from recorded ``ProposalArray`` / ``Answer`` messages. Both then go
through the same scoring, so the two paths cannot disagree on a metric. ``from_message`` is duck-typed
(``rosbags`` dataclasses and rclpy messages have the same field names), so this module stays ROS-free.

Query ids tie an answer to what it should be scored against: ``eval-detect/<image id>`` for the
per-frame detection query (all ground-truth category names of the frame), ``eval-refer/<query id>``
for a referring query (positive or negative), ``eval-count/<image id>/<category>`` for a count query
(asked only when requested). A replayer that sends its Queries with these ids gets them scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatrex_ros.core.answering import AnswerResult, AnswerStatus, QueryError, QueryRequest
from chatrex_ros.core.protocol import Task
from chatrex_ros.core.stamps import stamp_to_ns
from chatrex_ros.core.types import Detection, Proposals
from chatrex_ros.eval.groundtruth import GroundTruth, ReferringQuery

COUNT_QUERY_PREFIX = "eval-count/"
DETECTION_QUERY_PREFIX = "eval-detect/"
GROUND_TRUTH_QUERY_ID = "ground_truth"
REFERRING_QUERY_PREFIX = "eval-refer/"


def detection_query_id(image_id: int) -> str:
    """The query id of a frame's detection query, ``eval-detect/<image id>``."""
    return f"{DETECTION_QUERY_PREFIX}{image_id}"


def referring_query_id(query_id: str) -> str:
    """The query id of a referring query, ``eval-refer/<query id>``."""
    return f"{REFERRING_QUERY_PREFIX}{query_id}"


def count_query_id(image_id: int, category: str) -> str:
    """The query id of a frame's count query about one category, ``eval-count/<image id>/<category>``."""
    return f"{COUNT_QUERY_PREFIX}{image_id}/{category}"


def evaluation_requests(
    gt: GroundTruth, image_id: int, queries: Sequence[ReferringQuery] = (), counts: bool = False
) -> list[tuple[str, QueryRequest]]:
    """The (query id, request) pairs asked about one frame, in a fixed order.

    Detection follows the ChatRex protocol: one query naming every ground-truth category of the frame.
    A referring expression, positive or negative, is asked with the same detect template (that is how
    ChatRex is evaluated on RefCOCO; a negative one is right when it grounds nothing). Frames without
    objects get no detection query. ``counts``: also one count query per category present in the frame
    (off by default: each is one more model call per frame and category).
    """
    requests: list[tuple[str, QueryRequest]] = []
    categories = gt.frame_categories(image_id)
    if categories:
        requests.append((detection_query_id(image_id), QueryRequest.create(Task.DETECT, targets=categories)))
    for query in queries:
        if query.image_id == image_id:
            requests.append((referring_query_id(query.id), QueryRequest.create(Task.DETECT, targets=[query.phrase])))
    if counts:
        for category in categories:
            requests.append((count_query_id(image_id, category), QueryRequest.create(Task.COUNT, targets=[category])))
    return requests


@dataclass(frozen=True)
class ProposalRecord:
    """One frame's proposal list (row K is ``<objK>``) and when it was seen."""

    stamp_ns: int
    boxes: np.ndarray  # (N, 4) float32 x1 y1 x2 y2, descending score
    scores: np.ndarray  # (N,) float32
    backend: str = ""
    inference_ms: float = 0.0
    received_ns: int | None = None  # bag log time of a recorded message; None offline
    width: int = 0
    height: int = 0

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def from_proposals(cls, stamp_ns: int, proposals: Proposals, width: int = 0, height: int = 0) -> ProposalRecord:
        """From the core's proposals of one frame (the offline evaluation; no receive time)."""
        return cls(
            stamp_ns,
            proposals.boxes,
            proposals.scores,
            proposals.backend,
            proposals.inference_ms,
            width=width,
            height=height,
        )

    @classmethod
    def from_message(cls, msg: Any, received_ns: int | None = None) -> ProposalRecord:
        """From a ``chatrex_ros/msg/ProposalArray`` (flat boxes array of N*4 values)."""
        flat = np.asarray(msg.boxes, dtype=np.float32).reshape(-1)
        scores = np.asarray(msg.scores, dtype=np.float32).reshape(-1)
        if flat.size != 4 * scores.size:
            raise ValueError(f"ProposalArray has {flat.size} box values for {scores.size} scores; expected 4 per score")
        return cls(
            stamp_to_ns(msg.header.stamp),
            flat.reshape(-1, 4),
            scores,
            str(msg.backend),
            float(msg.inference_ms),
            received_ns,
            int(msg.image_width),
            int(msg.image_height),
        )


def _box(values: Any) -> tuple[float, float, float, float]:
    """Four numbers (a tuple, a message's float32[4]) as an x1 y1 x2 y2 tuple of floats."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(values).reshape(4))
    return x1, y1, x2, y2


@dataclass(frozen=True)
class AnswerRecord:
    """One answered (or failed) query about one frame."""

    stamp_ns: int
    query_id: str
    task: str
    status: int = int(AnswerStatus.OK)
    detections: tuple[Detection, ...] = ()
    num_proposals: int = 0
    question: str = ""
    raw_output: str = ""
    text: str = ""
    status_message: str = ""
    model_ms: float = 0.0
    total_ms: float = 0.0
    received_ns: int | None = None  # bag log time of a recorded message; None offline

    @property
    def ok(self) -> bool:
        """Whether the query was answered (status OK)."""
        return self.status == int(AnswerStatus.OK)

    @classmethod
    def from_result(
        cls, stamp_ns: int, query_id: str, task: str, result: AnswerResult, num_proposals: int, total_ms: float = 0.0
    ) -> AnswerRecord:
        """From the core's answer to a query (the offline evaluation): status OK, its detections and timing."""
        detections = result.detections
        return cls(
            stamp_ns,
            query_id,
            task,
            int(AnswerStatus.OK),
            detections,
            num_proposals,
            result.prompt,
            result.raw_output,
            result.parsed.text,
            "",
            result.model_ms,
            total_ms,
        )

    @classmethod
    def from_error(
        cls, stamp_ns: int, query_id: str, task: str, error: QueryError, num_proposals: int, total_ms: float = 0.0
    ) -> AnswerRecord:
        """From a query the core failed to answer: the error's status and message, no detections."""
        return cls(
            stamp_ns, query_id, task, int(error.status), (), num_proposals, status_message=str(error), total_ms=total_ms
        )

    @classmethod
    def from_message(cls, msg: Any, received_ns: int | None = None) -> AnswerRecord:
        """From a ``chatrex_ros/msg/Answer``."""
        detections = tuple(
            Detection(int(d.proposal_index), str(d.label), _box(d.box), float(d.score)) for d in msg.detections
        )
        return cls(
            stamp_to_ns(msg.header.stamp),
            str(msg.query_id),
            str(msg.task),
            int(msg.status),
            detections,
            int(msg.num_proposals),
            str(msg.question),
            str(msg.raw_output),
            str(msg.text),
            str(msg.status_message),
            float(msg.model_ms),
            float(msg.total_ms),
            received_ns,
        )


def ground_truth_record(gt: GroundTruth, image_id: int) -> AnswerRecord:
    """A frame's ground truth as an Answer: one detection per object, label = category name.

    The format of a ground-truth topic in a bag: our own message, stamped like the image it annotates,
    so a bag can carry its annotations and tools that play it see them next to the answers.
    """
    image = gt.image(image_id)
    detections = tuple(Detection(index, obj.category, obj.box, 1.0) for index, obj in enumerate(gt.objects(image_id)))
    return AnswerRecord(
        image.stamp_ns, GROUND_TRUTH_QUERY_ID, "detect", detections=detections, num_proposals=len(detections)
    )
