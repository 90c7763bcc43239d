"""Pairs camera frames with their proposals by exact stamp, in memory bounded by frame counts and bytes (ROS-free).

Images and proposals arrive on different topics and threads; the proposal node copies the image header, so
pairing is by exact stamp and a pair can never mix two frames.

Why more than a ring of recent images: a proposer slower than the camera works on one frame in several and
publishes its proposals seconds later. A ring long enough to still hold that frame would keep
``rate x latency`` full images (90 at 30 Hz and 3 s). Instead the proposer announces each frame when it
starts on it (:meth:`FrameCache.claim`), and the cache keeps four kinds of entries, each bounded by count:

* ``recent``: the newest images nobody claimed yet (a claim arrives a frame interval or so after its image);
* ``claimed``: frames the proposer is working on, held until their proposals arrive (image possibly still
  in flight: a claim is tiny and can overtake its image);
* ``answerable``: frames with image and proposals, in completion order; "newest" is the last completed one,
  so a single mis-stamped frame never wins by its stamp;
* ``orphans``: proposals whose image has not arrived (a fast proposer can beat a large image);
* ``kept``: the last frames a query was answered about (:meth:`FrameCache.keep`), so a follow-up question
  about the frame just seen finds it even after many newer frames got proposals;
* ``refused``: why the last proposal lists another node sent were refused (:meth:`FrameCache.refuse`), so a
  query about such a frame is told what was wrong instead of "no proposals came".

A stamp that jumps back (a bag replayed again, a simulator reset) clears the cache; one outlier stamp only
drops its own frame (:mod:`chatrex_ros.core.time_jumps`).

Counts alone do not bound memory: twenty 4K frames are 500 MB, and a camera may send larger ones. With a byte
budget (``max_bytes``), an image larger than the whole budget is refused (:class:`FrameTooLarge`), and when the
images held exceed it the least useful go first: unclaimed recent images, then older answerable frames, claimed
frames, frames kept for follow-ups, and the newest answerable frame last.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from chatrex_ros.core.time_jumps import HeldTimeline, StampEvent, StampVerdict

ImageT = TypeVar("ImageT")
ProposalsT = TypeVar("ProposalsT")
V = TypeVar("V")

CLAIMED_CAPACITY = 4
"""Frames in flight at the proposer that are held; one proposal node has one, a spare covers a second."""
ORPHAN_CAPACITY = 4
KEPT_CAPACITY = 4
"""Answered frames kept for follow-up questions."""
REFUSED_CAPACITY = 8
"""Refused proposal lists whose reasons are kept for the queries about their frames."""


@dataclass
class Frame(Generic[ImageT, ProposalsT]):
    """One stamp's image and proposals."""

    stamp_ns: int
    image: ImageT
    proposals: ProposalsT


@dataclass
class PairingStats:
    """Counters for /diagnostics: where frames went."""

    images: int = 0
    claims: int = 0
    proposals: int = 0
    proposals_refused: int = 0  # lists another node sent that failed validation (its fault, said on /diagnostics)
    paired: int = 0
    proposals_without_image: int = 0  # the image of a frame the proposer saw never reached us: lost frames
    claims_abandoned: int = 0  # claimed frames whose proposals never came (the proposer failed on them)
    evicted_for_bytes: int = 0  # images dropped to stay within the byte budget
    too_large: int = 0  # images refused for being larger than the whole budget
    time_jumps: int = 0
    outliers: int = 0
    events: list[StampVerdict] = field(default_factory=list)  # jumps and outliers since the last take_events()


class FrameTooLarge(ValueError):
    """An image larger than the cache's whole byte budget: refused, and nothing held is evicted for it."""


