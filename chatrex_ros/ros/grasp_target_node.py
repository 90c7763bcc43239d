"""grasp_target_node: Answer + aligned depth + camera_info -> a 3-D grasp target for one chosen detection.

The answer of a language model arrives seconds after the image it is about, so the node pairs it with the
depth frame of the SAME stamp (exactly, or within ``stamp_tolerance_s``), not with the newest depth frame:
the robot or the object may have moved since. Depth frames are kept in a small ring buffer, and the frames
that proposals were computed for (topic ``proposals``, the only frames an answer can refer to) are pinned in a
second small store so they survive the model's latency: pinned when the proposer announces it started on
them (``proposals/pending``), which is while they are still in the ring, or at the latest when their proposals
arrive. A stamp that jumps back (a bag replayed again) empties the store. An answer whose depth frame is not there
waits up to ``pairing_timeout_s`` and is then published as not valid (``REASON_STALE``): every answer gets a
GraspTarget.

The geometry is ``chatrex_ros.core.grasp`` (numpy only); this module converts messages, pairs, publishes.
Outputs carry the answer's image stamp and the depth image's optical frame.
"""

from __future__ import annotations

import math
import queue
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, PointStamped, Pose, PoseStamped, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from chatrex_ros.core.answering import AnswerStatus, status_name
from chatrex_ros.core.frame_cache import FrameTooLarge
from chatrex_ros.core.grasp import (
    REASON_BAD_INTRINSICS,
    REASON_NO_CAMERA_INFO,
    REASON_STALE,
    CameraGeometry,
    Target,
    intrinsics_problem,
    target_from_colour_box,
)
from chatrex_ros.core.grasp_pairing import DepthStore, choose_detection
from chatrex_ros.core.grasp_surface import voxel_downsample
from chatrex_ros.core.images import ImageFormatError, image_to_array
from chatrex_ros.core.stamps import stamp_to_ns
from chatrex_ros.core.text import printable
from chatrex_ros.core.types import Detection
from chatrex_ros.msg import Answer, GraspTarget, ProposalArray
from chatrex_ros.node_parameters import GRASP_NODE, GraspNodeParams
from chatrex_ros.ros.conversions import image_msg, msg_to_detection, point_cloud_msg
from chatrex_ros.ros.health import LossCounter
from chatrex_ros.ros.node_base import ChatrexNode
from chatrex_ros.ros.node_runtime import run_node
from chatrex_ros.ros.qos import query_qos, reliable_qos, sensor_qos

DEPTH_ENCODINGS = ("16UC1", "32FC1")  # REP 118: millimetres, metres

MAX_PENDING = 16
"""Answers waiting for their depth frame; beyond this the oldest is published as stale."""
MARKER_NAMESPACE = "grasp_target"
ARROW_LENGTH_M = 0.15
POINT_DIAMETER_M = 0.02


@dataclass
class _Pending:
    answer: Answer
    detection: Detection
    received: float


