"""The OpenAI-compatible VLM language backend: the request, the answer shapes real VLMs give, and server faults.

The server is a TEST DOUBLE on loopback (test/doubles/fake_vlm_server.py) standing in for vLLM / Ollama; the
package's request building, answer normalisation, error mapping and the real ``openai`` client run for real.
"""

from __future__ import annotations

import base64
import json
import time

import cv2
import numpy as np
import pytest
from doubles.fake_vlm_server import FakeVLMServer
from ros_harness import NodeProcess, RosClient, header, textured_image, wait_until
from sensor_msgs.msg import Image

from chatrex_ros.core.answering import AnswerStatus, QueryError, QueryRequest, answer_query
from chatrex_ros.core.types import Proposals
from chatrex_ros.core.vlm_protocol import (
    BOX_FORMATS,
    format_box,
    normalise_vlm_answer,
    to_pixels,
    vlm_request_text,
)
from chatrex_ros.models.openai_vlm import OpenAIVLMBackend, VLMServerError

pytest.importorskip("openai", reason="the [vlm] extra (pip install 'chatrex_ros[vlm]') is not installed")

BOXES = np.array([[10, 10, 50, 60], [100, 20, 180, 90], [30, 100, 90, 170]], np.float32)
SCORES = np.array([0.9, 0.8, 0.6], np.float32)
W, H = 320, 240


def frame() -> np.ndarray:
    return textured_image(H, W)


def backend(server: FakeVLMServer, **options) -> OpenAIVLMBackend:
    return OpenAIVLMBackend(server.base_url, "fake-vlm", **{"retries": 0, "timeout_s": 5.0, **options})


def ask(server: FakeVLMServer, text: str = "cup", task: str = "detect", **options):
    proposals = Proposals(boxes=BOXES, scores=SCORES, backend="test")
    return answer_query(backend(server, **options), frame(), proposals, QueryRequest.create(task, [], text))


# --- the protocol, without a server ------------------------------------------------------------------
@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_boxes_are_written_and_read_back_in_each_format(box_format) -> None:
    box = (32.0, 24.0, 160.0, 120.0)
    text = format_box(box, W, H, box_format)
    assert to_pixels(json.loads(text), W, H, box_format) == pytest.approx(box, abs=0.5)


def test_the_request_lists_every_proposal_in_order_then_the_question() -> None:
    text = vlm_request_text("Please detect cup in this image.", BOXES, W, H, "pixel")
    lines = text.splitlines()
    assert lines[1:4] == ["<obj0>: [10, 10, 50, 60]", "<obj1>: [100, 20, 180, 90]", "<obj2>: [30, 100, 90, 170]"]
    assert text.endswith("Question: Please detect cup in this image.") and "320x240" in lines[0]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<ground>cup</ground><objects><obj2></objects>", "<ground>cup</ground><objects><obj2></objects>"),
        (
            "The cup is obj2 and [obj0]; also obj 1.",
            "The cup is box 2 and box 0; also box 1. <ground></ground><objects><obj2><obj0><obj1></objects>",
        ),
        (
            "The cup is <obj2>, the mug obj1 (and <obj2> again).",
            "The cup is box 2, the mug box 1 (and box 2 again). <ground></ground><objects><obj2><obj1></objects>",
        ),
        ('```json\n[{"bbox_2d": [31, 101, 89, 171], "label": "cup"}]\n```', "<ground>cup</ground><objects><obj2>"),
        ('[{"bbox_2d": [101, 19, 181, 91], "label": "<b>mug</b>"}]', "<ground>bmug/b</ground><objects><obj1>"),
        ('[{"bbox_2d": [250, 200, 300, 230], "label": "cup"}]', ""),  # overlaps no proposal: rejected
        ("There is no cup in this image.", "There is no cup in this image."),
    ],
    ids=["grammar", "bare", "tokens-without-grammar", "qwen-json", "label-sanitised", "no-overlap", "rejection"],
)
def test_what_real_vlms_answer_becomes_the_chatrex_grammar(reply, expected) -> None:
    assert normalise_vlm_answer(reply, BOXES, W, H, "pixel").startswith(expected)


def test_normalised_boxes_in_norm1000_map_to_the_same_proposal() -> None:
    reply = json.dumps([{"bbox_2d": [94, 417, 281, 708], "label": "cup"}])  # 30..90 x 100..170 px in 0-1000
    assert normalise_vlm_answer(reply, BOXES, W, H, "norm1000") == "<ground>cup</ground><objects><obj2></objects>"


# --- against the stand-in server --------------------------------------------------------------------
def test_an_answer_naming_boxes_by_token_without_the_grammar_resolves_to_those_boxes() -> None:
    with FakeVLMServer([{"reply": "I see it: <obj2> and <obj0>."}]) as server:
        result = ask(server)
    assert [(d.proposal_index, d.box) for d in result.detections] == [
        (2, tuple(float(v) for v in BOXES[2])),
        (0, tuple(float(v) for v in BOXES[0])),
    ]


