"""Online replay: a bag's camera frames -> the running nodes -> a new bag of what they published.

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

Step mode publishes the next frame only when the previous one is complete (its proposals arrived, then
each of its queries was answered in turn), so a slow model cannot make the replay drop frames. A frame
that exceeds its timeout is reported, never skipped silently.

The planning, the clock and the bookkeeping are plain Python in :mod:`chatrex_ros.eval.replay_plan`
(unit-testable without DDS); this module publishes and records.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter
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
from chatrex_ros.eval.bagio import ANSWER_TYPE, PROPOSALS_TYPE, BagWriter, header_stamp_ns, make_typestore
from chatrex_ros.eval.replay_plan import (  # re-exported: the replay's public API lives here
    ASK_QUERY_PREFIX,
    QUERY_TYPE,
    ReplayClock,
    ReplayError,
    ReplayFrame,
    ReplayOptions,
    ReplayPlan,
    ReplayProgress,
    ReplayReport,
    frame_data,
    plan_replay,
)
from chatrex_ros.msg import Answer, ProposalArray, Query
from chatrex_ros.ros.qos import reliable_qos

__all__ = [
    "ASK_QUERY_PREFIX",
    "QUERY_TYPE",
    "ReplayClock",
    "ReplayError",
    "ReplayFrame",
    "ReplayOptions",
    "ReplayPlan",
    "ReplayProgress",
    "ReplayReport",
    "frame_data",
    "plan_replay",
    "run_replay",
]


# --- recording -------------------------------------------------------------------------------------
class _Recorder:
    """CDR messages into a new bag, written by one thread of its own.

    sqlite3 connections only work on the thread that opened them, and both the executor (outputs) and the
    replay loop (images, queries) record; a queue also keeps re-serialisation off the executor thread.
    A write that fails stops recording and is reported by :attr:`error` (the replay stops on it).
    """

    def __init__(self, path: Path, storage: str) -> None:
        self.typestore = make_typestore(require_ours=True)
        self.counts: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[str, str, bytes, int] | None] = queue.Queue()
        opened = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(path, storage, opened), name="replay_recorder", daemon=True
        )
        self._thread.start()
        opened.wait()
        if self.error is not None:
            raise self.error

    def _run(self, path: Path, storage: str, opened: threading.Event) -> None:
        try:
            writer = BagWriter(path, storage, self.typestore)
        except BaseException as error:  # handed to the constructor, which raises it
            self.error = error
            opened.set()
            return
        opened.set()
        try:
            while (item := self._queue.get()) is not None:
                if self.error is not None:
                    continue
                topic, msgtype, data, log_time_ns = item
                try:
                    writer.write(topic, msgtype, self.typestore.deserialize_cdr(data, msgtype), log_time_ns)
                    self.counts[topic] += 1
                except Exception as error:
                    self.error = error
        finally:
            writer.close()

    def write(self, topic: str, msgtype: str, data: bytes, log_time_ns: int) -> None:
        self._queue.put((topic, msgtype, data, int(log_time_ns)))

    def close(self) -> None:
        """Write what is queued, then close the bag."""
        self._queue.put(None)
        self._thread.join()


# --- the ROS side ----------------------------------------------------------------------------------
class _ReplayNode:
    """Publishers, raw subscriptions feeding the progress and the recorder, /clock; spun on its own thread."""

    def __init__(self, plan: ReplayPlan, options: ReplayOptions, progress: ReplayProgress) -> None:
        self.plan, self.options, self.progress = plan, options, progress
        self.recorder: _Recorder | None = None  # set once the graph is there
        self.failure = ""  # the first exception raised in a callback
        self.clock: ReplayClock | None = None
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
            ProposalArray, options.topic("proposals"), self._on_proposals, reliable_qos(100), raw=True
        )
        self.answers_sub = self.node.create_subscription(
            Answer, options.topic("answer"), self._on_answer, reliable_qos(100), raw=True
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
        stamp = message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec
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

    # ---- publishing (replay thread) ----
    def publish_clock(self) -> None:
        if self.clock_pub is not None and self.clock is not None:
            now = self.clock.now(time.monotonic_ns())
            message = Clock()
            message.clock.sec, message.clock.nanosec = divmod(now, 1_000_000_000)
            self.clock_pub.publish(message)

    def publish_frame(self, frame: ReplayFrame, data: bytes) -> None:
        self.publish_clock()  # subscribers on sim time see the frame's time before the frame
        published = time.time_ns()
        self.image_pub.publish(data)
        self.progress.published(frame.index, published)
        if self.recorder is not None and self.options.record_images:
            self.recorder.write(self.image_topic, self.plan.image_type, data, frame.stamp_ns)

    def publish_query(self, frame: ReplayFrame, query_id: str, request: QueryRequest) -> None:
        query = Query(
            id=query_id,
            task=str(request.task.value),
            text=request.question,
            targets=list(request.targets),
            indices=list(request.indices),
            max_new_tokens=request.max_new_tokens,
        )
        query.image_stamp.sec, query.image_stamp.nanosec = divmod(frame.stamp_ns, 1_000_000_000)
        sent = time.time_ns()
        self.progress.query_sent(frame.index, query_id, sent)  # before publishing: the answer may come back at once
        self.query_pub.publish(query)
        if self.recorder is not None:
            self._record(
                self.options.topic("query"), QUERY_TYPE, serialize_message(query), frame.stamp_ns, sent, query_id
            )

    # ---- graph checks ----
    def missing_peers(self, need_queries: bool, need_outputs: bool) -> list[str]:
        missing = []
        if self.image_pub.get_subscription_count() == 0:
            missing.append(f"no subscriber on {self.image_topic}")
        if need_queries and self.query_pub.get_subscription_count() == 0:
            missing.append(f"no subscriber on {self.options.topic('query')} (language_node)")
        if need_queries and self.answers_sub.get_publisher_count() == 0:
            missing.append(f"no publisher on {self.options.topic('answer')} (language_node)")
        if need_outputs and self.proposals_sub.get_publisher_count() == 0:
            missing.append(f"no publisher on {self.options.topic('proposals')} (proposal_node)")
        return missing

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._spinner.join(timeout=2.0)


def _received_ns(info: Any) -> int:
    """The middleware's receive time (system clock), or now when the middleware does not fill it in."""
    received = int(info.get("received_timestamp", 0)) if isinstance(info, dict) else 0
    return received or time.time_ns()


