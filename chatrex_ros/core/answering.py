"""One query against one frame: prompt -> model -> parse -> resolve. Shared by the language node and eval.

The model only ever sees ``proposals.boxes`` in their given order, and the answer is resolved against the
same arrays, so an index can never point at a different box than the one the model was shown.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from chatrex_ros.core.protocol import (
    REGION_TASKS,
    ParsedAnswer,
    Task,
    build_prompt,
    parse_answer,
    resolve_detections,
)
from chatrex_ros.core.stamps import NS_PER_S
from chatrex_ros.core.types import Detection, Proposals

if TYPE_CHECKING:  # the interface only; the core never imports the model layer at run time
    from chatrex_ros.models.base import LanguageBackend


MAX_NEW_TOKENS = 8192
"""The largest generation budget a query (or the ``max_new_tokens`` parameter) may ask for."""

MAX_QUERY_TIMEOUT_S = 3600.0
"""The longest per-query timeout (``Query.timeout_s``, the ``query_timeout_s`` parameter), seconds."""


class AnswerStatus(enum.IntEnum):
    """Outcome of a query: ``chatrex_ros/msg/Answer``'s STATUS_* constants (a test keeps names and values equal)."""

    OK = 0
    NO_IMAGE = 1
    NO_PROPOSALS = 2
    BAD_QUERY = 3
    MODEL_ERROR = 4
    TIMEOUT = 5
    BUSY = 6
    CANCELED = 7  # an `ask` action goal cancelled by its client


def status_name(status: int) -> str:
    """An ``Answer.status`` as its name (``"OK"``, ``"BAD_QUERY"``, ...).

    A number this version does not know (from a newer node) stays a number, as text.
    """
    try:
        return AnswerStatus(status).name
    except ValueError:
        return str(status)


