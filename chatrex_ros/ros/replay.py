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

The planning, the clock and the bookkeeping are plain Python (unit-testable without DDS); only
:class:`_ReplayNode` and :func:`run_replay` use rclpy.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image

from chatrex_ros.core.answering import AnswerStatus, QueryError, QueryRequest
from chatrex_ros.core.protocol import Task
from chatrex_ros.eval.bagio import (
    ANSWER_TYPE,
    PROPOSALS_TYPE,
    STORAGES,
    BagError,
    BagReader,
    BagWriter,
    header_stamp_ns,
    make_typestore,
)
from chatrex_ros.eval.groundtruth import GroundTruth, ReferringQuery, match_stamps
from chatrex_ros.eval.metrics import latency_summary
from chatrex_ros.eval.records import evaluation_requests
from chatrex_ros.msg import Answer, ProposalArray, Query
from chatrex_ros.ros.qos import reliable_qos

QUERY_TYPE = "chatrex_ros/msg/Query"
ASK_QUERY_PREFIX = "replay-ask/"
"""Query ids of ``--ask`` queries (``replay-ask/<frame index>``); ``eval --answers`` counts but does not score them."""


class ReplayError(ValueError):
    """Replay cannot start as asked: bad options, nothing listening, a bag without the topic."""


# --- what to publish -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayFrame:
    """One image message of the bag and the queries to ask about it (id, request), in asking order."""

    index: int
    stamp_ns: int
    log_time_ns: int
    queries: tuple[tuple[str, QueryRequest], ...] = ()


@dataclass(frozen=True)
class ReplayPlan:
    """The frames of one image topic, read before anything is published (a corrupt bag fails here)."""

    bag: Path
    image_topic: str
    image_type: str
    frames: tuple[ReplayFrame, ...]

    @property
    def query_count(self) -> int:
        return sum(len(frame.queries) for frame in self.frames)


def plan_replay(
    bag: str | Path,
    image_topic: str | None = None,
    gt: GroundTruth | None = None,
    referring: Sequence[ReferringQuery] = (),
    ask: str = "",
    stamp_tolerance_ns: int = 0,
    max_frames: int | None = None,
) -> ReplayPlan:
    """Frames of ``image_topic`` (default: the bag's only colour image topic) with their queries.

    With ``gt``, every frame matched to a ground-truth image gets the evaluation queries
    (:func:`chatrex_ros.eval.records.evaluation_requests`: the detection query, then its referring ones);
    ``ask`` ("cup; the red mug") adds one detect query per frame. Only header stamps are read here (no
    deserialisation), but every message is touched once, so truncation shows up before replaying.
    """
    if max_frames is not None and max_frames < 1:
        raise ReplayError(f"--max-frames must be >= 1, got {max_frames}")
    if referring and gt is None:
        raise ReplayError("referring queries need the ground truth they refer to (--gt)")
    ask_request = _ask_request(ask) if ask.strip() else None
    with BagReader(bag) as reader:
        topic = reader.image_topic(image_topic)
        image_type = reader.topics[topic].msgtype
        timeline = [(log_time, header_stamp_ns(data)) for log_time, data in reader.raw(topic)]
    if not timeline:
        raise BagError(f"image topic {topic!r} of {bag} has no messages")
    timeline = timeline[:max_frames] if max_frames else timeline
    matched = match_stamps(gt, [stamp for _, stamp in timeline], stamp_tolerance_ns) if gt is not None else {}
    asked_images: set[int] = set()
    frames = []
    for index, (log_time, stamp) in enumerate(timeline):
        queries: list[tuple[str, QueryRequest]] = []
        image = matched.get(stamp)
        if image is not None and image.id not in asked_images:  # repeated stamps: ask once, ids stay unique
            asked_images.add(image.id)
            queries.extend(evaluation_requests(gt, image.id, referring))  # type: ignore[arg-type]
        if ask_request is not None:
            queries.append((f"{ASK_QUERY_PREFIX}{index}", ask_request))
        frames.append(ReplayFrame(index, stamp, log_time, tuple(queries)))
    return ReplayPlan(Path(bag), topic, image_type, tuple(frames))


