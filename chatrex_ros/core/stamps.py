"""Image stamps as text: integer nanoseconds <-> an exact decimal-seconds string, with no float in between.

The language node pairs a query with a frame by the exact nanosecond stamp, so a stamp printed by one
command and typed into the next must come back bit for bit. A float cannot carry that: at today's epoch a
double has about 0.24 us of resolution, so ``1712345678.123456789`` would come back as ``...123456768``.
This is the one place that converts, so every tool that prints a stamp prints it the same way.
"""

from __future__ import annotations

import re

NS_PER_S = 1_000_000_000
FRACTION_DIGITS = 9
MAX_SEC = 2**31 - 1
"""``builtin_interfaces/Time.sec`` is an int32: a larger stamp cannot be put in a message."""

_STAMP = re.compile(r"([0-9]+)(?:\.([0-9]+))?")  # ASCII digits only: str.isdigit() would accept '²' or '٣'


def format_stamp(stamp_ns: int) -> str:
    """``1712345678123456789`` -> ``"1712345678.123456789"``: seconds, a dot, always nine fraction digits.

    Nine digits every time (trailing zeros kept) so the text is fixed-format and :func:`parse_stamp` reads
    it back to the same integer. Raises ValueError for a negative stamp, TypeError for a non-integer.
    """
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, int):
        raise TypeError(f"a stamp is an int number of nanoseconds, got {type(stamp_ns).__name__}")
    if stamp_ns < 0:
        raise ValueError(f"stamps are non-negative, got {stamp_ns} ns")
    seconds, nanoseconds = divmod(stamp_ns, NS_PER_S)
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
    return seconds * NS_PER_S + int(fraction.ljust(FRACTION_DIGITS, "0"))
