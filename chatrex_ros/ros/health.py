"""Problem accounting and /diagnostics for the nodes.

A node never dies on a bad message: it logs the first occurrence of each cause (then at most every
``log_every_s``), counts every occurrence, and reports the counts on /diagnostics so nothing is lost silently.
Silence is reported too: an input that delivers nothing (:class:`InputWatch`), or a setup that cannot answer,
is a *condition* with a level and a message naming the topic and the likely fix; conditions are logged when
they start (then throttled) and when they clear. Messages quote what publishers sent (query ids, phrases, frame
ids, status messages), so every line :class:`ProblemLog` writes passes :func:`~chatrex_ros.core.text.printable`:
one line, control characters escaped, at most :data:`LOG_LINE_LIMIT` characters.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.event_handler import QoSMessageLostInfo, SubscriptionEventCallbacks
from rclpy.node import Node

from chatrex_ros.core.text import printable

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
PROBLEM_WARN_S = 30.0
"""How long after its last new problem a node still reports WARN."""

FASTDDS_PROFILE_HINT = (
    "large frames leave Fast DDS shared memory without the package's profile: start the camera driver with "
    "FASTDDS_DEFAULT_PROFILES_FILE=<chatrex_ros share>/config/fastdds.xml (on Jazzy: FASTRTPS_DEFAULT_PROFILES_FILE; "
    "docs: 'Fast DDS profile')"
)


LOG_LINE_LIMIT = 500
"""Longest line :class:`ProblemLog` writes, in characters; a longer message is cut, saying by how much."""


class ProblemLog:
    """Counts problems by cause and logs each cause once (then throttled); every line is made safe to log."""

    def __init__(self, logger, log_every_s: float = 30.0) -> None:
        self._logger = logger
        self._log_every_s = log_every_s
        self._counts: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}
        self._lock = threading.Lock()

    def report(self, cause: str, message: str, count: int = 1) -> None:
        """Count ``count`` occurrences of ``cause``; log ``message`` if the cause was not logged lately."""
        with self._lock:
            self._counts[cause] += count
            if not self._due(cause):
                return
            total = self._counts[cause]
        suffix = "" if total == 1 else f" ({total} times so far)"
        # The count stays readable however long the message: the message is cut, not the suffix.
        self._logger.warning(printable(f"[{cause}] {message}", LOG_LINE_LIMIT - len(suffix)) + suffix)

    def log_condition(self, cause: str, level: bytes, message: str) -> None:
        """Log a lasting condition when it starts, then at most every ``log_every_s``."""
        with self._lock:
            if not self._due(cause):
                return
        log = self._logger.error if level >= ERROR else self._logger.warning
        log(printable(f"[{cause}] {message}", LOG_LINE_LIMIT))

    def clear_condition(self, cause: str, message: str) -> None:
        """Log ``message`` once when a logged condition ends, so the next start of it logs again at once."""
        with self._lock:
            if self._last_logged.pop(cause, None) is None:
                return
        self._logger.info(printable(f"[{cause}] {message}", LOG_LINE_LIMIT))

    def counts(self) -> dict[str, int]:
        """Occurrences per cause since start (a copy)."""
        with self._lock:
            return dict(self._counts)

    def _due(self, cause: str) -> bool:
        now = time.monotonic()
        last = self._last_logged.get(cause)
        if last is not None and now - last < self._log_every_s:
            return False
        self._last_logged[cause] = now
        return True


@dataclass(frozen=True)
class Condition:
    """A lasting state worth a WARN or ERROR: ``cause`` is its stable key for logs and tests."""

    level: bytes  # DiagnosticStatus.WARN / ERROR (a ``byte`` field)
    cause: str
    message: str


class LossCounter:
    """Counts the samples the middleware reports lost on one subscription (where the RMW reports them).

    A reliable KEEP_LAST reader can still lose samples under load; when Fast DDS reports it, the count goes to
    /diagnostics (through the problem counts) and the log, with ``why`` as the likely cause and fix.
    """

    def __init__(self, what: str, why: str, problems: ProblemLog) -> None:
        self.what = what
        self.why = why
        self.topic = ""  # resolved name, set by attach()
        self.lost = 0
        self._problems = problems
        self._received = lambda: 0
        self._lock = threading.Lock()

    def event_callbacks(self) -> SubscriptionEventCallbacks:
        """The callbacks to pass to ``create_subscription`` so lost samples are counted."""
        return SubscriptionEventCallbacks(message_lost=self._on_lost)

    def attach(self, topic: str, received: Callable[[], int] | None = None) -> None:
        """Record the resolved topic name (and how to read the received count) for the report."""
        self.topic = topic
        if received is not None:
            self._received = received

    def _on_lost(self, info: QoSMessageLostInfo) -> None:
        change = int(info.total_count_change)
        with self._lock:
            self.lost += change
            lost = self.lost
        self._problems.report(
            f"lost_{self.what.replace(' ', '_')}",
            f"the middleware lost {lost} sample(s) on {self.topic} ({self._received()} received): {self.why}",
            count=change,
        )


class InputWatch:
    """Notices when a subscription stays silent, and frames the middleware reports lost.

    Why both: a wrong topic name or a dead driver delivers nothing (no publisher, or a publisher whose
    samples never match); a camera without the shared-memory profile delivers a fraction of its frames,
    which Fast DDS reports as lost samples on a best-effort reader.
    """

    def __init__(self, node: Node, what: str, silence_s: float, fix: str, problems: ProblemLog) -> None:
        self._node = node
        self.what = what
        self.topic = ""  # resolved name, set by attach()
        self.silence_s = silence_s
        self.fix = fix
        self._problems = problems
        self._started = time.monotonic()
        self._last: float | None = None
        self.first: float | None = None  # monotonic time of the first message
        self.received = 0
        self._losses = LossCounter(what, FASTDDS_PROFILE_HINT, problems)
        self._lock = threading.Lock()

    @property
    def lost(self) -> int:
        """Samples the middleware reported lost on this input."""
        return self._losses.lost

    def event_callbacks(self) -> SubscriptionEventCallbacks:
        """The callbacks to pass to ``create_subscription`` so lost samples are counted."""
        return self._losses.event_callbacks()

    def attach(self, topic: str) -> None:
        """Record the subscription's resolved topic name, for messages and publisher counts."""
        self.topic = topic
        self._losses.attach(topic, lambda: self.received)

    def note(self) -> None:
        """Call from the subscription callback: one message arrived now."""
        with self._lock:
            self._last = time.monotonic()
            if self.first is None:
                self.first = self._last
            self.received += 1

    def condition(self, expected_since: float | None = None, *, asked_at: float | None = None) -> Condition | None:
        """A WARN when nothing arrived for ``silence_s``.

        Counted from the last message, or else from ``expected_since`` (a monotonic time, e.g. the first image
        for proposals computed from images) or the start. An input that sends only when asked (proposals on
        demand) counts from ``asked_at`` instead, the oldest request still unanswered.
        """
        with self._lock:
            last = self._last
        if asked_at is not None:
            reference, since = asked_at, "after a request, for"
        else:
            reference = last if last is not None else max(self._started, expected_since or 0.0)
            since = "since start" if last is None else "for"
        silent_for = time.monotonic() - reference
        if silent_for < self.silence_s:
            return None
        publishers = self._node.count_publishers(self.topic)
        if publishers == 0:
            detail = f"no publisher on {self.topic}: {self.fix}"
        else:
            detail = (
                f"{publishers} publisher(s) on {self.topic} but nothing arrives "
                f"(QoS mismatch, or {FASTDDS_PROFILE_HINT})"
            )
        return Condition(
            WARN, f"no_{self.what.replace(' ', '_')}", f"no {self.what} {since} {silent_for:.0f} s: {detail}"
        )