class QueryError(Exception):
    """A query that cannot be answered; ``status`` says which kind of failure it is."""

    def __init__(self, status: AnswerStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class QueryRequest:
    """A validated query: what to ask, independent of any transport.

    ``prompt``, the exact question string for the model, is built once, when the request is made (which
    validates targets, indices and text length with the protocol's own rules: QueryError BAD_QUERY).
    """

    task: Task
    targets: tuple[str, ...] = ()
    question: str = ""
    indices: tuple[int, ...] = ()
    max_new_tokens: int = 512
    prompt: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        try:
            if self.task in REGION_TASKS:
                prompt = build_prompt(self.task, self.indices)
            else:
                prompt = build_prompt(self.task, self.targets, self.question)
        except ValueError as error:
            raise QueryError(AnswerStatus.BAD_QUERY, str(error)) from None
        object.__setattr__(self, "prompt", prompt)

    @classmethod
    def create(
        cls,
        task: str | Task,
        targets: Sequence[str] = (),
        text: str = "",
        indices: Sequence[int] = (),
        max_new_tokens: int = 512,
    ) -> QueryRequest:
        """Normalise loose inputs (a message, CLI arguments); raise QueryError(BAD_QUERY) on bad ones.

        For detect/count with no ``targets``, ``text`` holds the phrase(s), several separated by ';';
        for chat it is the question; other tasks ignore it.
        """
        try:
            parsed_task = task if isinstance(task, Task) else Task.parse(str(task))
        except ValueError as error:
            raise QueryError(AnswerStatus.BAD_QUERY, str(error)) from None
        phrases = tuple(t.strip() for t in targets if t.strip())
        if not phrases and parsed_task in (Task.DETECT, Task.COUNT):
            phrases = tuple(p.strip() for p in text.split(";") if p.strip())
        if not 0 < max_new_tokens <= MAX_NEW_TOKENS:
            raise QueryError(
                AnswerStatus.BAD_QUERY, f"max_new_tokens must be 1..{MAX_NEW_TOKENS}, got {max_new_tokens}"
            )
        question = text.strip() if parsed_task is Task.CHAT else ""
        return cls(parsed_task, phrases, question, tuple(int(i) for i in indices), int(max_new_tokens))


def query_timeout_s(requested: float, default_s: float) -> float:
    """A query's own timeout in seconds: ``requested``, or ``default_s`` when it is 0 (the field's default).

    Raises QueryError(BAD_QUERY) for NaN, infinite, negative or over-:data:`MAX_QUERY_TIMEOUT_S` values: a
    client that wants to wait long says how long; a timeout of 1e10 s would overflow the clock arithmetic.
    """
    timeout = float(requested)
    if timeout == 0.0:
        return default_s
    if not math.isfinite(timeout) or not 0.0 < timeout <= MAX_QUERY_TIMEOUT_S:
        raise QueryError(
            AnswerStatus.BAD_QUERY,
            f"timeout_s must be 0 (the node's default) or a number of seconds in (0, {MAX_QUERY_TIMEOUT_S:g}], "
            f"got {timeout!r}",
        )
    return timeout


def check_stamp(sec: int, nanosec: int) -> None:
    """Raise QueryError(BAD_QUERY) for a ``builtin_interfaces/Time`` that names no instant a camera stamps."""
    if sec < 0 or not 0 <= nanosec < NS_PER_S:
        raise QueryError(
            AnswerStatus.BAD_QUERY,
            f"image_stamp must have sec >= 0 and nanosec in [0, 1e9), got sec={sec} nanosec={nanosec}",
        )


@dataclass(frozen=True)
class AnswerResult:
    """Everything an Answer message or an evaluation record needs."""

    prompt: str
    raw_output: str
    parsed: ParsedAnswer
    detections: tuple[Detection, ...]
    model_ms: float


@dataclass(frozen=True)
class QueryOutcome:
    """What one query came to, answered or not: everything an Answer reports besides the frame's header.

    ``result`` is set only for OK; ``num_proposals`` and ``proposals_stamp_ns`` whenever a frame was paired.
    """

    query_id: str
    task: str
    status: AnswerStatus
    message: str = ""
    result: AnswerResult | None = None
    num_proposals: int = 0
    proposals_stamp_ns: int = 0
    queue_ms: float = 0.0
    total_ms: float = 0.0


def answer_query(
    backend: LanguageBackend, image_rgb: np.ndarray, proposals: Proposals, request: QueryRequest
) -> AnswerResult:
    """Ask ``backend`` (a LanguageBackend) about one frame and resolve its index answer.

    Raises QueryError: NO_PROPOSALS for an empty list, BAD_QUERY for region indices beyond it,
    MODEL_ERROR when the backend raises.
    """
    count = len(proposals)
    if count == 0:
        raise QueryError(AnswerStatus.NO_PROPOSALS, "the frame has no proposals to answer with")
    if request.task in REGION_TASKS:
        out_of_range = [i for i in request.indices if not 0 <= i < count]
        if out_of_range:
            raise QueryError(
                AnswerStatus.BAD_QUERY,
                f"region indices {out_of_range} are outside the frame's {count} proposals (0..{count - 1})",
            )
    prompt = request.prompt
    start = time.perf_counter()
    try:
        raw = backend.generate(image_rgb, proposals.boxes, prompt, max_new_tokens=request.max_new_tokens)
    except Exception as error:  # the model is outside our control: report, never crash the caller
        raise QueryError(AnswerStatus.MODEL_ERROR, f"{type(error).__name__}: {error}") from error
    model_ms = (time.perf_counter() - start) * 1e3
    if not isinstance(raw, str):
        raise QueryError(AnswerStatus.MODEL_ERROR, f"language backend returned {type(raw).__name__}, not str")
    parsed = parse_answer(raw, count)
    detections = tuple(resolve_detections(parsed, proposals.boxes, proposals.scores))
    return AnswerResult(prompt, raw, parsed, detections, model_ms)
