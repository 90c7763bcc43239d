"""Custom messages survive a trip through another process over real DDS, field for field.

(float32 fields use values exact in float32: a Python float is only rounded once it is serialised.)
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from geometry_msgs.msg import Point
from ros_harness import RosClient, header, wait_until

from chatrex_ros.msg import Answer, Detection, GraspTarget, Group, ProposalArray, Query

pytestmark = pytest.mark.ros


def _answer() -> Answer:
    msg = Answer(
        header=header(1_700_000_000_123_456_789),
        query_id="q-1",
        task="detect",
        question="Please detect cup in this image. Answer the question with object indexes.",
        text="cup",
        raw_output="<ground>cup</ground><objects><obj2><obj0></objects>",
        num_proposals=3,
        status=Answer.STATUS_OK,
        status_message="",
        queue_ms=1.5,
        model_ms=20.25,
        total_ms=22.0,
    )
    msg.groups = [Group(phrase="cup", indices=[2, 0]), Group(phrase="cup", indices=[1])]
    msg.detections = [
        Detection(proposal_index=2, label="cup", box=[1.0, 2.0, 3.0, 4.0], score=0.5),
        Detection(proposal_index=0, label="cup", box=[5.5, 6.5, 7.5, 8.5], score=0.25),
    ]
    return msg


def _proposals() -> ProposalArray:
    msg = ProposalArray(
        header=header(42),
        image_width=640,
        image_height=480,
        granularity="fine",
        backend="selective_search",
        inference_ms=3.5,
    )
    msg.boxes = np.arange(400, dtype=np.float32).tolist()
    msg.scores = np.linspace(1, 0, 100, dtype=np.float32).tolist()
    return msg


def _query() -> Query:
    msg = Query(
        id="abc",
        task="region_category",
        text="",
        targets=["a", "b; c"],
        indices=[3, 5],
        max_new_tokens=64,
        timeout_s=2.5,
    )
    msg.image_stamp = header(99).stamp
    return msg


def _grasp() -> GraspTarget:
    return GraspTarget(
        header=header(7, "depth_optical"),
        query_id="q",
        label="mug",
        proposal_index=4,
        box=[1.0, 2.0, 3.0, 4.0],
        point=Point(x=0.1, y=-0.2, z=0.8),
        depth_median=0.75,
        depth_spread=0.015625,
        valid_fraction=0.6875,
        width_m=0.125,
        height_m=0.25,
        valid=True,
        reason="",
    )


@pytest.mark.parametrize("factory", [_answer, _proposals, _query, _grasp], ids=lambda f: f.__name__.strip("_"))
def test_custom_message_round_trips_through_another_process(factory) -> None:
    original = factory()
    type_name = f"chatrex_ros/msg/{type(original).__name__}"
    relay = subprocess.Popen([sys.executable, "-m", "relay_process", type_name])
    client = RosClient()
    try:
        received = client.subscribe(type(original), "relay_out")
        publisher = client.publisher(type(original), "relay_in")
        client.wait_for_subscribers(publisher)
        client.wait_for_publishers("relay_out")
        wait_until(lambda: received or publisher.publish(original), 20.0, "the relayed message")
        assert received[0] == original
    finally:
        client.close()
        relay.terminate()
        try:
            relay.wait(30)  # a loaded machine tears a DDS participant down slowly; the round trip is the test
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
