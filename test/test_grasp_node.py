"""grasp_target_node over real DDS, on the ray-traced plane + box scene of test_grasp.py.

Two node processes share one module fixture: the main node (with a colour camera_info, stamp tolerance,
a tiny depth ring and pinning) and a bare one in namespace /bare (no camera_info at first, colour size from
parameters). Stamps only grow through the file: the node treats a depth frame newer than an answer's window
as proof that the answer's frame will never come, as it would on a real stream.
The pure pieces of the node (detection choice, depth store, parameter rules) are tested first, without DDS.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped, PoseStamped
from ros_harness import NodeProcess, RosClient, header, set_parameters, wait_until
from scenes import Plane, angle_deg, render, rotation
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from test_grasp import (
    FACE_CENTRE,
    HEIGHT,
    K_COLOUR,
    TIGHT_BOX,
    WALL_Z,
    WIDTH,
    encode,
    render_depth,
    rotate,
    scaled_intrinsics,
)
from visualization_msgs.msg import Marker, MarkerArray

from chatrex_ros.core.grasp import (
    DEFAULT_DEPTH_RANGE_M,
    DEFAULT_FOCAL_RANGE_PX,
    REASON_BAD_INTRINSICS,
    REASON_DEPTH_RANGE,
    REASON_FRAME_MISMATCH,
    REASON_NO_CAMERA_INFO,
    REASON_NO_DEPTH,
    REASON_NO_DETECTION,
    REASON_OUTSIDE,
    REASON_STALE,
)
from chatrex_ros.core.grasp_pairing import DepthStore, choose_detection
from chatrex_ros.core.stamps import stamp_to_ns
from chatrex_ros.core.types import Detection as CoreDetection
from chatrex_ros.msg import Answer, Detection, GraspTarget, ProposalArray
from chatrex_ros.node_parameters import GRASP_NODE, GraspNodeParams, typed
from chatrex_ros.parameters import resolve
from chatrex_ros.ros.conversions import image_msg

ros = pytest.mark.ros

COLOUR_FRAME = "camera_color_optical_frame"
DEPTH_FRAME = "camera_depth_optical_frame"
HALF_FRAME = "camera_depth_half_optical_frame"
K_HALF = scaled_intrinsics(K_COLOUR, 0.5)
WALL_BOX = (20.0, 20.0, 120.0, 120.0)  # only the wall: a decoy detection
TOLERANCE_S = 0.02
PAIRING_TIMEOUT_S = 0.6
DEPTH_RING = 3
MAX_POINTS = 1500
_stamps = itertools.count()


def next_stamp() -> int:
    """A fresh stamp, 1 s after the previous one (far beyond the node's stamp tolerance)."""
    return 1_700_000_200_000_000_000 + next(_stamps) * 1_000_000_000


# ------------------------------------------------------------------------------------------
# Pure pieces, no DDS
# ------------------------------------------------------------------------------------------


def _det(label: str, index: int, score: float) -> CoreDetection:
    return CoreDetection(index, label, (0.0, 0.0, 1.0, 1.0), score)


DETECTIONS = [_det("cup", 4, 0.6), _det("the red mug", 7, 0.5), _det("mugs", 2, 0.95), _det("mug", 9, 0.3)]


def test_highest_score_picks_the_best_upn_score() -> None:
    chosen, reason = choose_detection(DETECTIONS, "highest_score")
    assert (chosen.proposal_index, reason) == (2, "")
    tie = [_det("a", 1, 0.5), _det("b", 2, 0.5)]
    assert choose_detection(tie, "highest_score")[0].proposal_index == 1, "ties keep answer order"


def test_phrase_prefers_exact_labels_then_whole_word_containment() -> None:
    assert choose_detection(DETECTIONS, "phrase", " MUG ")[0].proposal_index == 9, (
        "exact beats a better-scored containment"
    )
    assert choose_detection(DETECTIONS, "phrase", "red mug")[0].proposal_index == 7
    assert choose_detection(DETECTIONS[:3], "phrase", "mug")[0].proposal_index == 7, "'mugs' is not the word 'mug'"
    chosen, reason = choose_detection(DETECTIONS, "phrase", "plate")
    assert chosen is None and reason.startswith(REASON_NO_DETECTION) and "'plate'" in reason


def test_index_selection_and_empty_answers() -> None:
    assert choose_detection(DETECTIONS, "index", proposal_index=7)[0].label == "the red mug"
    chosen, reason = choose_detection(DETECTIONS, "index", proposal_index=5)
    assert chosen is None and reason == f"{REASON_NO_DETECTION} with proposal index 5"
    assert choose_detection([], "phrase", "cup") == (None, REASON_NO_DETECTION)
    with pytest.raises(ValueError, match="selection must be one of"):
        choose_detection(DETECTIONS, "nearest")
    with pytest.raises(ValueError, match="non-empty phrase"):
        choose_detection(DETECTIONS, "phrase", "  ")


def test_depth_store_finds_the_nearest_frame_within_tolerance() -> None:
    store: DepthStore[str] = DepthStore(recent=3, pinned=2)
    for stamp in (100, 110, 125):
        store.add(stamp, f"f{stamp}")
    assert store.find(110) == (110, "f110")
    assert store.find(111) is None, "tolerance 0 is an exact match"
    assert store.find(118, tolerance_ns=10) == (125, "f125")
    assert store.may_still_arrive(125) and store.may_still_arrive(120, 5)
    assert not store.may_still_arrive(119, 5)
    store.add(130, "f130")
    assert store.find(100) is None and len(store) == 3, "the ring drops the oldest frame"


def test_depth_store_pins_frames_that_have_proposals() -> None:
    store: DepthStore[str] = DepthStore(recent=2, pinned=2)
    store.add(10, "f10")
    store.pin(10)  # the frame is here already
    store.pin(40)  # the frame has not arrived yet
    store.pin(15)  # never arrives: 20 below shows it cannot come any more
    for stamp in (20, 30, 40, 50, 60):
        store.add(stamp, f"f{stamp}")
    assert store.find(10) == (10, "f10") and store.find(40) == (40, "f40")
    assert store.find(20) is None, "unpinned frames leave the ring"
    store.pin(50)
    assert store.pinned_count == 2 and store.find(10) is None, "the oldest pinned frame is evicted first"
    assert store.find(50) == (50, "f50")
    with pytest.raises(ValueError, match="at least 1"):
        DepthStore(recent=0, pinned=1)


def test_parameter_rules_that_span_parameters() -> None:
    def problem(**values: object) -> str | None:
        return typed(GraspNodeParams, resolve(GRASP_NODE, values)).problem()

    assert problem() is None
    assert "phrase" in problem(selection="phrase")
    assert problem(selection="phrase", phrase="cup") is None
    assert "proposal_index" in problem(selection="index")
    assert "color_width" in problem(color_width=640)
    assert "min_depth_m" in problem(min_depth_m=2.0, max_depth_m=1.0)
    assert "min_depth_m" in problem(min_depth_m=1.0, max_depth_m=1.0)
    assert "min_focal_px" in problem(min_focal_px=500.0, max_focal_px=400.0)
    with pytest.raises(ValueError, match="min_depth_m must be >="):
        resolve(GRASP_NODE, {"min_depth_m": 0.0})
    with pytest.raises(ValueError, match="min_focal_px must be >="):
        resolve(GRASP_NODE, {"min_focal_px": -10.0})


def test_plausibility_defaults_are_the_core_defaults() -> None:
    params = typed(GraspNodeParams, resolve(GRASP_NODE, {}))
    assert params.depth_range == DEFAULT_DEPTH_RANGE_M and params.focal_range == DEFAULT_FOCAL_RANGE_PX


# ------------------------------------------------------------------------------------------
# Over DDS
# ------------------------------------------------------------------------------------------


def camera_info(frame: str, K: np.ndarray, width: int, height: int) -> CameraInfo:
    info = CameraInfo(header=header(0, frame), width=width, height=height, distortion_model="plumb_bob")
    info.k = [float(v) for v in np.asarray(K).reshape(-1)]
    return info


def answer_msg(
    stamp: int, query_id: str, detections: list[Detection], status: int = Answer.STATUS_OK, message: str = ""
) -> Answer:
    return Answer(
        header=header(stamp, COLOUR_FRAME),
        query_id=query_id,
        task="detect",
        detections=detections,
        status=status,
        status_message=message,
        num_proposals=10,
    )


def detection(box: tuple[float, ...] = TIGHT_BOX, label: str = "box", index: int = 3, score: float = 0.8) -> Detection:
    return Detection(proposal_index=index, label=label, box=[float(v) for v in box], score=score)


class Graph:
    """The client side of the test graph: publishers, received messages, and helpers."""

    def __init__(self, client: RosClient, main: NodeProcess, bare: NodeProcess) -> None:
        self.client, self.main, self.bare = client, main, bare
        self.pub: dict[str, object] = {}
        for prefix in ("", "bare/"):
            self.pub[prefix + "answer"] = client.publisher(Answer, prefix + "answer")
            self.pub[prefix + "depth"] = client.publisher(Image, prefix + "depth")
            self.pub[prefix + "depth/camera_info"] = client.publisher(CameraInfo, prefix + "depth/camera_info")
        self.pub["color/camera_info"] = client.publisher(CameraInfo, "color/camera_info")
        self.pub["proposals"] = client.publisher(ProposalArray, "proposals")
        self.targets = client.subscribe(GraspTarget, "grasp_target")
        self.bare_targets = client.subscribe(GraspTarget, "bare/grasp_target")
        self.points = client.subscribe(PointStamped, "grasp_point")
        self.poses = client.subscribe(PoseStamped, "grasp_pose")
        self.markers = client.subscribe(Marker, "grasp_marker")
        self.extent_markers = client.subscribe(Marker, "grasp_extent_marker")
        self.marker_arrays = client.subscribe(MarkerArray, "grasp_markers")
        self.clouds = client.subscribe(PointCloud2, "grasp_points")
        self.masks = client.subscribe(Image, "grasp_mask")
        self.diagnostics = client.subscribe(DiagnosticArray, "/diagnostics")
        self.depth_sent = 0  # to the main node, all reliable: the node's depth.received must reach it
        self.last_depth_frame = ""

    def send_depth(
        self, depth: np.ndarray | Image, encoding: str, stamp: int, frame: str = DEPTH_FRAME, bare: bool = False
    ) -> None:
        msg = depth if isinstance(depth, Image) else image_msg(encode(depth, encoding), encoding, header(stamp, frame))
        self.pub[("bare/" if bare else "") + "depth"].publish(msg)
        if not bare:
            self.depth_sent += 1
            self.last_depth_frame = msg.header.frame_id

    def ask(self, answer: Answer, bare: bool = False) -> GraspTarget:
        self.pub[("bare/" if bare else "") + "answer"].publish(answer)
        return self.target(answer.query_id, bare)

    def target(self, query_id: str, bare: bool = False, timeout: float = 10.0) -> GraspTarget:
        bucket = self.bare_targets if bare else self.targets
        wait_until(lambda: any(t.query_id == query_id for t in bucket), timeout, f"GraspTarget for {query_id}")
        matching = [t for t in bucket if t.query_id == query_id]
        assert len(matching) == 1, f"exactly one GraspTarget per answer, got {len(matching)}"
        return matching[0]

    def stamped(self, bucket: list, stamp: int, timeout: float = 10.0):
        wait_until(lambda: any(stamp_to_ns(m.header.stamp) == stamp for m in bucket), timeout, f"message at {stamp}")
        return next(m for m in bucket if stamp_to_ns(m.header.stamp) == stamp)

    def diagnostic_values(self, name: str) -> dict[str, str]:
        for array in reversed(list(self.diagnostics)):
            for status in array.status:
                if status.name == name:
                    return {kv.key: kv.value for kv in status.values}
        return {}

    def wait_diagnostic(self, name: str, predicate, what: str) -> None:
        wait_until(lambda: predicate(self.diagnostic_values(name)), 15, what)

    def set_parameters(self, **values: object) -> list[object]:
        return set_parameters(self.client, "/grasp_target_node", **values)


@pytest.fixture(scope="module")
def graph():
    qos = {"depth_qos.reliability": "reliable", "depth_qos.depth": 10, "pairing_timeout_s": PAIRING_TIMEOUT_S}
    main = NodeProcess(
        "chatrex_ros.ros.grasp_target_node",
        "grasp_target_node",
        params={
            **qos,
            "stamp_tolerance_s": TOLERANCE_S,
            "depth_buffer_size": DEPTH_RING,
            "pinned_frames": 2,
            "publish_points": True,
            "publish_mask": True,
            "max_points": MAX_POINTS,
        },
    )
    bare = NodeProcess(
        "chatrex_ros.ros.grasp_target_node",
        "grasp_target_node",
        namespace="/bare",
        params={**qos, "color_width": WIDTH, "color_height": HEIGHT},
    )
    client = RosClient("grasp_test_client")
    try:
        g = Graph(client, main, bare)
        for publisher in g.pub.values():
            wait_until(
                lambda publisher=publisher: (
                    publisher.get_subscription_count() > 0 or not (main.alive() and bare.alive())
                ),
                30,
                f"a subscriber on {publisher.topic_name}",
            )
        for topic in (
            "grasp_target",
            "grasp_point",
            "grasp_pose",
            "grasp_marker",
            "grasp_extent_marker",
            "grasp_points",
            "grasp_mask",
            "bare/grasp_target",
        ):
            client.wait_for_publishers(topic)
        assert main.alive() and bare.alive(), main.output() + bare.output()
        g.pub["depth/camera_info"].publish(camera_info(DEPTH_FRAME, K_COLOUR, WIDTH, HEIGHT))
        g.pub["depth/camera_info"].publish(camera_info(HALF_FRAME, K_HALF, WIDTH // 2, HEIGHT // 2))
        g.pub["color/camera_info"].publish(camera_info(COLOUR_FRAME, K_COLOUR, WIDTH, HEIGHT))
        g.wait_diagnostic(
            "grasp_target_node",
            lambda v: (
                v.get("depth_camera_info_frames", "").count("optical") == 2
                and v.get("color_camera_info_frames") == COLOUR_FRAME
            ),
            "camera_infos to reach the node",
        )
        yield g
    finally:
        client.close()
        codes = (main.stop(), bare.stop())
        assert codes == (0, 0), main.output() + bare.output()


@pytest.fixture(scope="module")
def scene_m() -> np.ndarray:
    return render_depth(K_COLOUR, WIDTH, HEIGHT)


def assert_on_the_face(point, tolerance_m: float = 0.01) -> None:
    error = float(np.linalg.norm(np.array([point.x, point.y, point.z]) - FACE_CENTRE))
    assert error < tolerance_m, f"target {point} is {error * 100:.1f} cm from the face centre"


@ros
@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_target_point_pose_and_marker_carry_the_answer_stamp_and_depth_frame(graph, scene_m, encoding) -> None:
    stamp = next_stamp()
    graph.send_depth(scene_m, encoding, stamp)
    target = graph.ask(answer_msg(stamp, f"tight-{encoding}", [detection(label="the box", index=3)]))
    assert target.valid and target.reason == ""
    assert stamp_to_ns(target.header.stamp) == stamp and target.header.frame_id == DEPTH_FRAME
    assert (target.label, target.proposal_index) == ("the box", 3)
    np.testing.assert_allclose(target.box, TIGHT_BOX, rtol=1e-6)
    assert_on_the_face(target.point)
    assert abs(target.depth_median - 0.8) < 0.005 and 0.0 < target.depth_spread < 0.01
    assert target.valid_fraction == pytest.approx(1.0)
    assert target.width_m == pytest.approx(0.14, abs=0.01) and target.height_m == pytest.approx(0.09, abs=0.01)

    point = graph.stamped(graph.points, stamp)
    assert point.header.frame_id == DEPTH_FRAME and point.point == target.point
    pose = graph.stamped(graph.poses, stamp)
    assert pose.header.frame_id == DEPTH_FRAME and pose.pose.position == target.point
    q = pose.pose.orientation
    ray = np.array([point.point.x, point.point.y, point.point.z])
    np.testing.assert_allclose(
        rotate((q.x, q.y, q.z, q.w), np.array([1.0, 0.0, 0.0])), ray / np.linalg.norm(ray), atol=1e-9
    )
    marker = graph.stamped(graph.markers, stamp)
    assert marker.header.frame_id == DEPTH_FRAME and marker.action == Marker.ADD and marker.type == Marker.ARROW
    assert marker.points[1] == target.point


@ros
@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_half_resolution_depth_maps_the_colour_box_through_both_camera_infos(graph, encoding) -> None:
    stamp = next_stamp()
    graph.send_depth(render_depth(K_HALF, WIDTH // 2, HEIGHT // 2), encoding, stamp, HALF_FRAME)
    target = graph.ask(answer_msg(stamp, f"half-{encoding}", [detection()]))
    assert target.valid, target.reason
    assert target.header.frame_id == HALF_FRAME and stamp_to_ns(target.header.stamp) == stamp
    np.testing.assert_allclose(target.box, TIGHT_BOX, rtol=1e-6)  # reported in colour pixels, as answered
    assert_on_the_face(target.point)


@ros
def test_answer_without_detection_is_refused_not_silent(graph) -> None:
    stamp = next_stamp()
    target = graph.ask(answer_msg(stamp, "empty", []))  # no depth needed to say so
    assert not target.valid and target.reason == REASON_NO_DETECTION
    # No depth frame at this stamp: the frame of the depth stream (every earlier frame was consumed).
    assert stamp_to_ns(target.header.stamp) == stamp and target.header.frame_id == graph.last_depth_frame
    assert target.proposal_index == -1 and math.isnan(target.point.x)
    marker = graph.stamped(graph.markers, stamp)
    assert marker.action == Marker.DELETE, "an old arrow must not stay on screen"
    time.sleep(0.2)
    assert not any(stamp_to_ns(p.header.stamp) == stamp for p in graph.points), "no point for a refused target"


@ros
def test_answer_with_an_error_status_gives_the_status_as_reason(graph) -> None:
    stamp = next_stamp()
    target = graph.ask(answer_msg(stamp, "failed", [], status=Answer.STATUS_MODEL_ERROR, message="boom"))
    assert not target.valid and target.reason == "answer status MODEL_ERROR: boom"


@ros
@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_all_invalid_depth_is_refused(graph, scene_m, encoding) -> None:
    stamp = next_stamp()
    raw = encode(scene_m, encoding, invalid=np.ones(scene_m.shape, bool))  # 0 mm, or NaN and inf
    graph.send_depth(image_msg(raw, encoding, header(stamp, DEPTH_FRAME)), encoding, stamp)
    target = graph.ask(answer_msg(stamp, f"no-depth-{encoding}", [detection()]))
    assert not target.valid and target.reason == REASON_NO_DEPTH and target.valid_fraction == 0.0
    assert stamp_to_ns(target.header.stamp) == stamp and target.header.frame_id == DEPTH_FRAME


@ros
def test_box_outside_the_image_is_refused(graph, scene_m) -> None:
    stamp = next_stamp()
    graph.send_depth(scene_m, "16UC1", stamp)
    target = graph.ask(answer_msg(stamp, "outside", [detection(box=(700.0, 10.0, 800.0, 60.0))]))
    assert not target.valid and target.reason == REASON_OUTSIDE


@ros
def test_depth_frame_without_its_camera_info_is_a_frame_mismatch(graph, scene_m) -> None:
    stamp = next_stamp()
    graph.send_depth(scene_m, "16UC1", stamp, frame="other_optical_frame")
    target = graph.ask(answer_msg(stamp, "mismatch", [detection()]))
    assert not target.valid and target.reason == REASON_FRAME_MISMATCH
    assert target.header.frame_id == "other_optical_frame"


@ros
def test_bad_messages_are_refused_and_the_node_keeps_serving(graph, scene_m) -> None:
    stamp = next_stamp()
    colour = image_msg(np.zeros((HEIGHT, WIDTH, 3), np.uint8), "rgb8", header(stamp, DEPTH_FRAME))
    graph.send_depth(colour, "rgb8", stamp)
    target = graph.ask(answer_msg(stamp, "rgb-depth", [detection()]))
    assert not target.valid and "unsupported depth encoding 'rgb8'" in target.reason
    graph.pub["depth/camera_info"].publish(camera_info(DEPTH_FRAME, K_COLOUR, 0, 0))  # dropped, the good one stays

    stamp = next_stamp()
    graph.send_depth(scene_m, "32FC1", stamp)
    nan_box = graph.ask(answer_msg(stamp, "nan-box", [detection(box=(float("nan"), 1.0, 2.0, 3.0))]))
    assert not nan_box.valid and nan_box.reason.startswith("bad input") and "finite" in nan_box.reason
    graph.wait_diagnostic(
        "grasp_target_node",
        lambda v: int(v.get("problem.bad_depth_camera_info", 0)) >= 1,
        "the bad camera_info to be counted",
    )
    stamp = next_stamp()
    graph.send_depth(scene_m, "32FC1", stamp)
    assert graph.ask(answer_msg(stamp, "after-bad", [detection()])).valid
    assert graph.main.alive()


@ros
def test_selection_by_phrase_and_by_index(graph, scene_m) -> None:
    detections = [
        detection(box=WALL_BOX, label="wall", index=0, score=0.9),
        detection(label="the red mug", index=7, score=0.5),
    ]

    def target_for(query_id: str) -> GraspTarget:
        stamp = next_stamp()
        graph.send_depth(scene_m, "16UC1", stamp)
        return graph.ask(answer_msg(stamp, query_id, detections))

    try:
        wall = target_for("select-score")
        assert wall.label == "wall" and wall.point.z == pytest.approx(WALL_Z, abs=0.01)
        assert [r.successful for r in graph.set_parameters(phrase="mug", selection="phrase")] == [True, True]
        mug = target_for("select-phrase")
        assert (mug.label, mug.proposal_index) == ("the red mug", 7)
        assert_on_the_face(mug.point)
        refused = graph.set_parameters(proposal_index=-1, selection="index")[1]
        assert not refused.successful and "proposal_index" in refused.reason
        assert [r.successful for r in graph.set_parameters(proposal_index=0, selection="index")] == [True, True]
        assert target_for("select-index").proposal_index == 0
        assert [r.successful for r in graph.set_parameters(phrase="plate", selection="phrase")] == [True, True]
        missing = target_for("select-missing")
        assert not missing.valid and missing.reason == f"{REASON_NO_DETECTION} for phrase 'plate'"
    finally:
        graph.set_parameters(selection="highest_score")


@ros
def test_stamp_tolerance_pairs_a_near_frame_and_refuses_a_far_one(graph, scene_m) -> None:
    near = next_stamp()
    graph.send_depth(scene_m, "16UC1", near + 10_000_000)  # 10 ms late, tolerance 20 ms
    target = graph.ask(answer_msg(near, "near", [detection()]))
    assert target.valid and stamp_to_ns(target.header.stamp) == near, "stamped with the answer's image stamp"
    assert stamp_to_ns(graph.stamped(graph.points, near).header.stamp) == near
    far = next_stamp()
    graph.send_depth(scene_m, "16UC1", far + 50_000_000)  # 50 ms: outside; no older frame can come after it
    assert graph.ask(answer_msg(far, "far", [detection()])).reason == REASON_STALE


@ros
def test_an_answer_waits_for_a_depth_frame_that_comes_after_it(graph, scene_m) -> None:
    stamp = next_stamp()
    graph.pub["answer"].publish(answer_msg(stamp, "depth-later", [detection()]))
    time.sleep(PAIRING_TIMEOUT_S / 3)  # aligned depth is often computed after the colour image
    graph.send_depth(scene_m, "32FC1", stamp)
    target = graph.target("depth-later")
    assert target.valid, target.reason
    assert_on_the_face(target.point)


@ros
def test_an_answer_without_depth_expires_after_the_pairing_timeout(graph) -> None:
    stamp = next_stamp()
    sent = time.monotonic()
    graph.pub["answer"].publish(answer_msg(stamp, "stale", [detection(label="the box")]))
    target = graph.target("stale")
    waited = time.monotonic() - sent
    assert not target.valid and target.reason == REASON_STALE
    assert target.label == "the box" and stamp_to_ns(target.header.stamp) == stamp
    assert waited >= PAIRING_TIMEOUT_S - 0.1, f"published after {waited:.2f} s, before the timeout"


@ros
@pytest.mark.parametrize("with_proposals", [True, False])
def test_frames_with_proposals_survive_the_models_latency(graph, scene_m, with_proposals) -> None:
    stamp = next_stamp()
    graph.send_depth(scene_m, "16UC1", stamp)
    if with_proposals:
        graph.pub["proposals"].publish(
            ProposalArray(header=header(stamp, COLOUR_FRAME), image_width=WIDTH, image_height=HEIGHT)
        )
    for later in range(1, DEPTH_RING + 2):  # pushes the frame out of the ring
        graph.send_depth(scene_m, "16UC1", stamp + later * 100_000_000)
    graph.wait_diagnostic(
        "grasp_target_node",
        lambda v: int(v.get("depth.received", 0)) >= graph.depth_sent,
        "the node to receive every depth frame",
    )
    target = graph.ask(answer_msg(stamp, f"late-answer-{with_proposals}", [detection()]))
    if with_proposals:
        assert target.valid, target.reason
        assert_on_the_face(target.point)
    else:
        assert target.reason == REASON_STALE, "control: without pinning the frame is gone"


@ros
def test_missing_camera_info_then_boxes_scaled_by_colour_size(graph) -> None:
    depth = render_depth(K_HALF, WIDTH // 2, HEIGHT // 2)
    stamp = next_stamp()
    graph.send_depth(depth, "16UC1", stamp, HALF_FRAME, bare=True)
    refused = graph.ask(answer_msg(stamp, "bare-no-info", [detection()]), bare=True)
    assert not refused.valid and refused.reason == REASON_NO_CAMERA_INFO
    assert refused.header.frame_id == HALF_FRAME

    graph.pub["bare/depth/camera_info"].publish(camera_info(HALF_FRAME, K_HALF, WIDTH // 2, HEIGHT // 2))
    graph.wait_diagnostic(
        "bare/grasp_target_node",
        lambda v: v.get("depth_camera_info_frames") == HALF_FRAME,
        "the bare node's camera_info",
    )
    stamp = next_stamp()
    graph.send_depth(depth, "16UC1", stamp, HALF_FRAME, bare=True)
    target = graph.ask(answer_msg(stamp, "bare-ratio", [detection()]), bare=True)
    assert target.valid, target.reason  # color_width/height = 640x480: the box is halved by size ratio
    assert_on_the_face(target.point)
    # Points and mask are opt-in: the bare node (both off) publishes neither, the main node (both on) both.
    node = graph.client.node
    assert node.count_publishers("/bare/grasp_points") == 0 and node.count_publishers("/bare/grasp_mask") == 0
    assert node.count_publishers("/grasp_points") == 1 and node.count_publishers("/grasp_mask") == 1


ABSURD_FRAME = "camera_absurd_optical_frame"


@ros
def test_absurd_depth_and_camera_info_are_refused_then_a_good_target_is_served(graph, scene_m) -> None:
    # Depth at the lens, and depth near float32's maximum: no target there, whatever the driver says.
    for value, name in ((1e-30, "lens"), (3.4e38, "far")):
        stamp = next_stamp()
        graph.send_depth(np.full(scene_m.shape, value), "32FC1", stamp)
        target = graph.ask(answer_msg(stamp, f"absurd-depth-{name}", [detection()]))
        assert not target.valid and target.reason.startswith(f"{REASON_DEPTH_RANGE} (0.05..20 m)"), target.reason
        assert math.isnan(target.point.z)

    # fx = 1e-3 would put the box's centre kilometres sideways: the camera_info is refused, with the reason.
    absurd = K_COLOUR.copy()
    absurd[0, 0] = 1e-3
    graph.pub["depth/camera_info"].publish(camera_info(ABSURD_FRAME, absurd, WIDTH, HEIGHT))
    graph.wait_diagnostic(
        "grasp_target_node",
        lambda v: ABSURD_FRAME in v.get("camera_info_unusable", ""),
        "the absurd camera_info to be reported unusable",
    )
    stamp = next_stamp()
    graph.send_depth(scene_m, "16UC1", stamp, frame=ABSURD_FRAME)
    refused = graph.ask(answer_msg(stamp, "absurd-fx", [detection()]))
    assert not refused.valid and refused.header.frame_id == ABSURD_FRAME
    assert refused.reason.startswith(
        f"{REASON_BAD_INTRINSICS}: depth camera: fx = 0.001 px is outside the plausible focal length range"
    ), refused.reason
    graph.wait_diagnostic(
        "grasp_target_node",
        lambda v: int(v.get("problem.invalid:invalid camera intrinsics", 0)) >= 1,
        "the refusal to be counted",
    )
    # A status message cannot put a second line into the published reason.
    stamp = next_stamp()
    forged = graph.ask(
        answer_msg(stamp, "forged", [], status=Answer.STATUS_MODEL_ERROR, message="boom\n[INFO] all good\x1b[2K")
    )
    assert forged.reason == "answer status MODEL_ERROR: boom\\n[INFO] all good\\x1b[2K"
    assert graph.main.alive()

    # The camera is calibrated again: the same frame serves a good target.
    graph.pub["depth/camera_info"].publish(camera_info(ABSURD_FRAME, K_COLOUR, WIDTH, HEIGHT))
    graph.wait_diagnostic(
        "grasp_target_node",
        lambda v: "camera_info_unusable" in v and ABSURD_FRAME not in v["camera_info_unusable"],
        "the calibrated camera_info to replace the absurd one",
    )
    stamp = next_stamp()
    graph.send_depth(scene_m, "16UC1", stamp, frame=ABSURD_FRAME)
    good = graph.ask(answer_msg(stamp, "after-absurd", [detection()]))
    assert good.valid, good.reason
    assert_on_the_face(good.point)


@ros
def test_a_burst_of_answers_gets_exactly_one_target_each(graph, scene_m) -> None:
    """200 answers at once (a language node answering a query burst): none is lost before the node decides."""
    stamp = next_stamp()
    graph.send_depth(scene_m, "32FC1", stamp)
    assert graph.ask(answer_msg(stamp, "before-burst", [detection()])).valid  # the depth frame is in
    burst = RosClient("grasp_burst_client")
    try:
        answers = burst.publisher(Answer, "answer", depth=1000)
        targets = burst.subscribe(GraspTarget, "grasp_target", depth=1000)
        wait_until(lambda: answers.get_subscription_count() > 0, 30, "the grasp node on answer")
        burst.wait_for_publishers("grasp_target")
        ids = [f"burst-{i}" for i in range(200)]
        for query_id in ids:
            answers.publish(answer_msg(stamp, query_id, [detection()]))
        wait_until(lambda: {t.query_id for t in list(targets)} >= set(ids), 60, "a target for every answer")
        time.sleep(0.5)  # a duplicate would have arrived by now
        counts = Counter(t.query_id for t in list(targets) if t.query_id.startswith("burst-"))
        assert set(counts.values()) == {1}
        assert all(t.valid for t in list(targets) if t.query_id in counts)
    finally:
        burst.close()
    assert graph.main.alive()


@ros
def test_the_surface_normal_extent_points_and_mask_are_published(graph) -> None:
    """approach:=surface_normal on a tilted plane: normal, pose, extent box, PointCloud2 and mask, all consistent."""
    plane_normal = rotation((0, 1, 0), 30.0) @ np.array([0.0, 0.0, -1.0])
    depth = render([Plane((0.0, 0.0, 0.9), tuple(plane_normal))], K_COLOUR, WIDTH, HEIGHT)
    stamp = next_stamp()
    box = (220.0, 140.0, 420.0, 340.0)
    assert graph.set_parameters(approach="surface_normal")[0].successful
    try:
        graph.send_depth(depth, "32FC1", stamp)
        target = graph.ask(answer_msg(stamp, "surface", [detection(box=box)]))
    finally:
        assert graph.set_parameters(approach="camera_ray")[0].successful
    assert target.valid and target.approach_source == "surface_normal" and target.note == ""
    normal = np.array([target.normal.x, target.normal.y, target.normal.z])
    approach = np.array([target.approach.x, target.approach.y, target.approach.z])
    assert angle_deg(normal, plane_normal) < 3.0 and angle_deg(approach, -plane_normal) < 3.0
    assert target.fit_points >= 30 and target.fit_inlier_fraction > 0.9 and target.fit_rms_m < 0.002
    q = graph.stamped(graph.poses, stamp).pose.orientation
    assert angle_deg(rotate((q.x, q.y, q.z, q.w), np.array([1.0, 0.0, 0.0])), approach) < 1e-3

    extent = graph.stamped(graph.extent_markers, stamp)
    assert extent.type == Marker.CUBE and extent.header.frame_id == DEPTH_FRAME
    assert extent.pose == target.extent_pose
    assert (target.width_m, target.height_m) == pytest.approx((target.extent_size.y, target.extent_size.z))
    wait_until(
        lambda: any(stamp_to_ns(a.markers[0].header.stamp) == stamp for a in list(graph.marker_arrays)), 10, "markers"
    )
    array = next(a for a in list(graph.marker_arrays) if stamp_to_ns(a.markers[0].header.stamp) == stamp)
    arrow, box_marker, point = array.markers
    assert {m.header.frame_id for m in array.markers} == {DEPTH_FRAME}
    assert (arrow.type, box_marker.type, point.type) == (Marker.ARROW, Marker.CUBE, Marker.SPHERE)
    assert len({arrow.id, box_marker.id, point.id}) == 3 and box_marker.pose == target.extent_pose
    assert (point.pose.position.x, point.pose.position.y, point.pose.position.z) == (
        target.point.x,
        target.point.y,
        target.point.z,
    )
    tip = arrow.points[1]
    assert (tip.x, tip.y, tip.z) == (target.point.x, target.point.y, target.point.z), "the arrow ends at the target"

    cloud = graph.stamped(graph.clouds, stamp)
    assert cloud.header.frame_id == DEPTH_FRAME and [f.name for f in cloud.fields] == ["x", "y", "z"]
    points = np.frombuffer(bytes(cloud.data), np.float32).reshape(-1, 3)
    assert 0 < points.shape[0] == cloud.width <= MAX_POINTS
    assert np.abs(points @ plane_normal - 0.9 * plane_normal[2]).max() < 0.005, "every point is on the plane"

    mask_msg = graph.stamped(graph.masks, stamp)
    assert (mask_msg.encoding, mask_msg.width, mask_msg.height) == ("mono8", WIDTH, HEIGHT)
    mask = np.frombuffer(bytes(mask_msg.data), np.uint8).reshape(HEIGHT, WIDTH)
    rows, cols = np.nonzero(mask == 255)
    assert cols.min() >= box[0] and cols.max() < box[2] and rows.min() >= box[1] and rows.max() < box[3]
    assert rows.size > 0.5 * (box[2] - box[0]) * (box[3] - box[1])
