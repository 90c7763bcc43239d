"""The ``ask`` action over real DDS: feedback stages, the result, cancel (queued and running), a full queue.

The language model is the scripted TEST DOUBLE (``doubles.scripted_model``): "slow" takes 3 s, and its
optional ``stop()`` ends that early (as a backend that can stop a generation does).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.action import ActionClient
from ros_harness import NodeProcess, RosClient, header, textured_image, wait_until
from sensor_msgs.msg import Image

from chatrex_ros.action import Ask
from chatrex_ros.core.stamps import format_stamp
from chatrex_ros.core.types import Proposals
from chatrex_ros.msg import Answer, ProposalArray, Query
from chatrex_ros.ros.conversions import image_msg, proposals_to_msg

pytestmark = pytest.mark.ros

BOXES = np.array([[10, 10, 50, 60], [100, 20, 180, 90], [30, 100, 90, 170]], np.float32)
SCRIPT = {
    "answers_by_word": {
        "cup": "<ground>cup</ground><objects><obj2><obj0></objects>",
        "slow": "<ground>slow thing</ground><objects><obj1></objects>",
    },
    "sleep_by_word": {"slow": 3.0},
}
STAMP = 1_700_000_200_000_000_000
FEEDBACK = Ask.Feedback


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    record = tmp_path_factory.mktemp("model") / "calls.jsonl"
    node = NodeProcess(
        "chatrex_ros.ros.language_node",
        "language_node",
        params={
            "language_backend": "python:doubles.scripted_model:ScriptedModel",
            "backend_options": json.dumps(dict(SCRIPT, record_path=str(record))),
            "queue_size": 2,
            "pairing_wait_s": 0.5,
            "image_qos.reliability": "reliable",
            "image_qos.depth": 10,
        },
    )
    client = RosClient("ask_action_client")
    try:
        image_pub = client.publisher(Image, "image")
        proposals_pub = client.publisher(ProposalArray, "proposals")
        answers = client.subscribe(Answer, "answer")
        action = ActionClient(client.node, Ask, "ask")
        assert action.wait_for_server(timeout_sec=30), node.output()
        for publisher in (image_pub, proposals_pub):
            client.wait_for_subscribers(publisher, timeout=30)
        client.wait_for_publishers("answer")
        image_pub.publish(image_msg(textured_image(240, 320), "rgb8", header(STAMP)))
        proposals = Proposals(boxes=BOXES, scores=np.array([0.9, 0.8, 0.7], np.float32), backend="test")
        proposals_pub.publish(proposals_to_msg(proposals, header(STAMP), 320, 240, "fine"))
        yield client, action, answers, node, record
    finally:
        client.close()
        assert node.stop() == 0, node.output()


class Goal:
    """One sent goal: its handle, the feedback it got, its result (from the client's own thread)."""

    def __init__(self, action: ActionClient, query: Query) -> None:
        self.feedback: list[Ask.Feedback] = []
        future = action.send_goal_async(Ask.Goal(query=query), feedback_callback=self._on_feedback)
        wait_until(future.done, 20, f"goal {query.id} accepted")
        self.handle = future.result()
        assert self.handle.accepted
        self.result_future = self.handle.get_result_async()

    def _on_feedback(self, message) -> None:
        self.feedback.append(message.feedback)

    def stages(self) -> list[str]:
        names = [f.stage_name for f in self.feedback]
        return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]

    def result(self, timeout: float = 20.0):
        wait_until(self.result_future.done, timeout, "the goal's result")
        return self.result_future.result()


def query(query_id: str, text: str) -> Query:
    return Query(id=query_id, task="detect", text=text, image_stamp=header(STAMP).stamp, timeout_s=20.0)


def test_a_goal_reports_its_stages_and_ends_with_the_answer(graph) -> None:
    _, action, answers, *_ = graph
    goal = Goal(action, query("act-ok", "slow"))
    outcome = goal.result()
    assert outcome.status == 4  # GoalStatus.STATUS_SUCCEEDED
    answer = outcome.result.answer
    assert answer.status == Answer.STATUS_OK and answer.query_id == "act-ok"
    assert [d.proposal_index for d in answer.detections] == [1]
    assert goal.stages() == ["queued", "waiting_for_frame", "generating"]
    generating = [f for f in goal.feedback if f.stage == FEEDBACK.STAGE_GENERATING]
    assert len(generating) >= 2, "feedback keeps coming (about once a second) while it generates"
    assert generating[-1].elapsed_s > generating[0].elapsed_s and all(f.query_id == "act-ok" for f in goal.feedback)
    wait_until(lambda: any(a.query_id == "act-ok" for a in list(answers)), 10, "the answer on the topic too")


