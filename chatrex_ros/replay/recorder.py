"""The recording: what a replay published and received, as CDR messages in a new rosbag2, on its own thread.

Its time axis is the image stamps' axis (see :meth:`chatrex_ros.replay.progress.ReplayProgress.recording_time_ns`),
so ``chatrex-ros eval --answers`` scores the bag and measures latency as log time minus header stamp.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from pathlib import Path

from chatrex_ros.eval.bagio import BagWriter, make_typestore

QUERY_TYPE = "chatrex_ros/msg/Query"
"""The message type the recording logs the replay's queries under."""


class Recorder:
    """CDR messages into a new bag, written by one thread of its own.

    sqlite3 connections only work on the thread that opened them, and both the executor (outputs) and the
    replay loop (images, queries) record; a queue also keeps re-serialisation off the executor thread.
    A write that fails stops recording and is reported by :attr:`error` (the replay stops on it).
    """

    def __init__(self, path: Path, storage: str) -> None:
        self.typestore = make_typestore(require_ours=True)
        self.counts: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[str, str, bytes, int] | None] = queue.Queue()
        opened = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(path, storage, opened), name="replay_recorder", daemon=True
        )
        self._thread.start()
        opened.wait()
        if self.error is not None:
            raise self.error

    def _run(self, path: Path, storage: str, opened: threading.Event) -> None:
        try:
            writer = BagWriter(path, storage, self.typestore)
        except BaseException as error:  # handed to the constructor, which raises it
            self.error = error
            opened.set()
            return
        opened.set()
        try:
            while (item := self._queue.get()) is not None:
                if self.error is not None:
                    continue
                topic, msgtype, data, log_time_ns = item
                try:
                    writer.write(topic, msgtype, self.typestore.deserialize_cdr(data, msgtype), log_time_ns)
                    self.counts[topic] += 1
                except Exception as error:
                    self.error = error
        finally:
            writer.close()

    def write(self, topic: str, msgtype: str, data: bytes, log_time_ns: int) -> None:
        """Queue one CDR message of type ``msgtype`` for ``topic`` at ``log_time_ns``; never blocks."""
        self._queue.put((topic, msgtype, data, int(log_time_ns)))

    def close(self) -> None:
        """Write what is queued, then close the bag."""
        self._queue.put(None)
        self._thread.join()
