"""Message <-> core conversions. Numeric arrays move with one memcpy (array.array.frombytes / np.frombuffer)."""

from __future__ import annotations

import array
import math

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from chatrex_ros.core import types as core
from chatrex_ros.core.answering import QueryOutcome
from chatrex_ros.core.images import array_to_image
from chatrex_ros.core.proposals import check_proposal_list
from chatrex_ros.core.stamps import ns_to_sec_nanosec
from chatrex_ros.core.types import Proposals
from chatrex_ros.msg import Answer, Detection, Group, ProposalArray


def ns_to_stamp(stamp_ns: int) -> Time:
    """Int nanoseconds -> ``builtin_interfaces/Time`` (the inverse of :func:`chatrex_ros.core.stamps.stamp_to_ns`)."""
    sec, nanosec = ns_to_sec_nanosec(stamp_ns)
    return Time(sec=sec, nanosec=nanosec)


def float32_array(values: np.ndarray) -> array.array:
    """A float32[] field value in one memcpy (rclpy would otherwise convert element by element)."""
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def proposals_to_msg(proposals: Proposals, header: Header, width: int, height: int, granularity: str) -> ProposalArray:
    """The ProposalArray of one frame's proposals; ``header`` is the image's, sizes are the original image's."""
    msg = ProposalArray(header=header, image_width=int(width), image_height=int(height))
    msg.boxes = float32_array(proposals.boxes.reshape(-1))
    msg.scores = float32_array(proposals.scores.reshape(-1))
    msg.granularity = granularity
    msg.backend = proposals.backend
    msg.inference_ms = float(proposals.inference_ms)
    return msg


def msg_to_proposals(msg: ProposalArray) -> Proposals:
    """Validate and view a ProposalArray: ValueError for a malformed one.

    The list must stay index-stable, so a bad box is not silently dropped: the whole message is rejected.
    """
    boxes = np.frombuffer(msg.boxes, dtype=np.float32) if len(msg.boxes) else np.zeros(0, np.float32)
    scores = np.frombuffer(msg.scores, dtype=np.float32) if len(msg.scores) else np.zeros(0, np.float32)
    if boxes.size % 4:
        raise ValueError(f"proposal boxes hold {boxes.size} values, not a multiple of 4")
    check_proposal_list(boxes.reshape(-1, 4), scores, int(msg.image_width), int(msg.image_height))
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


def point_cloud_msg(points: np.ndarray, header: Header) -> PointCloud2:
    """(N, 3) points -> an unordered ``PointCloud2`` of float32 x, y, z (what PCL, GPD and RViz read)."""
    xyz = np.ascontiguousarray(points, dtype=np.float32).reshape(-1, 3)
    msg = PointCloud2(header=header, height=1, width=int(xyz.shape[0]), is_bigendian=False, is_dense=True)
    msg.fields = [
        PointField(name=name, offset=4 * index, datatype=PointField.FLOAT32, count=1)
        for index, name in enumerate("xyz")
    ]
    msg.point_step, msg.row_step = 12, 12 * int(xyz.shape[0])
    data = array.array("B")
    data.frombytes(xyz.tobytes())
    msg.data = data
    return msg


def compressed_image_msg(fmt: str, payload: bytes, header: Header) -> CompressedImage:
    """Encoded bytes (``fmt`` as image_transport writes it, e.g. ``"rgb8; jpeg compressed bgr8"``) -> message."""
    msg = CompressedImage(header=header, format=fmt)
    data = array.array("B")
    data.frombytes(payload)
    msg.data = data
    return msg


def answer_msg(header: Header, outcome: QueryOutcome) -> Answer:
    """The Answer message of a query's outcome; ``header`` is the answered frame's (or the asked stamp's)."""
    msg = Answer(
        header=header,
        query_id=outcome.query_id,
        task=outcome.task,
        status=int(outcome.status),
        status_message=outcome.message,
        proposals_stamp=ns_to_stamp(outcome.proposals_stamp_ns),
        num_proposals=int(outcome.num_proposals),
        queue_ms=_finite(outcome.queue_ms),
        total_ms=_finite(outcome.total_ms),
    )
    result = outcome.result
    if result is not None:
        msg.question = result.prompt
        msg.text = result.parsed.text
        msg.raw_output = result.raw_output
        msg.model_ms = _finite(result.model_ms)
        msg.groups = [Group(phrase=g.phrase, indices=list(g.indices)) for g in result.parsed.groups]
        msg.detections = [detection_msg(d) for d in result.detections]
    return msg


def detection_msg(detection: core.Detection) -> Detection:
    """A core detection as its message (the same four fields)."""
    return Detection(
        proposal_index=detection.proposal_index,
        label=detection.label,
        box=[float(v) for v in detection.box],
        score=float(detection.score),
    )


def msg_to_detection(msg: Detection) -> core.Detection:
    """A Detection message as the core type (ValueError when its box is not four numbers)."""
    values = [float(v) for v in msg.box]
    if len(values) != 4:
        raise ValueError(f"a detection box has 4 values, got {len(values)}")
    x1, y1, x2, y2 = values
    return core.Detection(int(msg.proposal_index), str(msg.label), (x1, y1, x2, y2), float(msg.score))


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0
