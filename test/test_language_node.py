"""language_node over real DDS with a scripted TEST DOUBLE of the language model (test/doubles).

The node's own logic runs for real: frame/proposal pairing, the query queue, prompts, parsing, index
resolution, statuses, the Ask service and /diagnostics.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from ros_harness import NodeProcess, RosClient, header, textured_image, wait_until
from sensor_msgs.msg import Image
from visualization_msgs.msg import ImageMarker

from chatrex_ros.core.overlays import outline_segments
from chatrex_ros.core.stamps import stamp_to_ns
from chatrex_ros.core.types import Proposals
from chatrex_ros.msg import Answer, ProposalArray, Query
from chatrex_ros.ros.conversions import image_msg, proposals_to_msg
from chatrex_ros.srv import Ask

pytestmark = pytest.mark.ros

BOXES = np.array([[10, 10, 50, 60], [100, 20, 180, 90], [30, 100, 90, 170], [200, 150, 300, 230]], np.float32)
SCORES = np.array([0.9, 0.8, 0.6, 0.4], np.float32)
SCRIPT = {
    "answers_by_word": {
        "cup": "<ground>cup</ground><objects><obj2><obj0><obj7></objects>",
        "slow": "<ground>slow thing</ground><objects><obj1></objects>",
        "category": "<obj3> is a chair",
    },
    "sleep_by_word": {"slow": 1.5},
    "fail_word": "explode",
}
STAMP = 1_700_000_100_000_000_000


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    record = tmp_path_factory.mktemp("model") / "calls.jsonl"
    options = dict(SCRIPT, record_path=str(record))
    node = NodeProcess(
        "chatrex_ros.ros.language_node",
        "language_node",
        params={
            "language_backend": "python:doubles.scripted_model:ScriptedModel",
            "backend_options": json.dumps(options),
            "queue_size": 2,
            "pairing_wait_s": 0.5,
            "image_qos.reliability": "reliable",
            "image_qos.depth": 10,
            "publish_markers": True,
            "publish_annotated": True,
        },
    )
    client = RosClient()
    try:
        pubs = {
            "image": client.publisher(Image, "image"),
            "proposals": client.publisher(ProposalArray, "proposals"),
            "query": client.publisher(Query, "query"),
        }
        answers = client.subscribe(Answer, "answer")
        diagnostics = client.subscribe(DiagnosticArray, "/diagnostics")
        client.subscribe(ImageMarker, "answer/markers")  # from the start: matched before the first answer
        client.subscribe(Image, "answer_image")
        for publisher in pubs.values():
            wait_until(
                lambda publisher=publisher: publisher.get_subscription_count() > 0 or not node.alive(),
                30,
                "language_node",
            )
        client.wait_for_publishers("answer")
        assert node.alive(), node.output()
        yield client, pubs, answers, diagnostics, node, record
    finally:
        client.close()
        assert node.stop() == 0, node.output()


def ask(graph, query: Query, timeout: float = 20.0) -> Answer:
    _, pubs, answers, *_ = graph
    pubs["query"].publish(query)
    wait_until(lambda: any(a.query_id == query.id for a in answers), timeout, f"answer to {query.id}")
    matching = [a for a in answers if a.query_id == query.id]
    assert len(matching) == 1, f"exactly one answer per query, got {len(matching)}"
    return matching[0]


def send_frame(graph, stamp: int, boxes: np.ndarray = BOXES, scores: np.ndarray = SCORES) -> None:
    _, pubs, *_ = graph
    pubs["image"].publish(image_msg(textured_image(240, 320), "rgb8", header(stamp)))
    proposals = Proposals(boxes=boxes, scores=scores, backend="test")
    pubs["proposals"].publish(proposals_to_msg(proposals, header(stamp), 320, 240, "fine"))


def test_a_query_before_any_image_answers_no_image(graph) -> None:
    answer = ask(graph, Query(id="early", task="detect", text="cup"))
    assert answer.status == Answer.STATUS_NO_IMAGE
    assert "no image" in answer.status_message


def test_detections_are_the_proposals_the_model_named(graph) -> None:
    send_frame(graph, STAMP)
    answer = ask(graph, Query(id="cup-1", task="detect", text="cup"))
    assert answer.status == Answer.STATUS_OK, answer.status_message
    assert answer.header.frame_id == "camera_color_optical_frame"
    assert answer.header.stamp.sec * 10**9 + answer.header.stamp.nanosec == STAMP
    assert answer.proposals_stamp == answer.header.stamp
    assert answer.question == "Please detect cup in this image. Answer the question with object indexes."
    assert [d.proposal_index for d in answer.detections] == [2, 0], "index 7 >= 4 proposals is dropped"
    for detection in answer.detections:
        np.testing.assert_allclose(detection.box, BOXES[detection.proposal_index])
        assert math.isclose(detection.score, SCORES[detection.proposal_index], rel_tol=1e-6)
        assert detection.label == "cup"
    assert [(g.phrase, list(g.indices)) for g in answer.groups] == [("cup", [2, 0])]
    assert answer.text == "cup" and answer.num_proposals == 4
    assert answer.total_ms >= answer.model_ms >= 0


def _latest(bucket: list, stamp: int, what: str):
    wait_until(lambda: any(stamp_to_ns(m.header.stamp) == stamp for m in list(bucket)), 10, what)
    return [m for m in list(bucket) if stamp_to_ns(m.header.stamp) == stamp][-1]


def test_answer_markers_outline_the_detections_and_the_queried_regions(graph) -> None:
    """answer/markers: an ImageMarker LINE_LIST whose corners are the answered boxes, pixel for pixel."""
    client = graph[0]
    markers, images = client.received["answer/markers"], client.received["answer_image"]
    send_frame(graph, STAMP + 21)
    answer = ask(graph, Query(id="markers-detect", task="detect", text="cup"))
    marker = _latest(markers, STAMP + 21, "the answer's markers")
    assert marker.header == answer.header and marker.type == ImageMarker.LINE_LIST and marker.ns == "answer"
    points = np.array([(p.x, p.y) for p in marker.points])
    np.testing.assert_array_equal(points, outline_segments(BOXES[[2, 0]]))
    colours = {(c.r, c.g, c.b) for c in marker.outline_colors}
    assert len(marker.outline_colors) == len(points) and len(colours) == 1, "one phrase, one colour"
    drawn = _latest(images, STAMP + 21, "the annotated frame")
    assert (drawn.width, drawn.height, drawn.encoding) == (320, 240, "rgb8") and drawn.header == answer.header

    send_frame(graph, STAMP + 22)
    region = ask(graph, Query(id="markers-region", task="region_category", indices=[3]))
    assert region.status == Answer.STATUS_OK
    marker = _latest(markers, STAMP + 22, "the region task's markers")
    points = np.array([(p.x, p.y) for p in marker.points])
    np.testing.assert_array_equal(points[-8:], outline_segments(BOXES[[3]]), "the queried region, last")
    assert {(c.r, c.g, c.b) for c in marker.outline_colors[-8:]} == {(1.0, 1.0, 1.0)}, "regions in white"


def test_the_model_gets_exactly_the_ordered_proposals(graph) -> None:
    *_, record = graph
    send_frame(graph, STAMP + 1)
    ask(graph, Query(id="cup-order", task="detect", targets=["cup"]))
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    np.testing.assert_array_equal(np.array(calls[-1]["boxes"], np.float32), BOXES)
    assert calls[-1]["image_shape"] == [240, 320, 3]


def test_a_query_can_name_an_older_frame_by_stamp(graph) -> None:
    send_frame(graph, STAMP + 2)
    send_frame(graph, STAMP + 3, BOXES[::-1].copy(), SCORES)
    query = Query(id="by-stamp", task="detect", text="cup")
    query.image_stamp = header(STAMP + 2).stamp
    answer = ask(graph, query)
    assert answer.header.stamp == query.image_stamp
    np.testing.assert_allclose(answer.detections[0].box, BOXES[2])
    stale = Query(id="stale", task="detect", text="cup")
    stale.image_stamp = header(5).stamp
    stale_answer = ask(graph, stale)
    assert stale_answer.status == Answer.STATUS_NO_IMAGE
    assert stale_answer.header.stamp == stale.image_stamp, "an answer without a frame still names the stamp asked about"


@pytest.mark.parametrize(
    "query,expected",
    [
        (Query(id="unknown-task", task="dance", text="cup"), Answer.STATUS_BAD_QUERY),
        (Query(id="empty-text", task="detect", text=""), Answer.STATUS_BAD_QUERY),
        (Query(id="long-text", task="chat", text="why " * 5000), Answer.STATUS_BAD_QUERY),
        (Query(id="region-bad-index", task="region_category", indices=[9]), Answer.STATUS_BAD_QUERY),
        (Query(id="model-fails", task="detect", text="explode"), Answer.STATUS_MODEL_ERROR),
    ],
)
def test_bad_queries_get_an_error_status_and_the_node_keeps_serving(graph, query, expected) -> None:
    send_frame(graph, STAMP + 10)
    answer = ask(graph, query)
    assert answer.status == expected, answer.status_message
    assert answer.status_message
    assert ask(graph, Query(id=f"after-{query.id}", task="detect", text="cup")).status == Answer.STATUS_OK


def test_region_task_resolves_bare_mentions(graph) -> None:
    send_frame(graph, STAMP + 11)
    answer = ask(graph, Query(id="region", task="region_category", indices=[3]))
    assert answer.status == Answer.STATUS_OK
    assert answer.question.startswith("What is the category name of <obj3>?")
    assert "chair" in answer.text and "<obj" not in answer.text


def test_malformed_inputs_are_dropped_and_reported(graph) -> None:
    client, pubs, answers, diagnostics, node, _ = graph
    bad_encoding = image_msg(np.zeros((4, 4), np.uint16), "16UC1", header(STAMP + 20))
    pubs["image"].publish(bad_encoding)
    pubs["image"].publish(Image(header=header(STAMP + 21), height=0, width=0, encoding="rgb8", step=0))
    nan_boxes = proposals_to_msg(Proposals(BOXES.copy(), SCORES), header(STAMP + 22), 320, 240, "fine")
    nan_boxes.boxes[1] = float("nan")
    odd_count = proposals_to_msg(Proposals(BOXES, SCORES), header(STAMP + 23), 320, 240, "fine")
    odd_count.boxes = odd_count.boxes[:-1]
    pubs["proposals"].publish(nan_boxes)
    pubs["proposals"].publish(odd_count)

    def reported() -> bool:
        values = {
            kv.key: kv.value
            for d in list(diagnostics)
            for s in d.status
            if "language_node" in s.name
            for kv in s.values
        }
        return int(values.get("problem.bad_image", 0)) >= 2 and int(values.get("problem.bad_proposals", 0)) >= 2

    wait_until(reported, 10, "/diagnostics to count the dropped messages")
    query = Query(id="nan-frame", task="detect", text="cup")
    query.image_stamp = header(STAMP + 22).stamp
    assert ask(graph, query).status in (Answer.STATUS_NO_IMAGE, Answer.STATUS_NO_PROPOSALS)
    assert node.alive()


def test_full_queue_answers_busy_and_timeouts_answer_timeout(graph) -> None:
    client, pubs, answers, *_ = graph
    send_frame(graph, STAMP + 30)
    ids = [f"flood-{i}" for i in range(5)]
    for query_id in ids:
        pubs["query"].publish(Query(id=query_id, task="detect", text="slow", timeout_s=10.0))
    wait_until(lambda: all(any(a.query_id == i for a in answers) for i in ids), 30, "answers to the flood")
    statuses = [next(a for a in answers if a.query_id == i).status for i in ids]
    assert statuses.count(Answer.STATUS_BUSY) >= 2, statuses
    assert statuses[0] == Answer.STATUS_OK, "queries are answered in arrival order"
    late = ask(graph, Query(id="too-slow", task="detect", text="slow", timeout_s=0.3))
    assert late.status == Answer.STATUS_TIMEOUT
    assert late.total_ms < 1400, "the timeout is reported on time, not after generation"


def test_ask_service_returns_the_answer(graph) -> None:
    client, *_ = graph
    send_frame(graph, STAMP + 40)
    service = client.node.create_client(Ask, "ask")
    assert service.wait_for_service(timeout_sec=20)
    future = service.call_async(Ask.Request(query=Query(id="svc", task="detect", text="cup")))
    wait_until(future.done, 20, "the Ask response")
    answer = future.result().answer
    assert answer.query_id == "svc" and answer.status == Answer.STATUS_OK
    assert [d.proposal_index for d in answer.detections] == [2, 0]
