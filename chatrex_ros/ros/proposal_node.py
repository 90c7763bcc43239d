"""proposal_node: camera image -> class-agnostic box proposals (ProposalArray), index-stable.

Subscribes ``image`` (sensor_msgs/Image, or ``image/compressed`` with image_transport:=compressed), runs the
configured proposal backend and the shared selection policy on a worker thread, and publishes ``proposals``
with the image's header. The callback only swaps the newest frame into a one-slot mailbox, so it never
blocks; frames that arrive while the backend is busy replace each other (counted as skipped).

When the worker starts on a frame it publishes that frame's header on ``proposals/pending``: consumers that
must keep the frame until its proposals arrive (language_node's images, grasp_target_node's depth) hold just
the announced frames instead of every frame of the backend's latency.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from chatrex_ros.core.images import ImageFormatError, decode_rgb
from chatrex_ros.models.settings import PROPOSAL_NODE_PARAMETERS, proposal_pipeline, selection_policy
from chatrex_ros.msg import ProposalArray
from chatrex_ros.ros.conversions import proposals_to_msg
from chatrex_ros.ros.health import Diagnostics, InputWatch, ProblemLog
from chatrex_ros.ros.node_runtime import StartupError, publish_from_worker, run_node
from chatrex_ros.ros.params import declare_parameters, install_validator
from chatrex_ros.ros.qos import reliable_qos, sensor_qos

PARAMETERS = PROPOSAL_NODE_PARAMETERS


@dataclass
class _Pending:
    msg: Image | CompressedImage
    received: float


class ProposalNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("proposal_node", **kwargs)
        self.values = declare_parameters(self, PARAMETERS)
        self.problems = ProblemLog(self.get_logger())
        try:
            self.pipeline = proposal_pipeline(self.values)
        except (ValueError, TypeError) as error:
            raise StartupError(str(error)) from error
        backend, policy = self.pipeline.backend, self.pipeline.policy
        install_validator(self, PARAMETERS, self._on_parameters)
        if self.values["warmup"]:
            self.pipeline.run(np.zeros((480, 640, 3), np.uint8))

        self.publisher = self.create_publisher(ProposalArray, "proposals", reliable_qos())
        self.claims = self.create_publisher(Header, "proposals/pending", reliable_qos())
        self.image_watch = InputWatch(
            self,
            "images",
            self.values["input_silence_s"],
            "check the camera topic (`chatrex-ros up --image TOPIC`, or remap `image`) and that the camera runs",
            self.problems,
        )
        qos = sensor_qos(self.values["image_qos.reliability"], self.values["image_qos.depth"])
        compressed = self.values["image_transport"] == "compressed"
        image_sub = self.create_subscription(
            CompressedImage if compressed else Image,
            "image/compressed" if compressed else "image",
            self._on_image,
            qos,
            event_callbacks=self.image_watch.event_callbacks(),
        )
        self.image_watch.attach(image_sub.topic_name)

        self._mailbox: _Pending | None = None
        self._wakeup = threading.Condition()
        self._running = True
        self._stats = {"frames": 0, "skipped": 0, "last_latency_ms": 0.0, "last_inference_ms": 0.0}
        self._rate_window: list[float] = []
        self._worker = threading.Thread(target=self._work, name="proposal_worker", daemon=True)
        self._worker.start()
        self.diagnostics = Diagnostics(
            self,
            self._diagnostic_values,
            self.problems,
            lambda: [c for c in (self.image_watch.condition(),) if c is not None],
        )
        provider = getattr(backend, "provider", "")
        self.get_logger().info(
            f"proposal backend '{backend.name}'{f' ({provider})' if provider else ''} ready on "
            f"{image_sub.topic_name}; min_score={policy.min_score} nms_iou={policy.nms_iou} "
            f"max_proposals={policy.max_count}"
        )

    def _on_parameters(self, changed: dict[str, Any]) -> str | None:
        merged = {**self.values, **changed}
        try:
            policy = selection_policy(merged)
        except ValueError as error:
            return str(error)
        self.values = merged
        self.pipeline.policy = policy
        return None

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.image_watch.note()
        with self._wakeup:
            if self._mailbox is not None:
                self._stats["skipped"] += 1
            self._mailbox = _Pending(msg, time.perf_counter())
            self._wakeup.notify()

    def _work(self) -> None:
        while True:
            with self._wakeup:
                self._wakeup.wait_for(lambda: self._mailbox is not None or not self._running)
                if not self._running:
                    return
                pending, self._mailbox = self._mailbox, None
            self._process(pending)

    def _process(self, pending: _Pending) -> None:
        msg = pending.msg
        if not publish_from_worker(self, self.claims, msg.header):
            return
        try:
            image = decode_rgb(msg)
        except ImageFormatError as error:
            self.problems.report("bad_image", f"dropped image: {error}")
            return
        try:
            proposals = self.pipeline.run(image)
        except Exception as error:  # a backend failure must not kill the node
            self.problems.report("backend_error", f"proposal backend failed: {type(error).__name__}: {error}")
            return
        out = proposals_to_msg(proposals, msg.header, image.shape[1], image.shape[0], self.values["granularity"])
        if not publish_from_worker(self, self.publisher, out):
            return
        now = time.perf_counter()
        self._stats["frames"] += 1
        self._stats["last_latency_ms"] = (now - pending.received) * 1e3
        self._stats["last_inference_ms"] = proposals.inference_ms
        self._rate_window = [t for t in self._rate_window if now - t < 5.0] + [now]

    def _diagnostic_values(self) -> dict[str, object]:
        window = self._rate_window
        fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 and window[-1] > window[0] else 0.0
        return {"backend": self.pipeline.backend.name, "fps": fps, **self._stats}

    def close(self) -> None:
        with self._wakeup:
            self._running = False
            self._wakeup.notify()
        self._worker.join(timeout=5.0)


def main(args: list[str] | None = None) -> None:
    raise SystemExit(run_node(ProposalNode, args))


if __name__ == "__main__":
    main()
