"""Hostile input, bursts and faults over real DDS: the node stays alive and every query gets exactly one answer.

language_node runs in its own process with the scripted TEST DOUBLE of the language model (test/doubles);
the node's queue, deadlines, validation and the deferred ``ask`` service run for real.
"""

from __future__ import annotations

import json
import math
import signal
import struct
import time
import zlib
from collections import Counter

import numpy as np
import pytest
from ros_harness import NodeProcess, RosClient, header, set_parameters, textured_image, wait_until
from sensor_msgs.msg import CompressedImage, Image

from chatrex_ros.core.types import Proposals
from chatrex_ros.msg import Answer, ProposalArray, Query
from chatrex_ros.ros.conversions import compressed_image_msg, image_msg, proposals_to_msg
from chatrex_ros.srv import Ask

pytestmark = pytest.mark.ros

BOXES = np.array([[10, 10, 50, 60], [100, 20, 180, 90], [30, 100, 90, 170]], np.float32)
SCORES = np.array([0.9, 0.8, 0.6], np.float32)
SCRIPT = {
    "answers_by_word": {"cup": "<ground>cup</ground><objects><obj2><obj150><obj0></objects>"},
    "sleep_by_word": {"slow": 1.5, "stuck": 120.0},
    "raise_by_word": {"exiting": "SystemExit", "interrupting": "KeyboardInterrupt", "hungry": "MemoryError"},
}
STAMP = 1_700_000_200_000_000_000


def start_node(namespace: str = "", **params):
    """language_node with the scripted model; tests that start their own node give it a namespace of its own, so
    the module's shared node (same topics in the root namespace) never takes their messages."""
    return NodeProcess(
        "chatrex_ros.ros.language_node",
        "language_node",
        namespace=namespace,
        params={
            "language_backend": "python:doubles.scripted_model:ScriptedModel",
            "backend_options": json.dumps(SCRIPT),
            "queue_size": 2,
            "pairing_wait_s": 0.5,
            "image_qos.reliability": "reliable",
            "image_qos.depth": 10,
            **params,
        },
    )


def connect_with_one_frame(client: RosClient, node: NodeProcess, namespace: str = "") -> dict:
    """Publishers on the node's inputs, matched, and one answerable frame (image + proposals) at STAMP."""
    pubs = {
        "image": client.publisher(Image, f"{namespace}/image".lstrip("/")),
        "proposals": client.publisher(ProposalArray, f"{namespace}/proposals".lstrip("/")),
        "query": client.publisher(Query, f"{namespace}/query".lstrip("/"), depth=1000),
    }
    for publisher in pubs.values():
        wait_until(lambda p=publisher: p.get_subscription_count() > 0 or not node.alive(), 30, "language_node")
    pubs["image"].publish(image_msg(textured_image(240, 320), "rgb8", header(STAMP)))
    proposals = Proposals(boxes=BOXES, scores=SCORES, backend="test")
    pubs["proposals"].publish(proposals_to_msg(proposals, header(STAMP), 320, 240, "fine"))
    return pubs


@pytest.fixture(scope="module")
def graph():
    node = start_node()
    client = RosClient("hostile_client")
    try:
        answers = client.subscribe(Answer, "answer", depth=1000)
        pubs = connect_with_one_frame(client, node)
        client.wait_for_publishers("answer")
        yield client, pubs, answers, node
    finally:
        client.close()
        assert node.stop() == 0, node.output()


def answers_to(answers, query_id: str) -> list[Answer]:
    return [a for a in list(answers) if a.query_id == query_id]


def ask_topic(graph, query: Query, timeout: float = 20.0) -> Answer:
    _, pubs, answers, node = graph
    pubs["query"].publish(query)
    wait_until(lambda: answers_to(answers, query.id), timeout, f"answer to {query.id}")
    time.sleep(0.1)  # a second answer would have arrived by now
    matching = answers_to(answers, query.id)
    assert len(matching) == 1, f"exactly one answer per query, got {len(matching)}"
    assert node.alive(), node.output()
    return matching[0]


def ask_service(graph, query: Query, timeout: float = 20.0) -> Answer:
    client, _, _, node = graph
    service = client.node.create_client(Ask, "ask")
    try:
        assert service.wait_for_service(timeout_sec=10)
        future = service.call_async(Ask.Request(query=query))
        wait_until(future.done, timeout, f"Ask response to {query.id}")
        assert node.alive(), node.output()
        return future.result().answer
    finally:
        client.node.destroy_client(service)


