"""Int nanoseconds <-> builtin_interfaces/Time fields: exact, duck-typed, one place (chatrex_ros.core.stamps)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from chatrex_ros.core.stamps import MAX_SEC, NS_PER_S, ns_to_sec_nanosec, sec_nanosec_to_ns, stamp_to_ns

STAMPS = [0, 1, NS_PER_S - 1, NS_PER_S, 1_712_345_678_123_456_789, MAX_SEC * NS_PER_S + NS_PER_S - 1]


@pytest.mark.parametrize("stamp_ns", STAMPS)
def test_fields_round_trip_exactly(stamp_ns: int) -> None:
    sec, nanosec = ns_to_sec_nanosec(stamp_ns)
    assert 0 <= nanosec < NS_PER_S
    assert sec_nanosec_to_ns(sec, nanosec) == stamp_ns
    assert stamp_to_ns(SimpleNamespace(sec=sec, nanosec=nanosec)) == stamp_ns  # any object with the two fields


def test_negative_stamps_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        ns_to_sec_nanosec(-1)
