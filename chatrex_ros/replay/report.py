"""The summary a replay ends with: what was published, what came back, what is missing and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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
