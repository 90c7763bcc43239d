"""When each frame and query of a replay is due, and when a frame is complete; the publisher only publishes.

Timed mode publishes the frames on the bag's schedule divided by the rate, each frame's queries right after
it. Step mode publishes the next frame only when the previous one is complete (its proposals arrived, then
each of its queries was answered in turn), so a slow model cannot make the replay drop frames; the replay
clock is held meanwhile. A frame that exceeds its timeout is reported, never skipped silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial

from chatrex_ros.core.answering import QueryRequest
from chatrex_ros.replay.clock import ReplayClock
from chatrex_ros.replay.options import ReplayOptions
from chatrex_ros.replay.plan import ReplayFrame, ReplayPlan, frame_data
from chatrex_ros.replay.progress import FrameProgress, ReplayProgress


@dataclass(frozen=True)
class FrameDue:
    """Publish ``frame`` (its CDR bytes ``data``) once the monotonic clock reaches ``wall_ns``."""

    frame: ReplayFrame
    data: bytes
    wall_ns: int


@dataclass(frozen=True)
class QueryDue:
    """Ask ``request`` (id ``query_id``) about ``frame`` now."""

    frame: ReplayFrame
    query_id: str
    request: QueryRequest


class Pacer:
    """The replay's decisions, from the moment its clock starts (the graph is there, the recording open).

    Iterate :meth:`schedule` for what to publish next: between two items it waits for what step mode
    waits for, and reports the frames that time out. Then :meth:`drain` waits for what is still in flight.
    """

    def __init__(
        self,
        plan: ReplayPlan,
        options: ReplayOptions,
        progress: ReplayProgress,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.plan, self.options, self.progress, self.log = plan, options, progress, log
        self.clock = ReplayClock(options.rate, plan.frames[0].log_time_ns, time.monotonic_ns())

    def schedule(self) -> Generator[FrameDue | QueryDue, None, None]:
        """The frames and queries in publishing order, each yielded when it is due (frames: see ``wall_ns``)."""
        previous: ReplayFrame | None = None
        with closing(frame_data(self.plan)) as frames:
            for frame, data in frames:
                if self.options.step and previous is not None:
                    yield from self._finish_step(previous)
                    self.clock.release(time.monotonic_ns())
                yield FrameDue(frame, data, self.clock.wall_at(frame.log_time_ns))
                if self.options.step:  # hold /clock at the next frame until this one is complete
                    following = self.plan.frames[min(frame.index + 1, len(self.plan.frames) - 1)]
                    self.clock.hold(following.log_time_ns, time.monotonic_ns())
                else:
                    for query_id, request in frame.queries:
                        yield QueryDue(frame, query_id, request)
                previous = frame
        if self.options.step and previous is not None:
            yield from self._finish_step(previous)

    def _finish_step(self, frame: ReplayFrame) -> Iterator[QueryDue]:
        """Wait for the frame's proposals, then ask its queries one at a time (a queue never overflows)."""
        state = self.progress.frames[frame.index]
        deadline = time.monotonic() + self.options.frame_timeout_s
        if not self.progress.wait(lambda: state.proposals_ns is not None, deadline - time.monotonic()):
            self._report_timeout(frame, "proposals")
            return
        for query_id, request in frame.queries:
            yield QueryDue(frame, query_id, request)
            if not self.progress.wait(partial(_answered, state, query_id), deadline - time.monotonic()):
                self._report_timeout(frame, f"answer to {query_id}")
                return

    def _report_timeout(self, frame: ReplayFrame, what: str) -> None:
        self.progress.timed_out(frame.index, what)
        self.log(
            f"frame {frame.index} (stamp {frame.stamp_ns}): no {what} within {self.options.frame_timeout_s:g} s; "
            "moving on (reported, not dropped silently)"
        )

    def drain(self, expect_proposals: bool) -> None:
        """Timed mode, after the last frame: wait up to ``drain_s`` for outputs still in flight.

        The last frame is never superseded, so its proposals must come (when a proposal node is there at
        all: ``expect_proposals``); earlier frames may have been skipped by a busy proposal node, which is
        what timed mode measures. Step mode has nothing in flight: each frame was complete before the next.
        """
        if self.options.step:
            return
        last_state = self.progress.frames[-1]

        def settled() -> bool:
            answered = all(not p.sent_ns.keys() - p.answers.keys() for p in self.progress.frames)
            return answered and (last_state.proposals_ns is not None or not expect_proposals)

        self.progress.wait(settled, self.options.drain_s)


def _answered(state: FrameProgress, query_id: str) -> bool:
    return query_id in state.answers


def sleep_until(monotonic_ns: int) -> None:
    """Sleep in short slices so Ctrl-C is handled promptly."""
    while (remaining := monotonic_ns - time.monotonic_ns()) > 0:
        time.sleep(min(remaining / 1e9, 0.05))