class GraspTargetNode(ChatrexNode[GraspNodeParams]):
    """Pairs each answer with the depth frame of its stamp and publishes a 3-D target for one detection."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("grasp_target_node", GRASP_NODE, GraspNodeParams, **kwargs)
        params = self.params
        # The target worker and the diagnostics timer run beside the intake callbacks (re-entrant: publishing
        # a refusal from a callback that holds it updates the counters under it too).
        self._lock = threading.RLock()
        self.depth: DepthStore[Image] = DepthStore(
            params.depth_buffer_size,
            params.pinned_frames,
            max_bytes=params.depth_buffer_mb * 2**20,
            size_of=lambda image: len(image.data),
        )
        self.depth_infos: dict[str, CameraGeometry] = {}  # latest per frame_id
        self.colour_infos: dict[str, CameraGeometry] = {}
        self.pending: list[_Pending] = []
        self.answers_received = 0
        self.last_depth_frame = ""
        self.outcomes: Counter[str] = Counter()
        self.last_latency_ms = 0.0

        # One target per answer: as deep a history as the answers (a burst of them must not lose targets).
        self.target_pub = self.create_publisher(GraspTarget, "grasp_target", query_qos())
        self.point_pub = self.create_publisher(PointStamped, "grasp_point", reliable_qos())
        self.pose_pub = self.create_publisher(PoseStamped, "grasp_pose", reliable_qos())
        self.marker_pub = self.create_publisher(Marker, "grasp_marker", reliable_qos(2))
        self.extent_pub = self.create_publisher(Marker, "grasp_extent_marker", reliable_qos(2))
        # The three together for RViz and Foxglove's 3D panel: approach arrow, object extent, target point.
        self.markers_pub = self.create_publisher(MarkerArray, "grasp_markers", reliable_qos(2))
        self.points_pub = (
            self.create_publisher(PointCloud2, "grasp_points", reliable_qos(2)) if params.publish_points else None
        )
        self.mask_pub = self.create_publisher(Image, "grasp_mask", reliable_qos(2)) if params.publish_mask else None
        # Targets are computed on a worker thread, so every callback returns at once and one executor thread
        # serves a 30 Hz depth stream (rclpy's multi-threaded executor lost depth frames in bursts of up to 1.3 s
        # on a loaded 2-core machine, the very frames answers need).
        self._jobs: queue.Queue[tuple[_Pending, Image]] = queue.Queue()
        self._worker = self.start_worker("target_worker", self._work)
        # camera_info comes from the same driver as the depth stream, with the same QoS.
        qos = sensor_qos(params.depth_qos.reliability, params.depth_qos.depth)
        remap = "remap it (`chatrex-ros up --grasp --depth TOPIC --depth-info TOPIC`) and check the depth camera runs"
        self.depth_watch = self.watch_input("depth images", params.input_silence_s, remap)
        self.info_watch = self.watch_input("depth camera_info", params.input_silence_s, remap)
        depth_sub = self.create_subscription(
            Image, "depth", self._on_depth, qos, event_callbacks=self.depth_watch.event_callbacks()
        )
        self.depth_watch.attach(depth_sub.topic_name)
        info_sub = self.create_subscription(CameraInfo, "depth/camera_info", self._on_depth_info, qos)
        self.info_watch.attach(info_sub.topic_name)
        self.create_subscription(CameraInfo, "color/camera_info", self._on_colour_info, qos)
        self.answer_losses = LossCounter(
            "answers", "those answers get no target: a burst outran this node's reader (CPU load?)", self.problems
        )
        answer_sub = self.create_subscription(
            Answer,
            "answer",
            self._on_answer,
            query_qos(),
            event_callbacks=self.answer_losses.event_callbacks(),
        )
        self.answer_losses.attach(answer_sub.topic_name, lambda: self.answers_received)
        if params.pinned_frames > 0:
            self.create_subscription(ProposalArray, "proposals", self._on_proposals, reliable_qos())
            self.create_subscription(Header, "proposals/pending", self._on_claim, reliable_qos())
        self.create_timer(0.05, self._expire)
        self.start_serving(
            f"grasp targets: selection={params.selection} tolerance={params.stamp_tolerance_s} s "
            f"timeout={params.pairing_timeout_s} s; answers on {answer_sub.topic_name}, depth on "
            f"{depth_sub.topic_name}, camera_info on {info_sub.topic_name}",
            self._diagnostic_values,
            lambda: [c for c in (self.depth_watch.condition(), self.info_watch.condition()) if c is not None],
        )

    # ---- parameters ----
    def check_parameters(self, params: GraspNodeParams) -> str | None:
        """Selection and colour-size rules that span parameters."""
        return params.problem()

    def apply_parameters(self, params: GraspNodeParams) -> str | None:
        """Swap the parameters under the lock the intake callbacks read them under."""
        with self._lock:
            self.params = params
        return None

    # ---- intake ----
    def _on_depth_info(self, msg: CameraInfo) -> None:
        self.info_watch.note()
        self._store_info(msg, self.depth_infos, "bad_depth_camera_info")

    def _on_colour_info(self, msg: CameraInfo) -> None:
        self._store_info(msg, self.colour_infos, "bad_color_camera_info")

    def _store_info(self, msg: CameraInfo, into: dict[str, CameraGeometry], cause: str) -> None:
        frame = _quoted(msg.header.frame_id)
        try:
            geometry = CameraGeometry(
                K=np.asarray(msg.k, np.float64),
                width=int(msg.width),
                height=int(msg.height),
                frame_id=msg.header.frame_id,
            )
        except ValueError as error:
            self.problems.report(cause, f"dropped CameraInfo from {frame}: {error}")
            return
        with self._lock:
            into.pop(msg.header.frame_id, None)  # re-inserted last: "the latest" is the dict's last entry
            into[msg.header.frame_id] = geometry
            # Kept even when implausible: it is what the camera says now, so targets in its frame are refused
            # (with this reason) until a usable one arrives, rather than computed with an older calibration.
            problem = intrinsics_problem(geometry.K, geometry.size, self.params.focal_range)
        if problem is not None:
            self.problems.report(
                cause,
                f"CameraInfo from {frame} is not usable ({REASON_BAD_INTRINSICS}: {problem}); targets with it are"
                " refused until a usable one arrives",
            )

    def _on_proposals(self, msg: ProposalArray) -> None:
        self._on_claim(msg.header)

    def _on_claim(self, header: Header) -> None:
        with self._lock:
            self.depth.pin(stamp_to_ns(header.stamp), self.params.stamp_tolerance_ns)

    def _on_depth(self, msg: Image) -> None:
        # Decoded only when an answer needs it: most frames are never asked about.
        self.depth_watch.note()
        with self._lock:
            try:
                verdict = self.depth.add(stamp_to_ns(msg.header.stamp), msg)
            except FrameTooLarge as error:
                self.problems.report("depth_too_large", f"dropped depth frame: {error} (depth_buffer_mb)")
                return
            self.report_stamp_event("depth", verdict, "the buffered depth frames")
            self.last_depth_frame = msg.header.frame_id
            waiting, self.pending = self.pending, []
            for pending in waiting:
                if not self._try_pair(pending):
                    self.pending.append(pending)

    def _on_answer(self, msg: Answer) -> None:
        received = time.monotonic()
        with self._lock:
            self.answers_received += 1
            if msg.status != AnswerStatus.OK:
                name = status_name(msg.status)
                # The publisher's text, echoed into a published reason: one line, bounded.
                reason = f"answer status {name}: {printable(msg.status_message)}"
                self.problems.report(f"answer_{name.lower()}", f"query {_quoted(msg.query_id)}: {reason}")
                self._publish(msg, None, Target.invalid(reason), self._frame_hint(msg), received)
                return
            try:
                detections = [msg_to_detection(d) for d in msg.detections]
                detection, reason = choose_detection(
                    detections, self.params.selection, self.params.phrase, self.params.proposal_index
                )
            except ValueError as error:  # a malformed detection (parameters are validated before they apply)
                detection, reason = None, str(error)
            if detection is None:
                self._publish(msg, None, Target.invalid(reason), self._frame_hint(msg), received)
                return
            pending = _Pending(msg, detection, received)
            if not self._try_pair(pending):
                self.pending.append(pending)
                while len(self.pending) > MAX_PENDING:
                    self._expire_one(self.pending.pop(0), f"more than {MAX_PENDING} answers waiting for depth")

    # ---- pairing ----
    def _try_pair(self, pending: _Pending) -> bool:
        """Publish ``pending`` when its depth frame is here (or can no longer come); False to keep waiting."""
        stamp = stamp_to_ns(pending.answer.header.stamp)
        found = self.depth.find(stamp, self.params.stamp_tolerance_ns)
        if found is not None:
            self._jobs.put((pending, found[1]))  # computed on the target worker: this callback returns at once
            return True
        if not self.depth.may_still_arrive(stamp, self.params.stamp_tolerance_ns):
            why = (
                "that depth frame never arrived: lost by the KEEP_LAST reader under load or on the way (raise "
                "depth_qos.depth, or set stamp_tolerance_s to 1.5 frame intervals)"
                if self.depth.never_arrived(stamp)
                else "its proposals were announced after that depth frame had left the ring (raise depth_buffer_size)"
                if self.depth.claimed_too_late(stamp)
                else "newer depth frames arrived but none within the tolerance is kept"
            )
            self._expire_one(pending, why)
            return True
        return False

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            keep: list[_Pending] = []
            for pending in self.pending:
                if now - pending.received >= self.params.pairing_timeout_s:
                    self._expire_one(
                        pending, f"no depth frame arrived within pairing_timeout_s={self.params.pairing_timeout_s}"
                    )
                else:
                    keep.append(pending)
            self.pending = keep

    def _expire_one(self, pending: _Pending, why: str) -> None:
        stamp = stamp_to_ns(pending.answer.header.stamp)
        self.problems.report(
            "stale", f"answer {_quoted(pending.answer.query_id)} at stamp {stamp} ns: {REASON_STALE} ({why})"
        )
        self._publish(
            pending.answer,
            pending.detection,
            Target.invalid(REASON_STALE),
            self._frame_hint(pending.answer),
            pending.received,
        )

    # ---- pre-process / infer / decode (the target worker) ----
    def _work(self) -> None:
        while self.running:
            try:
                pending, depth_msg = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            self._compute_and_publish(pending, depth_msg)

    def _compute_and_publish(self, pending: _Pending, depth_msg: Image) -> None:
        frame = depth_msg.header.frame_id
        try:
            target = self._target(pending, depth_msg)
        except Exception as error:  # last line of defence: a callback that raises would stop the node
            target = Target.invalid(f"internal error: {type(error).__name__}: {error}")
        if not target.valid:
            self.problems.report(
                f"invalid:{_cause(target.reason)}", f"query {_quoted(pending.answer.query_id)}: {target.reason}"
            )
        self._publish(pending.answer, pending.detection, target, frame, pending.received)
        if target.valid:
            self._publish_object(target, Header(stamp=pending.answer.header.stamp, frame_id=frame), depth_msg)

    def _publish_object(self, target: Target, header: Header, depth_msg: Image) -> None:
        """The object's points and mask, when asked for (``publish_points``, ``publish_mask``)."""
        if self.points_pub is not None and target.points is not None:
            points = voxel_downsample(target.points, self.params.points_voxel_m, self.params.max_points)
            self.points_pub.publish(point_cloud_msg(points, header))
        if self.mask_pub is not None and target.mask is not None:
            mask = np.zeros((depth_msg.height, depth_msg.width), np.uint8)
            col, row = target.mask_origin
            height, width = target.mask.shape
            mask[row : row + height, col : col + width][target.mask] = 255
            self.mask_pub.publish(image_msg(mask, "mono8", header))

    def _target(self, pending: _Pending, depth_msg: Image) -> Target:
        # Pre-process: decode and check the depth image, look up both cameras.
        if depth_msg.encoding not in DEPTH_ENCODINGS:
            return Target.invalid(
                f"unsupported depth encoding {depth_msg.encoding!r} (REP 118: 16UC1 millimetres or 32FC1 metres)"
            )
        try:
            depth = image_to_array(depth_msg)
        except ImageFormatError as error:
            return Target.invalid(f"bad depth image: {error}")
        with self._lock:  # the intake callbacks update the cameras and parameters meanwhile
            depth_camera = self._depth_camera(depth_msg.header.frame_id)
            colour_camera = self._colour_camera(pending.answer.header.frame_id)
            params = self.params
        if depth_camera is None:
            return Target.invalid(REASON_NO_CAMERA_INFO)
        colour_size = (params.color_width, params.color_height) if params.color_width else None
        scale = params.depth_scale or None
        # Infer + decode: the shared geometry (refusals come back as invalid Targets).
        try:
            return target_from_colour_box(
                depth,
                pending.detection.box,
                depth_camera=depth_camera,
                colour_camera=colour_camera,
                colour_size=colour_size,
                depth_frame_id=depth_msg.header.frame_id,
                depth_scale=scale,
                depth_range=params.depth_range,
                focal_range=params.focal_range,
                margin=params.margin,
                percentile=params.percentile,
                foreground=params.foreground,
                approach=params.approach,
                surface_radius_m=params.surface_radius_m,
                min_surface_points=params.min_surface_points,
                plane_tolerance=params.plane_tolerance,
                keep_points=self.points_pub is not None or self.mask_pub is not None,
            )
        except ValueError as error:  # e.g. a NaN box in the answer: refuse this one, keep serving
            return Target.invalid(f"bad input: {error}")

    def _depth_camera(self, frame_id: str) -> CameraGeometry | None:
        """The camera_info of the depth frame; another frame's (refused as a frame mismatch) if only those came."""
        if frame_id in self.depth_infos:
            return self.depth_infos[frame_id]
        return next(reversed(self.depth_infos.values()), None)

    def _colour_camera(self, frame_id: str) -> CameraGeometry | None:
        if frame_id in self.colour_infos:
            return self.colour_infos[frame_id]
        return next(reversed(self.colour_infos.values()), None)

    def _unusable_frames(self) -> set[str]:
        """Frames whose latest camera_info (depth or colour) fails the plausibility checks (under the lock)."""
        focal_range = self.params.focal_range
        return {
            frame
            for infos in (self.depth_infos, self.colour_infos)
            for frame, geometry in infos.items()
            if intrinsics_problem(geometry.K, geometry.size, focal_range) is not None
        }

    def _frame_hint(self, answer: Answer) -> str:
        """The frame_id for a target refused without depth.

        The paired frame's if here, else the depth stream's latest, else a depth camera_info's, else (nothing known
        yet) the answer's own frame.
        """
        found = self.depth.find(stamp_to_ns(answer.header.stamp), self.params.stamp_tolerance_ns)
        if found is not None:
            return found[1].header.frame_id
        return self.last_depth_frame or next(iter(self.depth_infos), "") or answer.header.frame_id

    # ---- output ----
    def _publish(
        self, answer: Answer, detection: Detection | None, target: Target, frame_id: str, received: float
    ) -> None:
        header = Header(stamp=answer.header.stamp, frame_id=frame_id)
        msg = GraspTarget(header=header, query_id=answer.query_id, valid=target.valid, reason=target.reason)
        if detection is not None:
            msg.label = detection.label
            msg.proposal_index = int(detection.proposal_index)
            msg.box = np.asarray(detection.box, np.float32)
        else:
            msg.proposal_index = -1
            msg.box = np.full(4, np.nan, np.float32)
        msg.point = Point(x=target.point[0], y=target.point[1], z=target.point[2])
        msg.depth_median, msg.depth_spread = target.depth_median, target.depth_spread
        msg.valid_fraction = target.valid_fraction
        msg.width_m, msg.height_m = target.width_m, target.height_m
        msg.normal = _vector(target.normal)
        msg.approach = _vector(target.approach)
        msg.approach_source, msg.note = target.approach_source, target.note
        msg.fit_inlier_fraction, msg.fit_rms_m = target.fit_inlier_fraction, target.fit_rms_m
        msg.fit_points = int(target.fit_points)
        if target.extent is not None:
            msg.extent_pose = _pose(target.extent.centre, target.extent.orientation)
            msg.extent_size = _vector(target.extent.size)
        else:
            msg.extent_pose = _pose((math.nan,) * 3, (math.nan,) * 4)
        self.target_pub.publish(msg)
        if target.valid:
            self.point_pub.publish(PointStamped(header=header, point=msg.point))
            self.pose_pub.publish(PoseStamped(header=header, pose=_pose(target.point, target.approach_orientation)))
        arrow, extent = _marker(header, target), _extent_marker(header, target)
        self.marker_pub.publish(arrow)
        self.extent_pub.publish(extent)
        self.markers_pub.publish(MarkerArray(markers=[arrow, extent, _point_marker(header, target)]))
        with self._lock:
            self.outcomes["valid" if target.valid else _cause(target.reason)] += 1
            self.last_latency_ms = (time.monotonic() - received) * 1e3

    def _diagnostic_values(self) -> dict[str, object]:
        with self._lock:
            return {
                "selection": self.params.selection,
                "pending_answers": len(self.pending),
                "answers_received": self.answers_received,
                "answers_lost_in_transport": self.answer_losses.lost,
                "depth.received": self.depth.received,
                "depth.buffered": len(self.depth),
                "depth.pinned": self.depth.pinned_count,
                "depth.held_mib": round(self.depth.held_bytes() / 2**20, 1),
                "depth.evicted_for_bytes": self.depth.evicted_for_bytes,
                "depth_camera_info_frames": ",".join(sorted(self.depth_infos)),
                "color_camera_info_frames": ",".join(sorted(self.colour_infos)),
                "camera_info_unusable": ",".join(sorted(self._unusable_frames())),
                "last_latency_ms": self.last_latency_ms,
                **{f"targets.{name}": count for name, count in sorted(self.outcomes.items())},
            }


