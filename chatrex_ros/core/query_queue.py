"""A bounded FIFO of queries whose deadlines run while they wait.

Why not :class:`queue.Queue`: a query behind a long generation must be answered TIMEOUT when its own deadline
passes, not when the worker finally reaches it, so waiting items must be removable by deadline. Every item
leaves exactly once: through :meth:`QueryQueue.get` (to be served), :meth:`QueryQueue.expire` (to be
answered TIMEOUT) or :meth:`QueryQueue.remove` (cancelled), never twice.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class _Waiting(Generic[T]):
    item: T
    deadline: float  # time.monotonic() seconds


class QueryQueue(Generic[T]):
    """Thread-safe bounded FIFO; :meth:`put` refuses instead of blocking when full (the caller answers BUSY)."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"a query queue holds at least one query, got maxsize={maxsize}")
        self.maxsize = maxsize
        self._items: collections.deque[_Waiting[T]] = collections.deque()
        self._ready = threading.Condition()

    def put(self, item: T, deadline: float) -> bool:
        """Append ``item``; False (and nothing queued) when ``maxsize`` items already wait."""
        with self._ready:
            if len(self._items) >= self.maxsize:
                return False
            self._items.append(_Waiting(item, deadline))
            self._ready.notify()
            return True

    def get(self, timeout: float) -> T | None:
        """The oldest waiting item, waiting up to ``timeout`` seconds for one; None if none came."""
        end = time.monotonic() + timeout
        with self._ready:
            while not self._items:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._ready.wait(left)
            return self._items.popleft().item

    def expire(self, now: float) -> list[T]:
        """Remove and return every waiting item whose deadline is at or before ``now``, oldest first."""
        with self._ready:
            expired = [w.item for w in self._items if w.deadline <= now]
            if expired:
                self._items = collections.deque(w for w in self._items if w.deadline > now)
            return expired

    def remove(self, item: T) -> bool:
        """Take ``item`` out of the queue (a cancelled query); False when it is not waiting (any more)."""
        with self._ready:
            for place, waiting in enumerate(self._items):
                if waiting.item is item:  # identity: two equal queries are still two queries
                    del self._items[place]
                    return True
            return False

    def position(self, item: T) -> int:
        """1 for the item served next, 2 for the one after it...; 0 when ``item`` is not waiting."""
        with self._ready:
            for place, waiting in enumerate(self._items, start=1):
                if waiting.item is item:
                    return place
            return 0

    def drain(self) -> list[T]:
        """Remove and return everything waiting (at shutdown, to answer each item once)."""
        with self._ready:
            items = [w.item for w in self._items]
            self._items.clear()
            return items

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)
