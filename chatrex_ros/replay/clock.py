"""The replay clock: bag time as a function of monotonic wall time, which /clock publishes."""

from __future__ import annotations

import math
import threading

from chatrex_ros.replay.options import ReplayError


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
        """Bag time (ns) at monotonic wall time ``wall_ns``."""
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
        """Run on from where the clock stands at ``wall_ns``."""
        with self._lock:
            current = self._now(wall_ns)
            self._bag_anchor, self._wall_anchor, self._hold = current, wall_ns, None
