"""proposal_node and language_node as managed nodes, driven through the standard lifecycle services over DDS.

A supervisor (nav2_lifecycle_manager, launch's lifecycle events) calls ``<node>/change_state`` and reads
``<node>/get_state``; these tests do the same with ``autostart:=false``: configure loads the model (memory grows
by the model's), deactivate stops serving (queries answered BUSY with the state, none lost), cleanup frees it
(memory back), and a model that cannot load leaves the node UNCONFIGURED with the reason. The language model is
the scripted TEST DOUBLE (test/doubles/scripted_model.py), holding ``weights_mb`` of resident memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from ros_harness import NodeProcess, RosClient, call_service, header, textured_image, wait_until
from sensor_msgs.msg import Image

from chatrex_ros.core.types import Proposals
from chatrex_ros.msg import Answer, ProposalArray, Query
from chatrex_ros.ros.conversions import image_msg, proposals_to_msg

pytestmark = pytest.mark.ros

WEIGHTS_MB = 300
BOXES = np.array([[10, 10, 50, 60], [100, 20, 180, 90]], np.float32)
SCORES = np.array([0.9, 0.8], np.float32)


def state(client: RosClient, node: str) -> int:
    return call_service(client, GetState, f"/{node}/get_state", GetState.Request(), timeout=20).current_state.id


def transition(client: RosClient, node: str, transition_id: int) -> bool:
    request = ChangeState.Request(transition=Transition(id=transition_id))
    return call_service(client, ChangeState, f"/{node}/change_state", request, timeout=60).success


def resident_mb(process: NodeProcess) -> float:
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def latest_status(diagnostics: list, node: str) -> dict[str, str]:
    wait_until(lambda: any(s.name.endswith(node) for a in list(diagnostics) for s in a.status), 10, "diagnostics")
    status = [s for a in list(diagnostics) for s in a.status if s.name.endswith(node)][-1]
    return {"level": status.level, "message": status.message, **{kv.key: kv.value for kv in status.values}}


def test_language_node_configure_activate_deactivate_cleanup_through_the_services() -> None:
    options = {"answer": "<ground>thing</ground><objects><obj1></objects>", "weights_mb": WEIGHTS_MB}
    params = {
        "autostart": False,
        "language_backend": "python:doubles.scripted_model:ScriptedModel",
        "backend_options": json.dumps(options),
        "image_qos.reliability": "reliable",
        "pairing_wait_s": 1.0,
        "input_silence_s": 0.5,
    }
    with NodeProcess("chatrex_ros.ros.language_node", "language_node", params=params, namespace="/managed") as node:
        client = RosClient("lifecycle_client")
        try:
            answers = client.subscribe(Answer, "/managed/answer")
            diagnostics = client.subscribe(DiagnosticArray, "/diagnostics")
            queries = client.publisher(Query, "/managed/query")
            images = client.publisher(Image, "/managed/image")
            proposals = client.publisher(ProposalArray, "/managed/proposals")
            wait_until(lambda: queries.get_subscription_count() > 0, 30, "language_node")
            name = "managed/language_node"

            def ask(query_id: str, stamp: int = 0) -> Answer:
                query = Query(id=query_id, task="detect", text="thing")
                query.image_stamp.sec, query.image_stamp.nanosec = divmod(stamp, 10**9)
                queries.publish(query)
                wait_until(lambda: any(a.query_id == query_id for a in list(answers)), 20, f"answer {query_id}")
                return next(a for a in list(answers) if a.query_id == query_id)

            assert state(client, name) == State.PRIMARY_STATE_UNCONFIGURED
            unconfigured = ask("before-configure")
            assert (
                unconfigured.status == Answer.STATUS_BUSY and "configures and activates" in unconfigured.status_message
            )
            time.sleep(1.5)  # past input_silence_s: a node kept idle has no camera yet, and says only that
            status = latest_status(diagnostics, "language_node")
            assert status["lifecycle"] == "unconfigured" and "condition.not_active" in status
            assert not any(key.startswith("condition.no_") for key in status), status
            before = resident_mb(node)

            assert transition(client, name, Transition.TRANSITION_CONFIGURE)
            assert state(client, name) == State.PRIMARY_STATE_INACTIVE
            loaded = resident_mb(node)
            assert loaded - before > 0.8 * WEIGHTS_MB, f"{before:.0f} -> {loaded:.0f} MB: the model was loaded"
            inactive = ask("while-inactive")
            assert inactive.status == Answer.STATUS_BUSY and "inactive" in inactive.status_message

            assert transition(client, name, Transition.TRANSITION_ACTIVATE)
            assert state(client, name) == State.PRIMARY_STATE_ACTIVE
            stamp = 1_700_000_200_000_000_000
            images.publish(image_msg(textured_image(240, 320), "rgb8", header(stamp)))
            frame = Proposals(boxes=BOXES, scores=SCORES, backend="test")
            proposals.publish(proposals_to_msg(frame, header(stamp), 320, 240, "fine"))
            served = ask("while-active", stamp)
            assert served.status == Answer.STATUS_OK and [d.proposal_index for d in served.detections] == [1]

            assert transition(client, name, Transition.TRANSITION_DEACTIVATE)
            assert state(client, name) == State.PRIMARY_STATE_INACTIVE
            paused = ask("after-deactivate", stamp)
            assert paused.status == Answer.STATUS_BUSY and "inactive" in paused.status_message

            assert transition(client, name, Transition.TRANSITION_CLEANUP)
            assert state(client, name) == State.PRIMARY_STATE_UNCONFIGURED
            wait_until(lambda: resident_mb(node) < loaded - 0.8 * WEIGHTS_MB, 10, "the model's memory released")

            assert transition(client, name, Transition.TRANSITION_CONFIGURE), "configurable again after cleanup"
            assert transition(client, name, Transition.TRANSITION_ACTIVATE)
            assert ask("reactivated", stamp).status == Answer.STATUS_OK
            assert node.alive()
        finally:
            client.close()


def test_a_model_that_cannot_load_leaves_the_node_unconfigured_with_the_reason(tmp_path) -> None:
    params = {
        "autostart": False,
        "language_backend": "chatrex",
        "model_path": str(tmp_path / "no_such_checkpoint"),
        "trust_remote_code": True,
        "device": "cpu",
    }
    with NodeProcess("chatrex_ros.ros.language_node", "language_node", params=params, namespace="/broken") as node:
        client = RosClient("lifecycle_failure")
        try:
            diagnostics = client.subscribe(DiagnosticArray, "/diagnostics")
            name = "broken/language_node"
            assert not transition(client, name, Transition.TRANSITION_CONFIGURE)
            assert state(client, name) == State.PRIMARY_STATE_UNCONFIGURED
            wait_until(
                lambda: "condition.configure_failed" in latest_status(diagnostics, "broken/language_node"), 10, "ERROR"
            )
            status = latest_status(diagnostics, "broken/language_node")
            assert (
                status["level"] == DiagnosticStatus.ERROR
                and "no_such_checkpoint" in status["condition.configure_failed"]
            )
            assert "configure failed" in node.output() and node.alive(), "the node keeps running, unconfigured"
        finally:
            client.close()


def test_proposal_node_serves_only_while_active() -> None:
    params = {"autostart": False, "selective_search_long_side": 160, "image_qos.reliability": "reliable"}
    with NodeProcess("chatrex_ros.ros.proposal_node", "proposal_node", params=params, namespace="/managed_p") as node:
        client = RosClient("lifecycle_proposals")
        try:
            out = client.subscribe(ProposalArray, "/managed_p/proposals")
            diagnostics = client.subscribe(DiagnosticArray, "/diagnostics")
            images = client.publisher(Image, "/managed_p/image")
            wait_until(lambda: images.get_subscription_count() > 0, 30, "proposal_node")
            name = "managed_p/proposal_node"

            def frame(stamp: int) -> None:
                images.publish(image_msg(textured_image(120, 160, seed=stamp % 7), "rgb8", header(stamp)))

            frame(1)
            assert transition(client, name, Transition.TRANSITION_CONFIGURE)
            assert transition(client, name, Transition.TRANSITION_ACTIVATE)
            frame(2)
            wait_until(lambda: any(p.header.stamp.nanosec == 2 for p in list(out)), 30, "proposals while active")
            assert transition(client, name, Transition.TRANSITION_DEACTIVATE)
            frame(3)
            wait_until(
                lambda: int(latest_status(diagnostics, "managed_p/proposal_node")["ignored_while_inactive"]) >= 2,
                10,
                "frames counted as ignored",
            )
            assert {p.header.stamp.nanosec for p in list(out)} == {2}, "nothing computed while not active"
            assert transition(client, name, Transition.TRANSITION_CLEANUP)
            wait_until(
                lambda: latest_status(diagnostics, "managed_p/proposal_node")["lifecycle"] == "unconfigured",
                10,
                "state",
            )
            assert "not loaded" in latest_status(diagnostics, "managed_p/proposal_node")["backend"]
            assert node.alive()
        finally:
            client.close()
