"""Receives camera frames for bench_multihost.py and prints what arrived as one JSON line, then exits.

    python _frame_receiver.py TOPIC SECONDS RATE_HZ

Best-effort KEEP_LAST(1), as the nodes subscribe by default. The camera stamps frames with the wall clock (one
clock on one machine, also across network namespaces), so latency = arrival - stamp; the delivery ratio is the
frames received over the frames the camera published while this receiver listened (stamps are rate-spaced).
"""

from __future__ import annotations

import json
import sys
import time

import rclpy
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image


def main() -> None:
    topic, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    rclpy.init()
    node = Node("frame_receiver")
    latencies_ms: list[float] = []
    stamps: list[int] = []

    def on_frame(msg: Image) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        latencies_ms.append((time.time_ns() - stamp) / 1e6)
        stamps.append(stamp)

    node.create_subscription(Image, topic, on_frame, qos_profile_sensor_data)
    deadline = time.monotonic() + 30.0
    while not stamps and time.monotonic() < deadline:  # discovery, and the first frame
        rclpy.spin_once(node, timeout_sec=0.1)
    latencies_ms.clear()
    stamps.clear()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    expected = round((stamps[-1] - stamps[0]) / 1e9 * rate) + 1 if len(stamps) > 1 else 0
    print(json.dumps({"received": len(stamps), "expected": expected, "latencies_ms": latencies_ms}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
