r"""Untrusted text made safe to log: one line, visible escapes, a bounded length.

Query ids, phrases, frame ids and an Answer's status message come from whoever publishes on a topic. Written
to a log as they are, a newline or carriage return forges a log line of its own, an ANSI escape (``\x1b[...``)
repaints the operator's terminal, and a megabyte of text buries everything else. :func:`printable` escapes
every such character visibly and caps the length, saying how much was cut. Standard library only.
"""

from __future__ import annotations

import re

DEFAULT_LIMIT = 300
"""Default longest result of :func:`printable`, in characters (the cut marker included)."""

MIN_LIMIT = 32
"""The smallest ``limit`` accepted: room for some text and the cut marker."""

# C0 controls (newline, carriage return, tab, ESC, ...), DEL and C1 controls (NEL U+0085, CSI U+009B, ...);
# the Unicode line and paragraph separators; the bidirectional controls that make text display in an order
# other than the one it is stored in ("Trojan source"); lone surrogates, which cannot be encoded to UTF-8.
_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object, limit: int = DEFAULT_LIMIT) -> str:
    r"""``text`` as one safe log line of at most ``limit`` characters.

    Control characters are written as visible escapes: ``\n``, ``\r``, ``\t``, ``\x1b`` (any other
    character below U+0100), ``\u2028`` (above). Everything else, backslashes included, is kept as it is:
    the result can hold no line break and no terminal control, which is what a log line needs. When the
    escaped text is longer than ``limit``, its start is kept (never half an escape) and a marker says how
    many characters of ``text`` were cut: ``"abc… [+1234 chars cut]"``. A non-``str`` is logged as its
    ``str()``. Work is bounded by ``limit``, not by the length of ``text``.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < MIN_LIMIT:
        raise ValueError(f"limit must be an int >= {MIN_LIMIT}, got {limit!r}")
    if not isinstance(text, str):
        text = str(text)
    if len(text) <= limit and _UNSAFE_RE.search(text) is None:
        return text  # the usual case
    pieces: list[str] = []
    used = 0
    for position, char in enumerate(text):
        piece = _escape(char) if _UNSAFE_RE.match(char) else char
        if used + len(piece) > limit:
            return _cut(text, pieces, used, position, limit)
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces)


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cut(text: str, pieces: list[str], used: int, kept: int, limit: int) -> str:
    """The kept ``pieces`` (the escapes of ``text[:kept]``), shortened until the cut marker fits in ``limit``."""
    while True:
        marker = f"\u2026 [+{len(text) - kept} chars cut]"
        if used + len(marker) <= limit or not pieces:
            return "".join(pieces) + marker
        used -= len(pieces.pop())
        kept -= 1
