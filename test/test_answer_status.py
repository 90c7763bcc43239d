"""AnswerStatus (the core) and chatrex_ros/msg/Answer's STATUS_* constants (the wire) are one table."""

from __future__ import annotations

import re
from pathlib import Path

from chatrex_ros.core.answering import AnswerStatus, status_name

ANSWER_MSG = Path(__file__).resolve().parent.parent / "msg" / "Answer.msg"
PREFIX = "STATUS_"


def _message_constants(names_and_values: dict[str, int]) -> dict[str, int]:
    return {name[len(PREFIX) :]: value for name, value in names_and_values.items() if name.startswith(PREFIX)}


def test_answer_status_is_the_generated_message_constants_both_ways() -> None:
    from chatrex_ros.msg import Answer as answer

    constants = _message_constants({name: getattr(answer, name) for name in dir(answer)})
    assert constants == {status.name: status.value for status in AnswerStatus}


def test_answer_status_is_the_msg_file_constants_both_ways() -> None:
    declared = re.findall(r"^\s*uint8\s+(STATUS_\w+)\s*=\s*(\d+)", ANSWER_MSG.read_text(encoding="utf-8"), re.M)
    constants = _message_constants({name: int(value) for name, value in declared})
    assert constants == {status.name: status.value for status in AnswerStatus}


def test_status_name_names_known_statuses_and_keeps_unknown_numbers() -> None:
    assert [status_name(int(status)) for status in AnswerStatus] == [status.name for status in AnswerStatus]
    assert status_name(AnswerStatus.BAD_QUERY) == "BAD_QUERY"
    assert status_name(42) == "42"  # a status of a newer node