def _ask_request(phrases: str) -> QueryRequest:
    try:
        return QueryRequest.create(Task.DETECT, text=phrases)
    except QueryError as error:
        raise ReplayError(f"--ask {phrases!r}: {error}") from None


def frame_data(plan: ReplayPlan) -> Iterator[tuple[ReplayFrame, bytes]]:
    """The planned frames with their CDR bytes, streamed (a long bag is never held in memory)."""
    with BagReader(plan.bag) as reader:
        stream = reader.raw(plan.image_topic)
        for frame in plan.frames:
            try:
                _, data = next(stream)
            except StopIteration:
                raise BagError(f"bag {plan.bag} ended after {frame.index} images; "
                               "was it modified during the replay?") from None
            yield frame, bytes(data)


# --- time ------------------------------------------------------------------------------------------
class ReplayClock:
    """Bag time as a function of monotonic wall time: ``anchor + (wall - wall_anchor) * rate``, optionally held.

    Step mode holds the clock at the next frame's log time while the previous frame is being answered,
    then releases it from where it stopped: /clock never jumps backwards, and never runs ahead of a frame
    that has not been published yet.
    """

    def __init__(self, rate: float, bag_start_ns: int, wall_start_ns: int) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ReplayError(f"--rate must be a positive number, got {rate}")
        self.rate = rate
        self._bag_anchor = int(bag_start_ns)
        self._wall_anchor = int(wall_start_ns)
        self._hold: int | None = None
        self._lock = threading.Lock()

    def _now(self, wall_ns: int) -> int:
        running = self._bag_anchor + max(0, int((wall_ns - self._wall_anchor) * self.rate))
        return running if self._hold is None else min(running, self._hold)

    def now(self, wall_ns: int) -> int:
        with self._lock:
            return self._now(wall_ns)

    def wall_at(self, bag_ns: int) -> int:
        """When (monotonic ns) the running clock reaches ``bag_ns``."""
        with self._lock:
            return self._wall_anchor + math.ceil((bag_ns - self._bag_anchor) / self.rate)

    def hold(self, bag_ns: int, wall_ns: int) -> None:
        """Stop at ``bag_ns`` (or where the clock already is, if later: it never goes back)."""
        with self._lock:
            current = self._now(wall_ns)
            self._bag_anchor, self._wall_anchor = current, wall_ns
            self._hold = max(int(bag_ns), current)

    def release(self, wall_ns: int) -> None:
        with self._lock:
            current = self._now(wall_ns)
            self._bag_anchor, self._wall_anchor, self._hold = current, wall_ns, None


# --- bookkeeping -----------------------------------------------------------------------------------
@dataclass
class FrameProgress:
    """What happened to one published frame; times are system-clock ns (comparable with DDS receive times)."""

    frame: ReplayFrame
    published_ns: int | None = None
    proposals_ns: int | None = None
    proposal_count: int = 0
    sent_ns: dict[str, int] = field(default_factory=dict)
    answers: dict[str, tuple[int, int]] = field(default_factory=dict)  # query id -> (status, received ns)
    timeout: str = ""

    @property
    def missing_answers(self) -> list[str]:
        return [query_id for query_id, _ in self.frame.queries if query_id not in self.answers]


