"""The summary a replay ends with: what was published, what came back, what is missing and why.

Its ``ros2_benchmark`` section gives the replay's timing under the keys NVIDIA's ros2_benchmark
(``BasicPerformanceMetrics``) writes into its JSON reports, computed the way its
``BasicPerformanceCalculator`` computes them, so a replay's numbers sit next to an r2b report's.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

R2B_ENUM = "BasicPerformanceMetrics"
"""ros2_benchmark's enum; its JSON reports key a value by ``str(member)``, ``BasicPerformanceMetrics.MEAN_LATENCY``."""
R2B_METRICS = {
    "RECEIVED_DURATION": "Delta between First & Last Received Frames (ms)",
    "MEAN_PLAYBACK_FRAME_RATE": "Mean Playback Frame Rate (fps)",
    "MEAN_FRAME_RATE": "Mean Frame Rate (fps)",
    "NUM_MISSED_FRAMES": "# of Missed Frames",
    "NUM_FRAMES_SENT": "# of Frames Sent",
    "FIRST_SENT_RECEIVED_LATENCY": "First Sent to First Received Latency (ms)",
    "LAST_SENT_RECEIVED_LATENCY": "Last Sent to Last Received Latency (ms)",
    "FIRST_INPUT_LATENCY": "First Frame End-to-end Latency (ms)",
    "LAST_INPUT_LATENCY": "Last Frame End-to-end Latency (ms)",
    "MAX_LATENCY": "Max. End-to-End Latency (ms)",
    "MIN_LATENCY": "Min. End-to-End Latency (ms)",
    "MEAN_LATENCY": "Mean End-to-End Latency (ms)",
    "MAX_JITTER": "Max. Frame-to-Frame Jitter (ms)",
    "MIN_JITTER": "Min. Frame-to-Frame Jitter (ms)",
    "MEAN_JITTER": "Mean Frame-to-Frame Jitter (ms)",
    "STD_DEV_JITTER": "Frame-to-Frame Jitter Std. Deviation (ms)",
}
"""Member name -> the label ros2_benchmark prints in its terminal table."""


def r2b_key(member: str) -> str:
    """The JSON key of a ``BasicPerformanceMetrics`` member, as ros2_benchmark writes it."""
    if member not in R2B_METRICS:
        raise KeyError(f"{member!r} is not a ros2_benchmark BasicPerformanceMetrics member")
    return f"{R2B_ENUM}.{member}"


def basic_performance(
    sent_ns: Mapping[Hashable, int],
    received_ns: Mapping[Hashable, int],
    latency_from_ns: Mapping[Hashable, int] | None = None,
) -> dict[str, float | int]:
    """ros2_benchmark's per-run basic performance metrics from send and receive times (ns, one clock).

    ``sent_ns``: message key -> when it went out; ``received_ns``: key -> when its output came back (keys
    match, as r2b's ``message_key_match``). ``latency_from_ns``: where the end-to-end latencies start when
    that is not the send time (answers: the frame's publication, not the query's). First/last are by time.
    A key whose inputs are missing is left out, as r2b leaves it out (fewer than 2 sent: no playback rate;
    fewer than 3 received: no jitter; no receive span: no frame rate); the two counts are always given.
    Milliseconds and frames per second, rounded to 3 decimals.
    """
    sent = sorted(sent_ns.values())
    received = sorted(received_ns.values())
    start = sent_ns if latency_from_ns is None else latency_from_ns
    values: dict[str, float | int] = {
        r2b_key("NUM_FRAMES_SENT"): len(sent),
        r2b_key("NUM_MISSED_FRAMES"): len(sent) - len(received),
    }
    if received:
        duration_ms = (received[-1] - received[0]) / 1e6
        values[r2b_key("RECEIVED_DURATION")] = duration_ms
        if duration_ms > 0:
            values[r2b_key("MEAN_FRAME_RATE")] = len(received) / (duration_ms / 1e3)
    if len(sent) > 1 and sent[-1] > sent[0]:
        values[r2b_key("MEAN_PLAYBACK_FRAME_RATE")] = len(sent) / ((sent[-1] - sent[0]) / 1e9)
    if sent and received:
        values[r2b_key("FIRST_SENT_RECEIVED_LATENCY")] = (received[0] - sent[0]) / 1e6
        values[r2b_key("LAST_SENT_RECEIVED_LATENCY")] = (received[-1] - sent[-1]) / 1e6
    matched = sorted(  # in send order, as r2b lists them
        (start[key], sent_ns.get(key, 0), (at - start[key]) / 1e6) for key, at in received_ns.items() if key in start
    )
    latencies = [latency for _, _, latency in matched]
    if latencies:
        values[r2b_key("FIRST_INPUT_LATENCY")] = latencies[0]
        values[r2b_key("LAST_INPUT_LATENCY")] = latencies[-1]
        values[r2b_key("MAX_LATENCY")] = max(latencies)
        values[r2b_key("MIN_LATENCY")] = min(latencies)
        values[r2b_key("MEAN_LATENCY")] = float(np.mean(latencies))
    if len(received) > 2:
        jitter = np.abs(np.diff(np.diff(np.asarray(received, dtype=np.float64) / 1e6)))
        values[r2b_key("MAX_JITTER")] = float(jitter.max())
        values[r2b_key("MIN_JITTER")] = float(jitter.min())
        values[r2b_key("MEAN_JITTER")] = float(jitter.mean())
        values[r2b_key("STD_DEV_JITTER")] = float(jitter.std())
    return {key: round(v, 3) if isinstance(v, float) else v for key, v in values.items()}