class Diagnostics:
    """Publishes one DiagnosticStatus for the node on /diagnostics at a fixed rate."""

    def __init__(
        self,
        node: Node,
        values: Callable[[], dict[str, object]],
        problems: ProblemLog,
        conditions: Callable[[], list[Condition]] | None = None,
        period_s: float = 1.0,
    ) -> None:
        self._node = node
        self._values = values
        self._problems = problems
        self._conditions = conditions or (lambda: [])
        self._active: set[str] = set()
        self._last_problems: dict[str, int] = {}
        self._problem_seen = 0.0
        self._publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._name = f"{node.get_fully_qualified_name().lstrip('/')}"
        self._timer = node.create_timer(period_s, self.publish)

    def publish(self) -> None:
        """Publish the node's status now (the timer calls this every ``period_s``)."""
        values = self._values()
        problems = self._problems.counts()
        conditions = sorted(self._conditions(), key=lambda c: c.level, reverse=True)  # worst first
        self._log_transitions(conditions)
        status = DiagnosticStatus(name=self._name, hardware_id=self._node.get_name())
        status.level, status.message = OK, "ok"
        if conditions:
            status.level = conditions[0].level
            status.message = "; ".join(c.message for c in conditions)
        elif problems:
            # A problem keeps the node at WARN for a while after it last happened, not for ever.
            now = time.monotonic()
            if problems != self._last_problems:
                self._last_problems, self._problem_seen = problems, now
            worst = max(problems, key=lambda cause: problems[cause])
            summary = f"{sum(problems.values())} problem(s); most: {worst} ({problems[worst]})"
            if now - self._problem_seen < PROBLEM_WARN_S:
                status.level, status.message = WARN, summary
            else:
                status.message = f"ok (earlier: {summary})"
        status.values = [KeyValue(key=str(k), value=_format(v)) for k, v in values.items()]
        status.values += [KeyValue(key=f"condition.{c.cause}", value=c.message) for c in conditions]
        status.values += [KeyValue(key=f"problem.{k}", value=str(v)) for k, v in sorted(problems.items())]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self._publisher.publish(array)

    def _log_transitions(self, conditions: list[Condition]) -> None:
        for condition in conditions:
            self._problems.log_condition(condition.cause, condition.level, condition.message)
        current = {c.cause for c in conditions}
        for cleared in self._active - current:
            self._problems.clear_condition(cleared, "resolved")
        self._active = current


def _format(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