def test_the_request_carries_the_frame_the_boxes_the_question_and_the_key(monkeypatch) -> None:
    monkeypatch.setenv("TEST_VLM_KEY", "sk-secret-123")
    with FakeVLMServer([{"reply": "<ground>cup</ground><objects><obj2></objects>"}]) as server:
        result = ask(server, api_key_env="TEST_VLM_KEY")
    assert [d.proposal_index for d in result.detections] == [2] and result.detections[0].label == "cup"
    (sent,) = server.requests
    assert sent["path"] == "/v1/chat/completions" and sent["model"] == "fake-vlm"
    assert sent["temperature"] == 0 and sent["max_tokens"] == 512 and sent["skip_special_tokens"] is False
    system, user = sent["messages"]
    assert system["role"] == "system" and "<ground>" in system["content"]
    image_part, text_part = user["content"]
    data = image_part["image_url"]["url"]
    assert data.startswith("data:image/jpeg;base64,")
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(data.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (H, W, 3)
    assert np.abs(decoded[:, :, ::-1].astype(int) - frame().astype(int)).mean() < 8  # the same frame, as JPEG
    assert "<obj0>: [10, 10, 50, 60]\n<obj1>: [100, 20, 180, 90]" in text_part["text"]
    assert "Please detect cup in this image." in text_part["text"]
    headers = {key.lower(): value for key, value in server.headers[0].items()}
    assert headers["authorization"] == "Bearer sk-secret-123"


def test_a_qwen_style_box_answer_resolves_to_the_overlapping_proposal() -> None:
    reply = json.dumps([{"bbox_2d": [101, 21, 179, 89], "label": "mug"}, {"bbox_2d": [0, 200, 10, 230]}])
    with FakeVLMServer([{"reply": reply}]) as server:
        result = ask(server, "mug")
    assert [(d.proposal_index, d.label) for d in result.detections] == [(1, "mug")]


@pytest.mark.parametrize(("match_iou", "expected"), [(0.5, [1]), (0.7, [])], ids=["iou-0.5", "iou-0.7"])
def test_vlm_match_iou_decides_whether_a_drawn_box_is_a_proposal(match_iou, expected) -> None:
    reply = json.dumps([{"bbox_2d": [100, 20, 180, 62], "label": "mug"}])  # IoU 0.6 with proposal 1
    with FakeVLMServer([{"reply": reply}]) as server:
        result = ask(server, "mug", match_iou=match_iou)
    assert [d.proposal_index for d in result.detections] == expected


@pytest.mark.parametrize(
    ("task", "indices", "text"),
    [("region_category", [2, 0], ""), ("caption_brief", [], ""), ("count", [], "mug")],
)
def test_every_task_sends_its_own_chatrex_question(task, indices, text) -> None:
    proposals = Proposals(boxes=BOXES, scores=SCORES, backend="test")
    request = QueryRequest.create(task, [], text, indices)
    with FakeVLMServer([{"reply": "<ground>mug</ground><objects><obj2></objects>"}]) as server:
        answer_query(backend(server), frame(), proposals, request)
    (sent,) = server.requests
    question = sent["messages"][1]["content"][1]["text"]
    assert question.endswith(f"Question: {request.prompt}")
    for index in indices:  # region tasks name their regions by the frame's own indices
        assert f"<obj{index}>" in request.prompt


def test_no_such_object_is_zero_detections_not_a_guess() -> None:
    with FakeVLMServer([{"reply": "I cannot find a giraffe in this image."}]) as server:
        result = ask(server, "giraffe")
    assert result.detections == () and "giraffe" in result.parsed.text


def test_a_slow_server_times_out_as_a_model_error() -> None:
    with FakeVLMServer([{"sleep": 3.0, "reply": "late"}]) as server:
        start = time.monotonic()
        with pytest.raises(QueryError) as caught:
            ask(server, timeout_s=0.5)
        assert time.monotonic() - start < 2.5
    assert caught.value.status == AnswerStatus.MODEL_ERROR and "did not answer in time" in str(caught.value)


def test_a_5xx_is_retried_with_backoff_and_then_succeeds() -> None:
    script = [{"status": 503, "body": {"error": {"message": "loading model"}}}, {"reply": "It is obj0."}]
    with FakeVLMServer(script) as server:
        result = ask(server, retries=2)
    assert len(server.requests) == 2 and [d.proposal_index for d in result.detections] == [0]


@pytest.mark.parametrize(
    ("action", "words"),
    [
        ({"status": 500, "body": {"error": {"message": "CUDA out of memory"}}}, "HTTP 500: CUDA out of memory"),
        ({"status": 401, "body": {"error": {"message": "invalid api key"}}}, "HTTP 401: invalid api key"),
        ({"status": 404, "text": "404 page not found: /v2/chat"}, "HTTP 404: 404 page not found: /v2/chat"),
        ({"truncated": True}, "not a chat completion"),
        ({"close": True}, "cannot reach"),
    ],
    ids=["500", "401", "404-plain-text", "truncated-json", "connection-closed"],
)
def test_server_faults_are_model_errors_with_the_servers_message(action, words, monkeypatch) -> None:
    monkeypatch.setenv("TEST_VLM_KEY", "sk-never-echoed")
    with FakeVLMServer([action]) as server, pytest.raises(QueryError) as caught:
        ask(server, api_key_env="TEST_VLM_KEY")
    assert caught.value.status == AnswerStatus.MODEL_ERROR and words in str(caught.value)
    assert "sk-never-echoed" not in str(caught.value)


def test_a_closed_connection_is_retried_and_then_succeeds() -> None:
    with FakeVLMServer([{"close": True}, {"reply": "It is obj1."}]) as server:
        result = ask(server, retries=1)
    assert len(server.requests) == 2 and [d.proposal_index for d in result.detections] == [1]


def test_a_4xx_is_not_retried() -> None:
    script = [{"status": 400, "body": {"error": {"message": "bad image"}}}]
    with FakeVLMServer(script) as server, pytest.raises(VLMServerError, match="HTTP 400: bad image"):
        backend(server, retries=3).generate(frame(), BOXES, "Please detect cup in this image.")
    assert len(server.requests) == 1


def test_configuration_errors_fail_at_start_with_what_to_set(monkeypatch) -> None:
    monkeypatch.delenv("MISSING_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="vlm.base_url"):
        OpenAIVLMBackend("", "m")
    with pytest.raises(ValueError, match="vlm.model"):
        OpenAIVLMBackend("http://127.0.0.1:1/v1", "")
    with pytest.raises(ValueError, match="MISSING_KEY_VAR"):
        OpenAIVLMBackend("http://127.0.0.1:1/v1", "m", api_key_env="MISSING_KEY_VAR")
    with pytest.raises(ValueError, match="box_format"):
        OpenAIVLMBackend("http://127.0.0.1:1/v1", "m", box_format="cxcywh")


# --- over DDS: the node with this backend answers a Query end to end ---------------------------------
@pytest.mark.ros
def test_language_node_answers_through_a_served_vlm() -> None:
    from chatrex_ros.msg import Answer, ProposalArray, Query
    from chatrex_ros.ros.conversions import image_msg, proposals_to_msg

    stamp = 1_700_000_300_000_000_000
    with FakeVLMServer([{"reply": "<ground>cup</ground><objects><obj2><obj0></objects>"}]) as server:
        node = NodeProcess(
            "chatrex_ros.ros.language_node",
            "language_node",
            params={
                "language_backend": "openai",
                "vlm.base_url": server.base_url,
                "vlm.model": "fake-vlm",
                "image_qos.reliability": "reliable",
            },
            namespace="/vlm",
        )
        client = RosClient("vlm_client")
        try:
            images = client.publisher(Image, "vlm/image")
            proposals = client.publisher(ProposalArray, "vlm/proposals")
            queries = client.publisher(Query, "vlm/query")
            answers = client.subscribe(Answer, "vlm/answer")
            for publisher in (images, proposals, queries):
                wait_until(lambda p=publisher: p.get_subscription_count() > 0 or not node.alive(), 30, "the node")
            client.wait_for_publishers("vlm/answer")
            images.publish(image_msg(frame(), "rgb8", header(stamp)))
            boxes = Proposals(boxes=BOXES, scores=SCORES, backend="test")
            proposals.publish(proposals_to_msg(boxes, header(stamp), W, H, "fine"))
            queries.publish(Query(id="served", task="detect", text="cup"))
            wait_until(lambda: any(a.query_id == "served" for a in answers), 30, "the answer")
            answer = next(a for a in answers if a.query_id == "served")
            assert answer.status == Answer.STATUS_OK, answer.status_message
            assert [d.proposal_index for d in answer.detections] == [2, 0]
            assert answer.header.stamp.sec == stamp // 10**9
            assert "<obj2>: [30, 100, 90, 170]" in server.requests[0]["messages"][1]["content"][1]["text"]
        finally:
            client.close()
            assert node.stop() == 0, node.output()


def test_chatrex_ros_eval_scores_a_served_vlm_on_a_bag(tmp_path) -> None:
    """`chatrex-ros eval --language-backend openai ...`: the same backend, the same metrics as for ChatRex."""
    from chatrex_ros.cli import main
    from chatrex_ros.eval.sample import make_sample_bag, sample_annotations_path

    bag = make_sample_bag(tmp_path / "bag")
    with FakeVLMServer([{"reply": "<ground>object</ground><objects><obj0></objects>"}]) as server:
        code = main(
            [
                "eval",
                "--bag",
                str(bag),
                "--gt",
                str(sample_annotations_path()),
                "--language-backend",
                "openai",
                "--language-param",
                f"base_url={server.base_url}",
                "--language-param",
                "model=fake-vlm",
                "--max-frames",
                "2",
                "--out",
                str(tmp_path / "out"),
                "--no-plots",
                "--no-progress",
                "--quiet",
            ]
        )
    assert code == 0 and len(server.requests) > 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["inputs"]["language_backend"].startswith("openai")
    assert "answers" in report["metrics"]
