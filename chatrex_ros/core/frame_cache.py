"""A small bounded cache that pairs camera frames with their proposals by exact stamp.

Images and proposals arrive on different topics and threads; a query names a frame by stamp or asks for the
newest frame that has both. Pairing is by exact stamp (the proposal node copies the image header), so no
approximate-time synchroniser is needed and a pair can never mix two frames.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

ImageT = TypeVar("ImageT")
ProposalsT = TypeVar("ProposalsT")


@dataclass
class Frame(Generic[ImageT, ProposalsT]):
    """One stamp's image and proposals; either may still be missing."""

    stamp_ns: int
    image: ImageT | None = None
    proposals: ProposalsT | None = None

    @property
    def complete(self) -> bool:
        return self.image is not None and self.proposals is not None


class FrameCache(Generic[ImageT, ProposalsT]):
    """Thread-safe, keeps the ``capacity`` newest stamps; older ones are evicted first."""

    def __init__(self, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"frame cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._frames: dict[int, Frame[ImageT, ProposalsT]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.images_seen = 0

    def add_image(self, stamp_ns: int, image: ImageT) -> None:
        with self._changed:
            self._frame(stamp_ns).image = image
            self.images_seen += 1
            self._changed.notify_all()

    def add_proposals(self, stamp_ns: int, proposals: ProposalsT) -> None:
        with self._changed:
            self._frame(stamp_ns).proposals = proposals
            self._changed.notify_all()

    def get(self, stamp_ns: int) -> Frame[ImageT, ProposalsT] | None:
        with self._lock:
            return self._frames.get(stamp_ns)

    def newest_complete(self) -> Frame[ImageT, ProposalsT] | None:
        with self._lock:
            return self._newest_complete()

    def wait_for(self, stamp_ns: int | None, timeout_s: float) -> Frame[ImageT, ProposalsT] | None:
        """The complete frame at ``stamp_ns`` (None: the newest complete one), waiting up to ``timeout_s``."""
        with self._changed:
            self._changed.wait_for(lambda: self._lookup(stamp_ns) is not None, timeout=max(0.0, timeout_s))
            return self._lookup(stamp_ns)

    def has_image(self, stamp_ns: int | None = None) -> bool:
        with self._lock:
            if stamp_ns is None:
                return any(f.image is not None for f in self._frames.values())
            frame = self._frames.get(stamp_ns)
            return frame is not None and frame.image is not None

    def stamps(self) -> list[int]:
        with self._lock:
            return list(self._frames)

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def _lookup(self, stamp_ns: int | None) -> Frame[Any, Any] | None:
        if stamp_ns is None:
            return self._newest_complete()
        frame = self._frames.get(stamp_ns)
        return frame if frame is not None and frame.complete else None

    def _newest_complete(self) -> Frame[Any, Any] | None:
        complete = [stamp for stamp, frame in self._frames.items() if frame.complete]
        return self._frames[max(complete)] if complete else None

    def _frame(self, stamp_ns: int) -> Frame[Any, Any]:
        frame = self._frames.get(stamp_ns)
        if frame is None:
            frame = self._frames[stamp_ns] = Frame(stamp_ns)
            # Evict by stamp, not arrival: a late, older stamp is the first to go (possibly this one).
            while len(self._frames) > self.capacity:
                del self._frames[min(self._frames)]
        return frame
