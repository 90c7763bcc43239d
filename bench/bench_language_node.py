"""language_node: overhead per query over the backend called directly, and image intake under a slow model.

Part 1 runs the node with the test-only tiny ChatRex checkpoint (test/fixtures/tiny_chatrex.py: the real loading
path and a tiny random LLM) and alternates node round trips (query -> answer) with direct ``answer_query`` calls
on the same backend class, image and proposals. Part 2 runs the node with a scripted test double that sleeps
2 s per generation while 1280x720 frames arrive at 30 Hz: the intake rate must stay at the camera rate (no frame
callback waits for the model) and the node's resident memory must stay flat.

    python bench/bench_language_node.py [--queries 15] [--duration 120]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from _common import ROOT, local_dds_environment, print_table, summary, write_results

local_dds_environment()
sys.path.insert(0, str(ROOT / "test"))
# Node processes load the scripted model test double from test/doubles.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "test"), os.environ["PYTHONPATH"]])
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="chatrex_bench_hf_modules_"))

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from fixtures.tiny_chatrex import make_tiny_chatrex  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_harness import NodeProcess, header, textured_image, wait_until  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from chatrex_ros.core.answering import QueryRequest, answer_query  # noqa: E402
from chatrex_ros.core.types import Proposals  # noqa: E402
from chatrex_ros.msg import Answer, ProposalArray, Query  # noqa: E402
from chatrex_ros.ros.conversions import image_msg, proposals_to_msg  # noqa: E402

ANSWER = "<ground>object</ground><objects><obj3><obj1></objects>"


class Client:
    def __init__(self) -> None:
        self.node = Node(f"bench_{uuid.uuid4().hex[:6]}")
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image = self.node.create_publisher(
            Image, "image", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        )
        self.proposals = self.node.create_publisher(ProposalArray, "proposals", reliable)
        self.query = self.node.create_publisher(Query, "query", reliable)
        self.answers: dict[str, float] = {}
        self.answer_msgs: dict[str, Answer] = {}
        self.diagnostics: list[dict[str, str]] = []
        self.node.create_subscription(Answer, "answer", self._on_answer, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _on_answer(self, answer: Answer) -> None:
        self.answers.setdefault(answer.query_id, time.perf_counter())
        self.answer_msgs[answer.query_id] = answer

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if "language_node" in status.name:
                self.diagnostics.append({"t": time.perf_counter(), **{kv.key: kv.value for kv in status.values}})

    def _spin(self) -> None:
        while not self._stop.is_set():
            rclpy.spin_once(self.node, timeout_sec=0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.node.destroy_node()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def frame(stamp: int, height: int, width: int, boxes: int) -> tuple[Image, ProposalArray, np.ndarray, Proposals]:
    rng = np.random.default_rng(stamp % 1000)
    xy = rng.uniform(0, min(width, height) - 60, (boxes, 2)).astype(np.float32)
    proposals = Proposals(
        np.concatenate([xy, xy + 50], axis=1), np.linspace(0.9, 0.3, boxes, dtype=np.float32), "bench"
    )
    image = textured_image(height, width, seed=stamp % 1000)
    return (
        image_msg(image, "rgb8", header(stamp)),
        proposals_to_msg(proposals, header(stamp), width, height, "fine"),
        image,
        proposals,
    )


def query_overhead(queries: int) -> dict:
    from chatrex_ros.models.chatrex import ChatRexBackend

    model_dir = make_tiny_chatrex(Path(tempfile.mkdtemp()) / f"tiny_chatrex_{uuid.uuid4().hex[:8]}", ANSWER)
    backend = ChatRexBackend(str(model_dir), device="cpu", trust_remote_code=True)
    params = {
        "language_backend": "chatrex",
        "model_path": str(model_dir),
        "device": "cpu",
        "trust_remote_code": True,
        "image_qos.reliability": "reliable",
    }
    client = Client()
    image_out, proposals_out, image, proposals = frame(7_000_000_000, 480, 640, 50)
    request = QueryRequest.create("detect", ["object"])
    direct_ms, node_ms, inside_model_ms, inside_total_ms = [], [], [], []
    with NodeProcess("chatrex_ros.ros.language_node", "language_node", params) as process:
        wait_until(lambda: client.query.get_subscription_count() > 0 or not process.alive(), 120, "language_node")
        assert process.alive(), process.output()
        client.node.create_publisher(
            Image, "image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        ).publish(image_out)
        client.proposals.publish(proposals_out)
        for index in range(queries + 2):
            start = time.perf_counter()
            answer_query(backend, image, proposals, request)
            elapsed_direct = (time.perf_counter() - start) * 1e3
            query_id = f"overhead-{index}"
            sent = time.perf_counter()
            client.query.publish(Query(id=query_id, task="detect", targets=["object"]))
            wait_until(lambda query_id=query_id: query_id in client.answers, 60, f"answer {query_id}")
            if index >= 2:
                direct_ms.append(elapsed_direct)
                node_ms.append((client.answers[query_id] - sent) * 1e3)
                inside_model_ms.append(client.answer_msgs[query_id].model_ms)
                inside_total_ms.append(client.answer_msgs[query_id].total_ms)
    client.close()
    return {
        "direct": summary(direct_ms),
        "node": summary(node_ms),
        "ratio": float(np.median(node_ms) / np.median(direct_ms)),
        "added_ms": float(np.median(node_ms) - np.median(direct_ms)),
        "node_model_ms": summary(inside_model_ms),
        "node_total_ms": summary(inside_total_ms),
    }


def intake_under_slow_model(duration_s: float, rate_hz: float = 30.0) -> dict:
    options = {"answer": "<ground>thing</ground><objects><obj0></objects>", "sleep_s": 2.0}
    params = {
        "language_backend": "python:doubles.scripted_model:ScriptedModel",
        "backend_options": json.dumps(options),
        "queue_size": 2,
    }
    client = Client()
    frames = [frame(10_000_000_000 + i, 720, 1280, 50) for i in range(4)]
    with NodeProcess("chatrex_ros.ros.language_node", "language_node", params) as process:
        wait_until(lambda: client.image.get_subscription_count() > 0 or not process.alive(), 60, "language_node")
        assert process.alive(), process.output()
        pid = process.process.pid
        memory: list[tuple[float, float]] = []
        published, queries, missed_slots, start = 0, 0, 0, time.perf_counter()
        next_frame, next_query, next_sample = start, start, start
        published_at: list[tuple[float, int]] = []
        while (now := time.perf_counter()) - start < duration_s:
            if now >= next_frame:
                stamp = 10_000_000_000 + published
                image_out, proposals_out, *_ = frames[published % len(frames)]
                image_out.header = proposals_out.header = header(stamp)
                client.image.publish(image_out)
                client.proposals.publish(proposals_out)
                published += 1
                published_at.append((now - start, published))
                next_frame += 1.0 / rate_hz
                if now - next_frame > 1.0 / rate_hz:  # the publisher itself fell behind: no catch-up burst
                    missed_slots += int((now - next_frame) * rate_hz)
                    next_frame = now + 1.0 / rate_hz
            if now >= next_query:
                client.query.publish(Query(id=f"slow-{queries}", task="detect", targets=["thing"], timeout_s=30.0))
                queries += 1
                next_query += 1.0
            if now >= next_sample:
                memory.append((now - start, rss_mb(pid)))
                next_sample += 5.0
            time.sleep(max(0.0, min(next_frame, next_query) - time.perf_counter()))
        elapsed = time.perf_counter() - start
        time.sleep(1.5)
        received = int(client.diagnostics[-1]["images_received"]) if client.diagnostics else 0
        assert process.alive(), process.output()
        node_log = process.output()
    client.close()
    settled = [mb for t, mb in memory if t >= min(20.0, duration_s / 3)]
    # Intake rate per 10 s of the publishing period, from the node's own counter (a degrading rate shows here).
    history = [(d["t"] - start, int(d["images_received"])) for d in client.diagnostics if "images_received" in d]
    windows, sent_windows = [], []
    for begin in range(0, int(elapsed) - 9, 10):
        inside = [(t, n) for t, n in history if begin <= t <= begin + 10.5]
        sent = [(t, n) for t, n in published_at if inside and inside[0][0] <= t <= inside[-1][0]]
        if len(inside) >= 2 and len(sent) >= 2:
            (t0, n0), (t1, n1) = inside[0], inside[-1]
            windows.append(round((n1 - n0) / (t1 - t0), 1))
            sent_windows.append(round((sent[-1][1] - sent[0][1]) / (t1 - t0), 1))
    return {
        "duration_s": elapsed,
        "published": published,
        "received": received,
        "publish_hz": published / elapsed,
        "intake_hz": received / elapsed,
        "queries": queries,
        "answers": sum(1 for q in client.answers if q.startswith("slow-")),
        "rss_mb_first": memory[0][1],
        "rss_mb_settled_start": settled[0] if settled else float("nan"),
        "rss_mb_end": memory[-1][1],
        "rss_samples": memory,
        "intake_hz_per_10s": windows,
        "published_hz_per_10s": sent_windows,
        "publisher_missed_slots": missed_slots,
        "received_history": history,
        "node_log_tail": node_log[-3000:],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--duration", type=float, default=120.0)
    args = parser.parse_args()
    rclpy.init()
    overhead = query_overhead(args.queries)
    intake = intake_under_slow_model(args.duration) if args.duration > 0 else None
    rclpy.shutdown()
    print("Per-query overhead (tiny ChatRex fixture on CPU, 640x480, 50 proposals, interleaved medians)")
    print_table(
        [
            "direct answer_query ms",
            "through node ms",
            "added ms",
            "node / direct",
            "model ms in node",
            "receipt->publish ms in node",
        ],
        [
            [
                overhead["direct"]["median_ms"],
                overhead["node"]["median_ms"],
                overhead["added_ms"],
                overhead["ratio"],
                overhead["node_model_ms"]["median_ms"],
                overhead["node_total_ms"]["median_ms"],
            ]
        ],
    )
    if intake is None:
        return
    print(f"\nImage intake while a 2 s generation runs (1280x720 rgb8, {args.duration:.0f} s)")
    print_table(
        ["published Hz", "received Hz", "answers / queries", "RSS MB start", "RSS MB after warm-up", "RSS MB end"],
        [
            [
                intake["publish_hz"],
                intake["intake_hz"],
                f"{intake['answers']}/{intake['queries']}",
                intake["rss_mb_first"],
                intake["rss_mb_settled_start"],
                intake["rss_mb_end"],
            ]
        ],
    )
    print(
        f"published Hz per 10 s window: {intake['published_hz_per_10s']} "
        f"(publisher missed {intake['publisher_missed_slots']} slots)"
    )
    print(f"received  Hz per 10 s window: {intake['intake_hz_per_10s']}")
    print(f"RSS MB every 5 s: {[round(mb) for _, mb in intake['rss_samples']]}")
    print(f"wrote {write_results('language_node', {'overhead': overhead, 'intake': intake})}")


if __name__ == "__main__":
    main()