def _quoted(text: str) -> str:
    """A publisher's string (query id, frame id) for a log line: quoted, escaped, at most 100 characters."""
    return f"'{printable(text, 100)}'"


def _cause(reason: str) -> str:
    """The fixed part of a reason, for counting ("unsupported depth encoding 'x' (...)" -> its first three words)."""
    return re.split(r"[:('0-9]", reason, maxsplit=1)[0].strip()


def _vector(values: tuple[float, float, float]) -> Vector3:
    return Vector3(x=float(values[0]), y=float(values[1]), z=float(values[2]))


def _pose(position: tuple[float, float, float], orientation: tuple[float, float, float, float]) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    o = pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in orientation)
    return pose


def _new_marker(header: Header, marker_id: int, kind: int, shown: bool) -> Marker:
    """A marker of this kind to fill in, or, when there is nothing to show, a DELETE so no old one lingers."""
    marker = Marker(header=header, ns=MARKER_NAMESPACE, id=marker_id)
    if shown:
        marker.type, marker.action = kind, Marker.ADD
    else:
        marker.action = Marker.DELETE
    return marker


def _extent_marker(header: Header, target: Target) -> Marker:
    """The object's extent as a translucent box (a DELETE when there is none)."""
    marker = _new_marker(header, 1, Marker.CUBE, target.extent is not None)
    if target.extent is None:
        return marker
    marker.pose = _pose(target.extent.centre, target.extent.orientation)
    # RViz does not draw a box of zero thickness (a flat face seen head-on): give it one millimetre.
    marker.scale.x, marker.scale.y, marker.scale.z = (max(float(v), 0.001) for v in target.extent.size)
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = 0.2, 0.6, 1.0, 0.4
    return marker


