"""QoS profiles from parameters. Sensor streams default to best-effort KEEP_LAST(1): the newest frame wins."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from chatrex_ros.ros.params import ParamSpec

RELIABILITIES = ("best_effort", "reliable")


def sensor_qos_specs(prefix: str = "image_qos") -> list[ParamSpec]:
    """Parameters that configure an image subscription's QoS."""
    return [
        ParamSpec(f"{prefix}.reliability", "best_effort", "Image subscription reliability.", RELIABILITIES, read_only=True),
        ParamSpec(f"{prefix}.depth", 1, "Image subscription KEEP_LAST depth.", minimum=1, maximum=100, read_only=True),
    ]


def sensor_qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def reliable_qos(depth: int = 10) -> QoSProfile:
    """Proposals, queries and answers: small, and none may be lost."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )
