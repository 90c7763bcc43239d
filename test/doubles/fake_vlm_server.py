"""TEST DOUBLE of an external OpenAI-compatible VLM server (vLLM, Ollama, ...), on loopback, in a thread.

It stands in for the server outside the package: it records every ``POST /v1/chat/completions`` body (so a test
checks what was sent: the image, the boxes in order, the question) and answers from a script of actions, one per
request (the last one repeats):

* ``{"reply": "text"}``: a well-formed chat completion whose message content is ``text``;
* ``{"status": 500, "body": {...}}``: that HTTP status with that JSON body;
* ``{"status": 404, "text": "..."}``: that HTTP status with a plain-text body (a proxy's or a router's error page);
* ``{"sleep": 5.0, "reply": "text"}``: wait before answering (past the client's timeout);
* ``{"truncated": true}``: a 200 whose JSON body is cut in the middle;
* ``{"close": true}``: close the connection without answering.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeVLMServer:
    """``with FakeVLMServer([...]) as server:`` then point a client at ``server.base_url``."""

    def __init__(self, script: list[dict[str, Any]]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (the http.server API)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                action = server._record(self.path, body, dict(self.headers))
                server._answer(self, action)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._http.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> FakeVLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def _record(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self.requests.append({"path": path, **body})
            self.headers.append(headers)
            index = min(len(self.requests) - 1, len(self.script) - 1)
            return self.script[index]

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, action: dict[str, Any]) -> None:
        if action.get("close"):
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        time.sleep(float(action.get("sleep", 0.0)))
        content_type = "application/json"
        if "status" in action and "text" in action:
            payload, content_type = str(action["text"]).encode(), "text/plain"
            status = int(action["status"])
        elif "status" in action:
            payload = json.dumps(action.get("body", {"error": {"message": "scripted failure"}})).encode()
            status = int(action["status"])
        else:
            completion = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": "fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": action.get("reply", "")},
                        "finish_reason": "stop",
                    }
                ],
            }
            payload = json.dumps(completion).encode()
            status = 200
            if action.get("truncated"):
                payload = payload[: len(payload) // 2]
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            pass
