"""QoS profiles from parameters. Sensor streams default to best-effort KEEP_LAST(1): the newest frame wins."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy


def sensor_qos(reliability: str, depth: int) -> QoSProfile:
    """KEEP_LAST(depth), volatile; ``reliability`` is a value of the ``*_qos.reliability`` parameters."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def reliable_qos(depth: int = 10) -> QoSProfile:
    """Proposals, queries and answers: small, and none may be lost."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


QUERY_HISTORY_DEPTH = 1000
"""Queries and answers a reader or writer holds before the middleware drops one.

Why so deep: a query burst (200 in a second) must reach the node's callback, which decides (queued or BUSY);
a KEEP_LAST(10) reader dropped queries before the node saw them. Both messages are small.
"""


def query_qos() -> QoSProfile:
    """Queries and answers: reliable, and deep enough that a burst is decided by the node, not lost before."""
    return reliable_qos(QUERY_HISTORY_DEPTH)
