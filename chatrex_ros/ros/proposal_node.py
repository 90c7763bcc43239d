"""proposal_node: camera image -> class-agnostic box proposals (ProposalArray), index-stable.

Subscribes ``image`` (sensor_msgs/Image, or ``image/compressed`` with image_transport:=compressed), runs the
configured proposal backend and the shared selection policy on a worker thread, and publishes ``proposals``
with the image's header. The callback only swaps the newest frame into a one-slot mailbox, so it never
blocks; frames that arrive while the backend is busy replace each other (counted as skipped).

When the worker starts on a frame it publishes that frame's header on ``proposals/pending``: consumers that
must keep the frame until its proposals arrive (language_node's images, grasp_target_node's depth) hold just
the announced frames instead of every frame of the backend's latency.

``enabled`` (a parameter, and the ``enable`` std_srvs/SetBool service that sets it) switches the inference off
and on at run time; ``max_rate_hz`` caps how often it runs (the newest frame is taken when the next slot comes),
so a proposer on a GPU shared with the language model can leave it time and memory. With ``mode:=on_demand`` it
runs only for the frames language_node names on ``proposals/request`` (a ``std_msgs/Header``: the frame's stamp,
or zero for the newest), keeping the last ``on_demand_frames`` frames undecoded for them; the proposals go out on
the usual topic with the frame's header, so pairing stays by stamp and an idle graph spends no inference.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import SetBool
from visualization_msgs.msg import ImageMarker

from chatrex_ros.core.images import ImageFormatError, decode_rgb
from chatrex_ros.core.overlays import PROPOSAL_COLOUR
from chatrex_ros.core.stamps import format_stamp, stamp_to_ns
from chatrex_ros.models.base import ProposalPipeline
from chatrex_ros.models.settings import proposal_pipeline, selection_policy
from chatrex_ros.msg import ProposalArray
from chatrex_ros.node_parameters import PROPOSAL_NODE, ProposalNodeParams
from chatrex_ros.ros.conversions import proposals_to_msg
from chatrex_ros.ros.health import WARN, Condition
from chatrex_ros.ros.lifecycle import ManagedNode
from chatrex_ros.ros.markers import box_marker
from chatrex_ros.ros.node_runtime import publish_from_worker, run_node
from chatrex_ros.ros.qos import reliable_qos, sensor_qos

REQUEST_QUEUE = 8
"""mode:=on_demand: requested frames waiting for the backend; more at once are refused (and reported)."""


@dataclass
class _Pending:
    msg: Image | CompressedImage
    received: float


class ProposalNode(ManagedNode[ProposalNodeParams]):
    """Runs the proposal pipeline on the newest camera frame and publishes index-stable proposals.

    A managed node (:mod:`chatrex_ros.ros.lifecycle`): configure builds and warms up the backend, cleanup frees
    it; while not active, frames are ignored (counted) and on-demand requests are answered with the reason.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("proposal_node", PROPOSAL_NODE, ProposalNodeParams, **kwargs)
        params = self.params
        self.pipeline: ProposalPipeline | None = None  # built by configure (load_model)

        self.publisher = self.create_publisher(ProposalArray, "proposals", reliable_qos())
        self.marker_pub = (
            self.create_publisher(ImageMarker, "proposals/markers", reliable_qos(2)) if params.publish_markers else None
        )
        self.claims = self.create_publisher(Header, "proposals/pending", reliable_qos())
        self.image_watch = self.watch_input(
            "images",
            params.input_silence_s,
            "check the camera topic (`chatrex-ros up --image TOPIC`, or remap `image`) and that the camera runs",
        )
        # The frames to compute: continuous, only the newest (a newer one replaces it); on demand, the requested
        # ones in order. Guarded by _wakeup, which also wakes the worker.
        self._mailbox: deque[_Pending] = deque()
        self._wakeup = threading.Condition()
        self._recent: deque[Image | CompressedImage] = deque(maxlen=params.on_demand_frames)  # on demand only
        self._computing = -1  # stamp (ns) of the frame in the backend, -1 for none: a repeated request waits for it
        self._stats = {
            "frames": 0,
            "skipped": 0,
            "ignored_while_disabled": 0,
            "ignored_while_inactive": 0,
            "requests": 0,
            "requests_unmet": 0,
            "last_latency_ms": 0.0,
            "last_inference_ms": 0.0,
        }
        self._rate_window: list[float] = []
        self._next_start = 0.0  # perf_counter seconds before which max_rate_hz lets no frame start
        # The model first (autostart): frames that arrive while it loads would only be ignored.
        self.start_lifecycle(params.autostart)
        compressed = params.image_transport == "compressed"
        image_sub = self.create_subscription(
            CompressedImage if compressed else Image,
            "image/compressed" if compressed else "image",
            self._on_image,
            sensor_qos(params.image_qos.reliability, params.image_qos.depth),
            event_callbacks=self.image_watch.event_callbacks(),
        )
        self.image_watch.attach(image_sub.topic_name)

        self.create_service(SetBool, "enable", self._on_enable)
        request_sub = self.create_subscription(Header, "proposals/request", self._on_request, reliable_qos())
        self._worker = self.start_worker("proposal_worker", self._work)
        backend = self.pipeline.backend if self.pipeline is not None else None
        provider = getattr(backend, "provider", "")
        policy = selection_policy(params)
        name = (
            f"'{backend.name}'{f' ({provider})' if provider else ''} ready" if backend else "not loaded (unconfigured)"
        )
        self.start_serving(
            f"proposal backend {name} on "
            f"{image_sub.topic_name}; min_score={policy.min_score} nms_iou={policy.nms_iou} "
            f"max_proposals={policy.max_count}"
            + (f"; on demand: the frames requested on {request_sub.topic_name}" if params.mode == "on_demand" else ""),
            self._diagnostic_values,
            self._conditions,
        )

    def apply_parameters(self, params: ProposalNodeParams) -> str | None:
        """A new selection policy takes effect from the next frame; the backend is read-only."""
        try:
            policy = selection_policy(params)
        except ValueError as error:
            return str(error)
        self.params = params
        with self._wakeup:
            if self.pipeline is not None:
                self.pipeline.policy = policy
            if not params.enabled:
                self._mailbox.clear()  # a frame that waited is not computed after the switch-off
            if params.mode != "on_demand":
                self._recent.clear()
            self._wakeup.notify()  # a new max_rate_hz applies to the slot being waited for
        return None

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        """The `enable` service: the same switch as the `enabled` parameter (it sets the parameter)."""
        result = self.set_parameters([Parameter("enabled", value=bool(request.data))])[0]
        response.success = bool(result.successful)
        response.message = ("proposals on" if request.data else "proposals off") if result.successful else result.reason
        return response

    # ---- lifecycle ----
    def load_model(self) -> None:
        """configure: build the backend with the current parameters and warm it up."""
        pipeline = proposal_pipeline(self.params)
        if self.params.warmup:
            pipeline.warmup()
        with self._wakeup:
            self.pipeline = pipeline

    def free_model(self) -> None:
        """cleanup: drop the backend (a frame in the backend finishes with its own reference)."""
        with self._wakeup:
            pipeline, self.pipeline = self.pipeline, None
            self._mailbox.clear()
            self._recent.clear()
        close = getattr(pipeline.backend if pipeline is not None else None, "close", None)
        if callable(close):
            close()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop serving: frames waiting for the backend are dropped with the switch."""
        with self._wakeup:
            self._mailbox.clear()  # a frame that waited is not computed after the node stopped serving
        return super().on_deactivate(state)

    def _conditions(self) -> list[Condition]:
        lifecycle = self.lifecycle_condition()
        if lifecycle is not None:  # a node a manager keeps idle: a silent camera is expected, not a fault
            return [lifecycle]
        conditions = [c for c in (self.image_watch.condition(),) if c is not None]
        if not self.params.enabled:
            conditions.append(
                Condition(
                    WARN,
                    "disabled",
                    "switched off (enabled:=false, or the enable service): frames are ignored, no proposals published",
                )
            )
        return conditions

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.image_watch.note()
        if not self.active:
            self._stats["ignored_while_inactive"] += 1
            return
        disabled = not self.params.enabled
        if disabled:
            self._stats["ignored_while_disabled"] += 1
        if self.params.mode == "on_demand":
            # Kept undecoded (most frames are never asked about), also while switched off: a query that comes
            # just after it is switched on names a frame from before.
            with self._wakeup:
                self._recent.append(msg)
            return
        if disabled:
            return
        with self._wakeup:
            self._stats["skipped"] += len(self._mailbox)
            self._mailbox.clear()
            self._mailbox.append(_Pending(msg, time.perf_counter()))
            self._wakeup.notify()

    def _on_request(self, header: Header) -> None:
        """language_node asks for one frame's proposals (mode:=on_demand): queue that frame for the backend."""
        self._stats["requests"] += 1
        stamp = stamp_to_ns(header.stamp)
        wanted = "the newest frame" if stamp == 0 else f"the frame {format_stamp(stamp)}"
        params = self.params
        if params.mode != "on_demand":
            self._unmet(
                None,
                "request_in_continuous_mode",
                f"proposals were requested for {wanted}, but mode is continuous (every frame is computed that the "
                "backend keeps up with): set proposal_node mode:=on_demand, or language_node "
                "proposals_on_demand:=false",
            )
            return
        if not self.active:
            self._unmet(
                header,
                "request_while_inactive",
                f"proposals were requested for {wanted} while proposal_node is {self.lifecycle_state} (lifecycle)",
            )
            return
        if not params.enabled:
            self._unmet(
                header,
                "request_while_disabled",
                f"proposals were requested for {wanted} while proposal_node is switched off "
                "(switch it on with its enable service or enabled:=true)",
            )
            return
        with self._wakeup:
            msg = next(
                (m for m in reversed(self._recent) if stamp in (0, stamp_to_ns(m.header.stamp))),
                None,
            )
            if msg is None:
                held = len(self._recent)
                reason = f"it is not among the {held} newest frames held (on_demand_frames={params.on_demand_frames})"
            else:
                stamp = stamp_to_ns(msg.header.stamp)
                if stamp == self._computing or any(stamp_to_ns(p.msg.header.stamp) == stamp for p in self._mailbox):
                    return  # already coming: its proposals answer every request for it
                if len(self._mailbox) < REQUEST_QUEUE:
                    self._mailbox.append(_Pending(msg, time.perf_counter()))
                    self._wakeup.notify()
                    return
                reason = f"{REQUEST_QUEUE} requested frames already wait for the backend"
        self._unmet(header, "request_unmet", f"cannot compute proposals for {wanted}: {reason}")

    def _unmet(self, request: Header | None, cause: str, message: str) -> None:
        """Count and report a request that gets no proposals; answer it (empty list, the reason) when given."""
        self._stats["requests_unmet"] += 1
        self.problems.report(cause, message)
        if request is not None:
            self.publisher.publish(ProposalArray(header=request, unmet_reason=message))

    def _work(self) -> None:
        while True:
            with self._wakeup:
                self._wakeup.wait_for(lambda: bool(self._mailbox) or not self.running)
                # max_rate_hz: wait for the next slot; newer frames replace the waiting one meanwhile.
                while self.running and (wait := self._next_start - time.perf_counter()) > 0:
                    self._wakeup.wait(timeout=wait)
                if not self.running:
                    return
                pending = self._mailbox.popleft() if self._mailbox else None
                self._computing = stamp_to_ns(pending.msg.header.stamp) if pending is not None else -1
            if pending is not None:
                rate = self.params.max_rate_hz
                self._next_start = time.perf_counter() + 1.0 / rate if rate > 0 else 0.0
                try:
                    self._process(pending)
                finally:
                    self._computing = -1

    def _process(self, pending: _Pending) -> None:
        msg = pending.msg
        if not publish_from_worker(self, self.claims, msg.header):
            return
        try:
            image = decode_rgb(msg, max_pixels=self.params.max_image_pixels)
        except ImageFormatError as error:
            self.problems.report("bad_image", f"dropped image: {error}")
            return
        pipeline = self.pipeline
        if pipeline is None:  # freed (lifecycle cleanup) while the frame waited
            return
        try:
            proposals = pipeline.run(image)
        except BaseException as error:  # a backend failure, SystemExit included, must not stop the node
            self.problems.report("backend_error", f"proposal backend failed: {type(error).__name__}: {error}")
            return
        out = proposals_to_msg(proposals, msg.header, image.shape[1], image.shape[0], self.params.granularity)
        if not publish_from_worker(self, self.publisher, out):
            return
        if self.marker_pub is not None:  # after the proposals: a viewer's overlay never delays the language node
            colours = [PROPOSAL_COLOUR] * proposals.boxes.shape[0]
            marker = box_marker(msg.header, proposals.boxes, colours, ns="proposals", width_px=1.0)
            publish_from_worker(self, self.marker_pub, marker)
        now = time.perf_counter()
        self._stats["frames"] += 1
        self._stats["last_latency_ms"] = (now - pending.received) * 1e3
        self._stats["last_inference_ms"] = proposals.inference_ms
        self._rate_window = [t for t in self._rate_window if now - t < 5.0] + [now]

    def _diagnostic_values(self) -> dict[str, object]:
        window = self._rate_window
        fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 and window[-1] > window[0] else 0.0
        backend = self.pipeline.backend if self.pipeline is not None else None
        provider = str(getattr(backend, "provider", ""))  # how it runs, where a backend says (selective search)
        return {
            "backend": backend.name if backend is not None else f"{self.params.backend} (not loaded)",
            "lifecycle": self.lifecycle_state,
            **({"provider": provider} if provider else {}),
            "enabled": self.params.enabled,
            "mode": self.params.mode,
            "max_rate_hz": self.params.max_rate_hz,
            "fps": fps,
            **self._stats,
        }

    def close(self) -> None:
        """Stop the worker (called by run_node before the node is destroyed)."""
        with self._wakeup:
            self.running = False
            self._wakeup.notify()
        self._worker.join(timeout=2.0)


def main(args: list[str] | None = None) -> None:
    """Console entry point: run the node until shutdown and exit with its status."""
    raise SystemExit(run_node(ProposalNode, args))


if __name__ == "__main__":
    main()