BAD_NUMBERS = [
    ("timeout_inf", {"timeout_s": math.inf}),
    ("timeout_nan", {"timeout_s": math.nan}),
    ("timeout_huge", {"timeout_s": 1e10}),
    ("timeout_negative", {"timeout_s": -1.0}),
    ("tokens_huge", {"max_new_tokens": 4294967295}),
    ("tokens_over_cap", {"max_new_tokens": 8193}),
]


@pytest.mark.parametrize("how", ["topic", "service"])
@pytest.mark.parametrize(("name", "fields"), BAD_NUMBERS, ids=[name for name, _ in BAD_NUMBERS])
def test_out_of_range_numbers_are_bad_queries_and_the_node_lives(graph, how, name, fields) -> None:
    query = Query(id=f"{name}-{how}", task="detect", text="cup", **fields)
    answer = (ask_topic if how == "topic" else ask_service)(graph, query)
    assert answer.status == Answer.STATUS_BAD_QUERY, answer.status_message
    assert ask_topic(graph, Query(id=f"after-{name}-{how}", task="detect", text="cup")).status == Answer.STATUS_OK


def test_an_invalid_stamp_is_a_bad_query(graph) -> None:
    query = Query(id="bad-stamp", task="detect", text="cup")
    query.image_stamp.nanosec = 2_000_000_000
    answer = ask_topic(graph, query)
    assert answer.status == Answer.STATUS_BAD_QUERY and "nanosec" in answer.status_message


@pytest.mark.parametrize("word", ["exiting", "interrupting", "hungry"])
def test_any_exception_from_the_backend_is_a_model_error_and_the_worker_lives(graph, word) -> None:
    answer = ask_topic(graph, Query(id=f"raise-{word}", task="detect", text=word))
    assert answer.status == Answer.STATUS_MODEL_ERROR
    assert "scripted" in answer.status_message
    follow_up = [ask_topic(graph, Query(id=f"{word}-then-{i}", task="detect", text="cup")) for i in range(6)]
    assert [a.status for a in follow_up] == [Answer.STATUS_OK] * 6


def test_one_out_of_range_index_keeps_the_groups_valid_ones(graph) -> None:
    answer = ask_topic(graph, Query(id="obj150", task="detect", text="cup"))
    assert answer.status == Answer.STATUS_OK
    assert [d.proposal_index for d in answer.detections] == [2, 0]
    assert "<obj150>" in answer.status_message and "3 proposals" in answer.status_message


def _raw_proposals(boxes: list[list[float]], scores: list[float], stamp: int, width: int = 320) -> ProposalArray:
    msg = ProposalArray(header=header(stamp), image_width=width, image_height=240)
    msg.boxes = [float(v) for box in boxes for v in box]
    msg.scores = [float(v) for v in scores]
    return msg


GOOD_BOX = [10.0, 10.0, 50.0, 60.0]
BAD_LISTS = [
    ("inverted", [[50.0, 10.0, 10.0, 60.0]], [0.9], "inverted"),
    ("huge", [GOOD_BOX, [0.0, 0.0, 1e30, 1e30]], [0.9, 0.8], "far outside"),
    ("far_away", [[-5000.0, 10.0, -4000.0, 60.0]], [0.9], "far outside"),
    ("unsorted", [GOOD_BOX, GOOD_BOX, GOOD_BOX], [0.5, 0.9, 0.1], "descending"),
    ("nan_box", [[10.0, math.nan, 50.0, 60.0]], [0.9], "non-finite"),
    ("inf_score", [GOOD_BOX], [math.inf], "not finite"),
    ("mismatched", [GOOD_BOX, GOOD_BOX], [0.9], "2 proposal boxes but 1 scores"),
    ("too_many", [GOOD_BOX] * 101, [0.5] * 101, "101 proposals"),
]


@pytest.mark.parametrize(("name", "boxes", "scores", "reason"), BAD_LISTS, ids=[case[0] for case in BAD_LISTS])
def test_a_refused_proposal_list_is_named_in_the_answer(graph, name, boxes, scores, reason) -> None:
    """The query about a frame whose proposals were refused is told why, at once, instead of "none came"."""
    _, pubs, _, _ = graph
    stamp = STAMP + 33_000_000 * (1 + [case[0] for case in BAD_LISTS].index(name))  # a frame of its own
    pubs["image"].publish(image_msg(textured_image(240, 320), "rgb8", header(stamp)))
    pubs["proposals"].publish(_raw_proposals(boxes, scores, stamp))
    query = Query(id=f"refused-{name}", task="detect", text="cup")
    query.image_stamp.sec, query.image_stamp.nanosec = divmod(stamp, 1_000_000_000)
    time.sleep(0.2)  # both inputs are reliable: they are in before the query
    answer = ask_topic(graph, query)
    assert answer.status == Answer.STATUS_NO_PROPOSALS
    assert "refused" in answer.status_message and reason in answer.status_message, answer.status_message
    assert ask_topic(graph, Query(id=f"after-refused-{name}", task="detect", text="cup")).status == Answer.STATUS_OK


