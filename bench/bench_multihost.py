"""Camera frames across two hosts vs on one: latency and delivery ratio, side by side in one run.

Two "hosts" are network namespaces joined by a veth pair (test/netns.py: each with its own /dev/shm and machine
id, so Fast DDS cannot take shared memory across). The camera TEST DOUBLE publishes on host 0 at 30 Hz with the
package's multi-host profile (config/fastdds_multihost.xml); a best-effort KEEP_LAST(1) receiver listens on host 0
(same host: shared memory) and on host 1 (across the link: UDP), one after the other, for each frame size.
Needs root (skips with the reason otherwise).

    python bench/bench_multihost.py [--seconds 15] [--rate 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, local_dds_environment, print_table, write_results

local_dds_environment()
sys.path.insert(0, str(ROOT / "test"))

from netns import TwoHosts, log_file, unavailable  # noqa: E402

from chatrex_ros.launcher import fastdds_profile_variable  # noqa: E402
from chatrex_ros.paths import config_file  # noqa: E402

SIZES = ((640, 480), (1280, 720))


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
            fastdds_profile_variable(): str(config_file("fastdds_multihost.xml")),
            "RMW_FASTRTPS_USE_QOS_FROM_XML": "0",
        }
    )
    return env


def measure(hosts: TwoHosts, host: int, seconds: float, rate: float) -> dict:
    receiver = [sys.executable, str(ROOT / "bench" / "_frame_receiver.py"), "/bench/image", str(seconds), str(rate)]
    result = hosts.run(host, receiver, environment(), timeout=seconds + 60)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    latencies = np.array(data["latencies_ms"]) if data["latencies_ms"] else np.array([np.nan])
    return {
        "received": data["received"],
        "expected": data["expected"],
        "delivery": data["received"] / data["expected"] if data["expected"] else 0.0,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=30.0)
    args = parser.parse_args()
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"skipped: no network namespaces here: {reason}")
    logs = Path(tempfile.mkdtemp(prefix="chatrex_bench_multihost_"))
    rows, results = [], []
    for width, height in SIZES:
        with TwoHosts() as hosts:
            camera = [sys.executable, str(ROOT / "test" / "camera_process.py"), "/bench/image", str(args.rate)]
            hosts.popen(0, [*camera, str(width), str(height)], environment(), log_file(logs, f"camera{width}"))
            for host, where in ((0, "same host (SHM)"), (1, "across the link (UDP)")):
                result = {"size": f"{width}x{height}", "where": where, **measure(hosts, host, args.seconds, args.rate)}
                results.append(result)
                rows.append(
                    [
                        result["size"],
                        where,
                        f"{result['received']}/{result['expected']}",
                        result["delivery"],
                        result["latency_ms_p50"],
                        result["latency_ms_p99"],
                    ]
                )
    print_table(["frame", "receiver", "frames", "delivery", "latency p50 ms", "latency p99 ms"], rows)
    path = write_results("multihost", {"rate_hz": args.rate, "seconds": args.seconds, "results": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
