"""proposal_node's rate cap and on/off switch over real DDS, with a 20 Hz camera.

The proposer is a test double that takes 20 ms a frame (test/doubles/slow_proposer.py), so uncapped it keeps up
with the camera and any drop in the proposal rate is the node's own doing.
"""

from __future__ import annotations

import threading
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from ros_harness import (
    NodeProcess,
    RosClient,
    call_service,
    get_parameters,
    header,
    set_parameters,
    textured_image,
    wait_until,
)
from sensor_msgs.msg import Image
from std_srvs.srv import SetBool

from chatrex_ros.msg import ProposalArray
from chatrex_ros.ros.conversions import image_msg

pytestmark = pytest.mark.ros

NAMESPACE = "/rate"
CAMERA_HZ = 20.0


class Camera:
    """TEST DOUBLE of a camera driver: publishes a fresh stamp at CAMERA_HZ until stopped."""

    def __init__(self, publisher) -> None:
        self._publisher = publisher
        self._frame = textured_image(120, 160, seed=4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stamp_ns = 1_700_000_000_000_000_000
        while not self._stop.wait(1.0 / CAMERA_HZ):
            stamp_ns += int(1e9 / CAMERA_HZ)
            self._publisher.publish(image_msg(self._frame, "rgb8", header(stamp_ns)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def graph():
    node = NodeProcess(
        "chatrex_ros.ros.proposal_node",
        "proposal_node",
        params={
            "backend": "python:doubles.slow_proposer:SlowProposer",
            "backend_options": '{"delay_s": 0.02}',
            "warmup": False,
            "max_rate_hz": 2.0,
        },
        namespace=NAMESPACE,
    )
    client = RosClient("rate_client")
    camera = None
    try:
        image_pub = client.publisher(Image, f"{NAMESPACE}/image", reliable=False, depth=1)
        proposals = client.subscribe(ProposalArray, f"{NAMESPACE}/proposals")
        diagnostics = client.subscribe(DiagnosticArray, "/diagnostics")
        wait_until(lambda: image_pub.get_subscription_count() > 0 or not node.alive(), 30, "proposal_node")
        assert node.alive(), node.output()
        camera = Camera(image_pub)
        wait_until(lambda: len(proposals) > 0 or not node.alive(), 30, "first proposals")
        assert node.alive(), node.output()
        yield client, proposals, diagnostics, node
    finally:
        if camera is not None:
            camera.stop()
        client.close()
        assert node.stop() == 0, node.output()


def _rate(proposals: list, seconds: float) -> float:
    start = len(proposals)
    time.sleep(seconds)
    return (len(proposals) - start) / seconds


def _node_status(diagnostics: list) -> DiagnosticStatus | None:
    for array in reversed(list(diagnostics)):
        for entry in array.status:
            if NAMESPACE.strip("/") in entry.name:
                return entry
    return None


def _enable(client: RosClient, on: bool) -> SetBool.Response:
    return call_service(client, SetBool, f"{NAMESPACE}/enable", SetBool.Request(data=on))


def test_max_rate_hz_caps_the_proposal_rate_and_changes_at_runtime(graph) -> None:
    client, proposals, _, node = graph
    capped = _rate(proposals, 4.0)
    assert 1.0 <= capped <= 2.6, f"{capped:.2f} proposals/s with max_rate_hz=2 and a 20 Hz camera"
    assert set_parameters(client, f"{NAMESPACE}/proposal_node", max_rate_hz=0.0)[0].successful
    try:
        uncapped = _rate(proposals, 3.0)
        assert uncapped >= 3 * capped, f"uncapped {uncapped:.2f}/s vs capped {capped:.2f}/s"
        refused = set_parameters(client, f"{NAMESPACE}/proposal_node", max_rate_hz=-1.0)[0]
        assert not refused.successful and "max_rate_hz" in refused.reason
    finally:
        assert set_parameters(client, f"{NAMESPACE}/proposal_node", max_rate_hz=2.0)[0].successful
    newest = proposals[-1].header.stamp
    assert newest.sec > 0 and node.alive()


def test_the_enable_service_switches_proposals_off_and_on(graph) -> None:
    client, proposals, diagnostics, node = graph
    reply = _enable(client, False)
    assert reply.success and "off" in reply.message
    try:
        time.sleep(0.6)  # a frame already in the backend may still come out
        assert _rate(proposals, 2.0) == 0.0
        assert get_parameters(client, f"{NAMESPACE}/proposal_node", "enabled") == {"enabled": False}

        def disabled_reported() -> bool:
            status = _node_status(diagnostics)
            values = {kv.key: kv.value for kv in status.values} if status else {}
            return status is not None and status.level == DiagnosticStatus.WARN and "condition.disabled" in values

        wait_until(disabled_reported, 10, "WARN disabled on /diagnostics")
        values = {kv.key: kv.value for kv in _node_status(diagnostics).values}
        assert int(values["ignored_while_disabled"]) > 0
    finally:
        assert _enable(client, True).success
    assert get_parameters(client, f"{NAMESPACE}/proposal_node", "enabled") == {"enabled": True}
    start = len(proposals)
    wait_until(lambda: len(proposals) > start, 10, "proposals after switching back on")
    assert node.alive()