@dataclass
class ReplayReport:
    """Outcome of one replay: what was published, what came back, what is missing and why."""

    bag: str
    image_topic: str
    step: bool
    rate: float
    frames_planned: int
    frames_published: int
    frames_without_proposals: list[int]
    frames_with_empty_proposals: list[int]
    frames_missing_answers: list[int]
    frames_with_failed_answers: list[int]  # an answer came, with an error status (BUSY, TIMEOUT, NO_PROPOSALS...)
    queries_planned: int
    queries_sent: int
    answers_received: int
    answer_statuses: dict[str, int]
    timeouts: list[dict[str, Any]]
    latency_ms: dict[str, dict[str, float | int]]
    foreign_messages: dict[str, int]
    recorded: dict[str, int]
    record: str | None
    wall_s: float
    stopped: str = ""  # why the replay ended early ('' when every planned frame was published)
    ros2_benchmark: dict[str, Any] = field(default_factory=dict)
    """Timing under ros2_benchmark's keys (:func:`basic_performance`) for ``proposals`` and ``answers``."""

    @property
    def complete(self) -> bool:
        """Every planned frame published, and each got its proposals and all its answers."""
        return (
            not self.stopped
            and self.frames_published == self.frames_planned
            and not self.timeouts
            and not self.frames_without_proposals
            and not self.frames_missing_answers
        )

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (``--summary-json``), with ``complete``."""
        return {**self.__dict__, "complete": self.complete}

    def format_table(self) -> str:
        """The report as an aligned two-column table for the terminal."""
        mode = "step" if self.step else f"timed, rate {self.rate:g}"
        rows = [
            ("bag", f"{self.bag} ({self.image_topic})"),
            ("mode", mode),
            ("frames published", f"{self.frames_published} / {self.frames_planned}"),
            ("frames without proposals", _listing(self.frames_without_proposals)),
            ("frames with 0 proposals", _listing(self.frames_with_empty_proposals)),
            ("frames missing answers", _listing(self.frames_missing_answers)),
            ("frames with failed answers", _listing(self.frames_with_failed_answers)),
            (
                "queries sent / answered",
                f"{self.queries_sent} / {self.answers_received} (planned {self.queries_planned})",
            ),
            ("answer statuses", ", ".join(f"{k} {v}" for k, v in self.answer_statuses.items()) or "-"),
            ("step timeouts", str(len(self.timeouts))),
            ("latency proposals (ms)", _latency(self.latency_ms["proposals"])),
            ("latency answers (ms)", _latency(self.latency_ms["answers"])),
            (
                "recorded",
                f"{self.record}: " + ", ".join(f"{t} {n}" for t, n in sorted(self.recorded.items()))
                if self.record
                else "-",
            ),
            ("wall time", f"{self.wall_s:.2f} s"),
        ]
        if self.stopped:
            rows.append(("stopped early", self.stopped))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _listing(indices: Sequence[int], limit: int = 12) -> str:
    if not indices:
        return "0"
    shown = ", ".join(str(i) for i in indices[:limit])
    return f"{len(indices)} (frames {shown}{', ...' if len(indices) > limit else ''})"


def _latency(summary: dict[str, float | int]) -> str:
    if not summary.get("count"):
        return "-"
    return f"p50 {summary['p50']:.1f}, p90 {summary['p90']:.1f}, max {summary['max']:.1f} (n={summary['count']})"