# --- the replay loop -------------------------------------------------------------------------------
DISCOVERY_SETTLE_S = 0.3
"""After the peers are seen: let the other side's readers match ours too before the first (reliable) frame."""


def run_replay(
    plan: ReplayPlan, options: ReplayOptions, log: Callable[[str], None] = lambda line: None
) -> ReplayReport:
    """Publish the plan into the running graph (recording its outputs when asked) and report what came back.

    Raises :class:`ReplayError` when the graph is not there after ``options.wait_s``. Ctrl-C stops the
    replay cleanly: the recording is closed and the report says where it stopped.
    """
    options.validate()
    progress = ReplayProgress(plan.frames)
    recorder: _Recorder | None = None
    node: _ReplayNode | None = None
    started = time.monotonic()
    stopped = ""
    try:
        node = _ReplayNode(plan, options, progress)
        _wait_for_graph(node, plan, options)
        if options.record is not None:  # only now: a replay that cannot start leaves no empty bag behind
            recorder = node.recorder = _Recorder(Path(options.record), options.storage)
        stopped = _replay_frames(node, plan, options, progress, log)
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


def _wait_for_graph(node: _ReplayNode, plan: ReplayPlan, options: ReplayOptions) -> None:
    need_queries = plan.query_count > 0
    need_outputs = options.step or options.record is not None
    deadline = time.monotonic() + options.wait_s
    while missing := node.missing_peers(need_queries, need_outputs):
        if time.monotonic() >= deadline:
            raise ReplayError(
                f"{'; '.join(missing)} after waiting {options.wait_s:g} s: start the nodes first (chatrex-ros up), "
                "or check --image-out / --namespace and ROS_DOMAIN_ID"
            )
        time.sleep(0.05)
    time.sleep(DISCOVERY_SETTLE_S)