class ReplayProgress:
    """Thread-safe record of publications and arrivals; the executor thread writes, the replay loop waits."""

    def __init__(self, frames: Sequence[ReplayFrame]) -> None:
        self.frames = [FrameProgress(frame) for frame in frames]
        self._by_stamp: dict[int, FrameProgress] = {}
        self._by_query: dict[str, FrameProgress] = {}
        self._changed = threading.Condition()
        self.foreign: Counter[str] = Counter()  # outputs about frames this replay did not publish

    def published(self, index: int, wall_ns: int) -> None:
        with self._changed:
            progress = self.frames[index]
            progress.published_ns = wall_ns
            self._by_stamp[progress.frame.stamp_ns] = progress  # a repeated stamp: the newest frame owns it
            self._changed.notify_all()

    def query_sent(self, index: int, query_id: str, wall_ns: int) -> None:
        with self._changed:
            progress = self.frames[index]
            progress.sent_ns[query_id] = wall_ns
            self._by_query[query_id] = progress

    def proposals_received(self, stamp_ns: int, count: int, wall_ns: int) -> FrameProgress | None:
        with self._changed:
            progress = self._by_stamp.get(stamp_ns)
            if progress is None:
                self.foreign["proposals"] += 1
            elif progress.proposals_ns is None:
                progress.proposals_ns, progress.proposal_count = wall_ns, count
                self._changed.notify_all()
            return progress

    def answer_received(self, query_id: str, stamp_ns: int, status: int, wall_ns: int) -> FrameProgress | None:
        """Matched by query id (error answers may carry an empty header), else by stamp."""
        with self._changed:
            progress = self._by_query.get(query_id) or self._by_stamp.get(stamp_ns)
            if progress is None or query_id not in progress.sent_ns:
                self.foreign["answers"] += 1
            elif query_id not in progress.answers:  # a repeated answer: the first one counts, as in scoring
                progress.answers[query_id] = (status, wall_ns)
                self._changed.notify_all()
            return progress

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate`` (evaluated under the lock) holds; False on timeout."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout=max(0.0, timeout_s))

    def timed_out(self, index: int, reason: str) -> None:
        with self._changed:
            self.frames[index].timeout = reason

    def recording_time_ns(self, stamp_ns: int, wall_ns: int, query_id: str = "") -> int | None:
        """Log time on the image-stamp axis: stamp of the frame + wall time since it was published.

        None for a message about no frame of this replay (the caller falls back to the replay clock).
        """
        with self._changed:
            progress = (self._by_query.get(query_id) if query_id else None) or self._by_stamp.get(stamp_ns)
            if progress is None or progress.published_ns is None:
                return None
            return max(0, progress.frame.stamp_ns + wall_ns - progress.published_ns)

    def report(self, plan: ReplayPlan, options: ReplayOptions, wall_s: float, recorded: dict[str, int],
               stopped: str = "") -> ReplayReport:
        with self._changed:
            published = [p for p in self.frames if p.published_ns is not None]
            proposal_ms = [(p.proposals_ns - p.published_ns) / 1e6 for p in published if p.proposals_ns is not None]
            answer_ms = [(received - p.published_ns) / 1e6 for p in published for _, received in p.answers.values()]
            statuses = Counter(_status_name(status) for p in published for status, _ in p.answers.values())
            return ReplayReport(
                bag=str(plan.bag), image_topic=plan.image_topic, step=options.step, rate=options.rate,
                frames_planned=len(plan.frames), frames_published=len(published),
                frames_without_proposals=[p.frame.index for p in published if p.proposals_ns is None],
                frames_with_empty_proposals=[p.frame.index for p in published
                                             if p.proposals_ns is not None and p.proposal_count == 0],
                frames_missing_answers=[p.frame.index for p in published if p.missing_answers],
                frames_with_failed_answers=[p.frame.index for p in published
                                            if any(status != AnswerStatus.OK for status, _ in p.answers.values())],
                queries_planned=sum(len(p.frame.queries) for p in published),
                queries_sent=sum(len(p.sent_ns) for p in published),
                answers_received=sum(len(p.answers) for p in published),
                answer_statuses=dict(sorted(statuses.items())),
                timeouts=[{"frame": p.frame.index, "stamp_ns": p.frame.stamp_ns, "missing": p.timeout}
                          for p in published if p.timeout],
                latency_ms={"proposals": _rounded_summary(proposal_ms), "answers": _rounded_summary(answer_ms)},
                foreign_messages=dict(self.foreign), recorded=dict(recorded),
                record=str(options.record) if options.record else None, wall_s=round(wall_s, 3), stopped=stopped,
            )


