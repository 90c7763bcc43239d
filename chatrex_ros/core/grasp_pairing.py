"""Which detection and which depth frame a grasp target is computed from (ROS-free).

``choose_detection`` picks one detection of an answer; ``DepthStore`` keeps depth frames by stamp long enough
for a language model's answer (seconds late) to still find its frame.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from chatrex_ros.core.frame_cache import FrameTooLarge
from chatrex_ros.core.grasp import REASON_NO_DETECTION
from chatrex_ros.core.time_jumps import HeldTimeline, StampEvent, StampVerdict
from chatrex_ros.core.types import Detection

SELECTIONS = ("highest_score", "phrase", "index")

T = TypeVar("T")


def choose_detection(
    detections: Sequence[Detection], selection: str, phrase: str = "", proposal_index: int = -1
) -> tuple[Detection | None, str]:
    """(detection, "") or (None, reason): the detection of an answer a grasp targets.

    highest_score: the best UPN score (ChatRex does not score its choices; ties keep answer order).
    phrase: exact label matches (case and spacing ignored) win over labels that contain the phrase as whole
    words ("mug" matches "the red mug", not "mugs"); the best score among them.
    index: the detection of that proposal index.
    """
    if not detections:
        return None, REASON_NO_DETECTION
    if selection == "highest_score":
        candidates = list(detections)
    elif selection == "phrase":
        wanted = _words(phrase)
        if not wanted:
            raise ValueError("selection 'phrase' needs a non-empty phrase")
        exact = [d for d in detections if _words(d.label) == wanted]
        candidates = exact or [d for d in detections if _contains_words(_words(d.label), wanted)]
        if not candidates:
            return None, f"{REASON_NO_DETECTION} for phrase {phrase!r}"
    elif selection == "index":
        candidates = [d for d in detections if d.proposal_index == proposal_index]
        if not candidates:
            return None, f"{REASON_NO_DETECTION} with proposal index {proposal_index}"
    else:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    return max(candidates, key=lambda d: d.score), ""  # max keeps the first of equal scores


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.lower().split())


def _contains_words(label: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
    n = len(wanted)
    return any(label[i : i + n] == wanted for i in range(len(label) - n + 1))


class DepthStore(Generic[T]):
    """Depth frames by stamp: a ring of the most recent ones plus a few pinned ones.

    Why pinning: at 30 fps a ring that covers a 5 s model latency holds 150 frames; only the frames that got
    proposals can be asked about, so those are pinned (``pin``) when their proposals arrive and the ring stays
    small. A pin for a frame that has not arrived yet is remembered until a newer frame shows it never will.
    Frames from one publisher arrive in stamp order, which ``may_still_arrive`` relies on; a stamp that jumps
    back (a bag replayed again) empties the store, one mis-stamped frame is dropped
    (:mod:`chatrex_ros.core.time_jumps`).

    With a byte budget (``max_bytes``, ``size_of`` giving a frame's bytes), a frame larger than the whole
    budget is refused (:class:`~chatrex_ros.core.frame_cache.FrameTooLarge`), and while the frames held exceed
    it the oldest recent ones go first, then the oldest pinned ones; the newest frame always stays.
    """

    def __init__(
        self, recent: int, pinned: int, max_bytes: int | None = None, size_of: Callable[[T], int] | None = None
    ) -> None:
        if recent < 1:
            raise ValueError(f"the depth ring must hold at least 1 frame, got {recent}")
        if pinned < 0:
            raise ValueError(f"pinned frames must be >= 0, got {pinned}")
        if (max_bytes is None) != (size_of is None) or (max_bytes is not None and max_bytes < 1):
            raise ValueError("a byte budget needs max_bytes >= 1 and size_of, together")
        self.max_bytes = max_bytes
        self._size_of = size_of
        self.evicted_for_bytes = 0
        self._recent: deque[tuple[int, T]] = deque(maxlen=recent)
        self._pinned: dict[int, T] = {}
        self._pinned_capacity = pinned
        self._wanted: deque[_Wish] = deque(maxlen=max(1, 2 * pinned))  # claims whose nearest frame may still come
        self.newest_ns: int | None = None
        self.received = 0
        self._timeline: HeldTimeline[T] = HeldTimeline()
        self._missed: deque[int] = deque(maxlen=64)
        self._late_claims: deque[int] = deque(maxlen=64)
        self._unpinned: deque[int] = deque(maxlen=64)  # pinned frames pushed out by newer claims

    def add(self, stamp_ns: int, item: T) -> StampVerdict:
        """Store a frame; returns what its stamp meant.

        A frame whose stamp went back is held apart until the next one shows whether time jumped (the store
        empties) or that frame was mis-stamped (it is dropped).
        """
        self.received += 1
        if self.max_bytes is not None and self._size_of is not None and self._size_of(item) > self.max_bytes:
            raise FrameTooLarge(
                f"a {self._size_of(item) / 2**20:.1f} MiB depth frame exceeds the depth buffer's whole budget of "
                f"{self.max_bytes / 2**20:.1f} MiB"
            )
        verdict, store = self._timeline.observe(stamp_ns, item)
        if verdict.event is StampEvent.JUMP:
            self._recent.clear()
            self._pinned.clear()
            self._wanted.clear()
            self.newest_ns = None
        elif verdict.event is StampEvent.OUTLIER:
            self._recent = deque(((s, i) for s, i in self._recent if s != verdict.dropped), maxlen=self._recent.maxlen)
            self._pinned.pop(verdict.dropped, None)  # type: ignore[arg-type]
            self.newest_ns = max((s for s, _ in self._recent), default=None)
        for stamp, held_or_new in store:
            self._store(stamp, held_or_new)
        self._keep_within_budget()
        return verdict

    def held_bytes(self) -> int:
        """Bytes of the frames held (0 without a budget), for /diagnostics."""
        if self._size_of is None:
            return 0
        size_of = self._size_of
        return sum(size_of(item) for item in self._held().values())

    def _held(self) -> dict[int, T]:
        held = dict(self._pinned)
        held.update(self._recent)
        return held

    def _keep_within_budget(self) -> None:
        if self.max_bytes is None or self._size_of is None:
            return
        size_of = self._size_of
        total = self.held_bytes()
        newest = self._recent[-1][0] if self._recent else None
        while total > self.max_bytes:
            victim = next((s for s, _ in self._recent if s != newest and s not in self._pinned), None)
            if victim is None:
                victim = min((s for s in self._pinned if s != newest), default=None)
            if victim is None:
                return
            item = self._held()[victim]
            self._recent = deque(((s, i) for s, i in self._recent if s != victim), maxlen=self._recent.maxlen)
            self._pinned.pop(victim, None)
            total -= size_of(item)
            self.evicted_for_bytes += 1

    def _store(self, stamp_ns: int, item: T) -> None:
        self._recent.append((stamp_ns, item))
        self.newest_ns = stamp_ns if self.newest_ns is None else max(self.newest_ns, stamp_ns)
        for wish in self._wanted:  # a claim keeps one frame pinned: the nearest to its stamp so far
            distance = abs(wish.stamp - stamp_ns)
            if distance <= wish.tolerance and (wish.pinned is None or distance < abs(wish.pinned - wish.stamp)):
                if wish.pinned is not None:
                    self._pinned.pop(wish.pinned, None)
                wish.pinned = stamp_ns
                self._pin(stamp_ns, item)
        # A wish no later frame can fulfil is dropped; remembered, so a late answer can say its frame never came.
        for wish in self._wanted:
            if wish.stamp + wish.tolerance < self.newest_ns and self.find(wish.stamp, wish.tolerance) is None:
                self._missed.append(wish.stamp)
        self._wanted = deque(
            (w for w in self._wanted if w.stamp + w.tolerance >= self.newest_ns and w.pinned != w.stamp),
            maxlen=self._wanted.maxlen,
        )

    def never_arrived(self, stamp_ns: int) -> bool:
        """A frame that was pinned before it arrived, and then never did (lost by the reader or on the way)."""
        return stamp_ns in self._missed

    def unpinned_for_newer(self, stamp_ns: int, tolerance_ns: int = 0) -> bool:
        """A frame pinned for this stamp was pushed out by newer claims (more claims waiting than pinned frames)."""
        return any(abs(s - stamp_ns) <= tolerance_ns for s in self._unpinned)

    def claimed_too_late(self, stamp_ns: int) -> bool:
        """A frame claimed only after it had left the ring (the ring covers less than the claim's delay)."""
        return stamp_ns in self._late_claims

    def pin(self, stamp_ns: int, tolerance_ns: int = 0) -> None:
        """Keep the frame nearest to ``stamp_ns`` within ``tolerance_ns``, now or when it arrives.

        One frame per claim: pinning every frame of a wide tolerance would let a few claims push out each other's
        frames (pinned capacity).
        """
        if self._pinned_capacity == 0:
            return
        nearest = self.find(stamp_ns, tolerance_ns)
        if nearest is not None:
            self._pin(*nearest)
            if nearest[0] == stamp_ns:
                return  # its own frame: nothing nearer can come
        if self.may_still_arrive(stamp_ns, tolerance_ns):
            self._wanted.append(_Wish(stamp_ns, tolerance_ns, None if nearest is None else nearest[0]))
        elif nearest is None:
            oldest = min((s for s, _ in self._recent), default=None)
            if oldest is not None and stamp_ns + tolerance_ns < oldest:
                self._late_claims.append(stamp_ns)  # older than the whole ring: it was there, the claim came late
            else:
                self._missed.append(stamp_ns)  # frames on both sides are here, this one is not: it never arrived

    def find(self, stamp_ns: int, tolerance_ns: int = 0) -> tuple[int, T] | None:
        """(stamp, frame) nearest to ``stamp_ns`` within the tolerance, or None."""
        best: tuple[int, int, T] | None = None
        for stamp, item in itertools.chain(self._recent, self._pinned.items()):
            distance = abs(stamp - stamp_ns)
            if distance <= tolerance_ns and (best is None or distance < best[0]):
                best = (distance, stamp, item)
        return None if best is None else (best[1], best[2])

    def may_still_arrive(self, stamp_ns: int, tolerance_ns: int = 0) -> bool:
        """False once a frame newer than the tolerance window was seen: frames arrive in stamp order."""
        return self.newest_ns is None or self.newest_ns <= stamp_ns + tolerance_ns

    @property
    def pinned_count(self) -> int:
        """How many frames are pinned now."""
        return len(self._pinned)

    def __len__(self) -> int:
        return len(self._recent)

    def _pin(self, stamp_ns: int, item: T) -> None:
        self._pinned[stamp_ns] = item
        while len(self._pinned) > self._pinned_capacity:
            oldest = min(self._pinned)  # the oldest frame is the least likely to be asked about
            del self._pinned[oldest]
            self._unpinned.append(oldest)


@dataclass
class _Wish:
    """A claim whose nearest depth frame may still arrive, and the frame pinned for it so far."""

    stamp: int
    tolerance: int
    pinned: int | None
