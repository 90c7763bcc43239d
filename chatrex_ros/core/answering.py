"""One query against one frame: prompt -> model -> parse -> resolve. Shared by the language node and eval.

The model only ever sees ``proposals.boxes`` in their given order, and the answer is resolved against the
same arrays, so an index can never point at a different box than the one the model was shown.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chatrex_ros.core.protocol import (
    REGION_TASKS,
    ParsedAnswer,
    ResolvedDetection,
    Task,
    build_prompt,
    parse_answer,
    resolve_detections,
)
from chatrex_ros.core.types import Proposals


class AnswerStatus(enum.IntEnum):
    """Outcome of a query; the values are ``chatrex_ros/msg/Answer`` STATUS_* constants."""

    OK = 0
    NO_IMAGE = 1
    NO_PROPOSALS = 2
    BAD_QUERY = 3
    MODEL_ERROR = 4
    TIMEOUT = 5
    BUSY = 6


class QueryError(Exception):
    """A query that cannot be answered; ``status`` says which kind of failure it is."""

    def __init__(self, status: AnswerStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class QueryRequest:
    """A validated query: what to ask, independent of any transport."""

    task: Task
    targets: tuple[str, ...] = ()
    question: str = ""
    indices: tuple[int, ...] = ()
    max_new_tokens: int = 512

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
        if max_new_tokens <= 0:
            raise QueryError(AnswerStatus.BAD_QUERY, f"max_new_tokens must be positive, got {max_new_tokens}")
        question = text.strip() if parsed_task is Task.CHAT else ""
        request = cls(parsed_task, phrases, question, tuple(int(i) for i in indices), int(max_new_tokens))
        request.prompt()  # validates targets, indices and text length with the protocol's own rules
        return request

    def prompt(self) -> str:
        """The exact question string for the model."""
        try:
            if self.task in REGION_TASKS:
                return build_prompt(self.task, self.indices)
            return build_prompt(self.task, self.targets, self.question)
        except ValueError as error:
            raise QueryError(AnswerStatus.BAD_QUERY, str(error)) from None


@dataclass(frozen=True)
class AnswerResult:
    """Everything an Answer message or an evaluation record needs."""

    prompt: str
    raw_output: str
    parsed: ParsedAnswer
    detections: tuple[ResolvedDetection, ...]
    model_ms: float


def answer_query(backend, image_rgb: np.ndarray, proposals: Proposals, request: QueryRequest) -> AnswerResult:
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
    prompt = request.prompt()
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