def _status_name(status: int) -> str:
    try:
        return AnswerStatus(status).name
    except ValueError:
        return str(status)


def _rounded_summary(samples_ms: Sequence[float]) -> dict[str, float | int]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in latency_summary(samples_ms).items()}


@dataclass
class ReplayReport:
    """Outcome of one replay: what was published, what came back, what is missing and why."""

    bag: str
    image_topic: str
    step: bool
    rate: float
    frames_planned: int
    frames_published: int
    frames_without_proposals: list[int]
    frames_with_empty_proposals: list[int]
    frames_missing_answers: list[int]
    frames_with_failed_answers: list[int]  # an answer came, with an error status (BUSY, TIMEOUT, NO_PROPOSALS...)
    queries_planned: int
    queries_sent: int
    answers_received: int
    answer_statuses: dict[str, int]
    timeouts: list[dict[str, Any]]
    latency_ms: dict[str, dict[str, float | int]]
    foreign_messages: dict[str, int]
    recorded: dict[str, int]
    record: str | None
    wall_s: float
    stopped: str = ""  # why the replay ended early ('' when every planned frame was published)

    @property
    def complete(self) -> bool:
        """Every planned frame published, and each got its proposals and all its answers."""
        return (not self.stopped and self.frames_published == self.frames_planned and not self.timeouts
                and not self.frames_without_proposals and not self.frames_missing_answers)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "complete": self.complete}

    def format_table(self) -> str:
        mode = "step" if self.step else f"timed, rate {self.rate:g}"
        rows = [
            ("bag", f"{self.bag} ({self.image_topic})"),
            ("mode", mode),
            ("frames published", f"{self.frames_published} / {self.frames_planned}"),
            ("frames without proposals", _listing(self.frames_without_proposals)),
            ("frames with 0 proposals", _listing(self.frames_with_empty_proposals)),
            ("frames missing answers", _listing(self.frames_missing_answers)),
            ("frames with failed answers", _listing(self.frames_with_failed_answers)),
            ("queries sent / answered",
             f"{self.queries_sent} / {self.answers_received} (planned {self.queries_planned})"),
            ("answer statuses", ", ".join(f"{k} {v}" for k, v in self.answer_statuses.items()) or "-"),
            ("step timeouts", str(len(self.timeouts))),
            ("latency proposals (ms)", _latency(self.latency_ms["proposals"])),
            ("latency answers (ms)", _latency(self.latency_ms["answers"])),
            ("recorded", f"{self.record}: " + ", ".join(f"{t} {n}" for t, n in sorted(self.recorded.items()))
             if self.record else "-"),
            ("wall time", f"{self.wall_s:.2f} s"),
        ]
        if self.stopped:
            rows.append(("stopped early", self.stopped))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _listing(indices: Sequence[int], limit: int = 12) -> str:
    if not indices:
        return "0"
    shown = ", ".join(str(i) for i in indices[:limit])
    return f"{len(indices)} (frames {shown}{', ...' if len(indices) > limit else ''})"


def _latency(summary: dict[str, float | int]) -> str:
    if not summary.get("count"):
        return "-"
    return f"p50 {summary['p50']:.1f}, p90 {summary['p90']:.1f}, max {summary['max']:.1f} (n={summary['count']})"


