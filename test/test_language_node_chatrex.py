"""language_node end to end over DDS with the ChatRex backend loading a test-only checkpoint.

The checkpoint (test/fixtures/tiny_chatrex.py) is a TEST DOUBLE of IDEA-Research/ChatRex-7B: the real directory
layout and loading path (AutoProcessor / AutoModelForCausalLM with remote code), a tiny random LLM inside whose
generation is forced to a scripted answer. Everything of the package runs for real, including the `ask` CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid

import numpy as np
import pytest
from fixtures.tiny_chatrex import make_tiny_chatrex, read_calls
from ros_harness import NodeProcess, RosClient, header, textured_image, wait_until
from sensor_msgs.msg import Image

from chatrex_ros.core.types import Proposals
from chatrex_ros.msg import Answer, ProposalArray, Query
from chatrex_ros.ros.conversions import image_msg, proposals_to_msg

pytest.importorskip("transformers", reason="needs the [chatrex] extra (transformers)")
pytestmark = pytest.mark.ros

NAMESPACE = "/fx"
BOXES = np.array([[10, 10, 60, 60], [80, 20, 150, 100], [30, 110, 120, 200], [200, 40, 300, 220]], np.float32)
SCORES = np.array([0.95, 0.7, 0.6, 0.35], np.float32)
SCRIPT = [
    "<ground>cup</ground><objects><obj2><obj0></objects>",
    "<ground>bowl</ground><objects><obj1></objects> and <ground>cup</ground><objects><obj3></objects>",
    "<ground>cup</ground><objects><obj0></objects>",
]
STAMP = 1_700_000_200_000_000_000


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="chatrex_test_hf_modules_"))
    model_dir = make_tiny_chatrex(tmp_path_factory.mktemp("ckpt") / f"tiny_chatrex_{uuid.uuid4().hex[:8]}", SCRIPT)
    node = NodeProcess(
        "chatrex_ros.ros.language_node",
        "language_node",
        namespace=NAMESPACE,
        params={
            "language_backend": "chatrex",
            "model_path": str(model_dir),
            "trust_remote_code": True,
            "device": "cpu",
            "publish_annotated": True,
            "image_qos.reliability": "reliable",
            "image_qos.depth": 5,
        },
    )
    client = RosClient()
    try:
        image_pub = client.publisher(Image, f"{NAMESPACE}/image")
        proposals_pub = client.publisher(ProposalArray, f"{NAMESPACE}/proposals")
        query_pub = client.publisher(Query, f"{NAMESPACE}/query")
        answers = client.subscribe(Answer, f"{NAMESPACE}/answer")
        annotated = client.subscribe(Image, f"{NAMESPACE}/answer_image")
        wait_until(
            lambda: query_pub.get_subscription_count() > 0 or not node.alive(), 120, "language_node with the model"
        )
        assert node.alive(), node.output()
        image = textured_image(240, 320, seed=9)
        image_pub.publish(image_msg(image, "rgb8", header(STAMP)))
        proposals_pub.publish(proposals_to_msg(Proposals(BOXES, SCORES, "test"), header(STAMP), 320, 240, "fine"))
        yield {
            "query": query_pub,
            "answers": answers,
            "annotated": annotated,
            "model_dir": model_dir,
            "image": image,
            "node": node,
        }
    finally:
        client.close()
        assert node.stop() == 0, node.output()


def _ask(graph, query: Query) -> Answer:
    graph["query"].publish(query)
    wait_until(lambda: any(a.query_id == query.id for a in graph["answers"]), 60, f"answer {query.id}")
    return next(a for a in graph["answers"] if a.query_id == query.id)


def test_several_queries_about_one_frame_resolve_against_the_same_proposals(graph) -> None:
    first = _ask(graph, Query(id="q1", task="detect", text="cup", max_new_tokens=64))
    second = _ask(graph, Query(id="q2", task="detect", targets=["bowl", "cup"]))
    for answer in (first, second):
        assert answer.status == Answer.STATUS_OK, answer.status_message
        assert answer.header.stamp == header(STAMP).stamp and answer.num_proposals == 4
    assert first.raw_output.strip() == SCRIPT[0]
    assert [(d.proposal_index, d.label) for d in first.detections] == [(2, "cup"), (0, "cup")]
    np.testing.assert_allclose([d.box for d in first.detections], BOXES[[2, 0]])
    assert [(d.proposal_index, d.label) for d in second.detections] == [(1, "bowl"), (3, "cup")]
    assert second.question == "Please detect bowl; cup in this image. Answer the question with object indexes."
    calls = read_calls(graph["model_dir"], "process")
    assert len(calls) >= 2
    for call in calls:  # the backend handed the model exactly the frame's ordered proposals
        np.testing.assert_allclose(np.array(call["bbox"], np.float32), BOXES)
    generate_calls = read_calls(graph["model_dir"], "generate")
    assert generate_calls[0]["max_new_tokens"] == 64 and generate_calls[0]["do_sample"] is False


def test_the_annotated_frame_is_published_with_the_answer_header(graph) -> None:
    wait_until(lambda: len(graph["annotated"]) > 0, 20, "answer_image")
    drawn = graph["annotated"][0]
    assert drawn.header.stamp == header(STAMP).stamp and drawn.encoding == "rgb8"
    pixels = np.frombuffer(drawn.data, np.uint8).reshape(drawn.height, drawn.width, 3)
    assert pixels.shape == graph["image"].shape
    assert not np.array_equal(pixels, graph["image"]), "boxes are drawn"


def test_ask_cli_prints_the_answer_of_the_running_node(graph) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatrex_ros", "ask", "cup", "--namespace", NAMESPACE, "--json", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["status"] == "OK" and answer["frame_id"] == "camera_color_optical_frame"
    assert [d["index"] for d in answer["detections"]] == [0]
    assert answer["detections"][0]["box"] == BOXES[0].tolist()
    table = subprocess.run(
        [sys.executable, "-m", "chatrex_ros", "ask", "cup", "--namespace", NAMESPACE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0 and "status: OK" in table.stdout and "cup" in table.stdout


def test_ask_cli_exits_non_zero_on_an_error_status(graph) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatrex_ros",
            "ask",
            "",
            "--task",
            "region_category",
            "--indices",
            "9",
            "--namespace",
            NAMESPACE,
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "BAD_QUERY" in result.stdout


def test_ask_cli_reports_when_no_node_listens() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatrex_ros", "ask", "cup", "--namespace", "/nobody", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 4 and "no language_node" in result.stderr


@pytest.mark.parametrize(
    "params,message",
    [
        (
            {"language_backend": "chatrex", "model_path": "/nonexistent/ChatRex-7B", "trust_remote_code": True},
            "/nonexistent/ChatRex-7B",
        ),
        ({"language_backend": "chatrex", "model_path": "MODEL", "trust_remote_code": False}, "trust_remote_code"),
        ({"language_backend": "chatrex", "model_path": "MODEL", "trust_remote_code": True, "device": "cuda"}, "CUDA"),
    ],
)
def test_model_problems_fail_at_startup_with_one_clear_error(graph, params, message) -> None:
    params = {k: (str(graph["model_dir"]) if v == "MODEL" else v) for k, v in params.items()}
    node = NodeProcess("chatrex_ros.ros.language_node", "language_node", params=params, namespace="/broken")
    assert node.process.wait(120) == 1
    output = node.output()
    node.stop()
    assert "start-up failed" in output and message in output and "Traceback" not in output
