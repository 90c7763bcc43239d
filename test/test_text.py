"""printable(): untrusted text as one safe, bounded log line."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatrex_ros.core.text import DEFAULT_LIMIT, MIN_LIMIT, printable

# Every character that must never reach a log line as itself, written out independently of the module.
UNSAFE = (
    [chr(c) for c in range(0x20)]
    + [chr(c) for c in range(0x7F, 0xA0)]
    + ["\u2028", "\u2029", "\u061c", "\u200e", "\u200f"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\ud800", "\udfff"]
)
CUT = re.compile(r"\u2026 \[\+(\d+) chars cut\]\Z")
UNSAFE_SET = frozenset(UNSAFE)


def reference(text: str) -> str:
    """The escaping spelled out character by character (no cut)."""
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return "".join(
        named.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") if c in UNSAFE_SET else c
        for c in text
    )


def test_plain_text_is_unchanged() -> None:
    for text in ("", "query-7", "a red mug; the cup", "größe 大 🙂", "C:\\path\\n stays a backslash"):
        assert printable(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("nel\x85csi\x9b", "nel\\x85csi\\x9b"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("\u202eevil", "\\u202eevil"),
        ("lone \ud800", "lone \\ud800"),
    ],
)
def test_control_characters_are_escaped_visibly(text: str, expected: str) -> None:
    assert printable(text) == expected


def test_a_forged_log_line_stays_on_one_line() -> None:
    forged = "q1\n[INFO] [1700000000.0] [grasp_target_node]: all good\rnothing to see"
    line = printable(forged)
    assert "\n" not in line and "\r" not in line
    assert line.startswith("q1\\n[INFO]")


@pytest.mark.parametrize("char", UNSAFE, ids=lambda c: f"U+{ord(c):04X}")
def test_every_unsafe_character_is_escaped(char: str) -> None:
    out = printable(f"a{char}b")
    assert char not in out and out.startswith("a\\") and out.endswith("b")
    out.encode("utf-8")  # lone surrogates too: the line can be written


def test_long_text_is_cut_with_a_marker_saying_how_much() -> None:
    text = "x" * 1000
    out = printable(text, limit=100)
    assert len(out) <= 100
    match = CUT.search(out)
    assert match is not None
    kept = out[: match.start()]
    assert set(kept) == {"x"} and len(kept) + int(match.group(1)) == 1000


def test_text_exactly_at_the_limit_is_not_cut() -> None:
    assert printable("y" * DEFAULT_LIMIT) == "y" * DEFAULT_LIMIT
    assert CUT.search(printable("y" * (DEFAULT_LIMIT + 1)))


def test_escapes_count_toward_the_limit_and_are_never_split() -> None:
    out = printable("\x1b" * 100, limit=50)
    match = CUT.search(out)
    assert match is not None and len(out) <= 50
    kept = out[: match.start()]
    assert re.fullmatch(r"(?:\\x1b)+", kept)
    assert len(kept) // 4 + int(match.group(1)) == 100


def test_huge_input_costs_only_the_limit() -> None:
    text = "\n" * 20_000_000
    start = time.perf_counter()
    out = printable(text, limit=500)
    assert time.perf_counter() - start < 0.5
    assert len(out) <= 500 and out.endswith("chars cut]")


def test_non_strings_are_logged_as_their_str() -> None:
    assert printable(42) == "42"
    assert printable(ValueError("bad\nthing")) == "bad\\nthing"


@pytest.mark.parametrize("limit", [0, -1, MIN_LIMIT - 1, 3.5, True])
def test_limit_must_leave_room_for_the_marker(limit: object) -> None:
    with pytest.raises(ValueError, match="limit"):
        printable("text", limit=limit)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=400), limit=st.integers(MIN_LIMIT, 200))
def test_output_is_one_safe_line_within_the_limit(text: str, limit: int) -> None:
    out = printable(text, limit)
    assert len(out) <= limit
    assert not any(char in out for char in UNSAFE)
    assert out.splitlines() in ([], [out]), "str.splitlines breaks on more than \\n; none of those may remain"
    match = CUT.search(out)
    if match is None:
        assert out == reference(text)
    else:
        cut = int(match.group(1))
        assert cut >= 1 and out[: match.start()] == reference(text[: len(text) - cut])


# --- the log boundary: ProblemLog writes only printable lines ----------------------------------------
class FakeLogger:
    """Collects (level, line) instead of writing to rcutils: no ROS spin needed."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def warning(self, line: str) -> None:
        self.lines.append(("warning", line))

    def error(self, line: str) -> None:
        self.lines.append(("error", line))

    def info(self, line: str) -> None:
        self.lines.append(("info", line))


FORGED = "q1\n[ERROR] [1700000000.000000000] [language_node]: model crashed\x1b[2K\u2028x"


def test_problem_log_escapes_every_line_it_writes() -> None:
    from chatrex_ros.ros.health import ERROR, LOG_LINE_LIMIT, WARN, ProblemLog

    logger = FakeLogger()
    problems = ProblemLog(logger, log_every_s=0.0)
    problems.report("answer_bad_query", f"query {FORGED}: {FORGED}")
    problems.report("answer_bad_query", "x" * 10_000)  # second time: with the count
    problems.log_condition("no_images", WARN, FORGED)
    problems.log_condition("setup", ERROR, FORGED)
    problems.clear_condition("setup", FORGED)
    assert [level for level, _ in logger.lines] == ["warning", "warning", "warning", "error", "info"]
    for _, line in logger.lines:
        assert len(line) <= LOG_LINE_LIMIT
        assert not any(char in line for char in UNSAFE), line
        assert line.splitlines() == [line]
    assert logger.lines[0][1] == "[answer_bad_query] query " + reference(FORGED) + ": " + reference(FORGED)
    long_line = logger.lines[1][1]
    assert long_line.endswith(" chars cut] (2 times so far)"), "the count survives the cut"
    assert logger.lines[2][1] == "[no_images] " + reference(FORGED)
    assert problems.counts() == {"answer_bad_query": 2}