def _point_marker(header: Header, target: Target) -> Marker:
    """The target point as a small sphere (a DELETE when not valid)."""
    marker = _new_marker(header, 2, Marker.SPHERE, target.valid)
    if not target.valid:
        return marker
    marker.pose = _pose(target.point, (0.0, 0.0, 0.0, 1.0))
    marker.scale.x = marker.scale.y = marker.scale.z = POINT_DIAMETER_M
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = 1.0, 0.9, 0.1, 1.0
    return marker


def _marker(header: Header, target: Target) -> Marker:
    """An arrow along the approach ending at the target (a DELETE when not valid)."""
    marker = _new_marker(header, 0, Marker.ARROW, target.valid)
    if not target.valid:
        return marker
    end = np.asarray(target.point, np.float64)
    start = end - ARROW_LENGTH_M * np.asarray(target.approach, np.float64)
    marker.points = [
        Point(x=float(start[0]), y=float(start[1]), z=float(start[2])),
        Point(x=end[0], y=end[1], z=end[2]),
    ]
    marker.pose.orientation.w = 1.0
    marker.scale.x, marker.scale.y, marker.scale.z = 0.01, 0.025, 0.04  # shaft diameter, head diameter, head length
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = 0.1, 0.9, 0.2, 1.0
    return marker


def main(args: list[str] | None = None) -> None:
    """The ``grasp_target_node`` executable: one executor thread for the intake, targets on the target worker."""
    raise SystemExit(run_node(GraspTargetNode, args))


if __name__ == "__main__":
    main()
