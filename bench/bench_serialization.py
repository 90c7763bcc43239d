"""Serialisation cost of proposals: flat float32[] arrays (ProposalArray) vs an array of nested messages.

rclpy converts a nested-message array element by element in Python; a flat numeric array is one memcpy.
The nested form is measured with Answer.detections (Detection[] with a float32[4] box each), which is the
shape a vision_msgs-style Detection2DArray would have.

    python bench/bench_serialization.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import local_dds_environment, print_table, summary, write_results

local_dds_environment()

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from chatrex_ros.core.types import Proposals  # noqa: E402
from chatrex_ros.msg import Answer, Detection, ProposalArray  # noqa: E402
from chatrex_ros.ros.conversions import proposals_to_msg  # noqa: E402


def flat_round_trip(proposals: Proposals) -> None:
    data = serialize_message(proposals_to_msg(proposals, Header(), 1280, 720, "fine"))
    back = deserialize_message(data, ProposalArray)
    np.frombuffer(back.boxes, np.float32).reshape(-1, 4), np.frombuffer(back.scores, np.float32)


def nested_round_trip(proposals: Proposals) -> None:
    msg = Answer()
    msg.detections = [
        Detection(proposal_index=i, box=box.tolist(), score=float(score))
        for i, (box, score) in enumerate(zip(proposals.boxes, proposals.scores, strict=True))
    ]
    back = deserialize_message(serialize_message(msg), Answer)
    np.array([d.box for d in back.detections], np.float32), np.array([d.score for d in back.detections], np.float32)


def timed(function, proposals: Proposals, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(proposals)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows, results = [], {}
    for count in (100, 900):
        xy = rng.uniform(0, 1000, (count, 2)).astype(np.float32)
        proposals = Proposals(
            np.concatenate([xy, xy + 50], axis=1), np.sort(rng.uniform(0, 1, count).astype(np.float32))[::-1]
        )
        flat, nested = [], []
        for _ in range(args.repeats // 20):  # interleave so machine noise hits both alike
            flat += timed(flat_round_trip, proposals, 20)
            nested += timed(nested_round_trip, proposals, 20)
        flat_s, nested_s = summary(flat), summary(nested)
        ratio = nested_s["median_ms"] / flat_s["median_ms"]
        rows.append([count, flat_s["median_ms"], nested_s["median_ms"], ratio])
        results[str(count)] = {"flat": flat_s, "nested": nested_s, "nested_over_flat": ratio}
    print("build + serialize + deserialize + view, per message (median of interleaved runs)")
    print_table(["proposals", "flat float32[] ms", "nested Detection[] ms", "nested / flat"], rows)
    print(f"wrote {write_results('serialization', {'repeats': args.repeats, 'results': results})}")


if __name__ == "__main__":
    main()
