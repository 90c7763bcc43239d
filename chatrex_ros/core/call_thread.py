"""One daemon thread that runs calls (model generations, drawing) one at a time and hands back futures.

Why not :class:`concurrent.futures.ThreadPoolExecutor`: its threads are joined when the interpreter exits, so a
generation stuck in a model kept a stopped node alive for a minute. A daemon thread is abandoned at exit; the
process ends within the shutdown timeout whatever the model is doing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

R = TypeVar("R")

_STOP = object()


class CallThread:
    """Runs submitted calls in order on one daemon thread.

    Every exception a call raises, BaseException included, lands in its future: the thread outlives it.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        """Queue ``fn(*args)``; the future holds its result or exception."""
        future: Future[R] = Future()
        self._calls.put((future, fn, args))
        return future

    def is_alive(self) -> bool:
        """False once the thread has stopped (after :meth:`stop`, or if it died)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Let the thread end after the call in progress; calls not started yet are cancelled."""
        self._calls.put(_STOP)

    def _run(self) -> None:
        while True:
            call = self._calls.get()
            if call is _STOP:
                break
            future, fn, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as error:  # SystemExit from a model is the model's failure, not ours
                future.set_exception(error)
            # Hold nothing between calls: a freed model must not live on in this frame's locals.
            del call, future, fn, args
        while True:  # cancel what was queued behind the stop
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            if call is not _STOP:
                call[0].cancel()
