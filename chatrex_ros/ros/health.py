"""Problem accounting and /diagnostics for the nodes.

A node never dies on a bad message: it logs the first occurrence of each cause (then at most every
``log_every_s``), counts every occurrence, and reports the counts on /diagnostics so nothing is lost silently.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node


class ProblemLog:
    """Counts problems by cause and logs each cause once (then throttled)."""

    def __init__(self, logger, log_every_s: float = 30.0) -> None:
        self._logger = logger
        self._log_every_s = log_every_s
        self._counts: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}
        self._last_message: dict[str, str] = {}
        self._lock = threading.Lock()

    def report(self, cause: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._counts[cause] += 1
            self._last_message[cause] = message
            last = self._last_logged.get(cause)
            if last is not None and now - last < self._log_every_s:
                return
            self._last_logged[cause] = now
            count = self._counts[cause]
        suffix = "" if count == 1 else f" ({count} times so far)"
        self._logger.warning(f"[{cause}] {message}{suffix}")

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def last_messages(self) -> dict[str, str]:
        with self._lock:
            return dict(self._last_message)


class Diagnostics:
    """Publishes one DiagnosticStatus for the node on /diagnostics at a fixed rate."""

    def __init__(self, node: Node, values: Callable[[], dict[str, object]], problems: ProblemLog, period_s: float = 1.0) -> None:
        self._node = node
        self._values = values
        self._problems = problems
        self._publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._name = f"{node.get_fully_qualified_name().lstrip('/')}"
        self._timer = node.create_timer(period_s, self.publish)
        self.level_override: tuple[int, str] | None = None

    def publish(self) -> None:
        values = self._values()
        problems = self._problems.counts()
        status = DiagnosticStatus(name=self._name, hardware_id=self._node.get_name())
        status.level, status.message = DiagnosticStatus.OK, "ok"
        if self.level_override is not None:
            status.level, status.message = self.level_override
        elif problems:
            status.level = DiagnosticStatus.WARN
            worst = max(problems, key=problems.get)
            status.message = f"{sum(problems.values())} problem(s); most: {worst} ({problems[worst]})"
        status.values = [KeyValue(key=str(k), value=_format(v)) for k, v in values.items()]
        status.values += [KeyValue(key=f"problem.{k}", value=str(v)) for k, v in sorted(problems.items())]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self._publisher.publish(array)


def _format(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