def _replay_frames(
    node: _ReplayNode, plan: ReplayPlan, options: ReplayOptions, progress: ReplayProgress, log: Callable[[str], None]
) -> str:
    """The main loop; returns why it stopped early ('' when every frame was published)."""
    clock = ReplayClock(options.rate, plan.frames[0].log_time_ns, time.monotonic_ns())
    node.clock = clock
    previous: ReplayFrame | None = None
    with closing(frame_data(plan)) as frames:
        for frame, data in frames:
            if options.step and previous is not None:
                _finish_step(node, previous, options, progress, log)
                clock.release(time.monotonic_ns())
            if problem := _problem(node):
                return f"{problem} (before frame {frame.index})"
            _sleep_until(clock.wall_at(frame.log_time_ns))
            node.publish_frame(frame, data)
            if options.step:
                following = plan.frames[min(frame.index + 1, len(plan.frames) - 1)]
                clock.hold(following.log_time_ns, time.monotonic_ns())
            else:
                for query_id, request in frame.queries:
                    node.publish_query(frame, query_id, request)
            previous = frame
    if previous is not None and options.step:
        _finish_step(node, previous, options, progress, log)
    elif previous is not None:
        _drain(progress, previous, options, expect_proposals=node.proposals_sub.get_publisher_count() > 0)
    return ""


def _problem(node: _ReplayNode) -> str:
    """Why the replay cannot go on ('' when it can)."""
    if node.failure:
        return f"handling the nodes' outputs failed: {node.failure}"
    if node.recorder is not None and node.recorder.error is not None:
        return f"recording failed: {node.recorder.error}"
    if node.image_pub.get_subscription_count() == 0:
        return f"the subscribers of {node.image_topic} went away"
    return ""


def _finish_step(
    node: _ReplayNode, frame: ReplayFrame, options: ReplayOptions, progress: ReplayProgress, log: Callable[[str], None]
) -> None:
    """Wait for the frame's proposals, then ask its queries one at a time (a queue never overflows)."""
    state = progress.frames[frame.index]
    deadline = time.monotonic() + options.frame_timeout_s
    if not progress.wait(lambda: state.proposals_ns is not None, deadline - time.monotonic()):
        _report_timeout(progress, frame, "proposals", options, log)
        return
    for query_id, request in frame.queries:
        node.publish_query(frame, query_id, request)
        if not progress.wait(lambda: query_id in state.answers, deadline - time.monotonic()):
            _report_timeout(progress, frame, f"answer to {query_id}", options, log)
            return


def _report_timeout(
    progress: ReplayProgress, frame: ReplayFrame, what: str, options: ReplayOptions, log: Callable[[str], None]
) -> None:
    progress.timed_out(frame.index, what)
    log(
        f"frame {frame.index} (stamp {frame.stamp_ns}): no {what} within {options.frame_timeout_s:g} s; "
        "moving on (reported, not dropped silently)"
    )


def _drain(progress: ReplayProgress, last: ReplayFrame, options: ReplayOptions, expect_proposals: bool) -> None:
    """Timed mode: wait for outputs still in flight. The last frame is never superseded, so its proposals
    must come (when a proposal node is there at all); earlier frames may have been skipped by a busy
    proposal node, which is what timed mode measures.
    """
    last_state = progress.frames[last.index]

    def settled() -> bool:
        answered = all(not p.sent_ns.keys() - p.answers.keys() for p in progress.frames)
        return answered and (last_state.proposals_ns is not None or not expect_proposals)

    progress.wait(settled, options.drain_s)


def _sleep_until(monotonic_ns: int) -> None:
    """Sleep in short slices so Ctrl-C is handled promptly."""
    while (remaining := monotonic_ns - time.monotonic_ns()) > 0:
        time.sleep(min(remaining / 1e9, 0.05))
