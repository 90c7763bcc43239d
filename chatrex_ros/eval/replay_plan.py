"""Replay planning and bookkeeping, ROS-free: which frames and queries to publish, the replay clock,
progress, the summary report and the options. :mod:`chatrex_ros.ros.replay` does the publishing and recording.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatrex_ros.core.answering import AnswerStatus, QueryError, QueryRequest
from chatrex_ros.core.protocol import Task
from chatrex_ros.eval.bagio import STORAGES, BagError, BagReader, header_stamp_ns
from chatrex_ros.eval.groundtruth import GroundTruth, ReferringQuery, match_stamps
from chatrex_ros.eval.metrics import latency_summary
from chatrex_ros.eval.records import evaluation_requests

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
                raise BagError(
                    f"bag {plan.bag} ended after {frame.index} images; was it modified during the replay?"
                ) from None
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

    def report(
        self, plan: ReplayPlan, options: ReplayOptions, wall_s: float, recorded: dict[str, int], stopped: str = ""
    ) -> ReplayReport:
        with self._changed:
            published = [p for p in self.frames if p.published_ns is not None]
            proposal_ms = [(p.proposals_ns - p.published_ns) / 1e6 for p in published if p.proposals_ns is not None]
            answer_ms = [(received - p.published_ns) / 1e6 for p in published for _, received in p.answers.values()]
            statuses = Counter(_status_name(status) for p in published for status, _ in p.answers.values())
            return ReplayReport(
                bag=str(plan.bag),
                image_topic=plan.image_topic,
                step=options.step,
                rate=options.rate,
                frames_planned=len(plan.frames),
                frames_published=len(published),
                frames_without_proposals=[p.frame.index for p in published if p.proposals_ns is None],
                frames_with_empty_proposals=[
                    p.frame.index for p in published if p.proposals_ns is not None and p.proposal_count == 0
                ],
                frames_missing_answers=[p.frame.index for p in published if p.missing_answers],
                frames_with_failed_answers=[
                    p.frame.index
                    for p in published
                    if any(status != AnswerStatus.OK for status, _ in p.answers.values())
                ],
                queries_planned=sum(len(p.frame.queries) for p in published),
                queries_sent=sum(len(p.sent_ns) for p in published),
                answers_received=sum(len(p.answers) for p in published),
                answer_statuses=dict(sorted(statuses.items())),
                timeouts=[
                    {"frame": p.frame.index, "stamp_ns": p.frame.stamp_ns, "missing": p.timeout}
                    for p in published
                    if p.timeout
                ],
                latency_ms={"proposals": _rounded_summary(proposal_ms), "answers": _rounded_summary(answer_ms)},
                foreign_messages=dict(self.foreign),
                recorded=dict(recorded),
                record=str(options.record) if options.record else None,
                wall_s=round(wall_s, 3),
                stopped=stopped,
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
        return (
            not self.stopped
            and self.frames_published == self.frames_planned
            and not self.timeouts
            and not self.frames_without_proposals
            and not self.frames_missing_answers
        )

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
            (
                "queries sent / answered",
                f"{self.queries_sent} / {self.answers_received} (planned {self.queries_planned})",
            ),
            ("answer statuses", ", ".join(f"{k} {v}" for k, v in self.answer_statuses.items()) or "-"),
            ("step timeouts", str(len(self.timeouts))),
            ("latency proposals (ms)", _latency(self.latency_ms["proposals"])),
            ("latency answers (ms)", _latency(self.latency_ms["answers"])),
            (
                "recorded",
                f"{self.record}: " + ", ".join(f"{t} {n}" for t, n in sorted(self.recorded.items()))
                if self.record
                else "-",
            ),
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
