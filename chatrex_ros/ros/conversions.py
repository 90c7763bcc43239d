"""Message <-> core conversions. Numeric arrays move with one memcpy (array.array.frombytes / np.frombuffer)."""

from __future__ import annotations

import array
import math

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from chatrex_ros.core.answering import AnswerResult, AnswerStatus
from chatrex_ros.core.images import array_to_image
from chatrex_ros.core.types import MAX_PROPOSALS, Proposals
from chatrex_ros.msg import Answer, Detection, Group, ProposalArray


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def float32_array(values: np.ndarray) -> array.array:
    """A float32[] field value in one memcpy (rclpy would otherwise convert element by element)."""
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def proposals_to_msg(proposals: Proposals, header: Header, width: int, height: int, granularity: str) -> ProposalArray:
    msg = ProposalArray(header=header, image_width=int(width), image_height=int(height))
    msg.boxes = float32_array(proposals.boxes.reshape(-1))
    msg.scores = float32_array(proposals.scores.reshape(-1))
    msg.granularity = granularity
    msg.backend = proposals.backend
    msg.inference_ms = float(proposals.inference_ms)
    return msg


def msg_to_proposals(msg: ProposalArray) -> Proposals:
    """Validate and view a ProposalArray: ValueError for a malformed one (the list must stay index-stable,
    so a bad box is not silently dropped: the whole message is rejected).
    """
    boxes = np.frombuffer(msg.boxes, dtype=np.float32) if len(msg.boxes) else np.zeros(0, np.float32)
    scores = np.frombuffer(msg.scores, dtype=np.float32) if len(msg.scores) else np.zeros(0, np.float32)
    if boxes.size % 4:
        raise ValueError(f"proposal boxes hold {boxes.size} values, not a multiple of 4")
    if boxes.size // 4 != scores.size:
        raise ValueError(f"{boxes.size // 4} proposal boxes but {scores.size} scores")
    if scores.size > MAX_PROPOSALS:
        raise ValueError(f"{scores.size} proposals exceed the model's {MAX_PROPOSALS} index tokens")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError("proposals contain NaN or infinite values")
    return Proposals(boxes=boxes.reshape(-1, 4), scores=scores, backend=msg.backend, inference_ms=msg.inference_ms)


def image_msg(array_: np.ndarray, encoding: str, header: Header) -> Image:
    """Numpy -> sensor_msgs/Image (tightly packed rows)."""
    fields = array_to_image(array_, encoding)
    msg = Image(
        header=header,
        height=fields.height,
        width=fields.width,
        encoding=fields.encoding,
        is_bigendian=int(fields.is_bigendian),
        step=fields.step,
    )
    data = array.array("B")
    data.frombytes(fields.data)
    msg.data = data
    return msg


def compressed_image_msg(fmt: str, payload: bytes, header: Header) -> CompressedImage:
    msg = CompressedImage(header=header, format=fmt)
    data = array.array("B")
    data.frombytes(payload)
    msg.data = data
    return msg


def answer_msg(
    header: Header,
    query_id: str,
    task: str,
    status: AnswerStatus,
    message: str = "",
    result: AnswerResult | None = None,
    proposals_stamp: Time | None = None,
    num_proposals: int = 0,
    queue_ms: float = 0.0,
    total_ms: float = 0.0,
) -> Answer:
    msg = Answer(header=header, query_id=query_id, task=task, status=int(status), status_message=message)
    msg.proposals_stamp = proposals_stamp if proposals_stamp is not None else Time()
    msg.num_proposals = int(num_proposals)
    msg.queue_ms = _finite(queue_ms)
    msg.total_ms = _finite(total_ms)
    if result is not None:
        msg.question = result.prompt
        msg.text = result.parsed.text
        msg.raw_output = result.raw_output
        msg.model_ms = _finite(result.model_ms)
        msg.groups = [Group(phrase=g.phrase, indices=list(g.indices)) for g in result.parsed.groups]
        msg.detections = [
            Detection(proposal_index=d.index, label=d.phrase, box=[float(v) for v in d.box], score=float(d.score))
            for d in result.detections
        ]
    return msg


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0
