"""language_node: image + proposals + Query -> Answer with the model's index answer resolved into boxes.

Images and proposals are paired by exact stamp in a bounded cache that holds the frames the proposer announced
on ``proposals/pending`` until their proposals arrive (:mod:`chatrex_ros.core.frame_cache`). Queries (topic
``query`` or service ``ask``) go into a bounded FIFO queue served by one worker; the model runs one generation at a
time on its own thread so a per-query timeout can be reported on time, and a query's deadline runs from its
arrival, also while it waits. A full queue answers BUSY at once, every failure has a status: each query gets
exactly one answer. The ``ask`` service answers from the worker, so waiting calls hold no executor thread; the
``ask`` action is the same query with feedback and cancel, in the same queue.
Frames are cached as they arrive and decoded only when a query uses one: at 30 Hz almost none are. With
``proposals_on_demand`` the node names each query's frame on ``proposals/request`` for a proposal node in
``mode:=on_demand``, which computes proposals for that frame only.
Silent inputs, lost frames and a missing model show on /diagnostics.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rclpy.action import ActionServer, CancelResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.task import Future as RosFuture
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import ImageMarker

from chatrex_ros.action import Ask as AskAction
from chatrex_ros.core.answering import (
    AnswerResult,
    AnswerStatus,
    QueryError,
    QueryOutcome,
    QueryRequest,
    answer_query,
    check_stamp,
    query_timeout_s,
    status_name,
)
from chatrex_ros.core.call_thread import CallThread
from chatrex_ros.core.frame_cache import Frame, FrameCache, FrameTooLarge
from chatrex_ros.core.images import ImageFormatError, decode_rgb, image_size
from chatrex_ros.core.overlays import REGION_COLOUR, Region, draw_answer, line_width, phrase_colours
from chatrex_ros.core.query_queue import QueryQueue
from chatrex_ros.core.stamps import format_stamp, stamp_to_ns
from chatrex_ros.core.types import Proposals
from chatrex_ros.models.base import LanguageBackend
from chatrex_ros.models.settings import language_backend
from chatrex_ros.msg import Answer, ProposalArray, Query
from chatrex_ros.node_parameters import LANGUAGE_NODE, LanguageNodeParams
from chatrex_ros.ros.conversions import answer_msg, image_msg, msg_to_proposals, ns_to_stamp
from chatrex_ros.ros.deferred_service import DeferredService, Reply
from chatrex_ros.ros.health import FASTDDS_PROFILE_HINT, WARN, Condition, LossCounter
from chatrex_ros.ros.lifecycle import ManagedNode
from chatrex_ros.ros.markers import box_marker
from chatrex_ros.ros.node_runtime import publish_from_worker, run_node
from chatrex_ros.ros.qos import query_qos, reliable_qos, sensor_qos
from chatrex_ros.srv import Ask

NO_MODEL = (
    "no language model configured: every query is answered MODEL_ERROR; set language_backend:=chatrex "
    "model_path:=<ChatRex-7B dir> trust_remote_code:=true (with `chatrex-ros up`: --set "
    "language_node.language_backend=chatrex --set language_node.model_path=<dir> --set "
    "language_node.trust_remote_code=true), or a python:module:Class plugin"
)


class _StoredImage:
    """A cached frame as it arrived; decoded to RGB once, when a query first uses it (most frames never are).

    Its fields and header were checked on arrival (:func:`image_size`), so only a corrupt compressed body can
    still fail, in :meth:`rgb`.
    """

    def __init__(self, msg: Image | CompressedImage, width: int, height: int, max_pixels: int) -> None:
        self.header: Header = msg.header
        self.width, self.height = width, height
        self._msg: Image | CompressedImage | None = msg
        self._max_pixels = max_pixels
        self._rgb: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """The decoded frame's size: the frame cache's byte budget counts what a frame takes when used."""
        return self.width * self.height * 3

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB; may be a view of the message's buffer (numpy keeps that buffer alive)."""
        with self._lock:
            if self._rgb is None:
                assert self._msg is not None
                self._rgb = decode_rgb(self._msg, max_pixels=self._max_pixels)
                self._msg = None
            return self._rgb


@dataclass(frozen=True)
class _StoredProposals:
    header: Header
    proposals: Proposals
    width: int
    height: int


STAGE_NAMES = {
    AskAction.Feedback.STAGE_QUEUED: "queued",
    AskAction.Feedback.STAGE_WAITING_FOR_FRAME: "waiting_for_frame",
    AskAction.Feedback.STAGE_GENERATING: "generating",
}


