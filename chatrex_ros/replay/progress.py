"""What a replay published and what came back: thread-safe bookkeeping, the recording's time axis, the report."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chatrex_ros.core.answering import AnswerStatus, status_name
from chatrex_ros.eval.metrics import latency_summary
from chatrex_ros.replay.options import ReplayOptions
from chatrex_ros.replay.plan import ReplayFrame, ReplayPlan
from chatrex_ros.replay.report import ReplayReport, basic_performance


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
        """Ids of the frame's planned queries that have no answer (yet)."""
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
        """Frame ``index`` went out at ``wall_ns``."""
        with self._changed:
            progress = self.frames[index]
            progress.published_ns = wall_ns
            self._by_stamp[progress.frame.stamp_ns] = progress  # a repeated stamp: the newest frame owns it
            self._changed.notify_all()

    def query_sent(self, index: int, query_id: str, wall_ns: int) -> None:
        """Query ``query_id`` about frame ``index`` went out at ``wall_ns``."""
        with self._changed:
            progress = self.frames[index]
            progress.sent_ns[query_id] = wall_ns
            self._by_query[query_id] = progress

    def proposals_received(self, stamp_ns: int, count: int, wall_ns: int) -> FrameProgress | None:
        """A proposal list about the frame stamped ``stamp_ns`` arrived; the first one per frame counts."""
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
        """Frame ``index`` ran out of time waiting for ``reason`` (e.g. ``proposals``)."""
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
        """The summary of the replay so far: ``recorded`` counts messages per topic, ``stopped`` says why it ended."""
        with self._changed:
            sent = [(p, p.published_ns) for p in self.frames if p.published_ns is not None]
            published = [p for p, _ in sent]
            proposal_ms = [(p.proposals_ns - at) / 1e6 for p, at in sent if p.proposals_ns is not None]
            answer_ms = [(received - at) / 1e6 for p, at in sent for _, received in p.answers.values()]
            statuses = Counter(status_name(status) for p in published for status, _ in p.answers.values())
            ros2_benchmark = {
                "proposals": basic_performance(  # a frame in, its proposal list out
                    {p.frame.index: at for p, at in sent},
                    {p.frame.index: p.proposals_ns for p, _ in sent if p.proposals_ns is not None},
                ),
                "answers": basic_performance(  # a query in, its answer out; latency from the frame's publication
                    {q: wall for p, _ in sent for q, wall in p.sent_ns.items()},
                    {q: received for p, _ in sent for q, (_, received) in p.answers.items()},
                    {q: at for p, at in sent for q in p.sent_ns},
                ),
                "clock": "system clock ns: publication (before publish), DDS receive timestamps",
            }
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
                ros2_benchmark=ros2_benchmark,
            )


def _rounded_summary(samples_ms: Sequence[float]) -> dict[str, float | int]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in latency_summary(samples_ms).items()}
