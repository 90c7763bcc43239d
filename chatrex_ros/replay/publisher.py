"""The ROS side of the replay: publishes the plan into the live graph and records the nodes' outputs.

``chatrex-ros replay`` plays the image topic of a rosbag2 into a live graph (with /clock, like
``ros2 bag play --clock``), optionally asks the evaluation Queries about every frame, and records the
nodes' outputs with rosbags so that ``chatrex-ros eval --answers`` scores them with the offline metrics.

Two choices make the recording scoreable and its latency meaningful:

* Images keep their recorded headers. The stamps are what ties proposals and answers to ground truth,
  so they must survive the replay unchanged (no re-stamping).
* The recording's time axis is the image stamps' axis: a message about frame F is logged at
  ``F.stamp + (wall time it arrived - wall time F was published)``. ``eval --answers`` measures latency
  as log time minus header stamp, so it reports the wall-clock end-to-end latency from the moment the
  frame was on the wire, whenever the bag was recorded and whatever ``--rate`` was.

This module drives: it waits for the graph, then publishes what :class:`~chatrex_ros.replay.pacing.Pacer`
says is due. It is the only module of :mod:`chatrex_ros.replay` that imports rclpy or messages.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image

from chatrex_ros.core.answering import QueryRequest
from chatrex_ros.core.stamps import stamp_to_ns
from chatrex_ros.eval.bagio import ANSWER_TYPE, PROPOSALS_TYPE, header_stamp_ns
from chatrex_ros.msg import Answer, ProposalArray, Query
from chatrex_ros.replay.clock import ReplayClock
from chatrex_ros.replay.options import ReplayError, ReplayOptions
from chatrex_ros.replay.pacing import FrameDue, Pacer, sleep_until
from chatrex_ros.replay.plan import ReplayFrame, ReplayPlan
from chatrex_ros.replay.progress import ReplayProgress
from chatrex_ros.replay.recorder import QUERY_TYPE, Recorder
from chatrex_ros.replay.report import ReplayReport
from chatrex_ros.ros.conversions import ns_to_stamp
from chatrex_ros.ros.qos import reliable_qos

DISCOVERY_SETTLE_S = 0.3
"""After the peers are seen: let the other side's readers match ours too before the first (reliable) frame."""


def run_replay(
    plan: ReplayPlan, options: ReplayOptions, log: Callable[[str], None] = lambda line: None
) -> ReplayReport:
    """Publish the plan into the running graph (recording its outputs when asked) and report what came back.

    Raises :class:`~chatrex_ros.replay.options.ReplayError` when the graph is not there after
    ``options.wait_s``. Ctrl-C stops the replay cleanly: the recording is closed and the report says where
    it stopped.
    """
    options.validate()
    progress = ReplayProgress(plan.frames)
    recorder: Recorder | None = None
    node: _ReplayNode | None = None
    started = time.monotonic()
    stopped = ""
    try:
        node = _ReplayNode(plan, options, progress)
        node.wait_for_graph()
        if options.record is not None:  # only now: a replay that cannot start leaves no empty bag behind
            recorder = node.recorder = Recorder(Path(options.record), options.storage)
        stopped = node.replay(Pacer(plan, options, progress, log))
    except KeyboardInterrupt:
        stopped = "interrupted (Ctrl-C)"
    finally:
        if node is not None:
            node.close()
        if recorder is not None:
            recorder.close()
    if recorder is not None and recorder.error is not None and not stopped:
        stopped = f"recording failed: {recorder.error}"  # after the last frame: the bag lacks some outputs
    recorded = dict(recorder.counts) if recorder is not None else {}
    return progress.report(plan, options, time.monotonic() - started, recorded, stopped)


