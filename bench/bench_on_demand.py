"""Continuous vs on-demand proposals: inference runs and CPU time per minute of each node.

A 1280x720 camera at 30 Hz (raw rgb8, or JPEG on image/compressed) feeds proposal_node with the package's default
weight-free proposer (selective search, its helper process counted with it) and language_node with the scripted
model TEST DOUBLE (1 s per generation; test/doubles/scripted_model.py). Per configuration the script measures an
idle window (no queries) and a window with one query every 5 s, reading each node's CPU time (process and its
children) from /proc. The four configurations run one after the other in one run, so their ratios compare.

    python bench/bench_on_demand.py [--window 60] [--idle 30]

Goal (issue 11): an idle language node under 5 % of one core.
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
from pathlib import Path

from _common import ROOT, local_dds_environment, print_table, write_results

local_dds_environment()
sys.path.insert(0, str(ROOT / "test"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "test"), os.environ["PYTHONPATH"]])

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from ros_harness import NodeProcess, wait_until  # noqa: E402

from chatrex_ros.msg import Answer, ProposalArray, Query  # noqa: E402
from chatrex_ros.ros.qos import query_qos, reliable_qos  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUERY_PERIOD_S = 5.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (the selective-search helper)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pending += [int(child) for child in children]
    return total


class Counter:
    """Counts proposal lists and answers on the graph's topics; sends queries."""

    def __init__(self) -> None:
        self.node = Node(f"bench_od_{uuid.uuid4().hex[:6]}")
        self.query_pub = self.node.create_publisher(Query, "query", query_qos())
        self.proposals = 0
        self.answers: list[Answer] = []
        self.node.create_subscription(ProposalArray, "proposals", self._on_proposals, reliable_qos())
        self.node.create_subscription(Answer, "answer", self.answers.append, query_qos())
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_proposals(self, msg: ProposalArray) -> None:
        self.proposals += 1

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def window(nodes: dict[str, NodeProcess], counter: Counter, seconds: float, query: bool) -> dict:
    """CPU % of one core per node and inference runs per minute over ``seconds``, querying every 5 s if asked."""
    cpu0 = {name: cpu_seconds(node.process.pid) for name, node in nodes.items()}
    runs0, answers0 = counter.proposals, len(counter.answers)
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        if query and elapsed >= sent * QUERY_PERIOD_S:
            counter.query_pub.publish(Query(id=f"od-{uuid.uuid4().hex[:8]}", task="detect", text="object"))
            sent += 1
        time.sleep(0.05)
    elapsed = time.monotonic() - start
    answers = counter.answers[answers0:]
    return {
        "seconds": round(elapsed, 1),
        "cpu_percent_of_one_core": {
            name: round(100 * (cpu_seconds(node.process.pid) - cpu0[name]) / elapsed, 1) for name, node in nodes.items()
        },
        "inference_runs_per_min": round((counter.proposals - runs0) * 60 / elapsed, 1),
        "queries": sent,
        "answers_ok": sum(1 for a in answers if a.status == Answer.STATUS_OK),
        "answers": len(answers),
    }


def run_config(transport: str, mode: str, window_s: float, idle_s: float) -> dict:
    compressed = transport == "compressed"
    common = {"image_transport": transport}
    proposal = {**common, "mode": mode}
    language = {
        **common,
        "proposals_on_demand": mode == "on_demand",
        "language_backend": "python:doubles.scripted_model:ScriptedModel",
        "backend_options": json.dumps({"answer": "<ground>object</ground><objects><obj0></objects>", "sleep_s": 1.0}),
    }
    camera = subprocess.Popen(
        [sys.executable, str(ROOT / "test" / "camera_process.py"), "image", "30", "1280", "720"]
        + (["--jpeg"] if compressed else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    counter = Counter()
    try:
        with (
            NodeProcess("chatrex_ros.ros.proposal_node", "proposal_node", proposal) as proposer,
            NodeProcess("chatrex_ros.ros.language_node", "language_node", language) as language_node,
        ):
            nodes = {"proposal_node": proposer, "language_node": language_node}
            wait_until(lambda: counter.query_pub.get_subscription_count() > 0, 60, "language_node")
            # Warm: the nodes run and frames flow (a first query answered).
            counter.query_pub.publish(Query(id="warm", task="detect", text="object"))
            wait_until(lambda: any(a.query_id == "warm" for a in counter.answers), 90, "a first answer")
            time.sleep(3.0)
            idle = window(nodes, counter, idle_s, query=False)
            querying = window(nodes, counter, window_s, query=True)
            time.sleep(2.0)
            alive = proposer.alive() and language_node.alive()
    finally:
        counter.close()
        camera.terminate()
        camera.wait(timeout=10)
    return {"transport": transport, "mode": mode, "idle": idle, "querying": querying, "alive": alive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=60.0, help="seconds with a query every 5 s (default 60)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds without queries (default 30)")
    args = parser.parse_args()
    rclpy.init()
    results = [
        run_config(transport, mode, args.window, args.idle)
        for transport in ("raw", "compressed")
        for mode in ("continuous", "on_demand")
    ]
    rclpy.shutdown()
    rows = []
    for result in results:
        for phase in ("idle", "querying"):
            measured = result[phase]
            cpu = measured["cpu_percent_of_one_core"]
            rows.append(
                [
                    result["transport"],
                    result["mode"],
                    phase,
                    measured["inference_runs_per_min"],
                    cpu["proposal_node"],
                    cpu["language_node"],
                    f"{measured['answers_ok']}/{measured['queries']}",
                ]
            )
    print_table(
        ["transport", "mode", "window", "inference runs/min", "proposal_node CPU %", "language_node CPU %", "OK"],
        rows,
    )
    path = write_results(
        "on_demand",
        {
            "camera": {"width": 1280, "height": 720, "hz": 30},
            "query_period_s": QUERY_PERIOD_S,
            "language_model_s": 1.0,
            "proposer": "selective_search (package default)",
            "configs": results,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
