"""Soak: a 1280x720 camera at 30 Hz into both nodes, ~200 ms backends, 5 queries/s, for minutes.

Everything runs in its own process over local DDS, at the package's defaults (best-effort KEEP_LAST(1) images,
queue_size 4): the camera TEST DOUBLE (test/camera_process.py), proposal_node with the slow proposer TEST DOUBLE
(200 ms per frame), language_node with the scripted model TEST DOUBLE (200 ms per generation). This script sends
queries at a fixed rate and checks that every query is answered exactly once; it reports the share of each
status, the resident-memory slope of each node after a warm-up, and the proposal and answer latencies.

With 200 ms generations and 5 queries/s the model is busy all the time, so some BUSY answers are expected and
correct: what must never happen is a query without an answer, or one with two.

    python bench/soak.py [--duration 600] [--query-hz 5] [--camera-hz 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from _common import ROOT, local_dds_environment, print_table, write_results

local_dds_environment()
sys.path.insert(0, str(ROOT / "test"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "test"), os.environ["PYTHONPATH"]])

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from ros_harness import NodeProcess, wait_until  # noqa: E402

from chatrex_ros.core.answering import status_name  # noqa: E402
from chatrex_ros.core.stamps import stamp_to_ns  # noqa: E402
from chatrex_ros.msg import Answer, ProposalArray, Query  # noqa: E402
from chatrex_ros.ros.qos import query_qos, reliable_qos  # noqa: E402

WARMUP_S = 60.0
"""Memory before this is start-up (imports, first allocations): the slope is fitted after it."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class QueryClient:
    """Sends queries at a fixed rate; records each answer's arrival and every proposal list's latency."""

    def __init__(self) -> None:
        self.node = Node(f"soak_{uuid.uuid4().hex[:6]}")
        self.query_pub = self.node.create_publisher(Query, "query", query_qos())
        self.answers: dict[str, list[Answer]] = {}
        self.sent: dict[str, float] = {}
        self.answer_latency_ms: list[float] = []
        self.proposal_latency_ms: list[float] = []
        self._lock = threading.Lock()
        self.node.create_subscription(Answer, "answer", self._on_answer, query_qos())
        self.node.create_subscription(ProposalArray, "proposals", self._on_proposals, reliable_qos())
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_answer(self, answer: Answer) -> None:
        now = time.monotonic()
        with self._lock:
            self.answers.setdefault(answer.query_id, []).append(answer)
            sent = self.sent.get(answer.query_id)
            if sent is not None:
                self.answer_latency_ms.append((now - sent) * 1e3)

    def _on_proposals(self, msg: ProposalArray) -> None:
        # The camera double stamps frames with the wall clock: latency = arrival - capture.
        latency = (time.time_ns() - stamp_to_ns(msg.header.stamp)) / 1e6
        with self._lock:
            self.proposal_latency_ms.append(latency)

    def send(self, index: int) -> None:
        query_id = f"soak-{index}"
        with self._lock:
            self.sent[query_id] = time.monotonic()
        self.query_pub.publish(Query(id=query_id, task="detect", text="object"))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    settled = [(t, mb) for t, mb in samples if t >= WARMUP_S]
    if len(settled) < 3:
        return float("nan")
    times, values = np.array(settled).T
    return float(np.polyfit(times / 60.0, values, 1)[0])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def soak(duration_s: float, query_hz: float, camera_hz: float) -> dict:
    rclpy.init()
    proposal_params = {
        "backend": "python:doubles.slow_proposer:SlowProposer",
        "backend_options": json.dumps({"delay_s": 0.2, "count": 20}),
    }
    language_params = {
        "language_backend": "python:doubles.scripted_model:ScriptedModel",
        "backend_options": json.dumps({"answer": "<ground>object</ground><objects><obj0></objects>", "sleep_s": 0.2}),
    }
    camera = subprocess.Popen(
        [sys.executable, str(ROOT / "test" / "camera_process.py"), "image", str(camera_hz), "1280", "720"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = QueryClient()
    with (
        NodeProcess("chatrex_ros.ros.proposal_node", "proposal_node", proposal_params) as proposer,
        NodeProcess("chatrex_ros.ros.language_node", "language_node", language_params) as language,
    ):
        try:
            wait_until(lambda: client.query_pub.get_subscription_count() > 0, 60, "language_node")
            wait_until(lambda: len(client.proposal_latency_ms) > 3, 60, "proposals from the camera's frames")
            memory: dict[str, list[tuple[float, float]]] = {"proposal_node": [], "language_node": []}
            start = time.monotonic()
            next_query, next_sample, index = start, start, 0
            while (now := time.monotonic()) < start + duration_s:
                if now >= next_query:
                    client.send(index)
                    index += 1
                    next_query += 1.0 / query_hz
                if now >= next_sample:
                    memory["proposal_node"].append((now - start, rss_mb(proposer.process.pid)))
                    memory["language_node"].append((now - start, rss_mb(language.process.pid)))
                    next_sample += 5.0
                time.sleep(max(0.0, min(next_query, next_sample) - time.monotonic()))
            time.sleep(5.0)  # the last queries' answers (each times out within the node's query_timeout_s at worst)
            alive = proposer.alive() and language.alive()
        finally:
            client.close()
            camera.terminate()
            camera.wait(timeout=10)
    rclpy.shutdown()

    counts = Counter(len(client.answers.get(query_id, [])) for query_id in client.sent)
    statuses = Counter(status_name(answers[0].status) for answers in client.answers.values())
    sent = len(client.sent)
    return {
        "duration_s": duration_s,
        "camera": {"width": 1280, "height": 720, "hz": camera_hz},
        "query_hz": query_hz,
        "backends_ms": {"proposer": 200, "language_model": 200},
        "queries_sent": sent,
        "answered_exactly_once": counts.get(1, 0),
        "unanswered": counts.get(0, 0),
        "answered_more_than_once": sum(n for k, n in counts.items() if k > 1),
        "statuses": dict(statuses),
        "ok_share": statuses.get("OK", 0) / sent if sent else float("nan"),
        "rss_mb_per_min_after_warmup": {name: slope_mb_per_min(samples) for name, samples in memory.items()},
        "rss_mb_end": {name: samples[-1][1] for name, samples in memory.items() if samples},
        "rss_samples": memory,
        "proposal_latency_ms": {
            "p50": percentile(client.proposal_latency_ms, 50),
            "p99": percentile(client.proposal_latency_ms, 99),
            "n": len(client.proposal_latency_ms),
        },
        "answer_latency_ms": {
            "p50": percentile(client.answer_latency_ms, 50),
            "p99": percentile(client.answer_latency_ms, 99),
        },
        "nodes_alive_at_end": alive,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of queries (default 600)")
    parser.add_argument("--query-hz", type=float, default=5.0)
    parser.add_argument("--camera-hz", type=float, default=30.0)
    args = parser.parse_args()
    result = soak(args.duration, args.query_hz, args.camera_hz)
    print_table(
        ["queries", "exactly once", "unanswered", "twice+", "OK share", "statuses"],
        [
            [
                result["queries_sent"],
                result["answered_exactly_once"],
                result["unanswered"],
                result["answered_more_than_once"],
                result["ok_share"],
                json.dumps(result["statuses"]),
            ]
        ],
    )
    print()
    rows = []
    for name in ("proposal_node", "language_node"):
        rows.append([name, result["rss_mb_end"].get(name, float("nan")), result["rss_mb_per_min_after_warmup"][name]])
    print_table(["node", "RSS MB at end", "RSS MB/min after warm-up"], rows)
    print()
    print_table(
        ["latency", "p50 ms", "p99 ms"],
        [
            ["proposals (capture -> list)", result["proposal_latency_ms"]["p50"], result["proposal_latency_ms"]["p99"]],
            ["answers (query -> answer)", result["answer_latency_ms"]["p50"], result["answer_latency_ms"]["p99"]],
        ],
    )
    path = write_results("soak", result)
    print(f"\nwrote {path}")
    if result["unanswered"] or result["answered_more_than_once"] or not result["nodes_alive_at_end"]:
        raise SystemExit("FAILED: a query was not answered exactly once, or a node died")


if __name__ == "__main__":
    main()