# --- options ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayOptions:
    """How to replay; see ``chatrex-ros replay --help`` for each field."""

    rate: float = 1.0
    step: bool = False
    namespace: str = "/chatrex"
    image_out: str | None = None  # publish the images here instead of on the bag's topic name
    record: Path | None = None
    storage: str = "mcap"
    record_images: bool = True
    clock: bool = True
    clock_hz: float = 50.0
    wait_s: float = 10.0
    frame_timeout_s: float = 120.0
    drain_s: float = 10.0

    def validate(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ReplayError(f"--rate must be a positive number, got {self.rate}")
        for name in ("clock_hz", "frame_timeout_s", "drain_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ReplayError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        if not (math.isfinite(self.wait_s) and self.wait_s >= 0):
            raise ReplayError(f"--wait must be >= 0 seconds, got {self.wait_s}")
        if self.storage not in STORAGES:
            raise ReplayError(f"unknown bag storage {self.storage!r}; choose one of {', '.join(STORAGES)}")
        if not self.namespace.startswith("/"):
            raise ReplayError(f"--namespace must be absolute (start with '/'), got {self.namespace!r}")
        if self.image_out is not None and not self.image_out.startswith("/"):
            raise ReplayError(f"--image-out must be an absolute topic name, got {self.image_out!r}")
        if self.record is not None and Path(self.record).exists():
            raise ReplayError(f"--record {self.record} already exists; rosbag2 bags are never overwritten")

    def topic(self, name: str) -> str:
        return f"{self.namespace.rstrip('/')}/{name}"


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
        self._thread = threading.Thread(target=self._run, args=(path, storage, opened), name="replay_recorder",
                                        daemon=True)
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
            ProposalArray, options.topic("proposals"), self._on_proposals, reliable_qos(100), raw=True)
        self.answers_sub = self.node.create_subscription(
            Answer, options.topic("answer"), self._on_answer, reliable_qos(100), raw=True)
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

    def _record(self, topic: str, msgtype: str, data: bytes, stamp_ns: int, received_ns: int,
                query_id: str = "") -> None:
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
        query = Query(id=query_id, task=str(request.task.value), text=request.question,
                            targets=list(request.targets), indices=list(request.indices),
                            max_new_tokens=request.max_new_tokens)
        query.image_stamp.sec, query.image_stamp.nanosec = divmod(frame.stamp_ns, 1_000_000_000)
        sent = time.time_ns()
        self.progress.query_sent(frame.index, query_id, sent)  # before publishing: the answer may come back at once
        self.query_pub.publish(query)
        if self.recorder is not None:
            self._record(self.options.topic("query"), QUERY_TYPE, serialize_message(query), frame.stamp_ns, sent,
                         query_id)

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


def run_replay(plan: ReplayPlan, options: ReplayOptions,
               log: Callable[[str], None] = lambda line: None) -> ReplayReport:
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


def _replay_frames(node: _ReplayNode, plan: ReplayPlan, options: ReplayOptions, progress: ReplayProgress,
                   log: Callable[[str], None]) -> str:
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


def _finish_step(node: _ReplayNode, frame: ReplayFrame, options: ReplayOptions, progress: ReplayProgress,
                 log: Callable[[str], None]) -> None:
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


def _report_timeout(progress: ReplayProgress, frame: ReplayFrame, what: str, options: ReplayOptions,
                    log: Callable[[str], None]) -> None:
    progress.timed_out(frame.index, what)
    log(f"frame {frame.index} (stamp {frame.stamp_ns}): no {what} within {options.frame_timeout_s:g} s; "
        "moving on (reported, not dropped silently)")


def _drain(progress: ReplayProgress, last: ReplayFrame, options: ReplayOptions, expect_proposals: bool) -> None:
    """Timed mode: wait for outputs still in flight. The last frame is never superseded, so its proposals
    must come (when a proposal node is there at all); earlier frames may have been skipped by a busy
    proposal node, which is what timed mode measures."""
    last_state = progress.frames[last.index]

    def settled() -> bool:
        answered = all(not p.sent_ns.keys() - p.answers.keys() for p in progress.frames)
        return answered and (last_state.proposals_ns is not None or not expect_proposals)

    progress.wait(settled, options.drain_s)


def _sleep_until(monotonic_ns: int) -> None:
    """Sleep in short slices so Ctrl-C is handled promptly."""
    while (remaining := monotonic_ns - time.monotonic_ns()) > 0:
        time.sleep(min(remaining / 1e9, 0.05))
