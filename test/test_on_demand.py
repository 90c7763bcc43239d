"""Proposals on demand as a user runs them: `chatrex-ros up --on-demand --grasp` (installed, outside the source
tree), a 30 Hz camera with depth in its own process, a proposer slower than the frame interval.

The graph computes no proposals while nobody asks; each query gets proposals for exactly its frame, answered
with that frame's header, and the grasp node still finds the frame's depth.

Test doubles (named as such): the camera driver (test/camera_process.py), a proposal model that sleeps
(test/doubles/slow_proposer.py) and a language model that answers from a script (test/doubles/scripted_model.py).
"""

from __future__ import annotations

import time

import pytest
from builtin_interfaces.msg import Time
from ros_harness import RosClient, call_service, wait_until
from std_srvs.srv import SetBool
from test_robot_path import _diagnostics, ask_many, graph_args
from user_path import camera, up, workdir

from chatrex_ros.core.answering import AnswerStatus
from chatrex_ros.core.stamps import stamp_to_ns
from chatrex_ros.msg import Answer, GraspTarget, ProposalArray, Query

pytestmark = pytest.mark.ros


def test_up_on_demand_computes_proposals_only_for_the_frames_queries_use() -> None:
    cwd = workdir()
    topic, depth = "/od/color/image_raw", "/od/aligned_depth_to_color/image_raw"
    infos = ("/od/aligned_depth_to_color/camera_info", "/od/color/camera_info")
    client = RosClient("on_demand_client")
    graph = up(
        cwd,
        *graph_args(topic, 0.3, "--on-demand", "--grasp", "--depth", depth, "--depth-info", infos[0]),
        "--color-info",
        infos[1],
    )
    try:
        proposals = client.subscribe(ProposalArray, "/chatrex/proposals", depth=100)
        answers = client.subscribe(Answer, "/chatrex/answer", depth=100)
        targets = client.subscribe(GraspTarget, "/chatrex/grasp_target", depth=100)
        with camera(cwd, topic, 30, depth=(depth, *infos)) as driver:
            driver.wait_for("camera: 50 frames")
            wait_until(lambda: int(_diagnostics(client, "language_node")["images_received"]) > 30, 20, "frames in")
            time.sleep(6.0)  # past input_silence_s (5 s): no proposals while nobody asks is no fault
            assert list(proposals) == [], "proposals were computed while no query asked"
            idle = _diagnostics(client, "language_node")
            assert "condition.no_proposals" not in idle, idle

            by_id = ask_many(client, 4, 1.0, answers)  # "newest": the newest frame the language node holds
            assert all(a.status == AnswerStatus.OK for a in by_id.values()), [a.status_message for a in by_id.values()]
            computed = [stamp_to_ns(p.header.stamp) for p in list(proposals)]
            answered = [stamp_to_ns(a.header.stamp) for a in by_id.values()]
            assert sorted(computed) == sorted(answered), "one proposal run per query, for its own frame"
            for answer in by_id.values():
                assert stamp_to_ns(answer.proposals_stamp) == stamp_to_ns(answer.header.stamp)
                assert answer.header.frame_id == "camera_color_optical_frame"

            # A follow-up about an answered frame reuses its proposals: no new run.
            first = next(iter(by_id.values()))
            publisher = client.publisher(Query, "/chatrex/query")
            client.wait_for_subscribers(publisher)
            publisher.publish(Query(id="follow_up", task="detect", text="thing", image_stamp=first.header.stamp))
            wait_until(lambda: any(a.query_id == "follow_up" for a in list(answers)), 20, "the follow-up's answer")
            follow_up = next(a for a in list(answers) if a.query_id == "follow_up")
            assert follow_up.status == AnswerStatus.OK and follow_up.header.stamp == first.header.stamp
            time.sleep(1.0)
            assert len(proposals) == len(computed), "the follow-up recomputed proposals"

            wait_until(lambda: {t.query_id for t in list(targets)} >= set(by_id), 20, "a grasp target per answer")
            for target in [t for t in list(targets) if t.query_id in by_id]:
                assert target.valid, f"{target.reason}\n{_diagnostics(client, 'grasp_target_node')}\n{graph.output()}"
                assert target.header.stamp == by_id[target.query_id].header.stamp
                assert target.point.z == pytest.approx(0.6, abs=0.01)  # the near box of the depth double
        status = _diagnostics(client, "proposal_node")
        assert status["mode"] == "on_demand" and int(status["requests"]) >= len(by_id)
        assert int(status["requests_unmet"]) == 0
    finally:
        client.close()
        assert graph.stop() == 0, graph.output()