def test_cancelling_a_queued_goal_ends_it_at_once_and_nothing_is_published(graph) -> None:
    _, action, answers, _, record = graph
    running = Goal(action, query("act-first", "slow"))
    wait_until(lambda: "generating" in running.stages(), 10, "the first goal to run")
    queued = Goal(action, query("act-queued", "cup"))
    wait_until(lambda: any(f.queue_position == 1 for f in queued.feedback), 10, "the second goal's queue position")
    started = time.monotonic()
    cancel = queued.handle.cancel_goal_async()
    outcome = queued.result(10)
    assert time.monotonic() - started < 1.0, "a queued goal is cancelled without waiting for the running one"
    assert cancel.done() and len(cancel.result().goals_canceling) == 1
    assert outcome.status == 5  # GoalStatus.STATUS_CANCELED
    assert outcome.result.answer.status == Answer.STATUS_CANCELED
    assert running.result(20).result.answer.status == Answer.STATUS_OK  # the one before it is untouched
    time.sleep(0.5)
    assert not any(a.query_id == "act-queued" for a in list(answers))
    prompts = [json.loads(line).get("prompt", "") for line in record.read_text().splitlines()]
    assert not any("cup" in p for p in prompts[-2:]), "the cancelled query never reached the model"


def test_cancelling_a_running_goal_stops_the_model_and_publishes_nothing_late(graph) -> None:
    _, action, answers, _, record = graph
    goal = Goal(action, query("act-running", "slow"))
    wait_until(lambda: "generating" in goal.stages(), 10, "the goal to run")
    started = time.monotonic()
    goal.handle.cancel_goal_async()
    outcome = goal.result(10)
    assert time.monotonic() - started < 1.0
    assert outcome.status == 5 and outcome.result.answer.status == Answer.STATUS_CANCELED
    wait_until(lambda: '"stopped": true' in record.read_text(), 5, "the backend's stop() to be called")
    follow_up = Goal(action, query("act-after", "cup"))  # the model is free again
    assert follow_up.result().result.answer.status == Answer.STATUS_OK
    time.sleep(3.5)  # past the generation's full length: its answer would have been published by now
    assert not any(a.query_id == "act-running" for a in list(answers))


def test_a_goal_beyond_a_full_queue_is_aborted_with_busy(graph) -> None:
    _, action, answers, *_ = graph
    goals = [Goal(action, query(f"act-flood-{i}", "slow")) for i in range(4)]
    outcomes = [goal.result(40) for goal in goals]
    statuses = [o.result.answer.status for o in outcomes]
    assert Answer.STATUS_BUSY in statuses, statuses
    for outcome in outcomes:
        busy = outcome.result.answer.status == Answer.STATUS_BUSY
        assert outcome.status == (6 if busy else 4)  # ABORTED with the reason, or SUCCEEDED
        if busy:
            assert "queue full" in outcome.result.answer.status_message
    # The topic saw the same answers, one per goal.
    for i in range(4):
        assert sum(a.query_id == f"act-flood-{i}" for a in list(answers)) == 1


def ask_command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "chatrex-ros"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "chatrex_ros"]
    return [*command, "ask", "--action", "--namespace", "/", "--stamp", format_stamp(STAMP), *args]


def test_ask_cli_with_action_shows_the_stages_and_prints_the_answer(graph) -> None:
    result = subprocess.run(ask_command("slow", "--json"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["status"] == "OK"
    stages = [line.split("] ", 1)[1].split(" ")[0] for line in result.stderr.splitlines() if line.startswith("[")]
    assert stages == ["queued", "waiting_for_frame", "generating"], result.stderr


def test_ctrl_c_on_ask_cli_with_action_cancels_the_goal(graph) -> None:
    _, _, answers, *_ = graph
    process = subprocess.Popen(ask_command("slow", "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    assert process.stderr is not None
    while not any("generating" in line for line in seen):
        line = process.stderr.readline()
        assert line, "".join(seen)
        seen.append(line)
    process.send_signal(signal.SIGINT)
    output, errors = process.communicate(timeout=30)
    assert output, errors
    answer = json.loads(output)
    assert process.returncode == 1 and answer["status"] == "CANCELED", output + errors
    time.sleep(3.5)  # the generation's full length: a late answer would be on the topic by now
    assert not any(a.query_id == answer["query_id"] for a in list(answers))
