"""Stamps: integer nanoseconds <-> ``builtin_interfaces/Time`` fields <-> exact decimal-seconds text.

Everything that compares stamps (frame pairing, ground truth, replays) works in int nanoseconds; this is the
one place that converts them to and from the two fields of ``builtin_interfaces/Time`` (``sec``, ``nanosec``)
and to and from text, never through a float.

The language node pairs a query with a frame by the exact nanosecond stamp, so a stamp printed by one
command and typed into the next must come back bit for bit. A float cannot carry that: at today's epoch a
double has about 0.24 us of resolution, so ``1712345678.123456789`` would come back as ``...123456768``.
Every tool that prints a stamp prints it the same way.
"""

from __future__ import annotations

import re
from typing import Protocol, SupportsInt

NS_PER_S = 1_000_000_000
"""Nanoseconds per second: ``stamp_ns = sec * NS_PER_S + nanosec``."""
FRACTION_DIGITS = 9
MAX_SEC = 2**31 - 1
"""``builtin_interfaces/Time.sec`` is an int32: a larger stamp cannot be put in a message."""

_STAMP = re.compile(r"([0-9]+)(?:\.([0-9]+))?")  # ASCII digits only: str.isdigit() would accept '²' or '٣'


class TimeFields(Protocol):
    """Anything shaped like ``builtin_interfaces/Time``: an rclpy message, a ``rosbags`` dataclass."""

    @property
    def sec(self) -> SupportsInt:
        """Whole seconds (an int32 in the message)."""
        ...

    @property
    def nanosec(self) -> SupportsInt:
        """Nanoseconds within the second, 0..999999999."""
        ...


def sec_nanosec_to_ns(sec: SupportsInt, nanosec: SupportsInt) -> int:
    """The two fields of ``builtin_interfaces/Time`` -> int nanoseconds."""
    return int(sec) * NS_PER_S + int(nanosec)


def stamp_to_ns(stamp: TimeFields) -> int:
    """``builtin_interfaces/Time`` (duck-typed: anything with ``sec`` and ``nanosec``) -> int nanoseconds."""
    return sec_nanosec_to_ns(stamp.sec, stamp.nanosec)


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    """Int nanoseconds -> ``(sec, nanosec)``, the fields of ``builtin_interfaces/Time`` (ValueError when negative)."""
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f"stamps must be non-negative, got {stamp_ns} ns")
    sec, nanosec = divmod(stamp_ns, NS_PER_S)
    return sec, nanosec


def format_stamp(stamp_ns: int) -> str:
    """``1712345678123456789`` -> ``"1712345678.123456789"``: seconds, a dot, always nine fraction digits.

    Nine digits every time (trailing zeros kept) so the text is fixed-format and :func:`parse_stamp` reads
    it back to the same integer. Raises ValueError for a negative stamp, TypeError for a non-integer.
    """
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, int):
        raise TypeError(f"a stamp is an int number of nanoseconds, got {type(stamp_ns).__name__}")
    if stamp_ns < 0:
        raise ValueError(f"stamps are non-negative, got {stamp_ns} ns")
    seconds, nanoseconds = ns_to_sec_nanosec(stamp_ns)
    return f"{seconds}.{nanoseconds:0{FRACTION_DIGITS}d}"


def parse_stamp(text: str) -> int:
    """``"SEC"`` or ``"SEC.FRACTION"`` (up to nine fraction digits) -> int nanoseconds, exactly.

    ``"1712345678.5"`` is 1712345678500000000 ns. Surrounding whitespace is ignored. Anything else (a sign,
    an exponent, more than nine fraction digits, a missing part around the dot, seconds beyond what
    ``builtin_interfaces/Time`` holds) raises ValueError saying what was wrong, rather than rounding.
    """
    cleaned = text.strip()
    match = _STAMP.fullmatch(cleaned)
    if match is None:
        if cleaned.startswith("-"):
            raise ValueError(f"stamp {text!r} is negative; stamps are non-negative seconds")
        raise ValueError(f"stamp {text!r} is not SEC or SEC.FRACTION (digits only, e.g. 1712345678.123456789)")
    seconds_text, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > FRACTION_DIGITS:
        raise ValueError(
            f"stamp {text!r} has {len(fraction)} fraction digits; at most {FRACTION_DIGITS} "
            "(nanoseconds) are meaningful"
        )
    seconds = int(seconds_text)
    if seconds > MAX_SEC:
        raise ValueError(f"stamp {text!r} is beyond {MAX_SEC} s, the largest builtin_interfaces/Time.sec")
    return sec_nanosec_to_ns(seconds, int(fraction.ljust(FRACTION_DIGITS, "0")))
