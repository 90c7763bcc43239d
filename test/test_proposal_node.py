"""proposal_node over real DDS: image in -> proposals out, with the image's header, index-stable."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ros_harness import NodeProcess, RosClient, header, set_parameters, textured_image, wait_until
from sensor_msgs.msg import Image
from visualization_msgs.msg import ImageMarker

from chatrex_ros.core.overlays import outline_segments
from chatrex_ros.msg import ProposalArray
from chatrex_ros.ros.conversions import image_msg

pytestmark = pytest.mark.ros

TINY_CHECKPOINT = Path(__file__).parent / "data" / "upn" / "tiny_state_dict.safetensors"


@pytest.fixture(scope="module")
def graph():
    node = NodeProcess(
        "chatrex_ros.ros.proposal_node",
        "proposal_node",
        params={"selective_search_long_side": 160, "max_proposals": 40, "publish_markers": True},
    )
    client = RosClient()
    try:
        image_pub = client.publisher(Image, "image", reliable=False, depth=1)
        proposals = client.subscribe(ProposalArray, "proposals")
        client.subscribe(ImageMarker, "proposals/markers")
        wait_until(lambda: image_pub.get_subscription_count() > 0 or not node.alive(), 30, "proposal_node")
        assert node.alive(), node.output()
        yield client, image_pub, proposals, node
    finally:
        client.close()
        assert node.stop() == 0, node.output()


def _send_until_answered(image_pub, proposals, msg, stamp_ns: int) -> ProposalArray:
    def answered() -> bool:
        if any(_ns(p) == stamp_ns for p in proposals):
            return True
        image_pub.publish(msg)  # best effort: resend until one gets through
        return False

    wait_until(answered, 30, f"proposals for stamp {stamp_ns}")
    return next(p for p in proposals if _ns(p) == stamp_ns)


def _ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.mark.parametrize("size,encoding", [((480, 640), "rgb8"), ((240, 427), "bgr8")])
def test_proposals_carry_the_image_header_and_fit_the_image(graph, size, encoding) -> None:
    client, image_pub, proposals, _ = graph
    height, width = size
    stamp = 1_700_000_000_000_000_000 + width
    rgb = textured_image(height, width, seed=width)
    array = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    out = _send_until_answered(image_pub, proposals, image_msg(array, encoding, header(stamp, "cam_optical")), stamp)
    assert out.header.frame_id == "cam_optical"
    assert (out.image_width, out.image_height) == (width, height)
    boxes = np.asarray(out.boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(out.scores, np.float32)
    assert 0 < len(scores) <= 40 and boxes.shape[0] == len(scores)
    assert np.all(np.diff(scores) <= 0), "sorted by score, descending"
    assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
    assert np.all(boxes[:, 2] <= width) and np.all(boxes[:, 3] <= height)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert out.backend == "selective_search" and out.granularity == "fine" and out.inference_ms > 0


def test_proposal_markers_outline_every_proposal_of_the_frame(graph) -> None:
    """proposals/markers: one thin LINE_LIST per frame whose corners are the published boxes, pixel for pixel."""
    client, image_pub, proposals, _ = graph
    markers = client.received["proposals/markers"]
    stamp = 1_700_000_000_500_000_000
    out = _send_until_answered(image_pub, proposals, image_msg(textured_image(240, 320), "rgb8", header(stamp)), stamp)
    wait_until(lambda: any(_ns(m) == stamp for m in list(markers)), 10, "the frame's markers")
    marker = next(m for m in list(markers) if _ns(m) == stamp)
    assert marker.header == out.header and marker.type == ImageMarker.LINE_LIST and marker.scale == 1.0
    points = np.array([(p.x, p.y) for p in marker.points])
    np.testing.assert_array_equal(points, outline_segments(np.asarray(out.boxes, np.float32).reshape(-1, 4)))
    assert len(marker.outline_colors) == len(points)


def test_bad_images_are_dropped_and_the_node_keeps_serving(graph) -> None:
    client, image_pub, proposals, node = graph
    bad = image_msg(np.zeros((8, 8), np.uint16), "16UC1", header(11))
    bad.encoding = "yuv422"
    empty = Image(header=header(12), height=0, width=0, encoding="rgb8", step=0)
    for msg in (bad, empty):
        image_pub.publish(msg)
    stamp = 1_700_000_000_500_000_000
    out = _send_until_answered(image_pub, proposals, image_msg(textured_image(120, 160), "rgb8", header(stamp)), stamp)
    assert len(out.scores) > 0
    assert all(_ns(p) not in (11, 12) for p in proposals)
    assert node.alive()


def test_more_than_100_proposals_is_refused_at_startup() -> None:
    node = NodeProcess("chatrex_ros.ros.proposal_node", "proposal_node", params={"max_proposals": 101})
    assert node.process.wait(60) != 0
    assert "max_proposals" in node.output()
    node.stop()


def test_a_upn_backend_slots_in_without_touching_the_node(tmp_path) -> None:
    """The tiny UPN (reference weights shipped in test/data) through the torch backend, as the node runs it."""
    from pathlib import Path

    from chatrex_ros.models.settings import proposal_pipeline
    from chatrex_ros.node_parameters import ProposalNodeParams, resolved

    checkpoint = Path(__file__).parent / "data" / "upn" / "tiny_state_dict.safetensors"
    params = {
        "backend": "torch",
        "model_variant": "tiny",
        "checkpoint": str(checkpoint),
        "warmup": False,
        "image_qos.reliability": "reliable",
    }
    image = textured_image(240, 320, seed=3)
    expected = proposal_pipeline(resolved(ProposalNodeParams, params)).run(image)
    with NodeProcess("chatrex_ros.ros.proposal_node", "proposal_node", params=params, namespace="/upn") as node:
        client = RosClient()
        try:
            image_pub = client.publisher(Image, "/upn/image")
            proposals = client.subscribe(ProposalArray, "/upn/proposals")
            wait_until(lambda: image_pub.get_subscription_count() > 0 or not node.alive(), 60, "proposal_node")
            assert node.alive(), node.output()
            image_pub.publish(image_msg(image, "rgb8", header(77)))
            wait_until(lambda: len(proposals) > 0, 60, "UPN proposals")
        finally:
            client.close()
    out = proposals[0]
    assert out.backend == "torch" and _ns(out) == 77
    boxes = np.asarray(out.boxes, np.float32).reshape(-1, 4)
    assert len(out.scores) == len(expected) > 0
    np.testing.assert_allclose(boxes[:5], expected.boxes[:5], atol=0.05)
    np.testing.assert_allclose(np.asarray(out.scores)[:5], expected.scores[:5], atol=1e-4)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"backend": "onnxruntime", "onnx": "/nonexistent/upn.onnx"}, "/nonexistent/upn.onnx"),
        ({"backend": "torch", "checkpoint": "/nonexistent/upn_large.pth"}, "/nonexistent/upn_large.pth"),
        ({"backend": "torch", "device": "cuda", "model_variant": "tiny", "checkpoint": str(TINY_CHECKPOINT)}, "cuda"),
        ({"backend": "python:no_such_module:Backend"}, "no_such_module"),
    ],
)
def test_a_missing_model_file_or_device_fails_at_startup_with_a_clear_message(params, message) -> None:
    node = NodeProcess("chatrex_ros.ros.proposal_node", "proposal_node", params=params)
    assert node.process.wait(120) == 1
    output = node.output()
    node.stop()
    assert "start-up failed" in output and message in output
    assert "Traceback" not in output


def test_torch_backend_without_a_checkpoint_refuses_to_start_in_one_line() -> None:
    """backend:=torch alone must not serve random-weight proposals: the process exits at once, saying what to pass."""
    started = time.monotonic()
    command = [sys.executable, "-m", "chatrex_ros.ros.proposal_node", "--ros-args", "-p", "backend:=torch"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    elapsed = time.monotonic() - started
    assert result.returncode != 0, result.stdout + result.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s to refuse"
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "start-up failed" in lines[0] and "checkpoint:=/path/to/upn_large.pth" in lines[0]
    assert "model_variant" in lines[0]


def test_compressed_images_are_served_with_image_transport_compressed() -> None:
    from sensor_msgs.msg import CompressedImage

    from chatrex_ros.core.images import array_to_compressed
    from chatrex_ros.ros.conversions import compressed_image_msg

    params = {
        "image_transport": "compressed",
        "selective_search_long_side": 160,
        "warmup": False,
        "image_qos.reliability": "reliable",
    }
    with NodeProcess("chatrex_ros.ros.proposal_node", "proposal_node", params=params, namespace="/jpeg") as node:
        client = RosClient()
        try:
            publisher = client.publisher(CompressedImage, "/jpeg/image/compressed")
            proposals = client.subscribe(ProposalArray, "/jpeg/proposals")
            wait_until(lambda: publisher.get_subscription_count() > 0 or not node.alive(), 60, "proposal_node")
            fmt, payload = array_to_compressed(textured_image(180, 250, seed=5), "rgb8", "jpeg")
            publisher.publish(compressed_image_msg(fmt, payload, header(91, "jpeg_cam")))
            wait_until(lambda: len(proposals) > 0, 30, "proposals for the compressed frame")
        finally:
            client.close()
    out = proposals[0]
    assert _ns(out) == 91 and out.header.frame_id == "jpeg_cam"
    assert (out.image_width, out.image_height) == (250, 180) and len(out.scores) > 0


def test_selection_parameters_change_at_runtime_and_bad_values_are_refused(graph) -> None:
    client, image_pub, proposals, _ = graph
    refused = set_parameters(client, "/proposal_node", max_proposals=101)
    assert not refused[0].successful and "max_proposals" in refused[0].reason
    assert set_parameters(client, "/proposal_node", max_proposals=3)[0].successful
    try:
        stamp = 1_700_000_000_700_000_000
        out = _send_until_answered(
            image_pub, proposals, image_msg(textured_image(120, 160, seed=8), "rgb8", header(stamp)), stamp
        )
        assert 0 < len(out.scores) <= 3
    finally:
        assert set_parameters(client, "/proposal_node", max_proposals=40)[0].successful
