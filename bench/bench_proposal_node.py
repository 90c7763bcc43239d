"""Added latency of proposal_node over calling the same backend directly, side by side in one run.

For each image size the node runs in its own process (as deployed, with the shipped Fast DDS profile); this
process alternates a direct ``ProposalPipeline.run`` with an image -> node -> proposals round trip on the same
image, so machine noise affects both alike. Goal: node / direct <= 1.05 with the weight-free backend.

    python bench/bench_proposal_node.py [--frames 15]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np
from _common import ROOT, local_dds_environment, print_table, summary, write_results

local_dds_environment()
sys.path.insert(0, str(ROOT / "test"))

import rclpy  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_harness import NodeProcess, header, textured_image, wait_until  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from chatrex_ros.core.stamps import stamp_to_ns  # noqa: E402
from chatrex_ros.models.base import ProposalPipeline, SelectionPolicy  # noqa: E402
from chatrex_ros.models.selective_search import SelectiveSearchBackend  # noqa: E402
from chatrex_ros.msg import ProposalArray  # noqa: E402
from chatrex_ros.ros.conversions import image_msg  # noqa: E402

LONG_SIDE = 400


def measure(size: tuple[int, int], frames: int) -> dict:
    height, width = size
    image = textured_image(height, width, seed=width)
    direct = ProposalPipeline(SelectiveSearchBackend(long_side=LONG_SIDE), SelectionPolicy())
    direct.run(image)
    arrivals: dict[int, float] = {}
    node = Node(f"bench_client_{width}")
    node.create_subscription(
        ProposalArray, "proposals", lambda m: arrivals.setdefault(stamp_to_ns(m.header.stamp), time.perf_counter()), 10
    )
    publisher = node.create_publisher(Image, "image", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    stop = threading.Event()
    spinner = threading.Thread(
        target=lambda: [rclpy.spin_once(node, timeout_sec=0.01) for _ in iter(stop.is_set, True)], daemon=True
    )
    spinner.start()
    direct_ms, node_ms = [], []
    with NodeProcess(
        "chatrex_ros.ros.proposal_node", "proposal_node", {"selective_search_long_side": LONG_SIDE}
    ) as process:
        wait_until(lambda: publisher.get_subscription_count() > 0, 60, "proposal_node")
        for frame in range(frames + 2):
            start = time.perf_counter()
            direct.run(image)
            elapsed_direct = (time.perf_counter() - start) * 1e3
            stamp = 1_000_000_000 * (frame + 1) + width
            msg = image_msg(image, "rgb8", header(stamp))  # built before timing: a camera driver's job
            sent = time.perf_counter()
            publisher.publish(msg)
            wait_until(lambda stamp=stamp: stamp in arrivals, 30, f"proposals for frame {frame}")
            if frame >= 2:  # first round trips include DDS matching
                direct_ms.append(elapsed_direct)
                node_ms.append((arrivals[stamp] - sent) * 1e3)
        assert process.alive(), process.output()
    stop.set()
    spinner.join()
    node.destroy_node()
    return {
        "direct": summary(direct_ms),
        "node": summary(node_ms),
        "ratio": float(np.median(node_ms) / np.median(direct_ms)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=15)
    args = parser.parse_args()
    rclpy.init()
    results, rows = {}, []
    for size in ((480, 640), (720, 1280)):
        result = measure(size, args.frames)
        results[f"{size[1]}x{size[0]}"] = result
        rows.append(
            [
                f"{size[1]}x{size[0]}",
                result["direct"]["median_ms"],
                result["node"]["median_ms"],
                result["node"]["median_ms"] - result["direct"]["median_ms"],
                result["ratio"],
            ]
        )
    rclpy.shutdown()
    print(f"selective_search backend (long side {LONG_SIDE} px), median of {args.frames} frames, interleaved")
    print_table(["image", "direct ms", "through node ms", "added ms", "node / direct"], rows)
    print(
        f"wrote {write_results('proposal_node', {'frames': args.frames, 'long_side': LONG_SIDE, 'results': results})}"
    )


if __name__ == "__main__":
    main()