class _ReplayNode:
    """Publishers, raw subscriptions feeding the progress and the recorder, /clock; spun on its own thread."""

    def __init__(self, plan: ReplayPlan, options: ReplayOptions, progress: ReplayProgress) -> None:
        self.plan, self.options, self.progress = plan, options, progress
        self.recorder: Recorder | None = None  # set once the graph is there
        self.failure = ""  # the first exception raised in a callback
        self.clock: ReplayClock | None = None  # set when the replay starts
        self.context = Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node(f"chatrex_replay_{os.getpid()}", context=self.context)
        image_type = Image if plan.image_type == "sensor_msgs/msg/Image" else CompressedImage
        self.image_topic = options.image_out or plan.image_topic
        # Reliable publishers match best-effort and reliable subscribers alike.
        self.image_pub = self.node.create_publisher(image_type, self.image_topic, reliable_qos(10))
        self.query_pub = self.node.create_publisher(Query, options.topic("query"), reliable_qos(100))
        clock_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.clock_pub = self.node.create_publisher(Clock, "/clock", clock_qos) if options.clock else None
        self.proposals_sub = self.node.create_subscription(
            ProposalArray,
            options.topic("proposals"),
            self._on_proposals,  # type: ignore[arg-type]  # raw=True: the callback gets bytes
            reliable_qos(100),
            raw=True,
        )
        self.answers_sub = self.node.create_subscription(
            Answer,
            options.topic("answer"),
            self._on_answer,  # type: ignore[arg-type]
            reliable_qos(100),
            raw=True,
        )
        if self.clock_pub is not None:
            self.node.create_timer(1.0 / options.clock_hz, self.publish_clock)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name="replay_executor", daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception as error:
                if not self.context.ok():  # shutting down
                    return
                # A failing callback must not stop the arrivals silently: keep spinning, the loop stops on it.
                self.failure = self.failure or f"{type(error).__name__}: {error}"

    # ---- the graph (replay thread) ----
    def wait_for_graph(self) -> None:
        """Wait up to ``wait_s`` for the peers this replay needs; ReplayError naming the missing ones."""
        need_queries = self.plan.query_count > 0
        need_outputs = self.options.step or self.options.record is not None
        deadline = time.monotonic() + self.options.wait_s
        while missing := self._missing_peers(need_queries, need_outputs):
            if time.monotonic() >= deadline:
                raise ReplayError(
                    f"{'; '.join(missing)} after waiting {self.options.wait_s:g} s: start the nodes first "
                    "(chatrex-ros up), or check --image-out / --namespace and ROS_DOMAIN_ID"
                )
            time.sleep(0.05)
        time.sleep(DISCOVERY_SETTLE_S)

    def _missing_peers(self, need_queries: bool, need_outputs: bool) -> list[str]:
        missing = []
        if self.image_pub.get_subscription_count() == 0:
            missing.append(f"no subscriber on {self.image_topic}")
        elif unmatched := self._unmatched_image_readers(need_queries):
            missing.append(unmatched)
        if need_queries and self.query_pub.get_subscription_count() == 0:
            missing.append(f"no subscriber on {self.options.topic('query')} (language_node)")
        if need_queries and self.answers_sub.get_publisher_count() == 0:
            missing.append(f"no publisher on {self.options.topic('answer')} (language_node)")
        if need_outputs and self.proposals_sub.get_publisher_count() == 0:
            missing.append(f"no publisher on {self.options.topic('proposals')} (proposal_node)")
        return missing

    def _unmatched_image_readers(self, need_queries: bool) -> str:
        """Why a frame published now could miss a reader ('' when none would).

        One matched image reader is not enough: the proposal node's reader often matches before the
        language node's, and the first frames would then reach only the proposer, so the queries about
        them are answered NO_IMAGE. Every image reader the graph knows of must be matched, and every node
        that takes queries must be one of them.
        """
        readers = self.node.get_subscriptions_info_by_topic(self.image_topic)
        reading = {(info.node_namespace, info.node_name) for info in readers}
        if need_queries:
            askers = self.node.get_subscriptions_info_by_topic(self.options.topic("query"))
            blind = sorted(
                f"{ns.rstrip('/')}/{name}"
                for ns, name in {(info.node_namespace, info.node_name) for info in askers} - reading
            )
            if blind:
                return f"{', '.join(blind)} takes queries but does not subscribe to {self.image_topic}"
        if self.image_pub.get_subscription_count() < len(readers):
            return f"not every subscriber of {self.image_topic} has matched this replay yet"
        return ""

    def _problem(self) -> str:
        """Why the replay cannot go on ('' when it can)."""
        if self.failure:
            return f"handling the nodes' outputs failed: {self.failure}"
        if self.recorder is not None and self.recorder.error is not None:
            return f"recording failed: {self.recorder.error}"
        if self.image_pub.get_subscription_count() == 0:
            return f"the subscribers of {self.image_topic} went away"
        return ""

    # ---- the replay loop (replay thread) ----
    def replay(self, pacer: Pacer) -> str:
        """Publish what ``pacer`` says is due; returns why it stopped early ('' when every frame went out)."""
        self.clock = pacer.clock
        if self.options.delay_s > 0:  # /clock stands at the first frame while late subscribers match
            first = self.plan.frames[0].log_time_ns
            self.clock.hold(first, time.monotonic_ns())
            time.sleep(self.options.delay_s)
            self.clock.release(time.monotonic_ns())
        with closing(pacer.schedule()) as schedule:
            for due in schedule:
                if not isinstance(due, FrameDue):
                    self.publish_query(due.frame, due.query_id, due.request)
                    continue
                if problem := self._problem():
                    return f"{problem} (before frame {due.frame.index})"
                sleep_until(due.wall_ns)
                self.publish_frame(due.frame, due.data)
        pacer.drain(expect_proposals=self.proposals_sub.get_publisher_count() > 0)
        return ""

    def publish_clock(self) -> None:
        """Publish the replay clock's time on /clock (also the timer's callback)."""
        if self.clock_pub is not None and self.clock is not None:
            self.clock_pub.publish(Clock(clock=ns_to_stamp(self.clock.now(time.monotonic_ns()))))

    def publish_frame(self, frame: ReplayFrame, data: bytes) -> None:
        """Publish the frame's image with its recorded header (and record it when asked)."""
        self.publish_clock()  # subscribers on sim time see the frame's time before the frame
        published = time.time_ns()
        self.image_pub.publish(data)
        self.progress.published(frame.index, published)
        if self.recorder is not None and self.options.record_images:
            self.recorder.write(self.image_topic, self.plan.image_type, data, frame.stamp_ns)

    def publish_query(self, frame: ReplayFrame, query_id: str, request: QueryRequest) -> None:
        """Ask ``request`` about the frame (its image stamp) under ``query_id``, and record the query."""
        query = Query(
            id=query_id,
            task=str(request.task.value),
            text=request.question,
            targets=list(request.targets),
            indices=list(request.indices),
            image_stamp=ns_to_stamp(frame.stamp_ns),
            max_new_tokens=request.max_new_tokens,
        )
        sent = time.time_ns()
        self.progress.query_sent(frame.index, query_id, sent)  # before publishing: the answer may come back at once
        self.query_pub.publish(query)
        if self.recorder is not None:
            self._record(
                self.options.topic("query"), QUERY_TYPE, serialize_message(query), frame.stamp_ns, sent, query_id
            )

    # ---- arrivals (executor thread) ----
    def _on_proposals(self, data: bytes, info: Any) -> None:
        received = _received_ns(info)
        stamp = header_stamp_ns(data)
        message = deserialize_message(data, ProposalArray)
        self.progress.proposals_received(stamp, len(message.scores), received)
        self._record(self.options.topic("proposals"), PROPOSALS_TYPE, data, stamp, received)

    def _on_answer(self, data: bytes, info: Any) -> None:
        received = _received_ns(info)
        message = deserialize_message(data, Answer)
        stamp = stamp_to_ns(message.header.stamp)
        self.progress.answer_received(message.query_id, stamp, int(message.status), received)
        self._record(self.options.topic("answer"), ANSWER_TYPE, data, stamp, received, message.query_id)

    def _record(
        self, topic: str, msgtype: str, data: bytes, stamp_ns: int, received_ns: int, query_id: str = ""
    ) -> None:
        if self.recorder is None:
            return
        log_time = self.progress.recording_time_ns(stamp_ns, received_ns, query_id)
        if log_time is None:  # not about a frame of ours: place it on the replay clock
            log_time = self.clock.now(time.monotonic_ns()) if self.clock is not None else stamp_ns
        self.recorder.write(topic, msgtype, data, log_time)

    def close(self) -> None:
        """Stop spinning and leave the graph."""
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._spinner.join(timeout=2.0)


def _received_ns(info: Any) -> int:
    """The middleware's receive time (system clock), or now when the middleware does not fill it in."""
    received = int(info.get("received_timestamp", 0)) if isinstance(info, dict) else 0
    return received or time.time_ns()