def test_a_burst_gets_exactly_one_answer_per_query(graph) -> None:
    _, pubs, answers, node = graph
    ids = [f"burst-{i}" for i in range(200)]
    for i, query_id in enumerate(ids):
        pubs["query"].publish(Query(id=query_id, task="detect", text="slow cup" if i < 2 else "cup"))
    wait_until(lambda: all(answers_to(answers, q) for q in ids), 60, "an answer to every query of the burst")
    time.sleep(0.5)
    counts = Counter(a.query_id for a in list(answers) if a.query_id.startswith("burst-"))
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    statuses = Counter(answers_to(answers, q)[0].status for q in ids)
    assert statuses[Answer.STATUS_BUSY] > 0, "a full queue answers BUSY"
    assert set(statuses) <= {Answer.STATUS_OK, Answer.STATUS_BUSY}
    assert node.alive()


def test_concurrent_asks_hold_no_executor_thread(graph) -> None:
    """Ten waiting Ask calls: topic queries are still answered, BUSY comes at once."""
    client, pubs, answers, node = graph
    service = client.node.create_client(Ask, "ask")
    assert service.wait_for_service(timeout_sec=10)
    futures = [
        service.call_async(Ask.Request(query=Query(id=f"ask-{i}", task="detect", text="slow cup"))) for i in range(10)
    ]
    time.sleep(0.3)
    sent = time.monotonic()
    ids = [f"during-asks-{i}" for i in range(20)]
    for query_id in ids:
        pubs["query"].publish(Query(id=query_id, task="detect", text="cup"))
    wait_until(lambda: all(answers_to(answers, q) for q in ids), 10, "topic queries answered during the asks")
    assert time.monotonic() - sent < 5.0
    wait_until(lambda: all(f.done() for f in futures), 60, "every Ask answered")
    statuses = Counter(f.result().answer.status for f in futures)
    assert statuses[Answer.STATUS_BUSY] > 0 and set(statuses) <= {Answer.STATUS_OK, Answer.STATUS_BUSY}
    client.node.destroy_client(service)
    assert node.alive()


def test_a_queued_query_times_out_on_its_own_deadline(graph) -> None:
    _, pubs, answers, _ = graph
    pubs["query"].publish(Query(id="long-generation", task="detect", text="slow cup"))
    time.sleep(0.2)
    sent = time.monotonic()
    pubs["query"].publish(Query(id="short-deadline", task="detect", text="cup", timeout_s=0.4))
    wait_until(lambda: answers_to(answers, "short-deadline"), 10, "the queued query's TIMEOUT")
    took = time.monotonic() - sent
    assert answers_to(answers, "short-deadline")[0].status == Answer.STATUS_TIMEOUT
    assert took < 1.2, f"answered after {took:.2f} s, not when its 0.4 s deadline passed"
    wait_until(lambda: answers_to(answers, "long-generation"), 10, "the long generation")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("trust_remote_code", True),
        ("language_backend", "python:os:system"),
        ("backend_options", '{"trust_remote_code": true}'),
        ("model_path", "/tmp/elsewhere"),
    ],
)
def test_what_decides_which_code_runs_cannot_be_changed_at_runtime(graph, name, value) -> None:
    """Trust, the backend (a plugin is code) and its options are read-only: no `ros2 param set` swaps them."""
    client, _, _, node = graph
    (result,) = set_parameters(client, "/language_node", **{name: value})
    assert not result.successful, f"{name} was changed at runtime"
    assert ask_topic(graph, Query(id=f"after-set-{name}", task="detect", text="cup")).status == Answer.STATUS_OK
    assert node.alive()


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("module", ["chatrex_ros.ros.language_node", "chatrex_ros.ros.proposal_node"])
def test_a_decompression_bomb_header_is_dropped_and_the_node_serves_on(module) -> None:
    node = NodeProcess(module, module.rsplit(".", 1)[1], params={"image_transport": "compressed"}, namespace="/bomb")
    client = RosClient("bomb_client")
    try:
        images = client.publisher(CompressedImage, "bomb/image/compressed")
        wait_until(lambda: images.get_subscription_count() > 0 or not node.alive(), 30, module)
        bomb = compressed_image_msg("png", _png_claiming(40000, 30000), header(STAMP))

        def reported() -> bool:  # best-effort input: resend until one arrives
            images.publish(bomb)
            time.sleep(0.3)
            return "40000x30000" in node.output() or not node.alive()

        wait_until(reported, 30, "the bomb reported")
        assert node.alive(), node.output()
        if module.endswith("proposal_node"):
            proposals = client.subscribe(ProposalArray, "bomb/proposals")
            client.wait_for_publishers("bomb/proposals")
            import cv2

            ok, png = cv2.imencode(".png", textured_image(120, 160))
            assert ok
            good = compressed_image_msg("rgb8; png compressed bgr8", png.tobytes(), header(STAMP + 1))

            def served() -> bool:
                images.publish(good)
                time.sleep(0.3)
                return bool(proposals)

            wait_until(served, 30, "proposals for a good frame after the bomb")
    finally:
        client.close()
        assert node.stop() == 0, node.output()


