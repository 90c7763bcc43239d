"""Telling a real backwards time jump from one badly stamped frame (ROS-free).

Frames from one camera arrive in stamp order. When a stamp goes backwards there are two very different causes:

* time really jumped: a bag replayed again from its start, a simulator reset, a clock stepped. Everything
  cached belongs to the old timeline and must go (tf2 clears its buffer the same way);
* one frame carried a wrong stamp (a camera clock glitch). Only that frame must go; if it was stamped in the
  future and nobody noticed, it would stay "newest" for good.

One backwards stamp cannot tell them apart, two consecutive ones can: after a jump the following frames
continue on the new, earlier timeline; after an outlier they continue where the old timeline left off.
:class:`StampTimeline` waits for that second frame before it decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class StampEvent(enum.Enum):
    """What one observed stamp means for the frames cached so far."""

    IN_ORDER = "in_order"  # nothing to do
    SUSPECT = "suspect"  # went backwards; keep the frame, the next stamp decides
    OUTLIER = "outlier"  # ``dropped`` was a mis-stamped frame: forget only it
    JUMP = "jump"  # time jumped back: forget every frame stamped before ``keep_from``


@dataclass(frozen=True)
class StampVerdict:
    """What one stamp meant (:class:`StampEvent`), and which frames the caller must forget because of it."""

    event: StampEvent
    dropped: int | None = None  # OUTLIER: the stamp of the frame to forget
    keep_from: int | None = None  # JUMP: the first stamp of the new timeline (kept, like the current one)
    jump_ns: int = 0  # JUMP: how far back time went


class StampTimeline:
    """Follows the stamps of one stream and classifies each new one (see the module docstring)."""

    def __init__(self) -> None:
        self._last: int | None = None  # newest stamp accepted on the current timeline
        self._before_last: int | None = None
        self._suspect: int | None = None  # a stamp that went backwards, awaiting the next frame

    def observe(self, stamp_ns: int) -> StampVerdict:
        """Classify the stream's next stamp and update the timeline."""
        last, suspect = self._last, self._suspect
        if last is None or (suspect is None and stamp_ns >= last):
            self._accept(stamp_ns)
            return StampVerdict(StampEvent.IN_ORDER)
        if suspect is None:
            self._suspect = stamp_ns
            return StampVerdict(StampEvent.SUSPECT)
        if stamp_ns >= last:  # the old timeline goes on: the suspect was stamped in the past
            self._suspect = None
            self._accept(stamp_ns)
            return StampVerdict(StampEvent.OUTLIER, dropped=suspect)
        if stamp_ns < suspect:  # yet another step back: judge on the next frame
            self._suspect = stamp_ns
            return StampVerdict(StampEvent.SUSPECT)
        # Two frames agree on an earlier timeline than ``last``.
        self._suspect = None
        if self._before_last is not None and suspect >= self._before_last:
            # Only ``last`` was ahead of both neighbours: it was stamped in the future.
            self._last, self._before_last = stamp_ns, suspect
            return StampVerdict(StampEvent.OUTLIER, dropped=last)
        self._last, self._before_last = stamp_ns, suspect
        return StampVerdict(StampEvent.JUMP, keep_from=suspect, jump_ns=last - suspect)

    def _accept(self, stamp_ns: int) -> None:
        self._before_last, self._last = self._last, stamp_ns


class HeldTimeline(Generic[T]):
    """A :class:`StampTimeline` for a store of frames: a frame whose stamp went back waits for the next one.

    The frame is held apart because a replayed bag reuses the first run's stamps and its frames must never be mixed with
    what the first run left behind.

    ``observe`` returns the verdict and the frames to store now, in order: none while a frame is held; then
    the held frame (unless it was the outlier) and the new one. The caller forgets what the verdict says
    (everything on JUMP, ``dropped`` on OUTLIER) *before* storing them.
    """

    def __init__(self) -> None:
        self._timeline = StampTimeline()
        self._held: tuple[int, T] | None = None

    def observe(self, stamp_ns: int, item: T) -> tuple[StampVerdict, list[tuple[int, T]]]:
        """Classify ``stamp_ns``; returns the verdict and the frames to store now (see the class docstring)."""
        verdict = self._timeline.observe(stamp_ns)
        held, self._held = self._held, None
        if verdict.event is StampEvent.SUSPECT:
            self._held = (stamp_ns, item)
            return verdict, []
        release = [held] if held is not None and held[0] != verdict.dropped else []
        return verdict, [*release, (stamp_ns, item)]
