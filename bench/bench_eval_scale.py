"""Evaluation at scale: the evaluation's own share of a 1,000-frame run, and many bags in worker processes.

Run: python bench/bench_eval_scale.py [--frames 1000] [--bags 4] [--bag-frames 100] [--sizes 640x480,64x48]
Prints two tables and writes bench/results/eval_scale.json.

(a) One bag of ``--frames`` generated frames (two annotated boxes each) per row through the default
    selective-search proposer: the bag reading (open, stamp index, deserialise, decode) and the scoring
    are timed apart from the model work, and their share of the whole run is reported (goal < 5 %).
    Rows: a VGA camera recorded raw (rgb8) and as jpeg (image_transport's compressed), and 64x48 frames,
    the worst case: a model doing almost no work beside a reading and scoring that cost the same per frame.
(b) ``--bags`` bags of ``--bag-frames`` 240x180 frames: serial (this process) against ``--workers 2``
    (spawned processes, models loaded in each), with selective search's own two processes per frame (the
    default) and with one. Both runs must give identical metrics (timings apart), which is checked.
Absolute times depend on the machine and on what else runs on it; the ratios within one run are the
comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this tree's chatrex_ros, not an installed copy (spawned workers inherit the path)

from _common import print_table, write_results  # noqa: E402

from chatrex_ros.eval.backends import ModelSpec  # noqa: E402
from chatrex_ros.eval.bagio import BagWriter  # noqa: E402
from chatrex_ros.eval.bags import plan_jobs  # noqa: E402
from chatrex_ros.eval.groundtruth import GroundTruth  # noqa: E402
from chatrex_ros.eval.offline import evaluate_bag  # noqa: E402
from chatrex_ros.eval.parallel import evaluate_bags  # noqa: E402
from chatrex_ros.eval.pooling import without_timing  # noqa: E402

GOAL_SHARE = 0.05
TOPIC = "/camera/image_raw"
T0 = 1_700_000_000 * 10**9


def write_bag(path: Path, frames: int, width: int, height: int, seed: int, encoding: str = "rgb8") -> Path:
    """Flat rectangles on a background, two of them annotated per frame; GT beside the bag."""
    rng = np.random.default_rng(seed)
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "block"}]}
    with BagWriter(path) as writer:
        for index in range(1, frames + 1):
            rgb = np.full((height, width, 3), rng.integers(0, 255, 3), np.uint8)
            for k in range(4):
                w, h = int(rng.integers(width // 6, width // 2)), int(rng.integers(height // 6, height // 2))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                rgb[y : y + h, x : x + w] = rng.integers(0, 255, 3)
                if k >= 2:  # the last two drawn are on top: annotate them
                    coco["annotations"].append(
                        {"id": len(coco["annotations"]) + 1, "image_id": index, "category_id": 1, "bbox": [x, y, w, h]}
                    )
            stamp = T0 + index * 33_000_000
            writer.write_image(TOPIC, rgb, stamp, "cam", encoding=encoding)
            coco["images"].append({"id": index, "stamp_ns": stamp, "width": width, "height": height})
    Path(f"{path}_annotations.json").write_text(json.dumps(coco))
    return path


def share_at_scale(tmp: Path, frames: int, width: int, height: int, encoding: str) -> dict:
    """(a): reading and scoring against the whole of one run of ``frames`` frames."""
    bag = write_bag(tmp / f"scale_{width}x{height}_{encoding}", frames, width, height, seed=1, encoding=encoding)
    gt = GroundTruth.load(f"{bag}_annotations.json")
    pipeline, _ = ModelSpec().build()
    started = time.perf_counter()
    result = evaluate_bag(bag, gt, pipeline, None, progress=False)
    wall_ms = (time.perf_counter() - started) * 1e3
    stages, timing = result.stage_ms, result.timing
    read_ms = timing["open_ms"] + timing["index_ms"] + sum(stages["read"])
    model_ms = sum(stages["infer"]) + sum(stages["select"])
    metrics_ms = timing["metrics_ms"]
    return {
        "frames": len(stages["read"]),
        "image": f"{width}x{height}",
        "encoding": encoding,
        "backend": pipeline.backend.name,
        "proposals_per_frame": result.metrics["proposals"]["count_mean"],
        "wall_ms": round(wall_ms, 1),
        "read_ms": round(read_ms, 1),
        "model_ms": round(model_ms, 1),
        "metrics_ms": round(metrics_ms, 1),
        "per_frame_ms": {
            "read": read_ms / len(stages["read"]),
            "model": model_ms / len(stages["read"]),
            "metrics": metrics_ms / len(stages["read"]),
        },
        "read_share": read_ms / wall_ms,
        "metrics_share": metrics_ms / wall_ms,
        "read_plus_metrics_share": (read_ms + metrics_ms) / wall_ms,
        "goal_share": GOAL_SHARE,
        "goal_met": (read_ms + metrics_ms) / wall_ms < GOAL_SHARE,
    }


def workers_speedup(tmp: Path, bags: int, frames: int) -> list[dict]:
    """(b): serial vs 2 worker processes over ``bags`` bags, selective search in 2 processes or 1."""
    paths = [write_bag(tmp / f"bag{i}", frames, 240, 180, seed=10 + i) for i in range(bags)]
    jobs = plan_jobs(paths)
    rows = []
    for ss_workers in (2, 1):
        spec = ModelSpec(proposal_params=(f"workers={ss_workers}",))
        wall, reports = {}, {}
        for name, workers in (("serial", 1), ("workers_2", 2)):
            started = time.perf_counter()
            done = evaluate_bags(jobs, spec, workers=workers, progress=False)
            wall[name] = time.perf_counter() - started
            reports[name] = done.result.to_json()
        rows.append(
            {
                "selective_search_processes": ss_workers,
                "bags": bags,
                "frames": bags * frames,
                "image": "240x180",
                "serial_s": round(wall["serial"], 2),
                "workers_2_s": round(wall["workers_2"], 2),
                "speedup": wall["serial"] / wall["workers_2"],
                "identical_metrics": without_timing(reports["serial"]) == without_timing(reports["workers_2"]),
                "pooled_metrics_ms": reports["workers_2"]["timing"]["metrics_ms"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000, help="frames of the share-at-scale bag (a)")
    parser.add_argument("--bags", type=int, default=4, help="bags of the workers comparison (b)")
    parser.add_argument("--bag-frames", type=int, default=100, help="frames per bag in (b)")
    parser.add_argument("--sizes", default="640x480,64x48", help="frame sizes of (a); the first also as jpeg")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    cases = [(*sizes[0], "rgb8"), (*sizes[0], "jpeg"), *((w, h, "rgb8") for w, h in sizes[1:])]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="chatrex_bench_eval_scale_") as tmp:
        shares = []
        for width, height, encoding in cases:
            shares.append(share_at_scale(Path(tmp), args.frames, width, height, encoding))
            for leftover in Path(tmp).glob("scale_*"):  # a VGA rgb8 bag of 1,000 frames is about 1 GB
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        speed = workers_speedup(Path(tmp), args.bags, args.bag_frames)
    load = {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]}
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']} on {os.cpu_count()} cores")

    print(f"(a) {args.frames} frames, {shares[0]['backend']}: where a run's time goes")
    print_table(
        ["image", "wall ms", "read ms", "model ms", "metrics ms", "read %", "metrics %", "read+metrics %", "< 5 %"],
        [
            [
                f"{share['image']} {share['encoding']}",
                share["wall_ms"],
                share["read_ms"],
                share["model_ms"],
                share["metrics_ms"],
                100 * share["read_share"],
                100 * share["metrics_share"],
                100 * share["read_plus_metrics_share"],
                "met" if share["goal_met"] else "NOT met",
            ]
            for share in shares
        ],
    )
    print(f"\n(b) {args.bags} bags x {args.bag_frames} frames 240x180: serial vs --workers 2")
    print_table(
        ["selective search processes", "serial s", "--workers 2 s", "speed-up", "identical metrics"],
        [
            [r["selective_search_processes"], r["serial_s"], r["workers_2_s"], r["speedup"], r["identical_metrics"]]
            for r in speed
        ],
    )
    path = write_results(
        "eval_scale",
        {
            "benchmark": "eval_scale",
            "share_at_scale": shares,
            "workers": speed,
            "args": vars(args),
            "load_average": load,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