def test_a_request_the_proposer_cannot_meet_is_answered_with_the_reason() -> None:
    """A language node in on-demand mode beside a continuous proposer: it says what to set, nothing hangs."""
    cwd = workdir()
    topic = "/od_mismatch/image_raw"
    client = RosClient("on_demand_mismatch")
    graph = up(
        cwd,
        *graph_args(topic, 0.3, "--set", "language_node.proposals_on_demand=true"),
        "--set",
        # A continuous proposer that runs once in 50 s: its first run is over before the query (sleep below), its
        # second long after the answer, so no periodic run can happen to be on the frame the query requests.
        "proposal_node.max_rate_hz=0.02",
        "--set",
        "language_node.pairing_wait_s=1.5",
    )
    try:
        answers = client.subscribe(Answer, "/chatrex/answer", depth=50)
        with camera(cwd, topic, 30) as driver:
            driver.wait_for("camera: 50 frames")
            time.sleep(6.0)  # the capped proposer's first run is over
            publisher = client.publisher(Query, "/chatrex/query")
            client.wait_for_subscribers(publisher)
            publisher.publish(Query(id="mismatch", task="detect", text="thing", image_stamp=Time()))
            wait_until(lambda: any(a.query_id == "mismatch" for a in list(answers)), 20, "an answer")
        answer = next(a for a in list(answers) if a.query_id == "mismatch")
        assert answer.status == AnswerStatus.NO_PROPOSALS and "mode:=on_demand" in answer.status_message
        status = _diagnostics(client, "proposal_node")
        assert int(status["requests_unmet"]) >= 1
        assert "mode is continuous" in graph.output() and "mode:=on_demand" in graph.output()
    finally:
        client.close()
        assert graph.stop() == 0, graph.output()


def _switch(client: RosClient, on: bool) -> SetBool.Response:
    return call_service(client, SetBool, "/chatrex/enable", SetBool.Request(data=on))


def test_a_switched_off_on_demand_proposer_says_so_at_once_and_serves_again_when_switched_on() -> None:
    """`up --on-demand`, the enable service off: a query is told the proposer is off (not "none came" after its
    wait, not a QoS hint), and answered once it is switched on again."""
    cwd = workdir()
    topic = "/od_off/image_raw"
    client = RosClient("on_demand_switched_off")
    graph = up(cwd, *graph_args(topic, 0.3, "--on-demand"), "--set", "language_node.pairing_wait_s=10.0")
    try:
        answers = client.subscribe(Answer, "/chatrex/answer", depth=50)
        with camera(cwd, topic, 30) as driver:
            driver.wait_for("camera: 50 frames")
            assert _switch(client, False).message == "proposals off"
            asked = time.monotonic()
            off = ask_many(client, 1, 0.0, answers)
            waited = time.monotonic() - asked
            (answer,) = off.values()
            assert answer.status == AnswerStatus.NO_PROPOSALS, answer.status_message
            assert "switched off" in answer.status_message and "enable service" in answer.status_message
            assert waited < 5.0, f"told after {waited:.1f} s: the reply, not pairing_wait_s (10 s), must answer it"
            assert stamp_to_ns(answer.header.stamp) > 0, "placed at the frame it was about, though not answered"
            assert answer.header.frame_id == "camera_color_optical_frame"
            language = _diagnostics(client, "language_node")
            assert "condition.no_proposals" not in language, "the proposer answered: no silence to warn of"

            assert _switch(client, True).message == "proposals on"
            (again,) = ask_many(client, 1, 0.0, answers).values()
            assert again.status == AnswerStatus.OK, again.status_message
        status = _diagnostics(client, "proposal_node")
        assert int(status["requests_unmet"]) == 1 and "problem.request_while_disabled" in status
    finally:
        client.close()
        assert graph.stop() == 0, graph.output()