def test_sigterm_during_a_stuck_generation_exits_fast_and_clean() -> None:
    node = start_node(namespace="/stuck")
    client = RosClient("stuck_client")
    try:
        pubs = connect_with_one_frame(client, node, "/stuck")
        pubs["query"].publish(Query(id="stuck", task="detect", text="stuck cup", timeout_s=600.0))
        time.sleep(1.5)
        start = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        node.process.wait(timeout=10)
        assert time.monotonic() - start < 5.0
        assert node.process.returncode == 0, node.output()
        assert "Traceback" not in node.output(), node.output()
    finally:
        client.close()
        node.stop()


def test_a_worker_that_dies_turns_diagnostics_error_and_exits_70() -> None:
    """Never a live process that silently stopped working: ERROR on /diagnostics, then exit code 70."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from chatrex_ros.ros.node_runtime import EXIT_WORKER_DIED

    node = NodeProcess(
        "chatrex_ros.ros.proposal_node",
        "proposal_node",
        params={"backend": "python:doubles.faulty_proposer:FaultyProposer", "image_qos.reliability": "reliable"},
        namespace="/fault",
    )
    client = RosClient("fault_client")
    try:
        images = client.publisher(Image, "fault/image")
        proposals = client.subscribe(ProposalArray, "fault/proposals")
        diagnostics = client.subscribe(DiagnosticArray, "/diagnostics", depth=100)
        wait_until(lambda: images.get_subscription_count() > 0 or not node.alive(), 30, "proposal_node")
        white = np.full((120, 160, 3), 255, np.uint8)

        def processed(frame: np.ndarray, stamp: int) -> bool:  # resend until the node has matched us
            images.publish(image_msg(frame, "rgb8", header(stamp)))
            time.sleep(0.3)
            return any(p.header.stamp.nanosec == stamp % 1_000_000_000 for p in list(proposals))

        wait_until(lambda: processed(white, STAMP), 30, "proposals for the white frame (the fault armed)")
        time.sleep(0.5)  # the fault is pending; the next frame wakes the worker into it
        images.publish(image_msg(textured_image(120, 160), "rgb8", header(STAMP + 1)))
        node.process.wait(timeout=20)
        assert node.process.returncode == EXIT_WORKER_DIED, node.output()
        assert "worker thread" in node.output() and "InjectedFault" in node.output(), node.output()

        def error_status_seen() -> bool:
            return any(
                status.level == DiagnosticStatus.ERROR and "died" in status.message
                for array in list(diagnostics)
                for status in array.status
            )

        wait_until(error_status_seen, 5, "the ERROR status published before the exit")
    finally:
        client.close()
        node.stop()


def test_a_publisher_cannot_forge_or_flood_log_lines() -> None:
    """Untrusted strings (query id, task, text) reach the log escaped, on one line, cut to a bounded length."""
    node = start_node(namespace="/forge")
    client = RosClient("forging_client")
    forged = "[FATAL] [0.000000000] [language_node]: forged"
    try:
        queries = client.publisher(Query, "forge/query", depth=10)
        answers = client.subscribe(Answer, "forge/answer", depth=10)
        wait_until(lambda: queries.get_subscription_count() > 0 or not node.alive(), 30, "language_node")
        client.wait_for_publishers("forge/answer")
        hostile = f"evil\n{forged}\r\x1b[2J\u2028" + "A" * 20_000
        queries.publish(Query(id=hostile, task=f"nonsense\n{forged}", text=hostile))
        wait_until(lambda: answers_to(answers, hostile), 20, "the BAD_QUERY answer")
        assert answers_to(answers, hostile)[0].status == Answer.STATUS_BAD_QUERY
        wait_until(lambda: "bad_query" in node.output(), 10, "the bad query logged")
        output = node.output()
        assert not any(line.startswith(forged) for line in output.splitlines()), output[-2000:]
        assert "\x1b" not in output and "\u2028" not in output
        assert max(len(line) for line in output.splitlines()) < 1000, "a log line must be bounded"
        assert node.alive()
    finally:
        client.close()
        assert node.stop() == 0, node.output()


@pytest.mark.parametrize(
    ("module", "topic", "budget", "encoding", "dtype"),
    [
        ("chatrex_ros.ros.language_node", "image", "frame_cache_mb", "rgb8", np.uint8),
        ("chatrex_ros.ros.grasp_target_node", "depth", "depth_buffer_mb", "32FC1", np.float32),
    ],
)
def test_frame_buffers_stay_within_their_byte_budget(module, topic, budget, encoding, dtype) -> None:
    """Large frames never grow a node past its budget; one larger than the whole budget is dropped with why."""
    from diagnostic_msgs.msg import DiagnosticArray

    name = module.rsplit(".", 1)[1]
    qos = "image_qos" if topic == "image" else "depth_qos"
    params = {budget: 16, f"{qos}.reliability": "reliable", f"{qos}.depth": 10}
    if topic == "image":
        params["recent_images"] = 8  # 8 x 2.6 MiB: the count alone would allow 21 MiB
    node = NodeProcess(module, name, params=params, namespace="/budget")
    client = RosClient("budget_client")
    try:
        frames = client.publisher(Image, f"budget/{topic}")
        diagnostics = client.subscribe(DiagnosticArray, "/diagnostics", depth=100)
        wait_until(lambda: frames.get_subscription_count() > 0 or not node.alive(), 30, name)
        time.sleep(0.5)
        channels = 3 if encoding == "rgb8" else 1
        frame = np.ones((720, 1280, channels), dtype).squeeze()  # 2.6 MiB (rgb8) / 3.5 MiB (32FC1)
        for i in range(12):
            frames.publish(image_msg(frame, encoding, header(STAMP + i * 33_000_000)))
            time.sleep(0.05)
        huge = np.ones((2200, 2600, channels), dtype).squeeze()  # above 16 MiB by itself
        frames.publish(image_msg(huge, encoding, header(STAMP + 12 * 33_000_000)))
        wait_until(lambda: "too_large" in node.output() or not node.alive(), 20, "the oversize frame reported")
        assert "16.0 MiB" in node.output(), node.output()

        def held_mib() -> float | None:
            for array in reversed(list(diagnostics)):
                for status in array.status:
                    values = {kv.key: kv.value for kv in status.values}
                    key = "frames.held_mib" if topic == "image" else "depth.held_mib"
                    if key in values:
                        return float(values[key])
            return None

        wait_until(lambda: held_mib() is not None and held_mib() > 0, 10, "the held bytes on /diagnostics")
        assert held_mib() <= 16.0
        assert node.alive()
    finally:
        client.close()
        assert node.stop() == 0, node.output()


def test_a_query_while_every_image_is_dropped_is_told_why() -> None:
    """Images that arrive but are all refused (here: above max_image_pixels) are NO_IMAGE with the reason."""
    node = start_node(namespace="/dropped", max_image_pixels=1000)
    client = RosClient("dropped_client")
    try:
        answers = client.subscribe(Answer, "dropped/answer", depth=10)
        pubs = connect_with_one_frame(client, node, "/dropped")
        client.wait_for_publishers("dropped/answer")
        wait_until(lambda: "max_image_pixels" in node.output(), 20, "the dropped image logged")
        pubs["query"].publish(Query(id="while-dropped", task="detect", text="cup"))
        wait_until(lambda: answers_to(answers, "while-dropped"), 20, "the answer")
        answer = answers_to(answers, "while-dropped")[0]
        assert answer.status == Answer.STATUS_NO_IMAGE, answer.status_message
        assert "dropped" in answer.status_message and "max_image_pixels" in answer.status_message
    finally:
        client.close()
        assert node.stop() == 0, node.output()