class FrameCache(Generic[ImageT, ProposalsT]):
    """Thread-safe pairing of images and proposals (see the module docstring).

    ``size_of`` gives an image's bytes for the ``max_bytes`` budget (both or neither).
    """

    def __init__(
        self,
        answerable: int = 8,
        recent: int = 4,
        max_bytes: int | None = None,
        size_of: Callable[[ImageT], int] | None = None,
    ) -> None:
        if answerable < 1 or recent < 1:
            raise ValueError(f"frame cache sizes must be >= 1, got answerable={answerable} recent={recent}")
        if (max_bytes is None) != (size_of is None) or (max_bytes is not None and max_bytes < 1):
            raise ValueError("a byte budget needs max_bytes >= 1 and size_of, together")
        self.answerable_capacity = answerable
        self.recent_capacity = recent
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._recent: OrderedDict[int, ImageT] = OrderedDict()
        self._claimed: OrderedDict[int, ImageT | None] = OrderedDict()
        self._orphans: OrderedDict[int, ProposalsT] = OrderedDict()
        self._answerable: OrderedDict[int, Frame[ImageT, ProposalsT]] = OrderedDict()
        self._kept: OrderedDict[int, Frame[ImageT, ProposalsT]] = OrderedDict()
        self._refused: OrderedDict[int, str] = OrderedDict()
        self.last_list_refused = False  # the newest proposal list received was refused
        self._evicted: deque[int] = deque(maxlen=256)  # answerable stamps evicted: "no longer cached", not "never"
        self._timeline: HeldTimeline[ImageT] = HeldTimeline()
        self._newest_image_ns: int | None = None
        self._first_image_ns: int | None = None  # proposals for frames before it were not ours to receive
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.stats = PairingStats()

    # ---- intake ----
    def add_image(self, stamp_ns: int, image: ImageT) -> StampVerdict:
        """Store an image; returns what its stamp meant (a jump clears the cache, an outlier drops one frame).

        An image whose stamp went backwards is held apart until the next one decides: a replayed bag reuses
        the first run's stamps, and its frames must never be paired with that run's proposals.
        """
        with self._changed:
            self.stats.images += 1
            size = self._size_of(image) if self._size_of is not None else 0
            if self.max_bytes is not None and size > self.max_bytes:
                self.stats.too_large += 1
                raise FrameTooLarge(
                    f"a {size / 2**20:.1f} MiB image exceeds the frame cache's whole budget of "
                    f"{self.max_bytes / 2**20:.1f} MiB"
                )
            verdict, store = self._timeline.observe(stamp_ns, image)
            if verdict.event is StampEvent.JUMP:
                self._forget(lambda stamp: True)
                self.stats.time_jumps += 1
                self.stats.events.append(verdict)
            elif verdict.event is StampEvent.OUTLIER:
                self._forget(lambda stamp: stamp == verdict.dropped)
                self.stats.outliers += 1
                self.stats.events.append(verdict)
            for stamp, held_or_new in store:
                if self._first_image_ns is None or verdict.event is StampEvent.JUMP:
                    self._first_image_ns = min(s for s, _ in store)
                self._newest_image_ns = stamp
                self._place_image(stamp, held_or_new)
            self._drop_hopeless_orphans()
            self._keep_within_budget()
            self._changed.notify_all()
            return verdict

    def claim(self, stamp_ns: int) -> None:
        """The proposer started on this frame: hold it until its proposals arrive."""
        with self._changed:
            self.stats.claims += 1
            if stamp_ns in self._answerable or stamp_ns in self._claimed:
                return
            if stamp_ns in self._orphans:  # proposals already here: the claim is late, nothing to hold
                return
            self._claimed[stamp_ns] = self._recent.pop(stamp_ns, None)
            while len(self._claimed) > CLAIMED_CAPACITY:
                self._claimed.popitem(last=False)
                self.stats.claims_abandoned += 1

    def add_proposals(self, stamp_ns: int, proposals: ProposalsT) -> None:
        """Store a frame's proposals (newest list wins): paired with its image if here, else held or counted missed."""
        with self._changed:
            self.stats.proposals += 1
            self.last_list_refused = False
            self._refused.pop(stamp_ns, None)
            if stamp_ns in self._answerable:  # a second proposer or a re-publication: the newest list wins
                self._answerable[stamp_ns].proposals = proposals
            elif self._claimed.get(stamp_ns) is not None:
                self._complete(stamp_ns, self._claimed.pop(stamp_ns), proposals)  # type: ignore[arg-type]
            elif stamp_ns in self._recent:
                self._claimed.pop(stamp_ns, None)
                self._complete(stamp_ns, self._recent.pop(stamp_ns), proposals)
            elif self._image_may_still_arrive(stamp_ns):
                self._claimed.pop(stamp_ns, None)
                self._orphans[stamp_ns] = proposals
                _cap(self._orphans, ORPHAN_CAPACITY)
            else:
                self._claimed.pop(stamp_ns, None)
                self._count_missed(stamp_ns)
            self._changed.notify_all()

    def refuse(self, stamp_ns: int, reason: str, *, publisher_fault: bool = True) -> None:
        """The proposal list for this frame was refused: remember why, and stop holding the frame for it.

        The frame's image stays, as a recent one: another proposer may still send a valid list. Without
        ``publisher_fault`` (the proposer said it cannot compute the frame) it is neither counted as refused nor
        does it make the newest list a refused one.
        """
        with self._changed:
            if publisher_fault:
                self.stats.proposals_refused += 1
                self.last_list_refused = True
            image = self._claimed.pop(stamp_ns, None)
            if image is not None:
                self._recent[stamp_ns] = image
                _cap(self._recent, self.recent_capacity)
            self._refused[stamp_ns] = reason
            self._refused.move_to_end(stamp_ns)
            _cap(self._refused, REFUSED_CAPACITY)
            self._changed.notify_all()

    def refusal(self, stamp_ns: int | None = None) -> tuple[int, str] | None:
        """(stamp, reason) of the refused list for this frame; for None, of the newest refused list if any."""
        with self._lock:
            if stamp_ns is None:
                return next(reversed(self._refused.items()), None)
            reason = self._refused.get(stamp_ns)
            return None if reason is None else (stamp_ns, reason)

    def keep(self, stamp_ns: int) -> None:
        """A query was answered about this frame: keep it for follow-ups (the last KEPT_CAPACITY)."""
        with self._lock:
            frame = self._answerable.get(stamp_ns) or self._kept.get(stamp_ns)
            if frame is None:
                return
            self._kept[stamp_ns] = frame
            self._kept.move_to_end(stamp_ns)
            _cap(self._kept, KEPT_CAPACITY)

    def was_evicted(self, stamp_ns: int) -> bool:
        """The frame had proposals but is no longer cached (newer frames took its place)."""
        with self._lock:
            return stamp_ns in self._evicted and self._lookup(stamp_ns) is None

    # ---- queries ----
    def wait_for(self, stamp_ns: int | None, timeout_s: float) -> Frame[ImageT, ProposalsT] | None:
        """The answerable frame at ``stamp_ns`` (None: the newest), waiting up to ``timeout_s`` for it.

        A named frame whose proposal list was refused ends the wait at once (None): nothing is coming for it.
        """

        def settled() -> bool:
            return self._lookup(stamp_ns) is not None or (stamp_ns is not None and stamp_ns in self._refused)

        with self._changed:
            self._changed.wait_for(settled, timeout=max(0.0, timeout_s))
            return self._lookup(stamp_ns)

    def newest_image(self, timeout_s: float) -> int | None:
        """The stamp of the newest image held, waiting up to ``timeout_s`` for one (on-demand proposals name it)."""
        with self._changed:
            self._changed.wait_for(lambda: self._newest_held() is not None, timeout=max(0.0, timeout_s))
            return self._newest_held()

    def image(self, stamp_ns: int) -> ImageT | None:
        """The image held for this stamp, with or without proposals."""
        with self._lock:
            return self._held_images().get(stamp_ns)

    def knows(self, stamp_ns: int | None = None) -> bool:
        """Whether anything of that frame (any frame, for None) is here or announced."""
        with self._lock:
            if stamp_ns is None:
                return bool(self._recent or self._claimed or self._answerable or self._orphans)
            return any(stamp_ns in store for store in self._stores())

    def skipped(self, stamp_ns: int) -> bool:
        """True when the proposer evidently passed this frame by, so no proposals will come for it.

        That is: its image is here, the proposer announces its frames, has announced or answered a later one, and
        never announced this one.
        """
        with self._lock:
            if self.stats.claims == 0 or stamp_ns not in self._recent:
                return False
            later = [s for s in (*self._claimed, *self._answerable) if s > stamp_ns]
            return bool(later)

    def image_may_still_arrive(self, stamp_ns: int) -> bool:
        """Whether this frame's image can still come: no later image has arrived yet."""
        with self._lock:
            return self._image_may_still_arrive(stamp_ns)

    def held_bytes(self) -> int:
        """Bytes of the images held (0 without a budget), for /diagnostics."""
        with self._lock:
            return self._held_bytes()

    def sizes(self) -> dict[str, int]:
        """Entries held per kind (answerable, claimed, recent, orphans, kept, refused), for /diagnostics."""
        with self._lock:
            return {
                "answerable": len(self._answerable),
                "claimed": len(self._claimed),
                "recent": len(self._recent),
                "orphans": len(self._orphans),
                "kept": len(self._kept),
                "refused": len(self._refused),
            }

    def take_events(self) -> list[StampVerdict]:
        """Jumps and outliers since the last call (for logging them once, outside the lock)."""
        with self._lock:
            events, self.stats.events = self.stats.events, []
            return events

    # ---- internals (lock held) ----
    def _place_image(self, stamp_ns: int, image: ImageT) -> None:
        if stamp_ns in self._answerable:
            self._answerable[stamp_ns].image = image
        elif stamp_ns in self._orphans:
            self._complete(stamp_ns, image, self._orphans.pop(stamp_ns))
        elif stamp_ns in self._claimed:
            self._claimed[stamp_ns] = image
        else:
            self._recent[stamp_ns] = image
            _cap(self._recent, self.recent_capacity)

    def _complete(self, stamp_ns: int, image: ImageT, proposals: ProposalsT) -> None:
        self._answerable[stamp_ns] = Frame(stamp_ns, image, proposals)
        self._answerable.move_to_end(stamp_ns)
        while len(self._answerable) > self.answerable_capacity:
            self._evicted.append(self._answerable.popitem(last=False)[0])
        self.stats.paired += 1

    def _held_images(self) -> dict[int, ImageT]:
        """Every image held, once per stamp (a kept frame is usually also answerable)."""
        images: dict[int, ImageT] = {s: f.image for s, f in self._kept.items()}
        images.update({s: f.image for s, f in self._answerable.items()})
        images.update({s: i for s, i in self._claimed.items() if i is not None})
        images.update(self._recent)
        return images

    def _held_bytes(self) -> int:
        if self._size_of is None:
            return 0
        return sum(self._size_of(image) for image in self._held_images().values())

    def _keep_within_budget(self) -> None:
        """Drop the least useful images until the held ones fit ``max_bytes`` (the module docstring's order)."""
        if self.max_bytes is None or self._size_of is None:
            return
        size_of = self._size_of
        sizes = {stamp: size_of(image) for stamp, image in self._held_images().items()}
        total = sum(sizes.values())
        newest_answerable = next(reversed(self._answerable), None)
        victims = [
            *self._recent,
            *(s for s in self._answerable if s != newest_answerable and s not in self._kept),
            *(s for s, image in self._claimed.items() if image is not None),
            *(s for s in self._kept if s != newest_answerable),
            *([newest_answerable] if newest_answerable is not None else []),
        ]
        for stamp in victims:
            if total <= self.max_bytes:
                return
            if stamp not in sizes or stamp == self._newest_image_ns:  # the image just received stays: it fits
                continue
            total -= sizes.pop(stamp)
            self.stats.evicted_for_bytes += 1
            for store in (self._recent, self._claimed, self._answerable, self._kept):
                store.pop(stamp, None)
            self._evicted.append(stamp)  # "no longer cached", and its late proposals are no lost image

    def _newest_held(self) -> int | None:
        stamp = self._newest_image_ns
        return stamp if stamp is not None and stamp in self._held_images() else None

    def _lookup(self, stamp_ns: int | None) -> Frame[ImageT, ProposalsT] | None:
        if stamp_ns is None:
            return next(reversed(self._answerable.values()), None)
        return self._answerable.get(stamp_ns) or self._kept.get(stamp_ns)

    def _image_may_still_arrive(self, stamp_ns: int) -> bool:
        """Frames arrive in stamp order, so once a later image is here an earlier one never will."""
        return self._newest_image_ns is None or stamp_ns > self._newest_image_ns

    def _drop_hopeless_orphans(self) -> None:
        for stamp in [s for s in self._orphans if not self._image_may_still_arrive(s)]:
            del self._orphans[stamp]
            self._count_missed(stamp)

    def _count_missed(self, stamp_ns: int) -> None:
        """Count an image the proposer saw and this cache never got.

        Frames from before this node's first image (it was still starting, its subscription not yet matched) do
        not count.
        """
        if stamp_ns in self._evicted:
            return
        if self._first_image_ns is not None and stamp_ns >= self._first_image_ns:
            self.stats.proposals_without_image += 1

    def _stores(self) -> tuple[OrderedDict[int, Any], ...]:
        return (self._recent, self._claimed, self._answerable, self._orphans, self._kept, self._refused)

    def _forget(self, doomed: Callable[[int], bool]) -> None:
        for store in self._stores():
            for stamp in [s for s in store if doomed(s)]:
                del store[stamp]
        self._evicted = deque((s for s in self._evicted if not doomed(s)), maxlen=self._evicted.maxlen)


def _cap(store: OrderedDict[int, V], capacity: int) -> None:
    while len(store) > capacity:
        store.popitem(last=False)
