"""A second process for message round-trip tests: republishes every message of a type from `in` to `out`."""

from __future__ import annotations

import contextlib
import importlib
import sys

import rclpy
from rclpy.node import Node


def main() -> None:
    package, _, name = sys.argv[1].partition("/msg/")
    msg_type = getattr(importlib.import_module(f"{package}.msg"), name)
    rclpy.init()
    node = Node("relay")
    publisher = node.create_publisher(msg_type, "relay_out", 10)
    node.create_subscription(msg_type, "relay_in", publisher.publish, 10)
    with contextlib.suppress(KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        rclpy.spin(node)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
