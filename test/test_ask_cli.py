"""`chatrex-ros ask`: exact stamps that round-trip, failing fast when no language_node listens, usage errors.

A follow-up ``ask --stamp <printed image_stamp>`` must name the very frame of the first answer, because the
language node pairs stamps to the nanosecond; a float in between loses the last digits.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chatrex_ros.cli import build_parser
from chatrex_ros.commands import ask
from chatrex_ros.commands.exit_codes import ExitCode
from chatrex_ros.core.stamps import MAX_SEC, NS_PER_S, format_stamp, parse_stamp

STAMP_NS = 1_712_345_678_123_456_789
STAMP_TEXT = "1712345678.123456789"


def chatrex_ros_command() -> list[str]:
    """The console script of this environment (PYTHONPATH from conftest points it at this tree)."""
    script = Path(sys.executable).parent / "chatrex-ros"
    return [str(script)] if script.exists() else [sys.executable, "-m", "chatrex_ros"]


def run_cli(*args: str, timeout: float = 60.0) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([*chatrex_ros_command(), *args], capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


# --- exact stamps ---------------------------------------------------------------------------------
EDGE_NS = [
    0,
    1,
    999_999_999,
    NS_PER_S,
    NS_PER_S + 1,
    STAMP_NS,
    1_712_345_678_000_000_000,
    1_712_345_678_120_000_000,
    1_712_345_678_000_000_010,  # trailing zeros
    MAX_SEC * NS_PER_S + 999_999_999,
]


def test_stamps_round_trip_exactly() -> None:
    rng = random.Random(7)
    drawn = [rng.randrange(MAX_SEC * NS_PER_S) for _ in range(2000)]
    drawn += [rng.randrange(MAX_SEC) * NS_PER_S + rng.randrange(1000) * 1_000_000 for _ in range(200)]  # ms stamps
    for stamp_ns in EDGE_NS + drawn:
        text = format_stamp(stamp_ns)
        assert parse_stamp(text) == stamp_ns, text
        seconds, fraction = text.split(".")
        assert int(seconds) == stamp_ns // NS_PER_S and len(fraction) == 9, text
        assert parse_stamp(f"{seconds}.{fraction.rstrip('0')}" if fraction.rstrip("0") else seconds) == stamp_ns


def test_stamp_text_forms() -> None:
    assert format_stamp(STAMP_NS) == STAMP_TEXT
    assert format_stamp(0) == "0.000000000" and format_stamp(NS_PER_S) == "1.000000000"
    assert parse_stamp("1712345678") == 1_712_345_678 * NS_PER_S
    assert parse_stamp("1712345678.5") == 1_712_345_678_500_000_000  # short fractions are tenths, not nanoseconds
    assert parse_stamp("1712345678.000000001") == 1_712_345_678_000_000_001
    assert parse_stamp("  0.25\n") == 250_000_000
    # what the float path did: the follow-up named another frame
    assert int(round((1_712_345_678 + 123_456_789 * 1e-9) * 1e9)) != STAMP_NS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1", "negative"),
        ("-0.5", "negative"),
        ("1.1234567891", "10 fraction digits"),
        ("garbage", "not SEC or SEC.FRACTION"),
        ("", "not SEC"),
        ("1.", "not SEC"),
        (".5", "not SEC"),
        ("1e9", "not SEC"),
        ("1,5", "not SEC"),
        ("+1", "not SEC"),
        ("nan", "not SEC"),
        ("1.2.3", "not SEC"),
        ("\u0663", "not SEC"),
        (str(MAX_SEC + 1), "builtin_interfaces/Time"),
    ],
)
def test_bad_stamps_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_stamp(text)


def test_format_stamp_refuses_what_is_not_a_stamp() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        format_stamp(-1)
    with pytest.raises(TypeError, match="int number of nanoseconds"):
        format_stamp(1712345678.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_stamp(True)


def test_stamps_module_is_ros_free() -> None:
    script = (
        "import sys, chatrex_ros.core.stamps\n"
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'builtin_interfaces')))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


# --- the answer printed, and the follow-up it allows ----------------------------------------------
def stamped_answer(stamp_ns: int = STAMP_NS, query_id: str = "q1") -> object:
    from chatrex_ros.msg import Answer, Detection
    from chatrex_ros.ros.conversions import ns_to_stamp

    answer = Answer(query_id=query_id, task="detect", text="the red mug", num_proposals=12)
    answer.header.stamp = ns_to_stamp(stamp_ns)
    answer.header.frame_id = "camera_optical"
    answer.detections = [Detection(label="the red mug", proposal_index=3, box=[1.0, 2.0, 30.5, 40.25], score=0.9)]
    return answer


def test_answer_json_carries_the_exact_stamp_and_the_follow_up_names_that_frame() -> None:
    answer = stamped_answer()
    assert (answer.header.stamp.sec, answer.header.stamp.nanosec) == (1_712_345_678, 123_456_789)
    printed = json.loads(json.dumps(ask.answer_to_dict(answer)))  # what `ask --json` prints, read back
    assert printed["image_stamp"] == STAMP_TEXT and printed["image_stamp_ns"] == STAMP_NS
    assert printed["frame_id"] == "camera_optical" and printed["detections"][0]["index"] == 3
    assert parse_stamp(printed["image_stamp"]) == STAMP_NS

    args = build_parser().parse_args(["ask", "the red mug", "--stamp", printed["image_stamp"]])
    assert args.stamp == STAMP_NS
    query = ask.build_query(args)
    assert (query.image_stamp.sec, query.image_stamp.nanosec) == (1_712_345_678, 123_456_789)
    newest = ask.build_query(build_parser().parse_args(["ask", "the red mug"]))
    assert (newest.image_stamp.sec, newest.image_stamp.nanosec) == (0, 0)  # no --stamp: the newest frame


def test_table_shows_the_stamp_to_follow_up_with() -> None:
    table = ask.format_table(ask.answer_to_dict(stamped_answer()))
    assert f"image stamp: {STAMP_TEXT}, frame_id camera_optical (ask about it again with --stamp {STAMP_TEXT})" in table
    assert "image stamp: none" in ask.format_table(ask.answer_to_dict(stamped_answer(0)))


@pytest.mark.parametrize(
    ("namespace", "expected"),
    [
        ("/chatrex", ("/chatrex", "/chatrex/query", "/chatrex/answer")),
        ("robot/chatrex/", ("/robot/chatrex", "/robot/chatrex/query", "/robot/chatrex/answer")),
        ("/", ("/", "/query", "/answer")),
    ],
)
def test_topic_names_follow_the_namespace(namespace: str, expected: tuple[str, str, str]) -> None:
    assert ask.topic_names(namespace) == expected


# --- the command as a user runs it ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--stamp", "garbage"], "argument --stamp: stamp 'garbage' is not SEC"),
        (["--stamp", "1712345678.1234567891"], "at most 9"),
        (["--stamp", "-5"], "negative"),
        (["--wait-for-node", "-1"], "argument --wait-for-node"),
        (["--timeout", "0"], "argument --timeout"),
    ],
)
def test_bad_values_are_usage_errors(flags: list[str], message: str) -> None:
    result, _ = run_cli("ask", "the red mug", *flags)
    assert result.returncode == ExitCode.BAD_INPUT == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.ros
def test_ask_with_nobody_listening_fails_fast_naming_the_topic() -> None:
    wait_s = 2.0
    result, elapsed = run_cli(
        "ask", "the red mug", "--namespace", "/ask_test_nobody", "--wait-for-node", str(wait_s), "--timeout", "60"
    )
    assert result.returncode == ExitCode.NO_NODE == 4, result.stdout + result.stderr
    assert elapsed < wait_s + 3, f"took {elapsed:.1f} s"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "no language_node subscribes to /ask_test_nobody/query (namespace /ask_test_nobody) after 2 s" in lines[0]
    assert "chatrex-ros up" in lines[0] and "--namespace" in lines[0]


class FakeLanguageNode:
    """Answers every Query on NAMESPACE/query about its image_stamp (STAMP_NS for "newest"), like the real node."""

    def __init__(self, namespace: str) -> None:
        from ros_harness import RosClient

        from chatrex_ros.msg import Answer, Query
        from chatrex_ros.ros.qos import reliable_qos

        self.client = RosClient("fake_language_node")
        self.queries: list[Query] = []
        self._lock = threading.Lock()
        self._publisher = self.client.node.create_publisher(Answer, f"{namespace}/answer", reliable_qos())
        self.client.node.create_subscription(Query, f"{namespace}/query", self._answer, reliable_qos())

    def _answer(self, query: object) -> None:
        from chatrex_ros.core.stamps import stamp_to_ns

        with self._lock:
            self.queries.append(query)
        asked = stamp_to_ns(query.image_stamp)  # type: ignore[attr-defined]
        self._publisher.publish(stamped_answer(asked or STAMP_NS, query.id))  # type: ignore[attr-defined]

    def close(self) -> None:
        self.client.close()


@pytest.mark.ros
def test_a_follow_up_with_the_printed_stamp_asks_about_the_same_frame() -> None:
    node = FakeLanguageNode("/ask_test_fake")
    try:
        first, _ = run_cli(
            "ask", "the red mug", "--namespace", "/ask_test_fake", "--json", "--timeout", "20", "--wait-for-node", "20"
        )
        assert first.returncode == 0, first.stdout + first.stderr
        printed = json.loads(first.stdout)
        assert printed["image_stamp"] == STAMP_TEXT and printed["image_stamp_ns"] == STAMP_NS
        again, _ = run_cli(
            "ask",
            "the red mug",
            "--namespace",
            "/ask_test_fake",
            "--stamp",
            printed["image_stamp"],
            "--timeout",
            "20",
            "--wait-for-node",
            "20",
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"image stamp: {STAMP_TEXT}" in again.stdout
        asked = [(q.image_stamp.sec, q.image_stamp.nanosec) for q in node.queries]
        assert asked == [(0, 0), (1_712_345_678, 123_456_789)]
        # a language_node in another namespace is pointed at, not just "nobody"
        elsewhere, _ = run_cli("ask", "the red mug", "--namespace", "/ask_test_other", "--wait-for-node", "3")
        assert elsewhere.returncode == 4
        assert "Query topic is served at /ask_test_fake/query: pass --namespace /ask_test_fake" in elsewhere.stderr
    finally:
        node.close()