@dataclass
class _Goal:
    """One goal of the ``ask`` action: its handle, the future its coroutine awaits, the stage it is in."""

    handle: ServerGoalHandle[Any, Any, Any]
    done: RosFuture[Answer]
    received: float
    job: _Job | None = None
    stage: int = AskAction.Feedback.STAGE_QUEUED
    cancelled: Answer | None = None  # the CANCELED answer, delivered once the goal is CANCELING


@dataclass
class _Job:
    """One accepted query; :meth:`LanguageNode._finish` answers it exactly once, whoever gets there first."""

    query: Query
    request: QueryRequest
    received: float
    deadline: float
    reply: Callable[[Answer], None] | None = None
    goal: _Goal | None = None  # set for a query that came as an ``ask`` action goal
    frame_stamp: int | None = None  # the frame it turned out to be about (a "newest" resolved), once known
    answered: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """True for the one caller that may answer this job (the worker, or the queue's deadline sweep)."""
        with self.lock:
            if self.answered:
                return False
            self.answered = True
            return True


class _Cancelled(Exception):
    """The running job's ``ask`` goal was cancelled: stop waiting for its generation."""


class LanguageNode(ManagedNode[LanguageNodeParams]):
    """Answers queries about cached frames with the language model, one at a time, never leaving one unanswered.

    A managed node (:mod:`chatrex_ros.ros.lifecycle`): configure loads the model, cleanup frees it; while not
    active, every query is answered BUSY at once with the lifecycle state (none is lost), and queries already
    queued are still answered.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("language_node", LANGUAGE_NODE, LanguageNodeParams, **kwargs)
        params = self.params
        self.backend: LanguageBackend | None = None  # loaded by configure (None also for language_backend 'none')
        self.model_loaded = False
        self.cache: FrameCache[_StoredImage, _StoredProposals] = FrameCache(
            params.frame_cache_size,
            params.recent_images,
            max_bytes=params.frame_cache_mb * 2**20,
            size_of=lambda image: image.nbytes,
        )
        self.images_dropped = 0
        self.newest_image_dropped: str | None = None  # why the newest image was dropped; None when it was kept
        self.jobs: QueryQueue[_Job] = QueryQueue(params.queue_size)
        self.status_counts = {status.name: 0 for status in AnswerStatus}
        self._counts_lock = threading.Lock()  # answers are finished on the worker and on intake threads
        self.last_latency_ms = 0.0
        self._model_thread = CallThread("language_model")
        self._pending_generation: Future[AnswerResult] | None = None
        self._draw_thread = CallThread("annotate")
        self._draw_newest = 0  # number of the newest answer to draw (the drawing thread skips older ones)

        # Answers and queries keep a deep history: a burst of BUSY answers must reach a slow reader too.
        self.answer_pub = self.create_publisher(Answer, "answer", query_qos())
        self.annotated_pub = (
            self.create_publisher(Image, "answer_image", reliable_qos(2)) if params.publish_annotated else None
        )
        if params.publish_annotated:
            import cv2  # noqa: F401  # loaded now, not by the first answer's drawing (a second or more)
        self.marker_pub = (
            self.create_publisher(ImageMarker, "answer/markers", reliable_qos(2)) if params.publish_markers else None
        )
        # Each input has its own group: a burst on one (proposals, queries) never delays camera frames. The
        # callbacks only touch thread-safe structures (the frame cache, the job queue).
        self.image_watch = self.watch_input(
            "images",
            params.input_silence_s,
            "check the camera topic (`chatrex-ros up --image TOPIC`, or remap `image`) and that the camera runs",
        )
        self.proposal_watch = self.watch_input(
            "proposals",
            params.input_silence_s,
            "start proposal_node in the same namespace (`chatrex-ros up` starts both)",
        )
        # The model first (autostart): queries that came while it loads would only be answered BUSY.
        self.start_lifecycle(params.autostart)
        qos = sensor_qos(params.image_qos.reliability, params.image_qos.depth)
        compressed = params.image_transport == "compressed"
        image_sub = self.create_subscription(
            CompressedImage if compressed else Image,
            "image/compressed" if compressed else "image",
            self._on_image,
            qos,
            callback_group=MutuallyExclusiveCallbackGroup(),
            event_callbacks=self.image_watch.event_callbacks(),
        )
        self.image_watch.attach(image_sub.topic_name)
        proposals_sub = self.create_subscription(
            ProposalArray,
            "proposals",
            self._on_proposals,
            reliable_qos(),
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.proposal_watch.attach(proposals_sub.topic_name)
        self.create_subscription(
            Header, "proposals/pending", self._on_claim, reliable_qos(), callback_group=MutuallyExclusiveCallbackGroup()
        )
        self.proposal_requests = self.create_publisher(Header, "proposals/request", reliable_qos())
        self.requests_sent = 0
        self.requested_at: float | None = None  # monotonic time of the oldest request no proposals answered yet
        self.queries_received = 0
        self.query_losses = LossCounter(
            "queries",
            "those queries get no answer: a burst outran this node's reader (CPU load?); send it slower",
            self.problems,
        )
        query_sub = self.create_subscription(
            Query,
            "query",
            self._on_query,
            query_qos(),
            callback_group=MutuallyExclusiveCallbackGroup(),
            event_callbacks=self.query_losses.event_callbacks(),
        )
        self.query_losses.attach(query_sub.topic_name, lambda: self.queries_received)
        self.ask = DeferredService(self, Ask, "ask", self._on_ask, callback_group=ReentrantCallbackGroup())
        self._goals: dict[bytes, _Goal] = {}  # the ask action's live goals, by goal id
        self._goals_lock = threading.Lock()
        self._running: _Job | None = None  # the job whose generation runs now
        self.ask_action = ActionServer(
            self,
            AskAction,
            "ask",
            execute_callback=self._execute_goal,  # a coroutine: a waiting goal holds no executor thread
            cancel_callback=self._cancel_goal,
            callback_group=ReentrantCallbackGroup(),
        )
        self.create_timer(1.0, self._feedback_all, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(0.05, self._expire_queued, callback_group=MutuallyExclusiveCallbackGroup())
        self._worker = self.start_worker("query_worker", self._serve)
        model = self.backend.name if self.backend is not None else "none"
        loaded = (
            f"language backend '{model}' ready" if self.model_loaded else "language model not loaded (unconfigured)"
        )
        self.start_serving(
            f"{loaded}; queue {params.queue_size}; images on "
            f"{image_sub.topic_name}, proposals on {proposals_sub.topic_name}"
            + (f" (requested on {self.proposal_requests.topic_name})" if params.proposals_on_demand else ""),
            self._diagnostic_values,
            self._conditions,
        )
        if self.backend is None and self.model_loaded:
            self.problems.log_condition("no_model", WARN, NO_MODEL)  # the same throttled line as /diagnostics

    # ---- lifecycle ----
    def load_model(self) -> None:
        """configure: load the language model the parameters name (ChatRex-7B can take a minute)."""
        self.backend, self.model_loaded = language_backend(self.params), True

    def free_model(self) -> None:
        """cleanup: drop the model (a generation still running keeps it until it ends)."""
        self.backend, self.model_loaded = None, False

    # ---- intake (never blocks on the model) ----
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.image_watch.note()
        try:
            limit = self.params.max_image_pixels
            width, height = image_size(msg, max_pixels=limit)  # the checks of a decode, without decoding
            self.cache.add_image(stamp_to_ns(msg.header.stamp), _StoredImage(msg, width, height, limit))
        except (ImageFormatError, FrameTooLarge) as error:
            cause, why = (
                ("image_too_large", f"{error} (frame_cache_mb)")
                if isinstance(error, FrameTooLarge)
                else ("bad_image", str(error))
            )
            self.images_dropped += 1
            self.newest_image_dropped = why
            self.problems.report(cause, f"dropped image: {why}")
            return
        self.newest_image_dropped = None
        for event in self.cache.take_events():
            self.report_stamp_event("image", event, "the cached frames")

    def _on_claim(self, header: Header) -> None:
        self.cache.claim(stamp_to_ns(header.stamp))

    def _on_proposals(self, msg: ProposalArray) -> None:
        self.proposal_watch.note()
        self.requested_at = None  # the proposer answers (requests are served in order)
        if msg.unmet_reason:  # an on-demand request the proposer could not meet: the query is told why at once
            reason = f"proposal_node could not compute them: {msg.unmet_reason}"
            self.cache.refuse(stamp_to_ns(msg.header.stamp), reason, publisher_fault=False)
            return
        try:
            proposals = msg_to_proposals(msg)
        except ValueError as error:
            stamp = stamp_to_ns(msg.header.stamp)
            self.cache.refuse(stamp, f"its ProposalArray was refused: {error}")
            self.problems.report(
                "bad_proposals",
                f"refused the ProposalArray for the frame {format_stamp(stamp)} on {self.proposal_watch.topic} "
                f"(its publisher's fault; queries about that frame are told why): {error}",
            )
            return
        stored = _StoredProposals(msg.header, proposals, int(msg.image_width), int(msg.image_height))
        missed = self.cache.stats.proposals_without_image
        self.cache.add_proposals(stamp_to_ns(msg.header.stamp), stored)
        if self.cache.stats.proposals_without_image > missed:
            why = (
                FASTDDS_PROFILE_HINT
                if self.image_watch.lost
                else "this node's KEEP_LAST(image_qos.depth) "
                "image reader missed it (CPU load); raise image_qos.depth if it keeps happening"
            )
            self.problems.report(
                "missed_images",
                f"proposals arrived for a frame whose image never reached this node ({self.image_watch.topic}): {why}",
            )

    def _on_query(self, msg: Query) -> None:
        self._submit(msg, reply=None)

    def _on_ask(self, request: Ask.Request, reply: Reply) -> None:
        """Returns at once: the answer is sent from whichever thread finishes the query."""
        self._submit(request.query, reply=lambda answer: reply.send(Ask.Response(answer=answer)))

    # ---- the ask action: the same queue, with feedback and cancel ----
    async def _execute_goal(self, handle: ServerGoalHandle[Any, Any, Any]) -> Any:
        """Queue the goal's query and wait, without holding a thread, for its answer (or its cancellation).

        The answer arrives on another thread; it completes ``goal.done`` and wakes the executor, which resumes
        this coroutine. A full queue accepts the goal and aborts it with the BUSY answer, like the topic and
        the service: the client gets the reason, not a bare rejection.
        """
        goal = _Goal(handle, RosFuture(executor=self.executor), time.monotonic())
        key = bytes(handle.goal_id.uuid)
        with self._goals_lock:
            self._goals[key] = goal
        try:
            self._submit(handle.request.query, self._resolver(goal), goal)
            self._send_feedback(goal)
            answer = await goal.done
        finally:
            with self._goals_lock:
                self._goals.pop(key, None)
        assert answer is not None
        if answer.status == AnswerStatus.CANCELED:
            handle.canceled()
        elif answer.status == AnswerStatus.OK:
            handle.succeed()
        else:
            handle.abort()
        return AskAction.Result(answer=answer)

    def _resolver(self, goal: _Goal) -> Callable[[Answer], None]:
        def resolve(answer: Answer) -> None:
            if not goal.done.done():
                goal.done.set_result(answer)
            executor = self.executor
            if executor is not None:
                executor.wake()  # the coroutine awaiting goal.done runs on the executor's next turn

        return resolve

    def _cancel_goal(self, handle: ServerGoalHandle[Any, Any, Any]) -> CancelResponse:
        """Cancel a queued query at once, a running one by discarding (or, where the backend can, stopping) it.

        REJECT when the answer is already on its way: the goal then ends with that answer.
        """
        with self._goals_lock:
            goal = self._goals.get(bytes(handle.goal_id.uuid))
        job = goal.job if goal is not None else None
        if goal is None or job is None or not job.claim():
            return CancelResponse.REJECT
        if self.jobs.remove(job):
            message = "cancelled while queued"
        else:
            message = "cancelled while running; the model's answer for it is discarded"
            if self._running is job:
                self._stop_generation()
        answer = self._answer(job.query, AnswerStatus.CANCELED, message, job.received)
        self._count(answer)
        goal.cancelled = answer  # delivered by _deliver_cancelled once the server has made the goal CANCELING
        return CancelResponse.ACCEPT

    def _stop_generation(self) -> None:
        """Ask the backend to end the running generation early, if it can (an optional ``stop()``)."""
        stop = getattr(self.backend, "stop", None)
        if callable(stop):
            try:
                stop()
            except Exception as error:
                self.problems.report("model_error", f"stopping a cancelled generation failed: {error}")

    def _deliver_cancelled(self) -> None:
        with self._goals_lock:
            goals = list(self._goals.values())
        for goal in goals:
            if goal.cancelled is not None and goal.handle.is_cancel_requested:
                self._resolver(goal)(goal.cancelled)

    def _set_stage(self, job: _Job, stage: int) -> None:
        if job.goal is not None and job.goal.stage != stage:
            job.goal.stage = stage
            self._send_feedback(job.goal)

    def _feedback_all(self, queued_only: bool = False) -> None:
        """Feedback for every live goal (once a second, and for the queued ones when the queue moves)."""
        with self._goals_lock:
            goals = list(self._goals.values())
        for goal in goals:
            if not queued_only or goal.stage == AskAction.Feedback.STAGE_QUEUED:
                self._send_feedback(goal)

    def _send_feedback(self, goal: _Goal) -> None:
        job = goal.job
        if job is None or job.answered or not self.context.ok():
            return
        queued = goal.stage == AskAction.Feedback.STAGE_QUEUED
        feedback = AskAction.Feedback(
            stage=goal.stage,
            stage_name=STAGE_NAMES[goal.stage],
            queue_position=self.jobs.position(job) if queued else 0,
            elapsed_s=time.monotonic() - goal.received,
            query_id=job.query.id,
        )
        try:
            goal.handle.publish_feedback(feedback)  # type: ignore[arg-type]  # rclpy annotates the wrapper type
        except Exception:  # the goal or the node is going away: feedback is best effort
            if self.context.ok() and goal.handle.is_active:
                raise

    # ---- intake, shared by the topic, the service and the action ----
    def _submit(self, msg: Query, reply: Callable[[Answer], None] | None, goal: _Goal | None = None) -> None:
        received = time.monotonic()
        with self._counts_lock:  # topic and service callbacks run on different threads
            self.queries_received += 1
        if not msg.id:
            msg.id = uuid.uuid4().hex[:12]
        if not self.active:
            needs = "configures and activates" if self.lifecycle_state == "unconfigured" else "activates"
            message = (
                f"language_node is {self.lifecycle_state} (lifecycle): not serving until a lifecycle manager {needs} it"
            )
            self._finish(None, self._answer(msg, AnswerStatus.BUSY, message, received), reply)
            return
        try:
            check_stamp(int(msg.image_stamp.sec), int(msg.image_stamp.nanosec))
            timeout = query_timeout_s(msg.timeout_s, self.params.query_timeout_s)
            request = QueryRequest.create(
                msg.task,
                list(msg.targets),
                msg.text,
                list(msg.indices),
                int(msg.max_new_tokens) or self.params.max_new_tokens,
            )
        except QueryError as error:
            self.problems.report("bad_query", f"query {msg.id!r}: {error}")
            self._finish(None, self._answer(msg, error.status, str(error), received), reply)
            return
        job = _Job(msg, request, received, received + timeout, reply, goal)
        if goal is not None:
            goal.job = job
        if not self.jobs.put(job, job.deadline):
            self.problems.report("busy", f"query queue full ({self.jobs.maxsize}); answered BUSY")
            busy = self._answer(msg, AnswerStatus.BUSY, f"query queue full ({self.jobs.maxsize} waiting)", received)
            self._finish(None, busy, reply)

    def _expire_queued(self) -> None:
        """A queued query's deadline runs while it waits: answer TIMEOUT when it passes, not when its turn comes."""
        self._deliver_cancelled()
        for job in self.jobs.expire(time.monotonic()):
            waited = time.monotonic() - job.received
            answer = self._answer(
                job.query, AnswerStatus.TIMEOUT, f"timed out after {waited:.1f} s waiting in the queue", job.received
            )
            self._finish(job, answer, job.reply)

    # ---- the worker: one query at a time, in arrival order ----
    def _serve(self) -> None:
        while self.running:
            job = self.jobs.get(timeout=0.2)
            if job is None:
                continue
            try:
                self._set_stage(job, AskAction.Feedback.STAGE_WAITING_FOR_FRAME)
                self._feedback_all(queued_only=True)  # the others moved up
                answer = self._run(job)
            except BaseException as error:  # last line of defence: the worker must survive anything
                self.problems.report("internal_error", f"{type(error).__name__}: {error}")
                answer = self._answer(
                    job.query,
                    AnswerStatus.MODEL_ERROR,
                    f"internal error: {type(error).__name__}: {error}",
                    job.received,
                )
            self._finish(job, answer, job.reply)

    def _run(self, job: _Job) -> Answer:
        started = time.monotonic()
        if started >= job.deadline:
            return self._answer(job.query, AnswerStatus.TIMEOUT, "timed out while queued", job.received)
        try:
            frame = self._frame_for(job)
        except QueryError as error:  # placed at the frame it was about when that is known
            return self._answer(job.query, error.status, str(error), job.received, about=job.frame_stamp)
        image, stored = frame.image, frame.proposals
        backend = self.backend
        if backend is None:
            why = NO_MODEL if self.model_loaded else f"the model is not loaded (lifecycle state {self.lifecycle_state})"
            return self._answer(job.query, AnswerStatus.MODEL_ERROR, why, job.received, frame)
        # One generation at a time on the model device: wait for an abandoned (timed-out) one to finish.
        if self._pending_generation is not None and not self._pending_generation.done():
            try:
                self._pending_generation.exception(timeout=max(0.0, job.deadline - time.monotonic()))
            except FutureTimeout:
                return self._answer(
                    job.query, AnswerStatus.TIMEOUT, "timed out waiting for the model", job.received, frame
                )
        queue_ms = (time.monotonic() - job.received) * 1e3
        if job.answered:  # cancelled while it waited for its frame: the model is not started for it
            return self._answer(job.query, AnswerStatus.CANCELED, "cancelled", job.received, frame)
        self._set_stage(job, AskAction.Feedback.STAGE_GENERATING)
        self._running = job
        future = self._model_thread.submit(answer_query, backend, image.rgb(), stored.proposals, job.request)
        self._pending_generation = future
        try:
            result = self._generation_result(future, job)
        except _Cancelled:
            return self._answer(job.query, AnswerStatus.CANCELED, "cancelled", job.received, frame)
        except FutureTimeout:
            self.problems.report("timeout", f"query {job.query.id!r} exceeded its timeout during generation")
            return self._answer(
                job.query, AnswerStatus.TIMEOUT, "timed out during generation", job.received, frame, queue_ms=queue_ms
            )
        except QueryError as error:
            if error.status == AnswerStatus.MODEL_ERROR:
                self.problems.report("model_error", f"query {job.query.id!r}: {error}")
            return self._answer(job.query, error.status, str(error), job.received, frame, queue_ms=queue_ms)
        except BaseException as error:  # SystemExit, KeyboardInterrupt raised inside a model: its failure
            message = f"{type(error).__name__} from the language backend: {error}"
            self.problems.report("model_error", f"query {job.query.id!r}: {message}")
            return self._answer(job.query, AnswerStatus.MODEL_ERROR, message, job.received, frame, queue_ms=queue_ms)
        self.cache.keep(frame.stamp_ns)  # a follow-up about this frame is likely
        ignored = result.parsed.ignored_summary()  # OK with the valid indices; the bad ones named, not hidden
        if ignored:
            self.problems.report("ignored_indices", f"query {job.query.id!r}: the model's answer {ignored}")
        answer = self._answer(job.query, AnswerStatus.OK, ignored, job.received, frame, result, queue_ms)
        regions = [Region(i, tuple(float(v) for v in stored.proposals.boxes[i])) for i in job.request.indices]
        self._overlay(image, result, regions, answer.header)
        return answer

    @staticmethod
    def _generation_result(future: Future[AnswerResult], job: _Job) -> AnswerResult:
        """The generation's result by the job's deadline; :class:`_Cancelled` as soon as the job is cancelled."""
        while True:
            left = job.deadline - time.monotonic()
            try:
                return future.result(timeout=max(0.0, min(left, 0.1)))
            except FutureTimeout:
                if job.answered:
                    raise _Cancelled from None
                if left <= 0.1:
                    raise

    def _frame_for(self, job: _Job) -> Frame[_StoredImage, _StoredProposals]:
        """The frame the query asks about, waiting up to ``pairing_wait_s`` for proposals that are coming."""
        stamp = stamp_to_ns(job.query.image_stamp) or None
        wait = min(self.params.pairing_wait_s, max(0.0, job.deadline - time.monotonic()))
        on_demand = self.params.proposals_on_demand
        if on_demand:
            stamp = self._request_proposals(stamp, wait)
        job.frame_stamp = stamp
        frame = self.cache.wait_for(stamp, 0.0)
        if frame is None:
            self._raise_if_refused(stamp)
            self._raise_unless_coming(stamp)
            frame = self.cache.wait_for(stamp, wait)
        if frame is None:
            if stamp is None and (self.newest_image_dropped is not None or not self.cache.knows()):
                raise self._no_image(wait)
            self._raise_if_refused(stamp)
            if stamp is None:
                raise QueryError(
                    AnswerStatus.NO_PROPOSALS,
                    f"no frame got proposals within {wait:.1f} s "
                    f"(pairing_wait_s); is proposal_node running on {self.proposal_watch.topic}?",
                )
            requested = (
                f"; requested on {self.proposal_requests.topic_name}: is proposal_node running there in "
                "mode:=on_demand?"
                if on_demand
                else ""
            )
            raise QueryError(
                AnswerStatus.NO_PROPOSALS,
                f"no proposals for the frame {format_stamp(stamp)} within {wait:.1f} s (pairing_wait_s){requested}",
            )
        image, stored = frame.image, frame.proposals
        try:
            image.rgb()
        except ImageFormatError as error:
            self.problems.report("bad_image", f"a cached image could not be decoded: {error}")
            raise QueryError(
                AnswerStatus.NO_IMAGE, f"the frame {format_stamp(frame.stamp_ns)} could not be decoded: {error}"
            ) from error
        if (stored.width, stored.height) != (image.width, image.height):
            self.problems.report(
                "mismatched_proposals", "proposal image size differs from the image with the same stamp"
            )
            raise QueryError(
                AnswerStatus.NO_PROPOSALS,
                f"proposals are for a {stored.width}x{stored.height} image but the frame is "
                f"{image.width}x{image.height}",
            )
        return frame

    def _request_proposals(self, stamp: int | None, wait: float) -> int:
        """proposals_on_demand: name the query's frame (for "newest", the newest image here) to the proposer.

        The frame is held from now on, as one the proposer announced; returns its stamp. A frame that has proposals
        already is not requested again.
        """
        if stamp is None:
            stamp = self.cache.newest_image(wait)
            if stamp is None:
                raise self._no_image(wait)
        if self.cache.wait_for(stamp, 0.0) is not None:
            return stamp
        self.cache.claim(stamp)
        image = self.cache.image(stamp)
        frame_id = image.header.frame_id if image is not None else ""
        request = Header(stamp=ns_to_stamp(stamp), frame_id=frame_id)
        if publish_from_worker(self, self.proposal_requests, request):
            self.requests_sent += 1
            if self.requested_at is None:
                self.requested_at = time.monotonic()
        return stamp

    def _no_image(self, wait: float) -> QueryError:
        """NO_IMAGE for a "newest" query that found no frame: the images are dropped, or none came."""
        dropped = self.newest_image_dropped
        if dropped is not None:
            return QueryError(AnswerStatus.NO_IMAGE, f"the images on {self.image_watch.topic} are dropped: {dropped}")
        return QueryError(
            AnswerStatus.NO_IMAGE,
            f"no image received on {self.image_watch.topic} within {wait:.1f} s (pairing_wait_s)",
        )

    def _raise_if_refused(self, stamp: int | None) -> None:
        """Say what was wrong when the frame's proposal list was refused (for "newest": the newest list was)."""
        refused = self.cache.refusal(stamp)
        if refused is None or (stamp is None and not self.cache.last_list_refused):
            return
        refused_stamp, reason = refused
        raise QueryError(
            AnswerStatus.NO_PROPOSALS,
            f"no proposals for the frame {format_stamp(refused_stamp)}: {reason}",
        )

    def _raise_unless_coming(self, stamp: int | None) -> None:
        """Fail at once when waiting cannot help: a named frame that is gone or was skipped.

        "Newest" waits, even before the first image: a robot that asks while its camera starts gets the first frame.
        """
        if stamp is None:
            return
        if self.cache.was_evicted(stamp):
            raise QueryError(
                AnswerStatus.NO_IMAGE,
                f"the frame {format_stamp(stamp)} is no longer cached: newer "
                f"frames took its place (frame_cache_size={self.params.frame_cache_size}, "
                f"frame_cache_mb={self.params.frame_cache_mb}; frames "
                "answered about are kept longer for follow-ups)",
            )
        if self.cache.skipped(stamp):
            raise QueryError(
                AnswerStatus.NO_PROPOSALS,
                f"the proposer skipped the frame {format_stamp(stamp)} "
                "(it works on the newest frame); ask about a stamp from a ProposalArray or Answer",
            )
        if not self.cache.knows(stamp) and not self.cache.image_may_still_arrive(stamp):
            raise QueryError(
                AnswerStatus.NO_IMAGE,
                f"no frame with stamp {format_stamp(stamp)} is cached "
                f"(never received, or older than the {self.params.frame_cache_size} kept)",
            )

    def _conditions(self) -> list[Condition]:
        lifecycle = self.lifecycle_condition()
        if lifecycle is not None:  # a node a manager keeps idle: silent inputs are expected, not a fault
            return [lifecycle]
        images = self.image_watch.condition()
        # Proposals are computed from images: without images, their silence says nothing new. On demand they
        # come only when asked: silence is a fault only while a request waits.
        proposals = None
        if images is None and not self.params.proposals_on_demand:
            proposals = self.proposal_watch.condition(self.image_watch.first)
        elif images is None and self.requested_at is not None:
            proposals = self.proposal_watch.condition(asked_at=self.requested_at)
        conditions = [c for c in (images, proposals) if c is not None]
        dropped = self.newest_image_dropped
        if dropped is not None:
            conditions.append(
                Condition(WARN, "images_dropped", f"images on {self.image_watch.topic} are dropped: {dropped}")
            )
        refused = self.cache.refusal() if self.cache.last_list_refused else None
        if refused is not None:
            message = f"the newest proposal list on {self.proposal_watch.topic}: {refused[1]}"
            conditions.append(Condition(WARN, "refused_proposals", message))
        if self.backend is None and self.model_loaded:
            conditions.append(Condition(WARN, "no_model", NO_MODEL))
        return conditions

    # ---- output ----
    def _answer(
        self,
        query: Query,
        status: AnswerStatus,
        message: str,
        received: float,
        frame: Frame[_StoredImage, _StoredProposals] | None = None,
        result: AnswerResult | None = None,
        queue_ms: float = 0.0,
        about: int | None = None,
    ) -> Answer:
        # Without a frame: the frame it was about (``about``, with its frame_id if its image is here), else the
        # stamp the query asked about (zero for "newest"), so the answer is still placed.
        if frame is not None:
            header = frame.image.header
        elif about:
            image = self.cache.image(about)
            header = Header(stamp=ns_to_stamp(about), frame_id=image.header.frame_id if image is not None else "")
        else:
            header = Header(stamp=query.image_stamp)
        proposals = frame.proposals if frame is not None else None
        outcome = QueryOutcome(
            query.id,
            query.task,
            status,
            message,
            result,
            num_proposals=len(proposals.proposals) if proposals is not None else 0,
            proposals_stamp_ns=stamp_to_ns(proposals.header.stamp) if proposals is not None else 0,
            queue_ms=queue_ms,
            total_ms=(time.monotonic() - received) * 1e3,
        )
        return answer_msg(header, outcome)

    def _finish(self, job: _Job | None, answer: Answer, reply: Callable[[Answer], None] | None) -> None:
        """Publish ``answer`` (and send it to an ``ask`` caller) unless ``job`` was answered already."""
        if job is not None and job is self._running:
            self._running = None
        if job is not None and not job.claim():
            return
        self._count(answer)
        publish_from_worker(self, self.answer_pub, answer)
        if reply is not None:
            reply(answer)

    def _count(self, answer: Answer) -> None:
        with self._counts_lock:
            self.status_counts[status_name(answer.status)] += 1
            self.last_latency_ms = answer.total_ms

    def _overlay(self, image: _StoredImage, result: AnswerResult, regions: list[Region], header: Header) -> None:
        """The answer for viewers, off the inference path: the markers at once (cheap), the annotated image.

        The image is drawn on another thread; answers that come while one is drawn are not all drawn after it,
        only the newest (a viewer shows the latest frame; a slow drawing must not pile up).
        """
        if self.marker_pub is not None:
            boxes = np.array([d.box for d in result.detections] + [r.box for r in regions], np.float64)
            colours = phrase_colours([d.label for d in result.detections]) + [REGION_COLOUR] * len(regions)
            width = line_width(image.width, image.height)
            publish_from_worker(self, self.marker_pub, box_marker(header, boxes, colours, ns="answer", width_px=width))
        publisher = self.annotated_pub
        if publisher is None:
            return
        self._draw_newest += 1
        number = self._draw_newest

        def draw() -> None:
            if number != self._draw_newest:
                return  # a newer answer is queued behind this one: draw that instead
            try:
                drawn, _ = draw_answer(image.rgb(), result.detections, regions)
                publish_from_worker(self, publisher, image_msg(drawn, "rgb8", header))
            except Exception as error:  # a viewer's picture must never be silently missing
                self.problems.report("annotate_failed", f"the annotated image was not drawn: {error!r}")

        self._draw_thread.submit(draw)

    def _diagnostic_values(self) -> dict[str, object]:
        return {
            "model": self.backend.name if self.backend is not None else "none (not configured)",
            "lifecycle": self.lifecycle_state,
            "queue_depth": len(self.jobs),
            "last_latency_ms": self.last_latency_ms,
            **{f"frames.{kind}": count for kind, count in self.cache.sizes().items()},
            "images_received": self.cache.stats.images,
            "images_dropped": self.images_dropped,
            "images_lost_in_transport": self.image_watch.lost,
            "queries_received": self.queries_received,
            "queries_lost_in_transport": self.query_losses.lost,
            "proposals_received": self.cache.stats.proposals,
            "proposal_requests_sent": self.requests_sent,
            "proposals_refused": self.cache.stats.proposals_refused,
            "frames_paired": self.cache.stats.paired,
            "proposals_without_image": self.cache.stats.proposals_without_image,
            "frames.held_mib": round(self.cache.held_bytes() / 2**20, 1),
            "frames.evicted_for_bytes": self.cache.stats.evicted_for_bytes,
            "time_jumps": self.cache.stats.time_jumps,
            **{f"answers.{name}": count for name, count in self.status_counts.items()},
        }

    def close(self) -> None:
        """Stop the worker and the model and drawing threads; a generation in progress is abandoned.

        The threads are daemons: a generation stuck in the model cannot delay the exit.
        """
        self.running = False
        self._worker.join(timeout=1.0)
        self._model_thread.stop()
        self._draw_thread.stop()


def main(args: list[str] | None = None) -> None:
    """The ``language_node`` executable: one executor thread for the intake, the model on the query worker."""
    raise SystemExit(run_node(LanguageNode, args))


if __name__ == "__main__":
    main()
