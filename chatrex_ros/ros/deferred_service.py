"""A service whose response is sent later, from any thread, without holding an executor thread meanwhile.

Why: an ``ask`` call waits seconds for the model. A plain rclpy service callback must return the response, so
each waiting call held one executor thread; ten concurrent calls starved topic queries and /diagnostics.
rclpy's coroutine callbacks do not help here: a task awaiting a future completed from a non-executor thread is
not woken. rclpy sends what the callback returns through ``Service.send_response(response, header)``, the
only place the request's header is available, so this wrapper returns a placeholder there, keeps the header,
and sends the real response when :meth:`Reply.send` is called (whichever of the two happens last sends).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node


class Reply:
    """The pending response of one request; :meth:`send` it exactly once, from any thread."""

    def __init__(self, send: Callable[[Any, Any], None]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._header: Any = None
        self._response: Any = None
        self._sent = False

    def send(self, response: Any) -> None:
        """Send ``response`` (a filled ``Srv.Response``); later calls are ignored."""
        with self._lock:
            if self._response is not None:
                return
            self._response = response
            header = self._header
        if header is not None:
            self._deliver(header)

    def _bind(self, header: Any) -> None:
        with self._lock:
            self._header = header
            ready = self._response is not None
        if ready:
            self._deliver(header)

    def _deliver(self, header: Any) -> None:
        with self._lock:
            if self._sent:
                return
            self._sent = True
        self._send(self._response, header)


class DeferredService:
    """``on_request(request, reply)`` returns at once; the response goes out when ``reply.send`` is called."""

    def __init__(
        self,
        node: Node,
        srv_type: Any,
        name: str,
        on_request: Callable[[Any, Reply], None],
        callback_group: CallbackGroup | None = None,
    ) -> None:
        self._node = node
        self._on_request = on_request
        self.service = node.create_service(srv_type, name, self._callback, callback_group=callback_group)
        self._send_now = self.service.send_response
        self.service.send_response = self._send_or_defer  # type: ignore[method-assign]

    def _callback(self, request: Any, response: Any) -> Reply:
        reply = Reply(self._send_safely)
        self._on_request(request, reply)
        return reply

    def _send_or_defer(self, response: Any, header: Any) -> None:
        if isinstance(response, Reply):
            response._bind(header)
        else:
            self._send_now(response, header)

    def _send_safely(self, response: Any, header: Any) -> None:
        """From a worker thread at shutdown the service may be gone: then the caller's wait ends anyway."""
        if not self._node.context.ok():
            return
        try:
            self._send_now(response, header)
        except Exception:
            if self._node.context.ok():
                raise
