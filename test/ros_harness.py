"""Helpers for tests over real DDS: node processes, an in-test client node, waiting with deadlines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import yaml
from builtin_interfaces.msg import Time
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header


class NodeProcess:
    """A node started as ``python -m <module> --ros-args --params-file ...`` in its own process."""

    def __init__(
        self,
        module: str,
        name: str,
        params: dict[str, Any] | None = None,
        remaps: dict[str, str] | None = None,
        namespace: str = "",
    ) -> None:
        self.name = name
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as params_file:
            yaml.safe_dump({"/**": {"ros__parameters": params or {}}}, params_file)
        self._params_path = params_file.name
        command = [sys.executable, "-m", module, "--ros-args", "--params-file", self._params_path]
        for source, target in (remaps or {}).items():
            command += ["-r", f"{source}:={target}"]
        if namespace:
            command += ["-r", f"__ns:={namespace}"]
        # Open for the process's lifetime: the child writes to it until stop().
        self._log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        os.unlink(self._params_path)
        return self.process.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RosClient:
    """An rclpy node in the test process, spun on a background thread, with its own context."""

    def __init__(self, name: str = "test_client") -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.received: dict[str, list[Any]] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok() and not self._stopping.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutting down
                return

    def publisher(self, msg_type: type, topic: str, reliable: bool = True, depth: int = 10):
        qos = QoSProfile(
            depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        )
        return self.node.create_publisher(msg_type, topic, qos)

    def subscribe(self, msg_type: type, topic: str, reliable: bool = True, depth: int = 50) -> list[Any]:
        qos = QoSProfile(
            depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        )
        bucket = self.received.setdefault(topic, [])

        def store(msg: Any) -> None:
            with self._lock:
                bucket.append(msg)

        self.node.create_subscription(msg_type, topic, store, qos)
        return bucket

    def wait_for_subscribers(self, publisher, count: int = 1, timeout: float = 20.0) -> None:
        wait_until(
            lambda: publisher.get_subscription_count() >= count, timeout, f"subscriber on {publisher.topic_name}"
        )

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = 20.0) -> None:
        wait_until(lambda: self.node.count_publishers(topic) >= count, timeout, f"publisher on {topic}")

    def close(self) -> None:
        # The spin thread ends first: destroying the node while it builds a wait set crashed the test process.
        self._stopping.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def header(stamp_ns: int, frame_id: str = "camera_color_optical_frame") -> Header:
    return Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id)


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic RGB scene with a few solid rectangles on a gradient (stands in for a camera frame)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack(
        [(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), np.full_like(x, 90)], axis=2
    ).astype(np.uint8)
    for _ in range(5):
        x1, y1 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        x2, y2 = x1 + int(rng.integers(width // 10, width // 4)), y1 + int(rng.integers(height // 10, height // 4))
        image[y1:y2, x1:x2] = rng.integers(0, 255, 3)
    return image


def call_service(client: RosClient, service_type: type, name: str, request: Any, timeout: float = 10.0) -> Any:
    """One call of a node's service from the test client: its response (waits for the service first)."""
    service = client.node.create_client(service_type, name)
    try:
        assert service.wait_for_service(timeout_sec=timeout), f"no {name} service"
        future = service.call_async(request)
        wait_until(future.done, timeout, f"{name} to answer")
        return future.result()
    finally:
        client.node.destroy_client(service)


def set_parameters(client: RosClient, node_name: str, **values: Any) -> list[Any]:
    """Set parameters of a running node through its standard service (what `ros2 param set` does)."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
    return list(call_service(client, SetParameters, f"{node_name}/set_parameters", request).results)


def get_parameters(client: RosClient, node_name: str, *names: str) -> dict[str, Any]:
    """Read parameters of a running node through its standard service (what `ros2 param get` does).

    An undeclared name comes back as None (PARAMETER_NOT_SET).
    """
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    response = call_service(
        client, GetParameters, f"{node_name}/get_parameters", GetParameters.Request(names=list(names))
    )
    return {name: parameter_value_to_python(value) for name, value in zip(names, response.values, strict=True)}
